#!/usr/bin/env bash
# Side-by-side benchmark: civic-sidecar vs nginx vs the upstream reached directly, the token
# cache under load and the webhook handler (docs/architecture.md §7, docs/performance.md).
# Builds release binaries, installs nginx and wrk from Debian if missing, runs civic-bench.
# Usage: scripts/bench.sh [--quick] [--pin-cpu 1] [--only proxy,memory,memory-h2,tokens,webhook,wan] [...]
#        CIVIC_BENCH_MUSL=1 scripts/bench.sh ...   measure the static musl sidecar the image ships
# Writes target/bench/latest.json and target/bench/latest.md (under CARGO_TARGET_DIR when set).
# Not part of the default tests. The wan scenario also drives the official Python MCP client
# (tests/peers/install.sh sets it up; without it only the Rust client's cells are measured).
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
if ! have nginx || ! have wrk; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "== installing nginx and wrk from Debian" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nginx wrk >&2
fi

echo "== building release binaries" >&2
# Two builds, not one: built together, cargo unifies the features of their shared dependencies
# and the sidecar binary would carry the bench's (bigger, slower to start) instead of what ships.
cargo build --release --locked -p civic-sidecar >&2
cargo build --release --locked -p civic-bench >&2
target="${CARGO_TARGET_DIR:-target}"
sidecar="$target/release/civic-sidecar"
if [ "${CIVIC_BENCH_MUSL:-0}" = 1 ]; then
  musl=x86_64-unknown-linux-musl
  rustup target list --installed | grep -qx "$musl" || rustup target add "$musl" >&2
  command -v musl-gcc >/dev/null || {
    echo "bench: musl-gcc missing: apt-get install musl-tools" >&2
    exit 1
  }
  CARGO_TARGET_DIR=target/musl cargo build --release --locked --target "$musl" -p civic-sidecar >&2
  sidecar="target/musl/$musl/release/civic-sidecar"
fi

# 1,000 SSE streams through a proxy hold ~3,000 sockets in the processes of this run.
ulimit -n 65536 2>/dev/null || ulimit -n 16384 2>/dev/null || true

uptime >&2
if [ ! -x tests/peers/.venv/bin/python ] && [[ " $* " != *" --only "* || "$*" == *wan* ]]; then
  bash tests/peers/install.sh >&2 || echo "bench: no Python MCP peer; wan measures the Rust client only" >&2
fi

exec "$target/release/civic-bench" --sidecar-bin "$sidecar" "$@"
