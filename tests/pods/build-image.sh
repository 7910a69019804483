#!/usr/bin/env bash
# Builds the nodedns image without a registry: a bookworm base from Debian packages (mmdebstrap, nftables and
# iptables included), imported into podman, then the Dockerfile's `prebuilt` target with a binary built on this
# (bookworm) host. The Dockerfile's default target stays the canonical build for machines with a registry.
#
# Usage: tests/pods/build-image.sh [BINARY [IMAGE]]
#   BINARY  default target/release/nodedns (stripped into the image)
#   IMAGE   default localhost/nodedns:dev
# Environment: NODEDNS_BASE_IMAGE (default localhost/nodedns-base:bookworm-<recipe hash>; built once, then reused).
# Prints the image's size on the last line: `image IMAGE SIZE_BYTES bytes (N MiB)`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="${1:-$ROOT/target/release/nodedns}"
IMAGE="${2:-localhost/nodedns:dev}"
# The base: Debian's Essential set, nftables and iptables with their dependencies only (no Recommends, no
# apt), /usr merged by mmdebstrap's hook rather than the usrmerge package (which would pull in perl), and no
# documentation, man pages or locales.
BASE_ARGS=(--variant=essential --include=nftables,iptables --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --aptopt='APT::Install-Recommends "false"'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*')
# Named after its recipe, so that a changed recipe builds a new base instead of reusing the old one.
BASE="${NODEDNS_BASE_IMAGE:-localhost/nodedns-base:bookworm-$(echo "${BASE_ARGS[*]}" | sha256sum | cut -c1-12)}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/tests/pods/containers.conf}"
podman() { command podman --runtime runc --cgroup-manager cgroupfs "$@"; }

[[ -x "$BIN" ]] || { echo "build-image.sh: $BIN is not an executable (cargo build --release -p nodedns)" >&2; exit 1; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

if ! podman image exists "$BASE"; then
  if ! mmdebstrap --quiet "${BASE_ARGS[@]}" bookworm "$WORK/base.tar" >"$WORK/mmdebstrap.log" 2>&1; then
    cat "$WORK/mmdebstrap.log" >&2
    exit 1
  fi
  podman import --quiet "$WORK/base.tar" "$BASE" >/dev/null
  rm -f "$WORK/base.tar"
fi

mkdir "$WORK/context"
install -s -m 0755 "$BIN" "$WORK/context/nodedns"
podman build --quiet --isolation chroot --target prebuilt \
  --build-arg RUNTIME_IMAGE="$BASE" --build-arg INSTALL_PACKAGES=false \
  -f "$ROOT/Dockerfile" -t "$IMAGE" "$WORK/context" >/dev/null
size="$(podman image inspect --format '{{.Size}}' "$IMAGE")"
echo "image $IMAGE $size bytes ($((size / 1048576)) MiB)"
