#!/usr/bin/env bash
# The whole test suite: setup (idempotent), format, lints, dependency policy (deny.toml), every
# test tier that runs without kind.
# Usage: scripts/test.sh            (CIVIC_SKIP_SETUP=1 to skip the setup step)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cache/civic-mcp/bin:$PATH"
t0=$SECONDS
step() { printf '\n== test: %s (%ss)\n' "$*" "$((SECONDS - t0))"; }

if [ "${CIVIC_SKIP_SETUP:-0}" != 1 ]; then
  step setup; bash scripts/setup.sh
fi

# Whatever the tiers start must be gone at the end (tests/leftovers.sh, checked last).
leftovers_state=$(mktemp)
bash tests/leftovers.sh snapshot "$leftovers_state"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo deny: bans, licenses, sources (deny.toml; offline, no advisories)"
bash scripts/deny.sh

step "cargo nextest (unit, loopback, SDK peers, kube-apiserver tier)"
rm -rf target/civic-test-logs
cargo nextest run --workspace --locked --profile ci --no-tests=fail

step "pod isolation with network namespaces (docs/architecture.md §6 tier 6; ~5 s)"
scan_families="sidecar metrics operator cluster"
if [ "$(id -u)" -eq 0 ]; then
  bash tests/isolation/run.sh
  scan_families="$scan_families isolation"
else
  echo "test: not root, so the isolation tier cannot run here (CI runs it as root)"
fi

step "browser tier: headless Chromium calls the sidecar across origins (CORS; tests/browser; ~10 s)"
if [ "$(id -u)" -eq 0 ]; then
  bash tests/browser/run.sh
  scan_families="$scan_families browser"
else
  echo "test: not root, so the browser tier cannot run here (CI runs it as root)"
fi

step "node tier: a real Kubernetes 1.34 node (scripts/node.sh) and the e2e suite on it (~6 min)"
if [ "$(id -u)" -eq 0 ]; then
  bash scripts/images.sh
  bash tests/images/check.sh
  SKIP_BUILD=1 bash tests/e2e/run.sh --local
  scan_families="$scan_families node"
else
  echo "test: not root, so the node tier cannot run here (CI runs it as root)" >&2
  exit 1
fi

step "chart checks (helm lint/template, kubernetes-validate, golden, schema, shellcheck)"
bash tests/chart/check.sh

step "monitoring: the chart's alerts (promtool check and unit tests) and dashboard (Grafana schema, PromQL)"
bash tests/monitoring/check.sh

step "release workflow: actionlint over .github/workflows, chart packaging, release notes"
bash tests/workflows/check.sh
bash tests/release/check.sh

# Bounded: the sancov build of fuzz/ (cached in fuzz/target) plus CIVIC_FUZZ_SECS per target.
step "fuzz smoke (cargo fuzz, ${CIVIC_FUZZ_SECS:-20} s per target from the checked-in corpus)"
bash scripts/fuzz.sh "${CIVIC_FUZZ_SECS:-20}"

step "secret scan over every captured log line, metric, Event, status and Pod"
# The scan must be able to fail: the same capture with one planted token, and an empty one.
planted=$(mktemp -d)
cp -r target/civic-test-logs "$planted/logs"
printf 'Authorization: Bearer planted-%s\n' "$(date +%s%N)" >"$planted/logs/planted.log"
if CIVIC_SCAN_REQUIRE='' bash tests/scan_logs.sh "$planted/logs" >/dev/null 2>&1 \
    || bash tests/scan_logs.sh "$planted/empty" >/dev/null 2>&1; then
  echo "test: scan_logs.sh passed a planted token or an empty capture" >&2
  exit 1
fi
rm -rf "$planted"
CIVIC_SCAN_REQUIRE="$scan_families" bash tests/scan_logs.sh target/civic-test-logs

for s in scripts/*.sh scripts/kube/*.sh tests/*.sh tests/peers/*.sh tests/isolation/*.sh tests/browser/*.sh \
    tests/e2e/*.sh tests/images/*.sh tests/workflows/*.sh tests/release/*.sh; do
  [ -f "$s" ] && bash -n "$s"
done
step "nothing the tests started outlives them"
bash tests/leftovers.sh check "$leftovers_state"
rm -f "$leftovers_state"
step "all passed"
