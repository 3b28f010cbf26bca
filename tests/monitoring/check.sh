#!/usr/bin/env bash
# Monitoring checks, run by scripts/test.sh: the chart's alerts and dashboard, as the chart renders
# them, with the real tools.
#   - the PrometheusRule's groups pass `promtool check rules`, and `promtool test rules` with
#     rules.test.yaml (each alert pending, firing with its labels and annotations, and clearing);
#   - each alert is needed by those tests: with any one alert removed they fail;
#   - the dashboard passes the Grafana dashboard schema (strict, dashboard/ with the Foundation
#     SDK) and every query of it is valid PromQL (promtool, dashboard variables substituted);
#   - every metric the alerts and the dashboard use is one the sidecar or the operator registers.
# Needs helm (scripts/install-helm.sh), promtool and Go (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cache/civic-mcp/bin:$PATH"

venv=${CIVIC_VENV:-$HOME/.cache/civic-mcp/venv}
for tool in helm promtool go; do
  command -v "$tool" >/dev/null || { echo "monitoring: $tool not found (run scripts/setup.sh)" >&2; exit 1; }
done
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
failures=0
passed=0
ok() { passed=$((passed + 1)); echo "monitoring: ok: $*"; }
bad() { failures=$((failures + 1)); echo "monitoring: FAILED: $*" >&2; }

# 1. Render the chart with everything monitoring on; split out the rule groups and the dashboard.
helm template civic-mcp charts/civic-mcp --namespace civic-system \
  --set metrics.serviceMonitor.enabled=true --set metrics.podMonitor.enabled=true \
  --set metrics.prometheusRule.enabled=true --set metrics.dashboard.enabled=true >"$work/render.yaml"
"$venv/bin/python" - "$work" <<'PY'
import json, sys, yaml
work = sys.argv[1]
docs = [d for d in yaml.safe_load_all(open(f"{work}/render.yaml")) if d]
rule = next(d for d in docs if d["kind"] == "PrometheusRule")
yaml.safe_dump(rule["spec"], open(f"{work}/rules.yaml", "w"), sort_keys=False, width=1000)
board = next(d for d in docs if d["kind"] == "ConfigMap" and "civic-mcp.json" in d.get("data", {}))
open(f"{work}/dashboard.json", "w").write(board["data"]["civic-mcp.json"])
json.loads(board["data"]["civic-mcp.json"])
PY
ok "rendered the PrometheusRule and the dashboard ConfigMap"

# 2. The rules, and their unit tests.
if promtool check rules "$work/rules.yaml" >"$work/check.log" 2>&1; then
  ok "promtool check rules: $(grep -o '[0-9]* rules found' "$work/check.log")"
else
  cat "$work/check.log" >&2; bad "promtool check rules"
fi
# With every rule value set (selector, extra labels, thresholds) the rules must still load.
helm template civic-mcp charts/civic-mcp --namespace civic-system -f tests/chart/values-production.yaml \
  --set metrics.prometheusRule.tokenExpirySeconds=90 --set metrics.prometheusRule.webhookLatencySeconds=0.25 \
  --show-only templates/prometheusrule.yaml |
  "$venv/bin/python" -c 'import sys, yaml; yaml.safe_dump(yaml.safe_load(sys.stdin)["spec"], sys.stdout)' >"$work/rules-set.yaml"
if promtool check rules "$work/rules-set.yaml" >"$work/check.log" 2>&1; then
  ok "promtool check rules with tests/chart/values-production.yaml and thresholds set"
else
  cat "$work/check.log" >&2; bad "promtool check rules with tests/chart/values-production.yaml"
fi
cp tests/monitoring/rules.test.yaml "$work/"
if promtool test rules "$work/rules.test.yaml" >"$work/test.log" 2>&1; then
  ok "promtool test rules: every alert pending, firing and clearing as tests/monitoring/rules.test.yaml says"
else
  cat "$work/test.log" >&2; bad "promtool test rules"
fi

# 3. Each alert is covered: remove it and the tests must fail.
alerts=$("$venv/bin/python" -c '
import sys, yaml
for g in yaml.safe_load(open(sys.argv[1]))["groups"]:
    for r in g["rules"]:
        print(r["alert"])' "$work/rules.yaml")
uncovered=()
for alert in $alerts; do
  "$venv/bin/python" - "$work/rules.yaml" "$alert" "$work/without.yaml" <<'PY'
import sys, yaml
spec = yaml.safe_load(open(sys.argv[1]))
for g in spec["groups"]:
    g["rules"] = [r for r in g["rules"] if r.get("alert") != sys.argv[2]]
yaml.safe_dump(spec, open(sys.argv[3], "w"), sort_keys=False, width=1000)
PY
  sed 's/^rule_files: \[rules.yaml\]$/rule_files: [without.yaml]/' tests/monitoring/rules.test.yaml >"$work/without.test.yaml"
  if promtool test rules "$work/without.test.yaml" >/dev/null 2>&1; then
    uncovered+=("$alert")
  fi
done
if [ ${#uncovered[@]} = 0 ]; then
  ok "each of the $(echo "$alerts" | wc -w) alerts is needed by the tests"
else
  bad "tests still pass without: ${uncovered[*]}"
fi

# 4. The dashboard: schema, then its queries as PromQL.
if (cd tests/monitoring/dashboard && go build -o "$work/dashboard-check" .) &&
  "$work/dashboard-check" "$work/dashboard.json" >"$work/exprs.tsv" 2>"$work/dashboard.log"; then
  ok "$(cat "$work/dashboard.log")"
else
  cat "$work/dashboard.log" >&2; bad "dashboard schema"
fi
"$venv/bin/python" - "$work/exprs.tsv" "$work/queries.yaml" <<'PY'
import json, sys, yaml
rules = []
for i, line in enumerate(open(sys.argv[1])):
    title, ref, expr = line.rstrip("\n").split("\t")
    expr = json.loads(expr)
    # Grafana's variables, as Grafana would substitute them.
    for var, value in [("$__rate_interval", "5m"), ("$operator_namespace", "civic-system"), ("$namespace", ".*")]:
        expr = expr.replace(var, value)
    rules.append({"record": f"dashboard:query_{i}", "expr": expr})
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"), width=1000)
PY
if promtool check rules "$work/queries.yaml" >"$work/queries.log" 2>&1; then
  ok "every dashboard query is valid PromQL ($(grep -o '[0-9]* rules found' "$work/queries.log" | cut -d' ' -f1) queries)"
else
  cat "$work/queries.log" >&2; bad "dashboard queries are not valid PromQL"
fi

# 5. Every civic_* metric named by the alerts, their tests and the dashboard is registered by the
# code: the sidecar registers full names, the operator names under the civic_operator_ prefix.
unknown=()
while read -r metric; do
  case $metric in
    civic_sidecar_*) grep -rqF "\"$metric\"" sidecar/src || unknown+=("$metric") ;;
    civic_operator_*) grep -rqF "\"${metric#civic_operator_}\"" operator/src || unknown+=("$metric") ;;
  esac
done < <(grep -ohE 'civic_(sidecar|operator)_[a-z_]+' "$work/rules.yaml" "$work/dashboard.json" \
  tests/monitoring/rules.test.yaml | sed -E 's/_(bucket|sum|count)$//' | sort -u)
if [ ${#unknown[@]} = 0 ]; then
  ok "every metric the alerts and the dashboard use is registered"
else
  bad "not registered by any code: ${unknown[*]}"
fi

echo "monitoring: $passed passed, $failures failed"
[ "$failures" = 0 ]
