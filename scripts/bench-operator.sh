#!/usr/bin/env bash
# The operator at cluster scale against a real etcd + kube-apiserver (no kubelet: pods are stored
# objects), this checkout side by side with a base revision, at each size in SIZES:
# PODS[:OPTED_IN[:NAMESPACES]], by default a tenth opted in and 100 pods per namespace; two
# CivicIntegrations per namespace.
#
#   bash scripts/bench-operator.sh     # BASE=7a0db5a SIZES="10000 50000 10000:1000:100 50000:1000:100", ~25 min
#   BASE=<rev> SIZES=2000 bash scripts/bench-operator.sh
#
# Prints one line per run (operator_at_scale in operator/tests/scale_bench.rs says what each
# figure means) and leaves them in target/bench-operator.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE:-7a0db5a}
SIZES=${SIZES:-"10000 50000 10000:1000:100 50000:1000:100"}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/civic-mcp
export PATH=$cache/bin:$PATH

# The base revision's operator, built from an export of that commit (outside the repository).
src=$cache/bench-base-src-$BASE
if [ ! -f "$src/Cargo.toml" ]; then
  rm -rf "$src" && mkdir -p "$src"
  git archive "$BASE" | tar -x -C "$src"
fi
(cd "$src" && CARGO_TARGET_DIR=$cache/bench-base-target cargo build -q --release -p civic-operator)
cargo build -q --release -p civic-operator
base_bin=$cache/bench-base-target/release/civic-operator
head_bin=$PWD/target/release/civic-operator

out=target/bench-operator.jsonl
: >"$out"
for size in $SIZES; do
  IFS=: read -r pods opted_in namespaces <<<"$size"
  opted_in=${opted_in:-$((pods / 10))}
  namespaces=${namespaces:-$((pods / 100))}
  for which in base head; do
    bin=${which}_bin
    echo "== $which ($BASE vs this checkout): $pods pods, $opted_in opted in, $namespaces namespaces" >&2
    CIVIC_SCALE_OPERATOR_BIN=${!bin} CIVIC_SCALE_PODS=$pods CIVIC_SCALE_NAMESPACES=$namespaces \
      CIVIC_SCALE_OPTED_IN=$opted_in CIVIC_SCALE_INTEGRATIONS=$((namespaces * 2)) \
      cargo test -q -p civic-operator --test scale_bench -- --ignored --nocapture \
      >target/bench-operator.log 2>&1 || { tail -30 target/bench-operator.log >&2; exit 1; }
    sed -n 's/^SCALE //p' target/bench-operator.log |
      jq -c --arg which "$which" '{which: $which} + .' | tee -a "$out"
  done
done
