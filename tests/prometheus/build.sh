#!/usr/bin/env bash
# Build (or find) the Prometheus server the node tests scrape the sidecars with, from the Go
# module pinned in ./go, with only Kubernetes service discovery compiled in.
#
# The LAST line printed on stdout is the path of the `prometheus` binary; progress and
# everything else go to stderr, so callers can do: bin=$(build.sh | tail -n1).
#
# Order of preference:
#   1. $MODELROUTE_PROMETHEUS, when it is an executable (a Prometheus >= 3 of your own);
#   2. the version-keyed cache, when a previous run completed it;
#   3. a fresh build into that cache (a few minutes on 2 cores), under the same lock as the
#      control plane's build.
#
# Why these tags: the default build compiles every cloud's service-discovery SDK (over an hour
# here); remove_all_sd drops them all and enable_kubernetes_sd puts back the one the tests use.
# No web UI (its assets are built with npm); the HTTP API, which the tests use, needs nothing.
#
# Environment knobs:
#   MODELROUTE_PROMETHEUS_CACHE  cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/modelroute/prometheus)
#   GOFLAGS                      passed through; -trimpath is always added
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mod_dir="$here/go"
tags=remove_all_sd,enable_kubernetes_sd

build_name=prometheus
# shellcheck source=../controlplane/buildlib.sh
source "$here/../controlplane/buildlib.sh"

if [[ -n "${MODELROUTE_PROMETHEUS:-}" ]]; then
    [[ -x "$MODELROUTE_PROMETHEUS" ]] || die "MODELROUTE_PROMETHEUS=$MODELROUTE_PROMETHEUS is not an executable"
    log "using MODELROUTE_PROMETHEUS=$MODELROUTE_PROMETHEUS"
    echo "$MODELROUTE_PROMETHEUS"
    exit 0
fi

# The pinned version lives in go.mod only (no `go` call: a warm run costs nothing).
module_version="$(awk '$1 == "github.com/prometheus/prometheus" && $2 ~ /^v/ { print $2; exit }' "$mod_dir/go.mod")"
[[ -n "$module_version" ]] || die "could not read github.com/prometheus/prometheus's version from $mod_dir/go.mod"
# Prometheus 3.X.Y is published as the Go module version v0.3XX.Y.
minor="${module_version#v0.}"
minor="${minor%%.*}"
patch="${module_version##*.}"
release="$((minor / 100)).$((minor % 100)).$patch"

cache_root="${MODELROUTE_PROMETHEUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelroute/prometheus}"
dest="$cache_root/${release}-k8s-sd"

if [[ -x "$dest/prometheus" ]]; then
    log "cached: $dest/prometheus"
    echo "$dest/prometheus"
    exit 0
fi

command -v go >/dev/null || die "go is not on PATH; it is needed to build Prometheus into $dest"
mkdir -p "$cache_root"

take_build_lock "prometheus build of $dest"
if [[ -x "$dest/prometheus" ]]; then
    log "built meanwhile by another process: $dest/prometheus"
    echo "$dest/prometheus"
    exit 0
fi

tmp="$(mktemp -d "$cache_root/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

v=github.com/prometheus/common/version
ldflags=(
    -s -w
    # `prometheus --version` and /api/v1/status/buildinfo report the real release.
    -X "$v.Version=$release" -X "$v.Branch=release-${release%.*}" -X "$v.Revision=$module_version"
    -X "$v.BuildUser=modelroute" -X "$v.BuildDate=19700101-00:00:00"
)

log "into $dest (a cold build takes a few minutes on 2 cores; later runs reuse the cache)"
start=$SECONDS
CGO_ENABLED=0 GOFLAGS="-trimpath ${GOFLAGS:-}" GOTOOLCHAIN=local \
    go_build_with_progress "prometheus $release (tags $tags)" \
    "$mod_dir" -tags "$tags" -ldflags "${ldflags[*]}" -o "$tmp/prometheus" github.com/prometheus/prometheus/cmd/prometheus
"$tmp/prometheus" --version >/dev/null || die "the built prometheus does not run"

chmod 755 "$tmp"  # mktemp made it private
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
log "built in $(duration $((SECONDS - start))): $dest/prometheus"
echo "$dest/prometheus"
