#!/usr/bin/env bash
# Build the modelroute image from ./Dockerfile without a Docker engine, and write it as
# an OCI archive that `ctr images import`, `kind load image-archive`, `podman load` or
# `skopeo copy oci-archive:...` take.
#
#   sudo image/build.sh                 # last stdout line: the archive's path
#   sudo ctr -n k8s.io images import "$(sudo image/build.sh | tail -n1)"
#
# The Dockerfile is built as written, by buildah (daemonless, `--isolation chroot`, vfs
# storage: no daemon, no overlay mounts, no user namespaces). Its only input from outside
# the repository is the base image: where Docker Hub's debian:bookworm-slim is out of
# reach, a Debian bookworm minbase root file system made by debootstrap stands in for it
# (BASE_IMAGE build argument). Everything else (apt's python3, pip's wheels) comes from
# the Debian archive and PyPI, as in a `docker build`.
#
# Progress (what, time elapsed) goes to stderr, the tools' own output to build.log and
# debootstrap.log in the cache. Cached by content under $MODELROUTE_IMAGE_CACHE (default ~/.cache/modelroute/image):
# the base once; the archive per hash of the Dockerfile and the files it copies, so a
# second run with the same sources builds nothing. No layer cache: with vfs storage every
# cached step is a full copy of the file system, slower than redoing the steps. Needs root, debootstrap and buildah
# (`apt-get install debootstrap buildah` on Debian/Ubuntu).
#
# Environment knobs:
#   MODELROUTE_IMAGE            reference to tag (default ghcr.io/modelroute/modelroute:<version>)
#   MODELROUTE_IMAGE_CACHE      cache root
#   DEBIAN_MIRROR               default http://deb.debian.org/debian
#   MODELROUTE_BUILD_CA         CA bundle the RUN steps trust (default: this machine's)
set -euo pipefail

# All in one function, read whole before it runs: editing this file during a build is safe.
main() {

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf 'image: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
start=$SECONDS
step() { log "$* (${SECONDS}s elapsed)"; }

[[ $(id -u) == 0 ]] || die "needs root (debootstrap and buildah's chroot isolation)"
for tool in debootstrap buildah; do
    command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install debootstrap buildah)"
done

version="$(awk -F'"' '/^version *=/ { print $2; exit }' "$repo/pyproject.toml")"
image="${MODELROUTE_IMAGE:-ghcr.io/modelroute/modelroute:$version}"
cache="${MODELROUTE_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelroute/image}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm
base_image="localhost/modelroute-base/debian:$suite-minbase"
storage=(--root "$cache/storage" --runroot "$cache/run" --storage-driver vfs)

# What the Dockerfile copies (see .dockerignore): a change to any of it is a new image.
context_hash() {
    (
        cd "$repo"
        find Dockerfile .dockerignore pyproject.toml README.md sidecar operator -type f \
            ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 |
            LC_ALL=C sort -z | xargs -0 sha256sum
        echo "$image $base_image"
    ) | sha256sum | cut -c1-16
}

mkdir -p "$cache"
exec 9>"$cache/.build.lock"
flock 9  # one build at a time; a second caller finds the first one's archive
SECONDS=0 start=0  # time from here: what waiting for the lock took is not this build's

archive="$cache/modelroute-$version-$(context_hash).oci.tar"
if [[ -s "$archive" ]]; then
    log "cached: $archive"
    echo "$archive"
    exit 0
fi

bah() { buildah "${storage[@]}" "$@"; }

# run_logged LOG WHAT CMD...: CMD's output into LOG; every 30 s a line of progress (the
# latest build step, the time elapsed) on stderr; on failure the end of LOG.
run_logged() {
    local logfile="$1" what="$2" ticker rc=0
    shift 2
    (
        trap 'kill "$nap" 2>/dev/null; exit 0' TERM
        while :; do
            sleep 30 & nap=$!
            wait "$nap"
            last="$(tr '\r' '\n' <"$logfile" 2>/dev/null | grep -a -E '^(\[[0-9]+/[0-9]+\] STEP|I: )' | tail -n1 | cut -c1-100)"
            log "still $what: ${last:-...} (${SECONDS}s elapsed)"
        done
    ) &
    ticker=$!
    "$@" >"$logfile" 2>&1 || rc=$?
    kill "$ticker" 2>/dev/null || true
    if ((rc != 0)); then
        tail -n 30 "$logfile" >&2
        die "$what failed (exit $rc); the whole output is in $logfile"
    fi
}

# The stand-in for debian:bookworm-slim: debootstrap's minbase variant (what the official
# image is made from), without docs, man pages and locales.
if ! bah inspect --type image "$base_image" >/dev/null 2>&1; then
    step "making the base: debootstrap --variant=minbase $suite from $mirror (a few minutes, once)"
    rootfs="$(mktemp -d "$cache/.rootfs.XXXXXX")"
    trap 'rm -rf "$rootfs"' EXIT
    # Its own mount namespace: debootstrap's /proc and /sys mounts vanish with it.
    run_logged "$cache/debootstrap.log" "making the base" \
        unshare --mount --propagation private debootstrap --variant=minbase "$suite" "$rootfs" "$mirror"
    rm -rf "$rootfs"/usr/share/{doc,man,info,locale}/* "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*
    step "importing the base as $base_image"
    ctr="$(bah from scratch)"
    cp -a "$rootfs/." "$(bah mount "$ctr")/"  # vfs: the mount is a plain directory
    bah umount "$ctr" >/dev/null
    bah config --cmd bash "$ctr"
    bah commit --rm --quiet "$ctr" "$base_image" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
fi

# The build trusts what this machine trusts (an HTTPS-inspecting proxy's CA, say): its CA
# bundle is mounted read-only into the RUN steps, and pip told to use it. Mounts are not
# part of any layer: the image holds neither.
trust=()
host_ca="${MODELROUTE_BUILD_CA:-/etc/ssl/certs/ca-certificates.crt}"
if [[ -s "$host_ca" ]]; then
    # Its own path: the image's ca-certificates package owns the standard one.
    printf '[global]\ncert = /etc/modelroute-build-ca.crt\n' >"$cache/pip.conf"
    trust=(--volume "$host_ca:/etc/modelroute-build-ca.crt:ro" --volume "$cache/pip.conf:/etc/pip.conf:ro")
fi

step "building $image from $repo/Dockerfile (buildah, chroot isolation)"
bah rm --all >/dev/null 2>&1 || true  # working containers an interrupted build left behind
run_logged "$cache/build.log" "building $image" \
    unshare --mount --propagation private \
    buildah "${storage[@]}" build --layers=false --force-rm --pull=never --isolation chroot "${trust[@]}" \
    --build-arg "BASE_IMAGE=$base_image" -t "$image" -f "$repo/Dockerfile" "$repo"

tmp="$archive.tmp"
rm -f "$tmp"
bah push --quiet "$image" "oci-archive:$tmp:$image" >&2
mv "$tmp" "$archive"
# Older archives of this version are superseded by this one; older images too (vfs keeps
# a full copy of every image, so nothing is kept that this archive does not need).
find "$cache" -maxdepth 1 -name "modelroute-*.oci.tar" ! -path "$archive" -delete
bah rmi --prune >/dev/null 2>&1 || true
size="$(bah images --format '{{.Size}}' "$image" | head -n1)"
step "built $image ($size unpacked, $(du -h "$archive" | cut -f1) archive) in $((SECONDS - start))s: $archive"
echo "$archive"
}

main "$@"; exit
