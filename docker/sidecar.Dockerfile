# syntax=docker/dockerfile:1.7
# civic-sidecar: Localhost MCP proxy injected next to workloads; one per pod, so size matters.
# Build from the repository root:  docker build -f docker/sidecar.Dockerfile -t civic-sidecar:dev .
# A static musl binary on an empty base: no shell, no libc, no package manager; TLS roots are
# compiled in (webpki-roots), so no CA files are needed either.

ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
# SBOMs of release builds (buildx --sbom) scan this stage too: the final image is one static
# binary, which names no packages, while this stage holds Cargo.lock and the toolchain.
ARG BUILDKIT_SBOM_SCAN_STAGE=true
# musl-gcc compiles ring's C and assembly for the musl target.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The native architecture's musl target (multi-arch builds run natively per platform), with the
# image's own toolchain (rust-toolchain.toml only names "stable" plus lint components). The
# final ldd check fails the build if the binary is not static: it could not run on scratch.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    set -eux; \
    rm -f rust-toolchain.toml; \
    target="$(uname -m)-unknown-linux-musl"; \
    rustup target add "$target"; \
    cargo build --release --locked --target "$target" -p civic-sidecar --bin civic-sidecar; \
    mkdir -p /out; \
    cp "target/$target/release/civic-sidecar" /out/; \
    ! ldd /out/civic-sidecar 2>/dev/null | grep -q '=>'

FROM scratch
COPY --from=build /out/civic-sidecar /civic-sidecar
# The distroless "nonroot" uid/gid; numeric so that runAsNonRoot can verify it.
USER 65532:65532
ENTRYPOINT ["/civic-sidecar"]
