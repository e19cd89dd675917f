#!/usr/bin/env bash
# Build (once) vegeta, the constant-rate HTTP load generator `make bench` uses for latency at a
# fixed offered rate, and print its path as the LAST line of stdout:
#
#   VEGETA_BIN="$(scripts/build-vegeta.sh | tail -1)"
#
# Why vegeta: it is open-model by design. Its pacer sends request i at start + i/rate whether or
# not earlier requests returned, and with the default -max-workers (unbounded) it starts another
# worker whenever all are busy instead of waiting, so a slow server does not slow the schedule
# (no coordinated omission). The benchmark checks that on every run from the results' timestamps.
#
# Built inside the downloaded module with vegeta's own go.mod and go.sum (the release's exact
# dependency versions), stamped so `vegeta -version` prints the release. Cached as
# ${XDG_CACHE_HOME:-$HOME/.cache}/stockpred/vegeta-<version>/; an entry that exists is a no-op.
set -euo pipefail

module=github.com/tsenart/vegeta/v12
version=v12.13.0

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GOBUILD_NAME=build-vegeta
# shellcheck source=lib/go-build.sh
source "${repo_root}/scripts/lib/go-build.sh"

entry="vegeta-${version#v}"
binary="${gobuild_cache_root}/${entry}/vegeta"
if [[ -x "${binary}" ]]; then
  gobuild_log "cached: ${binary}"
  echo "${binary}"
  exit 0
fi

gobuild_require_go
gobuild_begin "${entry}"
start="${SECONDS}"
gobuild_download "${module}@${version}"
# main.Version, main.Commit and main.Date are what `vegeta -version` prints (set at link time).
ldflags="-X main.Version=${version} -X main.Commit=${gobuild_module_sum}"
ldflags+=" -X main.Date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
gobuild_log "building vegeta ${version} (${module}@${version})"
CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -C "${gobuild_module_dir}" -trimpath \
  -ldflags "${ldflags}" -o "${gobuild_work}/out/vegeta" . >&2
gobuild_install "${entry}" "$((SECONDS - start))" "${module}@${version} (${gobuild_module_sum})" vegeta
echo "${binary}"
