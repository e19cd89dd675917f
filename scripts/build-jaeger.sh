#!/usr/bin/env bash
# Build (once) Jaeger v2 (the `jaeger` binary: an OpenTelemetry Collector distribution with
# Jaeger's storage and query extensions) and print its path as the LAST line of stdout:
#
#   JAEGER_BIN="$(scripts/build-jaeger.sh | tail -1)"
#
# The tests use it as the trace backend of the end-to-end run (in-memory storage, OTLP in, query
# API out; config in deploy/jaeger.yaml). Compose keeps Tempo; otel/README.md shows the swap.
#
# Jaeger publishes v2 from the same Go module as v1: module version v1.76.0 is Jaeger v2.13.0
# (its CHANGELOG pairs them). The binary is built inside the downloaded module, with Jaeger's own
# go.mod and go.sum: its go.mod carries a replace directive (Shopify/sarama) that a module of ours
# requiring Jaeger would silently ignore, so that would build other dependency versions than the
# release. Cached as ${XDG_CACHE_HOME:-$HOME/.cache}/stockpred/jaeger-<version>/; an entry that
# exists is a no-op. The UI in this build is Jaeger's placeholder page (the real UI is a separate
# npm build that the module does not contain); the query API is complete.
set -euo pipefail

# Bump both together (CHANGELOG.md of the module: "v1.N.0 / v2.M.0").
module=github.com/jaegertracing/jaeger
module_version=v1.76.0
version=v2.13.0

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GOBUILD_NAME=build-jaeger
# shellcheck source=lib/go-build.sh
source "${repo_root}/scripts/lib/go-build.sh"

entry="jaeger-${version#v}"
binary="${gobuild_cache_root}/${entry}/jaeger"
if [[ -x "${binary}" ]]; then
  gobuild_log "cached: ${binary}"
  echo "${binary}"
  exit 0
fi

gobuild_require_go
gobuild_begin "${entry}"
start="${SECONDS}"
gobuild_download "${module}@${module_version}"
# What `jaeger version` prints (Jaeger's own build stamps the same three variables).
pkg="${module}/internal/version"
ldflags="-X ${pkg}.latestVersion=${version} -X ${pkg}.commitSHA=${gobuild_module_sum}"
ldflags+=" -X ${pkg}.date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
gobuild_log "building jaeger ${version} (${module}@${module_version}); the first build takes minutes"
CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -C "${gobuild_module_dir}" -trimpath \
  -ldflags "${ldflags}" -o "${gobuild_work}/out/jaeger" ./cmd/jaeger >&2
gobuild_install "${entry}" "$((SECONDS - start))" "${module}@${module_version} (${gobuild_module_sum})" jaeger
echo "${binary}"
