#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ (libFuzzer, stable toolchain, no sanitizer: the code is
# `unsafe`-free Rust, so the fuzzers look for panics, hangs, failed invariants and runaway memory)
# and runs each one for a bounded time, starting from its checked-in corpus fuzz/corpus/<target>.
# New inputs go to a scratch directory, so the checked-in corpus only changes on purpose
# (`python3 fuzz/make_seeds.py`, or copy an input in). A crash leaves its input in
# fuzz/artifacts/<target>/ and fails the script; reproduce with
#   (cd fuzz && cargo fuzz run -s none <target> artifacts/<target>/<file>)
# Cost: a cold sancov build of the sidecar, the operator and their kube deps (cached in
# fuzz/target; later builds redo only what changed), then `secs` per target.
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
# cargo fuzz has no --locked: check the checked-in lock file first, so CI builds what was tested.
if ! cargo fetch --locked --quiet; then
  echo "fuzz: fuzz/Cargo.lock is out of date (a dependency of the sidecar or operator changed):" >&2
  echo "  run \`cargo metadata --manifest-path fuzz/Cargo.toml --format-version 1 >/dev/null\`" >&2
  echo "  and commit fuzz/Cargo.lock" >&2
  exit 1
fi
# 16 codegen units: cargo fuzz forces 1 in release mode (best for long campaigns), which leaves
# one core idle through the big crates (k8s-openapi, kube) here.
cargo fuzz build -s none --codegen-units 16
bin_dir="target/$(rustc -vV | sed -n 's/^host: //p')/release"
echo "fuzz: built in $((SECONDS - t0)) s"
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
summary=()
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t" "artifacts/$t"
  log="$scratch/$t.log"
  echo "fuzz: $t for ${secs} s"
  # The binary built above, run directly: `cargo fuzz run` would first rebuild whatever changed
  # in the tree since (minutes for the operator on 2 cores), and fuzz that instead.
  if ! "$bin_dir/$t" -artifact_prefix="artifacts/$t/" "$scratch/$t" "corpus/$t" \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -print_final_stats=1 >"$log" 2>&1; then
    grep -m1 -A2 "panicked at" "$log" >&2 || true
    tail -n 30 "$log" >&2
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
