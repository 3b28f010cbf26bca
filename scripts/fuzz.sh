#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ (libFuzzer, stable toolchain, no sanitizer: the code is
# `unsafe`-free Rust, so the fuzzers look for panics, hangs, failed invariants and runaway memory)
# and runs each one for a bounded time, starting from its checked-in corpus fuzz/corpus/<target>.
# New inputs go to a scratch directory, so the checked-in corpus only changes on purpose
# (`python3 fuzz/make_seeds.py`, or copy an input in). A crash leaves its input in
# fuzz/artifacts/<target>/ and fails the script; reproduce with
#   (cd fuzz && cargo fuzz run -s none <target> artifacts/<target>/<file>)
# usage: scripts/fuzz.sh [seconds per target, default 30] [target...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-30}"
shift || true
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo-fuzz >/dev/null; then
  echo "fuzz: cargo-fuzz is not installed (scripts/setup.sh installs it)" >&2
  exit 1
fi
cd fuzz
t0=$SECONDS
cargo fuzz build -s none
echo "fuzz: built in $((SECONDS - t0)) s"
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
summary=()
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t" "artifacts/$t"
  log="$scratch/$t.log"
  echo "fuzz: $t for ${secs} s"
  if ! cargo fuzz run -s none "$t" "$scratch/$t" "corpus/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz: $t FAILED; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  summary+=("$(printf '%-16s %10s executions  %6s coverage edges  %4s new inputs' \
    "$t" "${runs:-?}" "${cov:-?}" "$(find "$scratch/$t" -type f | wc -l)")")
done
echo
echo "fuzz: ${#targets[@]} targets, ${secs} s each, no crash, no hang (total $((SECONDS - t0)) s)"
printf '  %s\n' "${summary[@]}"
