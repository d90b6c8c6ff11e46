#!/usr/bin/env bash
# Build (or find) the Kubernetes binaries the tests run, from the Go module pinned in ./go:
#   build.sh        the control plane: etcd, kube-apiserver, kube-controller-manager, kubectl, helm
#   build.sh node   a node for it: kubelet and kube-scheduler (the same Kubernetes version)
#
# The LAST line printed on stdout is the directory holding the binaries.
# Everything else goes to stderr, so callers can do: dir=$(build.sh | tail -n1).
#
# Order of preference:
#   1. $KUBEBUILDER_ASSETS, when it holds all five control-plane binaries (the envtest convention);
#   2. the version-keyed cache directory, when a previous run completed it;
#   3. a fresh build into that cache directory (one `go build` for the set, so the
#      packages they share are compiled once).
#
# Environment knobs:
#   MODELROUTE_CONTROLPLANE_CACHE  cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/modelroute/controlplane)
#   GOFLAGS                        passed through; -trimpath is always added
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mod_dir="$here/go"
set_name="${1:-controlplane}"
case "$set_name" in
    controlplane)
        binaries=(etcd kube-apiserver kube-controller-manager kubectl helm)
        packages=(go.etcd.io/etcd/server/v3 helm.sh/helm/v3/cmd/helm k8s.io/kubernetes/cmd/kube-apiserver
            k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl) ;;
    node)
        binaries=(kubelet kube-scheduler)
        packages=(k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler) ;;
    *) printf 'usage: %s [controlplane|node]\n' "$0" >&2; exit 2 ;;
esac

build_name=$set_name
# shellcheck source=buildlib.sh
source "$here/buildlib.sh"

has_all_binaries() {
    local dir="$1" b
    for b in "${binaries[@]}"; do
        [[ -x "$dir/$b" ]] || return 1
    done
}

missing_binaries() {
    local dir="$1" b out=()
    for b in "${binaries[@]}"; do
        [[ -x "$dir/$b" ]] || out+=("$b")
    done
    echo "${out[*]}"
}

# The pinned versions live in go.mod only; read them from there (no `go` call, so a
# warm run costs nothing and needs no network).
required_version() {
    awk -v mod="$1" '$1 == mod && $2 ~ /^v/ { print $2; exit }' "$mod_dir/go.mod"
}

if [[ -n "${KUBEBUILDER_ASSETS:-}" && "$set_name" == controlplane ]]; then
    if has_all_binaries "$KUBEBUILDER_ASSETS"; then
        log "using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"
        echo "$KUBEBUILDER_ASSETS"
        exit 0
    fi
    die "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks: $(missing_binaries "$KUBEBUILDER_ASSETS") (unset it to build them)"
fi

k8s_version="$(required_version k8s.io/kubernetes)"
etcd_version="$(required_version go.etcd.io/etcd/server/v3)"
helm_version="$(required_version helm.sh/helm/v3)"
[[ -n "$k8s_version" && -n "$etcd_version" && -n "$helm_version" ]] ||
    die "could not read the pinned versions from $mod_dir/go.mod"

cache_root="${MODELROUTE_CONTROLPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelroute/controlplane}"
if [[ "$set_name" == node ]]; then
    dest="$cache_root/${k8s_version}-node"
else
    dest="$cache_root/${k8s_version}-etcd${etcd_version#v}-helm${helm_version#v}"
fi

if has_all_binaries "$dest"; then
    log "cached: $dest"
    echo "$dest"
    exit 0
fi

command -v go >/dev/null || die "go is not on PATH; it is needed to build the control plane into $dest"
mkdir -p "$cache_root"

# Serialise concurrent builds (several pytest sessions, make and a test run at once, and the
# other Go builds of the tests): the second caller waits, then finds the finished cache.
take_build_lock "$set_name build of $dest"
if has_all_binaries "$dest"; then
    log "built meanwhile by another process: $dest"
    echo "$dest"
    exit 0
fi

k8s_minor="$(echo "$k8s_version" | cut -d. -f2)"
cb=k8s.io/component-base/version
hv=helm.sh/helm/v3/internal/version
ldflags=(
    -s -w
    # kubectl version / the server's /version report the real release.
    -X "$cb.gitVersion=$k8s_version" -X "$cb.gitMajor=1" -X "$cb.gitMinor=$k8s_minor"
    -X "$cb.gitTreeState=clean" -X "$cb.buildDate=1970-01-01T00:00:00Z"
    -X "$hv.version=$helm_version" -X "$hv.gitTreeState=clean"
    # helm template's default .Capabilities.KubeVersion: the client-go it was built with.
    -X "helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1"
    -X "helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor"
    -X "helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1"
    -X "helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k8s_minor"
)

tmp="$(mktemp -d "$cache_root/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

log "into $dest (a cold build takes about 10 minutes on 2 cores; later runs reuse the cache)"
start=$SECONDS
# CGO off: static binaries, no C toolchain needed, as upstream ships them.
# The set's main packages (go.mod `tool` directives) in one build.
CGO_ENABLED=0 GOFLAGS="-trimpath ${GOFLAGS:-}" GOTOOLCHAIN=local \
    go_build_with_progress "kubernetes $k8s_version (${binaries[*]}), etcd $etcd_version, helm $helm_version" \
    "$mod_dir" -ldflags "${ldflags[*]}" -o "$tmp/" "${packages[@]}"
# etcd's main package is the module root go.etcd.io/etcd/server/v3: go names it "server".
if [[ -e "$tmp/server" ]]; then mv "$tmp/server" "$tmp/etcd"; fi
has_all_binaries "$tmp" || die "build finished without: $(missing_binaries "$tmp")"

chmod 755 "$tmp"  # mktemp made it private
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
log "built in $(duration $((SECONDS - start))): $dest"
echo "$dest"
