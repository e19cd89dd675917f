#!/usr/bin/env bash
# Build (once) Prometheus + promtool and Alertmanager + amtool at the releases compose.yaml pins,
# and print the paths of the binaries asked for.
#
#   scripts/build-prometheus.sh                    # all four, one path per line
#   scripts/build-prometheus.sh promtool           # one; the LAST stdout line is its path:
#   PROMTOOL_BIN="$(scripts/build-prometheus.sh promtool | tail -1)"
#
# The versions are read from the `image:` lines of compose.yaml (prom/prometheus:vX.Y.Z,
# prom/alertmanager:vX.Y.Z), so the tests run exactly what compose ships. Sources come from the Go
# module proxy: Prometheus 3.M.P is published as module version v0.3MM.P (3.5.0 -> v0.305.0),
# Alertmanager under its own tag. Each is built inside its downloaded module with its own go.mod
# and go.sum, i.e. with exactly the dependency versions upstream's release used. Each release is cached as
# ${XDG_CACHE_HOME:-$HOME/.cache}/stockpred/{prometheus,alertmanager}-<version>/; an entry that
# exists is a no-op. Nothing is written into the repository.
#
# `--version` prints the real release: the build stamps github.com/prometheus/common/version
# (Version, Revision = the module's h1: checksum since the proxy serves no commit id, Branch = the
# release tag, BuildUser, BuildDate). Built without upstream's `builtinassets` tag (the React UI
# is not in the module source): the HTTP API is complete, the web UI pages are not served.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
compose="${repo_root}/compose.yaml"
GOBUILD_NAME=build-prometheus
# shellcheck source=lib/go-build.sh
source "${repo_root}/scripts/lib/go-build.sh"

# The X.Y.Z of `image: <repository>:vX.Y.Z` in compose.yaml.
pinned_version() {
  local image="$1" version
  version="$(sed -n "s#^[[:space:]]*image:[[:space:]]*${image}:v\([0-9][0-9.]*\)[[:space:]]*\$#\1#p" "${compose}" | head -1)"
  [[ -n "${version}" ]] || gobuild_die "no '${image}:vX.Y.Z' image pin in ${compose}"
  printf '%s\n' "${version}"
}

# Go module version of a Prometheus 3.x release: 3.5.0 -> v0.305.0, 3.10.2 -> v0.310.2.
prometheus_module_version() {
  local major minor patch
  IFS=. read -r major minor patch <<<"$1"
  [[ "${major}" == 3 ]] || gobuild_die "Prometheus $1: only 3.x releases map to v0.3MM.P modules"
  printf 'v0.3%02d.%s\n' "${minor}" "${patch}"
}

# Build the binaries `names` of module `module` at `module_version` into cache entry `entry`,
# unless the entry exists. Version stamped as `version` (tag v<version>).
build_release() {
  local entry="$1" module="$2" module_version="$3" version="$4"
  shift 4
  local names=("$@") dir="${gobuild_cache_root}/${entry}" name missing=0
  for name in "${names[@]}"; do
    [[ -x "${dir}/${name}" ]] || missing=1
  done
  if [[ ${missing} -eq 0 ]]; then
    gobuild_log "cached: ${dir}"
    return
  fi
  gobuild_require_go
  gobuild_begin "${entry}"
  local ldflags packages=() start="${SECONDS}"
  gobuild_download "${module}@${module_version}"
  ldflags="$(gobuild_common_version_ldflags "${version}" "${gobuild_module_sum}" "v${version}")"
  for name in "${names[@]}"; do
    packages+=("./cmd/${name}")
  done
  gobuild_log "building ${names[*]} ${version} (${module}@${module_version}); the first build takes minutes"
  # Built inside the downloaded module, as upstream builds it: its own go.mod (Prometheus' has
  # replace and exclude directives, which `go install module@version` refuses) and go.sum.
  # Nothing is written there (-mod=readonly). Static like upstream's release builds
  # (CGO_ENABLED=0); -trimpath keeps local paths out of the binaries.
  CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -C "${gobuild_module_dir}" -trimpath \
    -ldflags "${ldflags}" -o "${gobuild_work}/out/" "${packages[@]}" >&2
  gobuild_install "${entry}" "$((SECONDS - start))" "${module}@${module_version} (${gobuild_module_sum})" "${names[@]}"
}

prometheus_version="$(pinned_version prom/prometheus)"
alertmanager_version="$(pinned_version prom/alertmanager)"

# Which release each binary comes from, and where it lands.
declare -A release_of=([prometheus]=prometheus [promtool]=prometheus [alertmanager]=alertmanager [amtool]=alertmanager)
declare -A entry_of=([prometheus]="prometheus-${prometheus_version}" [alertmanager]="alertmanager-${alertmanager_version}")

wanted=("$@")
[[ ${#wanted[@]} -gt 0 ]] || wanted=(prometheus promtool alertmanager amtool)
for name in "${wanted[@]}"; do
  [[ -n "${release_of[${name}]:-}" ]] || gobuild_die "unknown binary ${name} (prometheus, promtool, alertmanager, amtool)"
done

declare -A built=()
for name in "${wanted[@]}"; do
  release="${release_of[${name}]}"
  [[ -z "${built[${release}]:-}" ]] || continue
  if [[ ${release} == prometheus ]]; then
    build_release "${entry_of[prometheus]}" github.com/prometheus/prometheus \
      "$(prometheus_module_version "${prometheus_version}")" "${prometheus_version}" prometheus promtool
  else
    build_release "${entry_of[alertmanager]}" github.com/prometheus/alertmanager \
      "v${alertmanager_version}" "${alertmanager_version}" alertmanager amtool
  fi
  built[${release}]=1
done

for name in "${wanted[@]}"; do
  echo "${gobuild_cache_root}/${entry_of[${release_of[${name}]}]}/${name}"
done
