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
  kubectl -n "$OPERATOR_NS" logs -l app.kubernetes.io/component=operator --all-containers --tail=200 --prefix
  kubectl -n "$APP_NS" describe pods
  kubectl -n "$APP_NS" logs -l app=mcp-client --all-containers --tail=200 --prefix
  kubectl -n "$FAKES_NS" logs deploy/civic-fakes --tail=100
  kubectl get events -A --sort-by=.lastTimestamp | tail -50
}
