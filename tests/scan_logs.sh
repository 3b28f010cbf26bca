#!/usr/bin/env bash
# Fails if any captured test log contains a secret the test fakes use by convention
# (civic-testkit `secrets`): every client secret contains `cts-SECRET`, and every token the
# testkit mints (subject tokens, exchanged access tokens, static tokens) starts with the same
# JWT header, whose base64url form is below. Prints file names and counts, never the matches.
# usage: tests/scan_logs.sh [LOG_DIR]   (default: target/civic-test-logs)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dir="${1:-target/civic-test-logs}"
if [[ ! -d "$dir" ]]; then
  echo "scan_logs: no log directory $dir (did the tests run?)" >&2
  exit 1
fi
files=$(find "$dir" -type f | wc -l)
if [[ "$files" -eq 0 ]]; then
  echo "scan_logs: $dir holds no log files (did the tests run?)" >&2
  exit 1
fi
patterns=(
  'cts-SECRET'
  'eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImNpdmljLXRlc3RraXQifQ'
)
status=0
for p in "${patterns[@]}"; do
  if hits=$(grep -rlF -- "$p" "$dir"); then
    status=1
    while IFS= read -r f; do
      echo "scan_logs: LEAK: $(grep -cF -- "$p" "$f") line(s) in $f match a testkit secret pattern" >&2
    done <<< "$hits"
  fi
done
lines=$(cat "$dir"/* 2>/dev/null | wc -l)
if [[ "$status" -eq 0 ]]; then
  echo "scan_logs: $files log files, $lines lines, no secret found"
fi
exit "$status"
