#!/usr/bin/env bash
# The dependency policy of deny.toml (one TLS stack, no needless duplicate versions, the allowed
# licenses, crates.io only), checked with cargo-deny over the workspace and over fuzz/ (its own
# workspace and lock file). Offline checks only: advisories need a database fetched from GitHub.
# cargo-deny itself runs --offline; the crates it reads come from crates.io through `cargo fetch`.
# usage: scripts/deny.sh          (scripts/test.sh runs it after clippy; ~2 s once fetched)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo-deny >/dev/null; then
  echo "deny: cargo-deny is not installed (scripts/setup.sh installs it)" >&2
  exit 1
fi
# Every platform's crates, not only the host's: cargo-deny reads the manifests of the whole graph.
cargo fetch --locked --quiet
if ! cargo fetch --locked --quiet --manifest-path fuzz/Cargo.toml; then
  echo "deny: fuzz/Cargo.lock is out of date (see scripts/fuzz.sh)" >&2
  exit 1
fi
# -D warnings: a skip, allowed license or exception that no crate needs any more fails too, so
# deny.toml stays exact. The license exceptions serve both workspaces (libfuzzer-sys is fuzz/'s
# alone), and the skip and allow lists are sized for the main workspace, so each run lets through
# only the "not encountered" lints that belong to the other.
cargo deny --offline --locked check -D warnings \
  -A license-exception-not-encountered \
  bans licenses sources
cargo deny --offline --locked --manifest-path fuzz/Cargo.toml check -D warnings \
  -A unmatched-skip -A license-not-encountered -A license-exception-not-encountered \
  bans licenses sources
