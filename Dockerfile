# syntax=docker/dockerfile:1
# nodedns image: `docker build -t nodedns:TAG .` (BuildKit, the default since Docker 23).
#
# Build and runtime stages are both Debian bookworm so that the binary links against the same glibc it runs on.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The same build command as CI. The cache mounts keep the registry and target/ between builds; the binary is
# copied out of the cached target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p nodedns \
 && install -s -D -m 0755 target/release/nodedns /out/nodedns

FROM debian:bookworm-slim
# nodedns shells out to `nft` or to iptables-save/-restore and ip6tables-save/-restore for its conntrack-bypass
# rules, and needs nothing else. Debian's iptables package ships both the legacy and the nft variants
# (iptables-legacy-*, iptables-nft-*; the plain names default to nft through update-alternatives).
# Versions are not pinned: bookworm only moves by security and point releases, and pinned versions disappear
# from the archive when they do.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables iptables \
 && rm -rf /var/lib/apt/lists/* \
 && nft --version && iptables-legacy --version && iptables-nft --version

COPY --from=build /out/nodedns /usr/local/bin/nodedns
# Fails the build if the binary cannot run here (e.g. a glibc mismatch between the stages).
RUN ["/usr/local/bin/nodedns", "--version"]

LABEL org.opencontainers.image.title="nodedns" \
      org.opencontainers.image.description="Node-local DNS cache for Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"

# Runs as root on purpose, with only CAP_NET_ADMIN and CAP_NET_BIND_SERVICE granted by the DaemonSet's
# securityContext (drop ALL): see deploy/README.md, "Security context".
ENTRYPOINT ["/usr/local/bin/nodedns"]
CMD ["run", "--config", "/etc/nodedns/nodedns.yaml"]
