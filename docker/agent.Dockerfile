# syntax=docker/dockerfile:1
#
# goaway-agent: the per-pod draining HTTP/2 proxy the operator injects.
#
#   docker build -f docker/agent.Dockerfile -t ghcr.io/goaway-dev/goaway-agent:0.1.0 .
#
# Multi-arch: docker buildx build --platform linux/amd64,linux/arm64 ... (the
# builder stage runs once per platform, under QEMU for the foreign one).
#
# Runtime: distroless cc (glibc and libgcc; no shell, no package manager) as
# the nonroot user 65532, the user the operator runs the injected container
# as. The agent links jemalloc (built from source by tikv-jemalloc-sys, which
# needs the builder's C toolchain) against glibc; a static musl binary would
# need the musl target, which is not part of the toolchain here. The builder
# is Debian 12 like the runtime, so the glibc versions match.
#
# The operator sets the container's args (`run --listen ... --admin ...`);
# the image supplies only the entrypoint. The drain is started by an httpGet
# preStop hook on the app containers, so no shell is needed.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
# The workspace's release profile keeps line tables for backtraces; the
# image drops them (symbol names stay), which makes the binary about five
# times smaller. --build-arg CARGO_PROFILE_RELEASE_STRIP=none keeps them.
ARG CARGO_PROFILE_RELEASE_STRIP=debuginfo
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p goaway-agent --bin goaway-agent \
 && install -D -m 0755 target/release/goaway-agent /out/goaway-agent

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.source="https://github.com/goaway-dev/goaway" \
      org.opencontainers.image.description="goaway agent: per-pod gRPC keepalive and GOAWAY-draining HTTP/2 proxy" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/goaway-agent /usr/local/bin/goaway-agent
# Numeric, so the kubelet can verify runAsNonRoot.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/goaway-agent"]
