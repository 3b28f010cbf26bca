#!/usr/bin/env bash
# A real browser against the sidecar (CORS, sidecar/src/cors.rs). Headless Chromium loads
# tests/browser/page.html from an origin listed in CIVIC_ALLOWED_ORIGINS; its script POSTs an MCP
# initialize to the sidecar as application/json (so the browser sends a preflight first), reads
# the answer and its Mcp-Session-Id, and writes the outcome into the page, which the test reads
# from the dumped DOM. The same page from another origin (another port) must see fetch reject.
# The fake hub (civic-fakes) must have seen exactly the initialize, with the token the sidecar
# exchanged, and no preflight.
#
# Everything runs in a network namespace of its own whose only interface is loopback, so nothing
# here can reach another host; Chromium is also kept from resolving any other name, and its net
# log must show no connection but to 127.0.0.1. Every process started here is stopped by its PID
# (Chromium by its process group, which it leads).
#
# Needs root (unshare --net); skips with a message only when not root. Installs nothing:
# scripts/setup.sh installs chromium. Needs chromium, python3 (page server), curl, openssl and
# the debug binaries (built if missing).
# usage: tests/browser/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
t0=$SECONDS

if [ "$(id -u)" -ne 0 ]; then
  echo "browser: SKIPPED: needs root for its own network namespace (run as root, as CI does)"
  exit 0
fi

chromium="${CIVIC_CHROMIUM:-/usr/bin/chromium}"
[ -x "$chromium" ] || { echo "browser: FAIL: $chromium is missing (scripts/setup.sh installs it)" >&2; exit 1; }
for tool in python3 curl openssl; do
  command -v "$tool" >/dev/null || { echo "browser: FAIL: $tool is missing" >&2; exit 1; }
done

target="${CARGO_TARGET_DIR:-$repo/target}"
sidecar="${CIVIC_SIDECAR_BIN:-$target/debug/civic-sidecar}"
fakes="$target/debug/civic-fakes"
if [ ! -x "$sidecar" ] || [ ! -x "$fakes" ]; then
  cargo build --locked -p civic-sidecar -p civic-testkit --bins
fi

# Built (which may need the network) before leaving it: the rest runs with loopback only.
if [ "${CIVIC_BROWSER_NETNS:-}" != "$$" ]; then
  exec unshare --net -- env CIVIC_BROWSER_NETNS="$$" bash "$0" "$@"
fi
ip link set lo up

work=$(mktemp -d)
pids=()
groups=()
failures=0
checks=0

cleanup() {
  local p
  for p in "${groups[@]}"; do kill -- "-$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${groups[@]}" "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

ok() { checks=$((checks + 1)); echo "  ok   $*"; }
bad() { checks=$((checks + 1)); failures=$((failures + 1)); echo "  FAIL $*" >&2; }
die() { echo "browser: FAIL: $*" >&2; tail -n 20 "$work"/*.log >&2 || true; exit 1; }

# Waits up to 10 s for a line matching the sed expression in the file; prints the match.
wait_for() {
  local file=$1 expr=$2 found
  for _ in $(seq 1 100); do
    found=$(sed -n "$expr" "$file" 2>/dev/null | head -1)
    if [ -n "$found" ]; then echo "$found"; return 0; fi
    sleep 0.1
  done
  return 1
}

# --- the pages: the same file from two origins (two ports) --------------------------------
mkdir "$work/www"
cp tests/browser/page.html "$work/www/page.html"
serve_page() {
  python3 -u -m http.server --bind 127.0.0.1 --directory "$work/www" 0 >"$work/$1.log" 2>&1 &
  pids+=($!)
}
serve_page page-allowed
serve_page page-other
port_of_page() { wait_for "$work/$1.log" 's/^Serving HTTP on 127\.0\.0\.1 port \([0-9]*\).*/\1/p'; }
allowed_port=$(port_of_page page-allowed) || die "the page server did not start"
other_port=$(port_of_page page-other) || die "the second page server did not start"
allowed_origin="http://127.0.0.1:$allowed_port"
other_origin="http://127.0.0.1:$other_port"

# --- fake Civic Auth and hub (TLS on loopback), credentials -------------------------------
secret="cts-SECRET-browser-$(openssl rand -hex 8)"
printf '%s\n' "$secret" >"$work/client-secret"
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
subject="$(printf '{"alg":"RS256","kid":"browser"}' | b64url).$(printf \
  '{"iss":"https://kubernetes.default.svc","aud":["civic"],"sub":"system:serviceaccount:laptop:browser","exp":%d,"iat":%d}' \
  $((now + 3600)) "$now" | b64url).$(printf 'not-checked-signature-%s' "$$" | b64url)"
printf '%s' "$subject" >"$work/subject-token"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=browser test CA" \
  -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
  -keyout "$work/tls.key" -out "$work/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$work/san.ext"
openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
  -CAcreateserial -days 1 -extfile "$work/san.ext" -out "$work/tls.pem" 2>/dev/null
profile=7c9e6679-7425-40de-944b-e07fc1f90ae7

"$fakes" --auth-addr 127.0.0.1:0 --hub-addr 127.0.0.1:0 --control-addr 127.0.0.1:0 \
  --tls-cert "$work/tls.pem" --tls-key "$work/tls.key" --client-id browser-client \
  --client-secret-file "$work/client-secret" --profile-id "$profile" >"$work/fakes.log" 2>&1 &
pids+=($!)
addrs=$(wait_for "$work/fakes.log" 's/.*auth on \([0-9.:]*\) .*hub on \([0-9.:]*\) .*control on \([0-9.:]*\).*/\1 \2 \3/p') \
  || die "civic-fakes did not start"
read -r auth_addr hub_addr control_addr <<<"$addrs"

# --- the sidecar, allowing the first page's origin only -----------------------------------
env -i PATH="$PATH" CIVIC_LISTEN_ADDR=127.0.0.1:0 CIVIC_ADMIN_ADDR=127.0.0.1:0 \
  CIVIC_HUB_URL="https://localhost:${hub_addr##*:}/hub/mcp" \
  CIVIC_TOKEN_URL="https://localhost:${auth_addr##*:}/oauth/token" \
  CIVIC_CA_FILE="$work/ca.pem" CIVIC_CLIENT_ID=browser-client \
  CIVIC_CLIENT_SECRET_FILE="$work/client-secret" \
  CIVIC_SUBJECT_TOKEN_FILE="$work/subject-token" CIVIC_PROFILE_ID="$profile" \
  CIVIC_ALLOWED_ORIGINS="$allowed_origin" \
  CIVIC_LOG=debug CIVIC_LOG_FORMAT=json "$sidecar" >"$work/sidecar.log" 2>&1 &
pids+=($!)
proxy=$(wait_for "$work/sidecar.log" 's/.*"message":"proxy listening","addr":"\([0-9.:]*\)".*/\1/p') \
  || die "the sidecar did not start"
admin=$(wait_for "$work/sidecar.log" 's/.*"message":"admin listening","addr":"\([0-9.:]*\)".*/\1/p') \
  || die "the sidecar did not log its admin address"
ready=0
for _ in $(seq 1 100); do
  if curl -fsS -o /dev/null "http://$admin/readyz" 2>/dev/null; then ready=1; break; fi
  sleep 0.1
done
[ "$ready" = 1 ] || die "the sidecar did not become ready"
echo "browser: sidecar $proxy, allowed page $allowed_origin, other page $other_origin ($((SECONDS - t0)) s)"

# --- Chromium -------------------------------------------------------------------------------
# Loads the page and prints the DOM once the page's scripts are done (virtual time stops while a
# fetch is pending). Only 127.0.0.1 is reachable: every other host fails to resolve, and anything
# that would not go direct is sent to a proxy address where nothing listens.
browse() {
  local name=$1 url=$2 pid status
  # setsid: Chromium leads its own process group, so stopping the group stops its helpers.
  setsid "$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --no-default-browser-check --disable-background-networking --disable-component-update \
    --disable-sync --disable-extensions --disable-default-apps --disable-breakpad \
    --disable-crash-reporter --disable-domain-reliability --metrics-recording-only \
    --host-resolver-rules="MAP * ~NOTFOUND, EXCLUDE 127.0.0.1" \
    --proxy-server="http://127.0.0.1:9" --proxy-bypass-list="127.0.0.1" \
    --user-data-dir="$work/chromium-$name" --log-net-log="$work/net-$name.json" \
    --virtual-time-budget=10000 --dump-dom "$url" >"$work/$name.dom" 2>"$work/chromium-$name.log" &
  pid=$!
  groups+=("$pid")
  for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    bad "$name: Chromium did not finish in 60 s"
    return
  fi
  status=0
  wait "$pid" || status=$?
  [ "$status" = 0 ] || bad "$name: Chromium exited with $status ($(tail -n 3 "$work/chromium-$name.log"))"
  # Helpers of a finished browser go with it; stop any straggler of the group all the same and
  # wait for it (a zombie left for the reaper holds nothing).
  kill -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    [ -z "$(live_in_group "$pid")" ] && break
    sleep 0.1
  done
  [ -z "$(live_in_group "$pid")" ] || bad "$name: Chromium processes outlived it: $(live_in_group "$pid")"
  local elsewhere
  elsewhere=$(connections "$work/net-$name.json")
  case "$elsewhere" in
    "loopback="[1-9]*" other=") ok "$name: Chromium connected to 127.0.0.1 only (${elsewhere% *})" ;;
    *) bad "$name: Chromium's connections: $elsewhere" ;;
  esac
}
live_in_group() { ps -eo pid=,pgid=,stat= | awk -v g="$1" '$2 == g && $3 !~ /^Z/ { printf "%s ", $1 }'; }
# TCP connection attempts in a Chromium net log: how many to 127.0.0.1, and any other address.
connections() {
  python3 - "$1" <<'EOF'
import json, sys

text = open(sys.argv[1]).read().rstrip()
try:
    log = json.loads(text)
except ValueError:  # a log cut short lacks its closing brackets
    log = json.loads(text.rstrip(",") + "]}")
names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
loopback, other = 0, set()
for event in log["events"]:
    if names.get(event["type"]) == "TCP_CONNECT_ATTEMPT":
        address = event.get("params", {}).get("address", "")
        if address.startswith("127.0.0.1:"):
            loopback += 1
        else:
            other.add(address)
print(f"loopback={loopback} other={','.join(sorted(other))}")
EOF
}
indent() { local line; while IFS= read -r line; do printf '    %s\n' "$line"; done <<<"$1"; }
result_of() { sed -n '/<pre id="result">/,/<\/pre>/p' "$work/$1.dom" | sed -e 's/<[^>]*>//g'; }
stats() { curl -fsS "http://$control_addr/stats"; }
hub_stat() { stats | python3 -c 'import json, sys; v = json.load(sys.stdin)
for key in sys.argv[1].split("."): v = v.get(key, 0) if isinstance(v, dict) else 0
print(v)' "$1"; }
metric() {
  curl -fsS "http://$admin/metrics" | awk -v code="$1" '
    /^civic_sidecar_requests_total\{/ && index($0, "code=\"" code "\"") { n += $NF }
    END { print n + 0 }'
}

sidecar_url="http://$proxy/hub/mcp"
b0=$SECONDS
browse allowed "$allowed_origin/page.html?sidecar=$sidecar_url"
allowed=$(result_of allowed)
echo "browser: page on the allowed origin ($((SECONDS - b0)) s):"
indent "$allowed"
if grep -Eq '^initialize: answered status=200 session=[^ ]+ server=civic-fake-hub$' <<<"$allowed" \
    && ! grep -q 'session=null' <<<"$allowed"; then
  ok "allowed origin: initialize answered, Mcp-Session-Id readable, the hub's answer read"
else
  bad "allowed origin: initialize did not succeed"
fi
if grep -q '^authorization: rejected TypeError$' <<<"$allowed"; then
  ok "allowed origin: a request with Authorization is refused by the preflight"
else
  bad "allowed origin: a request with Authorization was not refused"
fi

b0=$SECONDS
browse other "$other_origin/page.html?sidecar=$sidecar_url"
other=$(result_of other)
echo "browser: page on another origin ($((SECONDS - b0)) s):"
indent "$other"
if grep -q '^initialize: rejected TypeError$' <<<"$other"; then
  ok "other origin: fetch rejects"
else
  bad "other origin: fetch did not reject"
fi

# --- what the hub and the sidecar saw --------------------------------------------------------
hub_requests=$(hub_stat hub_requests)
if [ "$hub_requests" = 1 ]; then ok "the hub saw one request"; else bad "the hub saw $hub_requests requests, want 1"; fi
if [ "$(hub_stat hub_jsonrpc_methods.initialize)" = 1 ] && [ "$(hub_stat hub_http_methods.POST)" = 1 ]; then
  ok "it was the page's initialize (POST)"
else
  bad "the hub did not see the initialize POST: $(stats)"
fi
if [ "$(hub_stat hub_authorized)" = 1 ] && [ "$(hub_stat issued)" -ge 1 ]; then
  ok "with the token the sidecar exchanged (issued by Civic Auth, locked to the profile)"
else
  bad "the hub's request did not carry the sidecar's token"
fi
if [ "$(hub_stat hub_http_methods.OPTIONS)" = 0 ]; then ok "no preflight reached the hub"; else bad "a preflight reached the hub"; fi
answered=$(metric 204)
refused=$(metric 403)
if [ "$answered" -ge 2 ]; then ok "the sidecar answered $answered preflights itself (204)"; else bad "the sidecar answered $answered preflights (want ≥ 2)"; fi
if [ "$refused" -ge 1 ]; then ok "the other origin's preflight got 403"; else bad "no 403 for the other origin"; fi

if grep -qF -e "$secret" -e "${subject#*.}" \
    -e "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImNpdmljLXRlc3RraXQifQ" "$work/sidecar.log"; then
  bad "the sidecar log contains a secret or token"
else
  ok "the sidecar log contains no secret or token"
fi
mkdir -p "$target/civic-test-logs"
cp "$work/sidecar.log" "$target/civic-test-logs/browser-sidecar-$$.log"

echo "browser: $((checks - failures))/$checks checks passed ($((SECONDS - t0)) s)"
[ "$failures" = 0 ]
