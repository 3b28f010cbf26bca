#!/usr/bin/env bash
# Side-by-side benchmark: civic-sidecar vs nginx vs the upstream reached directly, the token
# cache under load and the webhook handler (DESIGN.md §7, docs/performance.md).
# Builds release binaries, installs nginx and wrk from Debian if missing, runs civic-bench.
# Usage: scripts/bench.sh [--quick] [--pin-cpu 1] [--only proxy,memory,tokens,webhook] [...]
# Writes target/bench/latest.json and target/bench/latest.md. Not part of the default tests.
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
cargo build --release --locked -p civic-sidecar -p civic-bench >&2

# 1,000 SSE streams through a proxy hold ~3,000 sockets in the processes of this run.
ulimit -n 65536 2>/dev/null || ulimit -n 16384 2>/dev/null || true

uptime >&2
exec target/release/civic-bench --sidecar-bin target/release/civic-sidecar "$@"
