#!/usr/bin/env bash
# Builds the nodedns image without a registry: a bookworm base from Debian packages (mmdebstrap, nftables and
# iptables included), imported into podman, then the Dockerfile's `prebuilt` target with a binary built on this
# (bookworm) host. The Dockerfile's default target stays the canonical build for machines with a registry.
#
# Usage: tests/pods/build-image.sh [BINARY [IMAGE]]
#   BINARY  default target/release/nodedns (stripped into the image)
#   IMAGE   default localhost/nodedns:dev
# Environment: NODEDNS_BASE_IMAGE (default localhost/nodedns-base:bookworm; built once, reused if present).
# Prints the image's size on the last line: `image IMAGE SIZE_BYTES bytes (N MiB)`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="${1:-$ROOT/target/release/nodedns}"
IMAGE="${2:-localhost/nodedns:dev}"
BASE="${NODEDNS_BASE_IMAGE:-localhost/nodedns-base:bookworm}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/tests/pods/containers.conf}"
podman() { command podman --runtime runc --cgroup-manager cgroupfs "$@"; }

[[ -x "$BIN" ]] || { echo "build-image.sh: $BIN is not an executable (cargo build --release -p nodedns)" >&2; exit 1; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

if ! podman image exists "$BASE"; then
  # minbase: essential packages + apt; documentation, man pages and locales are left out of the image.
  mmdebstrap --quiet --variant=minbase --include=nftables,iptables \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    bookworm "$WORK/base.tar"
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
