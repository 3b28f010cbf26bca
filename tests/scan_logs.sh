#!/usr/bin/env bash
# Fails if any captured test output holds a secret. What is captured (target/civic-test-logs/):
# the output of every sidecar, operator, SDK peer and fake process the suite starts, the final
# /metrics of every sidecar and operator (`*-metrics.txt`), and from the kube-apiserver tier every
# Event, CivicIntegration spec and status, and Pod (`cluster-*.jsonl`) plus the components' logs
# (civic-testkit `capture`), and the isolation and browser tiers' sidecar logs.
#
# What counts as a secret (civic-testkit `secrets`): every client secret the tests use contains
# `cts-SECRET`, and every token the testkit mints (subject tokens, exchanged access tokens,
# static tokens) starts with the same JWT header, whose base64url form is below. Any bearer or
# Basic credential, `access_token` value or `subject_token=` form field is a leak too, whoever
# minted it. Prints file names and counts, never the matches.
#
# A scan of nothing must not pass: the directory must hold at least CIVIC_SCAN_MIN_FILES files
# and CIVIC_SCAN_MIN_LINES lines (defaults fit the whole suite: it writes ~10x more), and each
# family in CIVIC_SCAN_REQUIRE must be present (set it empty to scan a partial run).
# usage: tests/scan_logs.sh [LOG_DIR]   (default: target/civic-test-logs)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dir="${1:-target/civic-test-logs}"
min_files="${CIVIC_SCAN_MIN_FILES:-40}"
min_lines="${CIVIC_SCAN_MIN_LINES:-2000}"
require="${CIVIC_SCAN_REQUIRE-sidecar metrics operator cluster}"
if [[ ! -d "$dir" ]]; then
  echo "scan_logs: no log directory $dir (did the tests run?)" >&2
  exit 1
fi
files=$(find "$dir" -type f | wc -l)
lines=$(find "$dir" -type f -exec cat {} + 2>/dev/null | wc -l)
if [[ "$files" -lt "$min_files" || "$lines" -lt "$min_lines" ]]; then
  echo "scan_logs: $dir holds $files files, $lines lines; expected at least $min_files files" \
    "and $min_lines lines (did the tests run?)" >&2
  exit 1
fi
# Each family: a name glob and a line every such file set must contain somewhere, so that an
# empty or truncated capture is noticed.
family_ok() {
  case "$1" in
    sidecar) grep -rlsF --include='*.log' 'proxy listening' "$dir" | head -1 ;;
    metrics) grep -rlsF --include='*-metrics.txt' 'civic_sidecar_requests_total' "$dir" | head -1 ;;
    operator) grep -rlsF --include='operator-*.log' 'admin endpoints listening' "$dir" | head -1 ;;
    cluster) grep -rlsF --include='cluster-*.jsonl' '"civicIntegration"' "$dir" | head -1 ;;
    isolation) find "$dir" -name 'isolation-sidecar-*.log' -size +0 | head -1 ;;
    browser) find "$dir" -name 'browser-sidecar-*.log' -size +0 | head -1 ;;
    node) grep -rlsF --include='*_civic-sidecar.log' 'proxy listening' "$dir"/e2e-local/pods 2>/dev/null | head -1 ;;
    *) echo "scan_logs: unknown family $1" >&2; return 1 ;;
  esac
}
for fam in $require; do
  if [[ -z "$(family_ok "$fam")" ]]; then
    echo "scan_logs: no $fam output captured in $dir (did that tier run?)" >&2
    exit 1
  fi
done

fixed=(
  'cts-SECRET'
  'eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImNpdmljLXRlc3RraXQifQ'
)
regexes=(
  'Bearer [A-Za-z0-9._~+/-]{20,}'
  'Basic [A-Za-z0-9+/]{16,}=*'
  '"access_token" *: *"[^"]'
  'subject_token=[^&[:space:]]{8,}'
)
status=0
report() {
  local how=$1 p=$2 f
  while IFS= read -r f; do
    [[ -n "$f" ]] || continue
    status=1
    echo "scan_logs: LEAK: $(grep -c"$how" -- "$p" "$f") line(s) in $f match a secret pattern" >&2
  done
}
for p in "${fixed[@]}"; do report F "$p" < <(grep -rlF -- "$p" "$dir" || true); done
for p in "${regexes[@]}"; do report E "$p" < <(grep -rlE -- "$p" "$dir" || true); done
if [[ "$status" -eq 0 ]]; then
  echo "scan_logs: $files files, $lines lines (families: ${require:-none required})," \
    "$(( ${#fixed[@]} + ${#regexes[@]} )) patterns, no secret found"
fi
exit "$status"
