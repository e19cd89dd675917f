#!/usr/bin/env bash
# Build (once) our collector distribution from otel/builder-config.yaml and print its path.
#
# The binary is cached under ${XDG_CACHE_HOME:-$HOME/.cache}/stockpred/otelcol-<hash>/, where
# <hash> is the first 16 hex digits of the manifest's sha256: editing the manifest gives a new
# cache entry, an unchanged manifest is a no-op (the first build takes several minutes).
# Nothing is written into the repository: generated Go sources live in a temporary directory.
#
# Progress goes to stderr; the LAST line of stdout is the absolute path of the binary, so callers
# can do: OTELCOL_BIN="$(scripts/build-collector.sh | tail -1)"
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
manifest="${repo_root}/otel/builder-config.yaml"
dist_name="otelcol-stockpred"

log() { printf 'build-collector: %s\n' "$*" >&2; }

[[ -f "${manifest}" ]] || { log "manifest not found: ${manifest}"; exit 1; }

hash="$(sha256sum "${manifest}" | cut -c1-16)"
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/stockpred"
cache_dir="${cache_root}/otelcol-${hash}"
binary="${cache_dir}/${dist_name}"

if [[ -x "${binary}" ]]; then
  log "cached: ${binary}"
  echo "${binary}"
  exit 0
fi

# Go is installed outside the default PATH on the dev machine and in CI images.
if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
  export PATH="${PATH}:/usr/local/go/bin"
fi
command -v go >/dev/null 2>&1 || { log "go not found (need Go to build the collector)"; exit 1; }

# The builder must be the same release as the components: take its version from the manifest's
# telemetry module (go.opentelemetry.io/collector/service vX.Y.Z) instead of repeating it here.
version="$(sed -n 's#^[[:space:]]*gomod:[[:space:]]*go\.opentelemetry\.io/collector/service[[:space:]]\{1,\}\(v[0-9][0-9.]*\).*#\1#p' "${manifest}" | head -1)"
[[ -n "${version}" ]] || { log "cannot read the collector release from ${manifest}"; exit 1; }

builder="$(go env GOPATH)/bin/builder"
if ! [[ -x "${builder}" ]] || ! "${builder}" version 2>/dev/null | grep -qF "${version}"; then
  log "installing go.opentelemetry.io/collector/cmd/builder@${version}"
  GOFLAGS=-mod=mod go install "go.opentelemetry.io/collector/cmd/builder@${version}" >&2
fi

mkdir -p "${cache_root}"
# Build next to the cache entry (same filesystem) so the final rename is atomic: a concurrent
# caller sees either no entry or a complete one.
work_dir="$(mktemp -d "${cache_root}/.otelcol-${hash}.XXXXXX")"
trap 'rm -rf "${work_dir}"' EXIT

log "building ${dist_name} (collector ${version}) from ${manifest}; first build takes minutes"
start="${SECONDS}"
# ocb takes dist.output_path only from the manifest or the environment (koanf env provider with
# "." as the key delimiter); the environment keeps the checked-in manifest free of local paths.
env "dist.output_path=${work_dir}/src" "${builder}" --config "${manifest}" >&2
log "build took $((SECONDS - start))s"

[[ -x "${work_dir}/src/${dist_name}" ]] || { log "builder produced no ${dist_name} binary"; exit 1; }

mkdir -p "${work_dir}/out"
mv "${work_dir}/src/${dist_name}" "${work_dir}/out/${dist_name}"
# Keep the resolved module graph and the manifest next to the binary: they say exactly what it is.
cp "${work_dir}/src/go.mod" "${work_dir}/src/go.sum" "${work_dir}/out/"
cp "${manifest}" "${work_dir}/out/builder-config.yaml"

if ! mv -T "${work_dir}/out" "${cache_dir}" 2>/dev/null; then
  # Another build won the race; its binary is equivalent (same manifest hash).
  [[ -x "${binary}" ]] || { log "could not install into ${cache_dir}"; exit 1; }
fi
log "installed: ${binary}"
echo "${binary}"
