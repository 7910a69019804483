#!/usr/bin/env bash
# Runs the whole nodedns test suite: unit, integration, end-to-end (real binary against a fake
# upstream and Knot DNS, glibc clients in network namespaces), and the deploy manifest checks.
# Installs the Debian packages the tests need when they are missing (needs root for that; the
# namespace and firewall tests need root anyway).
set -euo pipefail
cd "$(dirname "$0")/.."

# prometheus: promtool for the alert rule tests (tests/deploy/validate.sh) and the server for tests/e2e/prometheus.rs.
# gcc/g++: mimalloc (the binary's allocator) and libFuzzer (tests/fuzz.sh) are built from C/C++.
# musl-tools, golang-go, nodejs, python3-dnspython: the resolvers of tests/e2e/clients.rs.
# podman, runc, catatonit (podman's pause process), mmdebstrap: the image and the pod tests (tests/pods/).
# fstrm-bin, dnstap-ldns: fstrm_capture and dnstap-ldns read the dnstap output (tests/e2e/dnstap.rs).
packages=(knot bind9-dnsutils iproute2 iptables nftables conntrack procps libc-bin python3 python3-venv curl util-linux
  unbound gcc g++ musl-tools golang-go nodejs python3-dnspython prometheus
  fstrm-bin dnstap-ldns podman runc catatonit mmdebstrap)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    echo "== installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing packages: ${missing[*]} (run as root or install them)" >&2
    exit 1
  fi
fi
# knotd refuses to start without its run directory on some systems.
mkdir -p /run/knot 2>/dev/null || true

echo "== build"
cargo build --workspace --bins --locked
echo "== tests"
cargo test --workspace --locked -- --test-threads="${TEST_THREADS:-4}"
echo "== deploy manifests"
NODEDNS_BIN="$PWD/target/debug/nodedns" tests/deploy/validate.sh
echo "== pods: the image, and the DaemonSet's pod spec under podman (tests/e2e/pods.rs)"
# The debug binary the suite already built; the base image is built once (mmdebstrap) and reused.
tests/pods/build-image.sh "$PWD/target/debug/nodedns" localhost/nodedns:test
NODEDNS_POD_IMAGE=localhost/nodedns:test \
  NODEDNS_KUBECTL="${NODEDNS_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/nodedns-deploy-tools}/bin/kubectl" \
  cargo test -p nodedns-e2e --locked --test pods -- --nocapture
