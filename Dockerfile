# syntax=docker/dockerfile:1
# nodedns image: `docker build -t nodedns:TAG .` (BuildKit, the default since Docker 23). This default build
# (the last stage) compiles nodedns in BUILD_IMAGE and installs it on RUNTIME_IMAGE.
#
# Without a registry (tests/pods/build-image.sh): `--target prebuilt` installs a binary built on the host
# instead, on a local base that already holds nftables and iptables (INSTALL_PACKAGES=false):
#   podman build --target prebuilt --build-arg RUNTIME_IMAGE=localhost/nodedns-base:bookworm \
#     --build-arg INSTALL_PACKAGES=false -f Dockerfile DIR_WITH_THE_BINARY
#
# Build and runtime stages are both Debian bookworm so that the binary links against the same glibc it runs on
# (and a host-built binary must come from a bookworm host, for the same reason).
ARG BUILD_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY . .
# The same build command as CI. The cache mounts keep the registry and target/ between builds; the binary is
# copied out of the cached target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p nodedns \
 && install -s -D -m 0755 target/release/nodedns /out/nodedns

FROM ${RUNTIME_IMAGE} AS runtime
# nodedns shells out to `nft` or to iptables-save/-restore and ip6tables-save/-restore for its conntrack-bypass
# rules, and needs nothing else. Debian's iptables package ships both the legacy and the nft variants
# (iptables-legacy-*, iptables-nft-*; the plain names default to nft through update-alternatives).
# Versions are not pinned: bookworm only moves by security and point releases, and pinned versions disappear
# from the archive when they do. INSTALL_PACKAGES=false skips apt-get for a base that already holds both
# packages (e.g. `mmdebstrap --include=nftables,iptables`); the version checks run either way.
ARG INSTALL_PACKAGES=true
# hadolint ignore=DL3008
RUN if [ "$INSTALL_PACKAGES" = true ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends nftables iptables \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && nft --version && iptables-legacy --version && iptables-nft --version

LABEL org.opencontainers.image.title="nodedns" \
      org.opencontainers.image.description="Node-local DNS cache for Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"

# Runs as root on purpose, with only CAP_NET_ADMIN and CAP_NET_BIND_SERVICE granted by the DaemonSet's
# securityContext (drop ALL): see deploy/README.md, "Security context".
ENTRYPOINT ["/usr/local/bin/nodedns"]
CMD ["run", "--config", "/etc/nodedns/nodedns.yaml"]

# A nodedns binary from the build context (built and stripped on a bookworm host), for machines that cannot
# pull BUILD_IMAGE. Only built when asked for with --target prebuilt.
FROM runtime AS prebuilt
COPY nodedns /usr/local/bin/nodedns
# Fails the build if the binary cannot run here (e.g. a glibc mismatch with the host it was built on).
RUN ["/usr/local/bin/nodedns", "--version"]

# The default target: the binary compiled in the build stage.
FROM runtime
COPY --from=build /out/nodedns /usr/local/bin/nodedns
# Fails the build if the binary cannot run here (e.g. a glibc mismatch between the stages).
RUN ["/usr/local/bin/nodedns", "--version"]
