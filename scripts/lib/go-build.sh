# Shared by scripts/build-prometheus.sh and scripts/build-jaeger.sh (sourced, not run): find Go,
# build into a temporary directory next to the cache, and rename it into place.
#
# Cache layout: ${XDG_CACHE_HOME:-$HOME/.cache}/stockpred/<tool>-<version>/ holds the binaries and
# a BUILD-INFO file (what was built, from which module, how long it took). An existing entry is
# never rebuilt: callers check for their binaries first and only then call gobuild_install.

gobuild_cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/stockpred"

# Progress and errors go to stderr so that stdout carries only the path(s) the caller prints.
gobuild_log() { printf '%s: %s\n' "${GOBUILD_NAME:-build}" "$*" >&2; }
gobuild_die() { gobuild_log "$*"; exit 1; }

# Go is installed outside the default PATH on the dev machine and in CI images.
gobuild_require_go() {
  if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
    export PATH="${PATH}:/usr/local/go/bin"
  fi
  command -v go >/dev/null 2>&1 || gobuild_die "go not found (need Go to build from source)"
}

# -ldflags that stamp github.com/prometheus/common/version, which `--version` of Prometheus,
# promtool, Alertmanager and amtool prints. Unstamped, they print an empty version.
#   $1 version (e.g. 3.5.0)  $2 revision  $3 branch
gobuild_common_version_ldflags() {
  local pkg=github.com/prometheus/common/version
  printf -- '-X %s.Version=%s -X %s.Revision=%s -X %s.Branch=%s -X %s.BuildUser=%s -X %s.BuildDate=%s' \
    "${pkg}" "$1" "${pkg}" "$2" "${pkg}" "$3" \
    "${pkg}" "$(id -un)@$(hostname)" "${pkg}" "$(date -u +%Y%m%d-%H:%M:%S)"
}

# Download a module's source into the module cache and set gobuild_module_dir (where it is, read
# only) and gobuild_module_sum (its h1: checksum as the Go checksum database records it: the module
# proxy serves no commit id, and the checksum names the exact source just as well).
#   $1 module@version
gobuild_download() {
  local json
  json="$(GOFLAGS=-mod=mod go mod download -json "$1")" || gobuild_die "cannot download $1"
  gobuild_module_dir="$(sed -n 's/^[[:space:]]*"Dir": "\([^"]*\)".*/\1/p' <<<"${json}")"
  gobuild_module_sum="$(sed -n 's/^[[:space:]]*"Sum": "\(h1:[^"]*\)".*/\1/p' <<<"${json}")"
  [[ -d "${gobuild_module_dir}" && -n "${gobuild_module_sum}" ]] || gobuild_die "no source for $1"
}

# Start a build: a fresh directory next to the cache entry (same filesystem, so the final rename
# is atomic: a concurrent caller sees either no entry or a complete one). Sets gobuild_work and
# removes it on exit.
#   $1 cache entry name (<tool>-<version>)
gobuild_begin() {
  mkdir -p "${gobuild_cache_root}"
  gobuild_work="$(mktemp -d "${gobuild_cache_root}/.$1.XXXXXX")"
  # shellcheck disable=SC2064  # expand now: the variable may be reused by a second build
  trap "rm -rf '${gobuild_work}'" EXIT
  mkdir -p "${gobuild_work}/out"
}

# Finish a build: check the binaries exist, write BUILD-INFO, rename the entry into place.
#   $1 cache entry name  $2 seconds the build took  $3 module@version  $4... binary names
gobuild_install() {
  local entry="$1" seconds="$2" source="$3"
  shift 3
  local name
  for name in "$@"; do
    [[ -x "${gobuild_work}/out/${name}" ]] || gobuild_die "the build produced no ${name}"
  done
  {
    printf 'built from: %s\n' "${source}"
    printf 'binaries:   %s\n' "$*"
    printf 'go:         %s\n' "$(go env GOVERSION)"
    printf 'build time: %ss (%s)\n' "${seconds}" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  } >"${gobuild_work}/out/BUILD-INFO"
  if ! mv -T "${gobuild_work}/out" "${gobuild_cache_root}/${entry}" 2>/dev/null; then
    # Another build won the race; its binaries are equivalent (same entry name, same source).
    [[ -x "${gobuild_cache_root}/${entry}/$1" ]] || gobuild_die "could not install ${entry}"
  fi
  rm -rf "${gobuild_work}"
  trap - EXIT
  gobuild_log "installed ${gobuild_cache_root}/${entry} in ${seconds}s"
}
