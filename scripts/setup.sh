#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian bookworm machine (run as root).
# Idempotent: a second run only checks. Nothing is installed inside the repository except the
# MCP SDK peers (tests/peers/.venv, tests/peers/node_modules, both git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
step() { printf '\n== setup: %s (%ss)\n' "$*" "$((SECONDS - t0))"; }

need_apt=()
# chromium: the browser tier (tests/browser), headless.
for pair in unzip:unzip shellcheck:shellcheck ip:iproute2 curl:curl openssl:openssl chromium:chromium; do
  command -v "${pair%%:*}" >/dev/null || need_apt+=("${pair#*:}")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  step "apt: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# The longest step, Kubernetes and the node runtime from Go modules (cached outside the repo),
# runs beside the rest: much of it is downloading modules, which overlaps the Rust builds below.
# Started after the apt step above (its own apt install must not race another); nothing below
# uses apt.
step "Kubernetes 1.34 and the node runtime: building in the background"
kube_log=$(mktemp)
bash scripts/kube/build.sh >"$kube_log" 2>&1 &
kube_pid=$!
trap 'kill "$kube_pid" 2>/dev/null || true' EXIT

# promtool checks and unit-tests the chart's alerts (tests/monitoring/check.sh): built from the
# pinned Prometheus module through the Go module proxy, without the service-discovery plugins it
# never needs here (-tags remove_all_sd: fewer modules, ~3 min cold). Also in the background.
promtool_version=3.16.0 # Prometheus 3.16.0 is Go module version v0.316.0
promtool_module=v0.316.0
promtool_log=$(mktemp)
promtool_pid=
if ! "$HOME/.cache/civic-mcp/bin/promtool" --version 2>/dev/null | grep -qF "version $promtool_version "; then
  step "promtool $promtool_version: building in the background"
  GOBIN="$HOME/.cache/civic-mcp/bin" go install -tags remove_all_sd \
    -ldflags "-X github.com/prometheus/common/version.Version=$promtool_version" \
    "github.com/prometheus/prometheus/cmd/promtool@$promtool_module" >"$promtool_log" 2>&1 &
  promtool_pid=$!
fi
trap 'kill "$kube_pid" $promtool_pid 2>/dev/null || true' EXIT

step "rust components"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
# cargo-fuzz for scripts/fuzz.sh (stable toolchain, `-s none`); pinned so CI is reproducible.
fuzz_version=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -qF "$fuzz_version"; then
  cargo install --locked cargo-fuzz --version "$fuzz_version"
fi
# cargo-deny for scripts/deny.sh (deny.toml); pinned likewise. A cold build takes ~4.5 min here.
deny_version=0.20.2
if ! cargo deny --version 2>/dev/null | grep -qxF "cargo-deny $deny_version"; then
  cargo install --locked cargo-deny --version "$deny_version"
fi

step "official MCP SDK peers (python mcp, node @modelcontextprotocol/sdk)"
bash tests/peers/install.sh

step "helm"
bash scripts/install-helm.sh

# actionlint lints .github/workflows (tests/workflows/check.sh); built from its module through the
# Go module proxy, pinned. A cold install takes ~50 s here.
step "actionlint"
actionlint_version=1.7.12
if [ "$("$HOME/.cache/civic-mcp/bin/actionlint" -version 2>/dev/null | head -n 1)" != "v$actionlint_version" ]; then
  GOBIN="$HOME/.cache/civic-mcp/bin" go install "github.com/rhysd/actionlint/cmd/actionlint@v$actionlint_version"
fi

step "chart validation venv (kubernetes-validate, outside the repo)"
venv="${CIVIC_VENV:-$HOME/.cache/civic-mcp/venv}"
if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q '1.37.0'; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==1.37.0"
fi

# The dashboard checker's module (the Grafana Foundation SDK) for tests/monitoring/check.sh.
step "Grafana dashboard schema module"
(cd tests/monitoring/dashboard && go mod download)

if [ -n "$promtool_pid" ]; then
  step "promtool: waiting for the background build"
  if ! wait "$promtool_pid"; then
    cat "$promtool_log" >&2
    echo "setup: building promtool failed" >&2
    exit 1
  fi
fi
rm -f "$promtool_log"

step "Kubernetes 1.34 and the node runtime: waiting for the background build"
if ! wait "$kube_pid"; then
  cat "$kube_log" >&2
  echo "setup: scripts/kube/build.sh failed" >&2
  exit 1
fi
trap - EXIT
tail -n 5 "$kube_log"
rm -f "$kube_log"
step "done"
