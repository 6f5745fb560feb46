# syntax=docker/dockerfile:1
#
# goaway-operator: the KeepalivePolicy controller and injecting webhook.
#
#   docker build -f docker/operator.Dockerfile -t ghcr.io/goaway-dev/goaway-operator:0.1.0 .
#
# Multi-arch: docker buildx build --platform linux/amd64,linux/arm64 ... (the
# builder stage runs once per platform, under QEMU for the foreign one).
#
# Runtime: distroless cc (glibc, libgcc, CA certificates; no shell, no
# package manager) as the nonroot user 65532. Not a static musl binary: the
# musl target is not part of the toolchain here, and glibc keeps the build
# the same as CI's. The builder is Debian 12 like the runtime, so the glibc
# the binary links against is the one it runs with.

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
    cargo build --release --locked -p goaway-operator --bin goaway-operator \
 && install -D -m 0755 target/release/goaway-operator /out/goaway-operator

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.source="https://github.com/goaway-dev/goaway" \
      org.opencontainers.image.description="goaway operator: KeepalivePolicy controller and sidecar-injecting webhook" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/goaway-operator /usr/local/bin/goaway-operator
# Numeric, so the kubelet can verify runAsNonRoot.
USER 65532:65532
# Webhook (HTTPS) and admin (/healthz, /readyz, /metrics).
EXPOSE 9443 8080
ENTRYPOINT ["/usr/local/bin/goaway-operator"]
CMD ["run"]
