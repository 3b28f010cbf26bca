#!/usr/bin/env bash
# Helpers of the kind suite (sourced by run.sh): logging, bounded waits, diagnostics.

log() { printf '\n== e2e: %s (%ss)\n' "$*" "$SECONDS" >&2; }
pass() { E2E_PASSED=$((E2E_PASSED + 1)); printf 'e2e: ok: %s\n' "$*" >&2; }
die() { printf 'e2e: FAILED: %s\n' "$*" >&2; exit 1; }

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || die "$tool is required (see docs/install.md, 'Run the kind suite')"
  done
}

# retry SECONDS INTERVAL CMD...: runs CMD until it succeeds or SECONDS have passed.
retry() {
  local limit=$1 interval=$2 start=$SECONDS
  shift 2
  until "$@"; do
    if (( SECONDS - start >= limit )); then
      return 1
    fi
    sleep "$interval"
  done
}

# Everything useful for a post-mortem, printed when the suite fails.
diagnostics() {
  set +e
  log "diagnostics"
  kubectl get pods -A -o wide
  kubectl get civicintegrations -A -o yaml
  kubectl get mutatingwebhookconfigurations -o yaml
  kubectl -n "$OPERATOR_NS" describe pods
  kubectl -n "$OPERATOR_NS" logs -l app.kubernetes.io/part-of=civic-mcp --all-containers --tail=200 --prefix
  kubectl -n "$APP_NS" describe pods
  kubectl -n "$APP_NS" logs -l app=mcp-client --all-containers --tail=200 --prefix
  kubectl -n "$APP_NS" logs -l app=mcp-job --all-containers --tail=100 --prefix
  kubectl -n "$FAKES_NS" logs deploy/civic-fakes --tail=100
  kubectl get events -A --sort-by=.lastTimestamp | tail -50
}

# json_event NAME: the first JSON line of stdin whose "event" is NAME (other lines are skipped).
# jq reads all of stdin: with `| head` under pipefail the writer could die of SIGPIPE.
json_event() { jq -cnR --arg e "$1" '[inputs | fromjson? | select(type == "object" and .event == $e)] | .[0] // empty'; }

# capture DIR: every pod's container logs, every Event, Pod and CivicIntegration, and (for the
# local node) every node component's log, for the secret scan and for post-mortems.
capture() {
  local dir=$1 ns pod c
  mkdir -p "$dir/pods"
  kubectl get events -A -o json >"$dir/cluster-events.json" 2>/dev/null || true
  kubectl get pods -A -o json >"$dir/cluster-pods.json" 2>/dev/null || true
  kubectl get civicintegrations -A -o json >"$dir/cluster-civicintegrations.json" 2>/dev/null || true
  jq -r '.items[] | .metadata.namespace as $ns | .metadata.name as $p
         | ((.spec.initContainers // []) + .spec.containers)[] | "\($ns) \($p) \(.name)"' \
    "$dir/cluster-pods.json" 2>/dev/null |
    while read -r ns pod c; do
      kubectl -n "$ns" logs "$pod" -c "$c" >"$dir/pods/${ns}_${pod}_${c}.log" 2>/dev/null || true
      kubectl -n "$ns" logs "$pod" -c "$c" --previous >>"$dir/pods/${ns}_${pod}_${c}.log" 2>/dev/null || true
    done
  if [ "${CLUSTER:-}" = local ] && [ -d "${CIVIC_NODE_DIR:-/var/lib/civic-node}/logs" ]; then
    mkdir -p "$dir/node"
    cp "${CIVIC_NODE_DIR:-/var/lib/civic-node}"/logs/*.log "$dir/node/" 2>/dev/null || true
  fi
}
