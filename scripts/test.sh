#!/usr/bin/env bash
# The whole test suite: setup (idempotent), format, lints, every test tier that runs without kind.
# Usage: scripts/test.sh            (CIVIC_SKIP_SETUP=1 to skip the setup step)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cache/civic-mcp/bin:$PATH"
t0=$SECONDS
step() { printf '\n== test: %s (%ss)\n' "$*" "$((SECONDS - t0))"; }

if [ "${CIVIC_SKIP_SETUP:-0}" != 1 ]; then
  step setup; bash scripts/setup.sh
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo nextest (unit, loopback, SDK peers, kube-apiserver tier)"
rm -rf target/civic-test-logs
cargo nextest run --workspace --locked --profile ci --no-tests=fail

step "chart checks (helm lint/template, kubernetes-validate, golden, schema, shellcheck)"
bash tests/chart/check.sh

if [ -x tests/scan_logs.sh ] || [ -f tests/scan_logs.sh ]; then
  step "secret scan over every captured log line"
  bash tests/scan_logs.sh target/civic-test-logs
fi

for s in scripts/*.sh scripts/kube/*.sh tests/*.sh tests/peers/*.sh; do
  [ -f "$s" ] && bash -n "$s"
done
step "all passed"
