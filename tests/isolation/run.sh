#!/usr/bin/env bash
# Pod isolation with network namespaces (docs/architecture.md §6 tier 6).
#
# A namespace "pod" runs the real civic-sidecar (proxy on 127.0.0.1:8931, admin on 0.0.0.0:8932,
# as injected) next to civic-fakes (fake Civic Auth and hub, TLS on the pod's loopback). A
# namespace "other" is a neighbour on the same link (another pod, the node, an attacker). From
# "other": the proxy port refuses connections on every address of the pod, the admin port
# answers /livez, /readyz, /metrics and nothing else, never proxies (not as a path, not as a
# forward proxy, not with CONNECT), and shows no secret or token. The same holds when the pod's
# kernel accepts packets for 127.0.0.1 from the link (route_localnet=1, the CVE-2020-8558
# shape): the sidecar itself refuses peers that are not loopback.
#
# Needs root (ip netns), curl, openssl and the debug binaries (built if missing). Skips with a
# message only when not root; everything else that is missing is a failure.
# usage: tests/isolation/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

if [ "$(id -u)" -ne 0 ]; then
  echo "isolation: SKIPPED: needs root for ip netns (run as root, as CI does)"
  exit 0
fi
for tool in ip curl openssl; do
  command -v "$tool" >/dev/null || { echo "isolation: FAIL: $tool is missing" >&2; exit 1; }
done

target="${CARGO_TARGET_DIR:-$repo/target}"
sidecar="${CIVIC_SIDECAR_BIN:-$target/debug/civic-sidecar}"
fakes="$target/debug/civic-fakes"
if [ ! -x "$sidecar" ] || [ ! -x "$fakes" ]; then
  cargo build --locked -p civic-sidecar -p civic-testkit --bins
fi

tag="$$"
pod="civic-iso-pod-$tag"
other="civic-iso-other-$tag"
vp="civp$tag"
vo="civo$tag"
net="10.253.$((tag % 250)).0"
pod_ip="${net%.0}.2"
other_ip="${net%.0}.1"
v6net="fd00:c1c:$(printf %x $((tag % 65536)))"
pod_ip6="$v6net::2"
work=$(mktemp -d)
pids=()
failures=0
checks=0

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  # $! of a backgrounded in_pod is the subshell that runs the function, not the sidecar or the
  # fakes it started: stop whatever still runs inside the namespaces, by PID, before they go.
  local ns pid left=()
  for ns in "$pod" "$other"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null && left+=("$pid"); done
  done
  # The sidecar drains on SIGTERM; give each up to 5 s before the namespaces go.
  for pid in "${left[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  ip netns del "$pod" 2>/dev/null || true
  ip netns del "$other" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

in_pod() { ip netns exec "$pod" "$@"; }
in_other() { ip netns exec "$other" "$@"; }
ok() { checks=$((checks + 1)); echo "  ok   $*"; }
bad() { checks=$((checks + 1)); failures=$((failures + 1)); echo "  FAIL $*" >&2; }

# --- the two namespaces and the link between them ----------------------------------------
ip netns add "$pod"
ip netns add "$other"
ip link add "$vp" type veth peer name "$vo"
ip link set "$vp" netns "$pod"
ip link set "$vo" netns "$other"
ip -n "$pod" addr add "$pod_ip/24" dev "$vp"
ip -n "$other" addr add "$other_ip/24" dev "$vo"
ip -n "$pod" addr add "$pod_ip6/64" dev "$vp" nodad
ip -n "$other" addr add "$v6net::1/64" dev "$vo" nodad
for ns in "$pod" "$other"; do ip -n "$ns" link set lo up; done
ip -n "$pod" link set "$vp" up
ip -n "$other" link set "$vo" up

# --- credentials and TLS for the fakes on the pod's loopback -----------------------------
secret="cts-SECRET-isolation-$(openssl rand -hex 8)"
printf '%s\n' "$secret" >"$work/client-secret"
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
subject="$(printf '{"alg":"RS256","kid":"isolation"}' | b64url).$(printf \
  '{"iss":"https://kubernetes.default.svc","aud":["civic"],"sub":"system:serviceaccount:team:agent","exp":%d,"iat":%d}' \
  $((now + 3600)) "$now" | b64url).$(printf 'not-checked-signature-%s' "$tag" | b64url)"
printf '%s' "$subject" >"$work/subject-token"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=isolation CA" \
  -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
  -keyout "$work/tls.key" -out "$work/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$work/san.ext"
openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
  -CAcreateserial -days 1 -extfile "$work/san.ext" -out "$work/tls.pem" 2>/dev/null
profile=7c9e6679-7425-40de-944b-e07fc1f90ae7

in_pod "$fakes" --auth-addr 127.0.0.1:8443 --hub-addr 127.0.0.1:9443 \
  --control-addr 127.0.0.1:8080 --tls-cert "$work/tls.pem" --tls-key "$work/tls.key" \
  --client-id isolation-client --client-secret-file "$work/client-secret" \
  --profile-id "$profile" >"$work/fakes.log" 2>&1 &
pids+=($!)
in_pod env -i CIVIC_LISTEN_ADDR=127.0.0.1:8931 CIVIC_ADMIN_ADDR=0.0.0.0:8932 \
  CIVIC_HUB_URL=https://localhost:9443/hub/mcp \
  CIVIC_TOKEN_URL=https://localhost:8443/oauth/token \
  CIVIC_CA_FILE="$work/ca.pem" CIVIC_CLIENT_ID=isolation-client \
  CIVIC_CLIENT_SECRET_FILE="$work/client-secret" \
  CIVIC_SUBJECT_TOKEN_FILE="$work/subject-token" CIVIC_PROFILE_ID="$profile" \
  CIVIC_LOG=debug CIVIC_LOG_FORMAT=json "$sidecar" >"$work/sidecar.log" 2>&1 &
pids+=($!)

ready=0
for _ in $(seq 1 100); do
  if in_pod curl -fsS -o /dev/null http://127.0.0.1:8932/readyz 2>/dev/null; then ready=1; break; fi
  sleep 0.1
done
if [ "$ready" != 1 ]; then
  echo "isolation: FAIL: the sidecar did not become ready in the pod namespace" >&2
  tail -n 30 "$work/fakes.log" "$work/sidecar.log" >&2
  exit 1
fi

hub_requests() { in_pod curl -fsS http://127.0.0.1:8080/stats | sed -n 's/.*"hub_requests":\([0-9]*\).*/\1/p'; }
mcp='{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"isolation","version":"1"}}}'
# curl exit 7: connection refused / could not connect; 28: timeout; 52: empty reply; 56: reset.
status_of() { local ns=$1; shift; ip netns exec "$ns" curl -sS -o "$work/body" -w '%{http_code}' \
  --connect-timeout 3 --max-time 5 "$@" 2>"$work/curl.err"; }

echo "isolation: pod $pod_ip / $pod_ip6, neighbour $other_ip"

# --- inside the pod: the proxy works ------------------------------------------------------
code=$(status_of "$pod" -X POST -H 'Content-Type: application/json' \
  -H 'Accept: application/json, text/event-stream' --data "$mcp" http://127.0.0.1:8931/hub/mcp || true)
if [ "$code" = 200 ]; then ok "pod loopback: POST /hub/mcp → 200 (proxied with the exchanged token)"
else bad "pod loopback: POST /hub/mcp → $code $(cat "$work/body" 2>/dev/null)"; fi
base=$(hub_requests)
if [ -n "$base" ] && [ "$base" -ge 1 ]; then ok "the hub saw $base request(s) from the pod"; else bad "the hub saw no request from the pod"; fi

# --- from the neighbour: the proxy port is unreachable -------------------------------------
# (`url`, not `target`: that one names the cargo target dir the log is copied to.)
for url in "http://$pod_ip:8931/hub/mcp" "http://[$pod_ip6]:8931/hub/mcp" \
           "http://127.0.0.1:8931/hub/mcp" "http://[::1]:8931/hub/mcp"; do
  set +e
  status_of "$other" -X POST -H 'Host: 127.0.0.1:8931' -H 'Content-Type: application/json' \
    --data "$mcp" "$url" >/dev/null
  rc=$?
  set -e
  if [ "$rc" = 7 ]; then ok "neighbour → $url: connection refused"
  else bad "neighbour → $url: curl exit $rc ($(cat "$work/curl.err"))"; fi
done

# --- from the neighbour: the admin port serves probes and metrics only --------------------
for path in /livez /readyz /metrics; do
  code=$(status_of "$other" "http://$pod_ip:8932$path" || true)
  if [ "$code" = 200 ]; then ok "neighbour → admin $path: 200"; else bad "neighbour → admin $path: $code"; fi
done
status_of "$other" "http://$pod_ip:8932/metrics" >/dev/null || true
cp "$work/body" "$work/metrics"
if grep -q '^civic_sidecar_requests_total' "$work/metrics"; then ok "metrics are the sidecar's"; else bad "metrics lack civic_sidecar_requests_total"; fi
leaks=0
for needle in "$secret" "$subject" "${subject#*.}" \
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImNpdmljLXRlc3RraXQifQ" "Bearer"; do
  if grep -qF -- "$needle" "$work/metrics"; then leaks=$((leaks + 1)); fi
done
if [ "$leaks" = 0 ]; then ok "metrics show no client secret, subject token or access token"; else bad "metrics contain $leaks secret pattern(s)"; fi

refused_admin() {
  local what=$1; shift
  local code
  code=$(status_of "$other" "$@" || true)
  case "$code" in
    404|405|400) ok "neighbour → admin $what: $code, nothing proxied" ;;
    000) ok "neighbour → admin $what: no HTTP answer, nothing proxied" ;;
    *) bad "neighbour → admin $what: $code $(head -c 200 "$work/body" 2>/dev/null)" ;;
  esac
}
refused_admin "POST /hub/mcp" -X POST -H 'Content-Type: application/json' --data "$mcp" \
  "http://$pod_ip:8932/hub/mcp"
refused_admin "GET /hub/mcp" -H 'Accept: text/event-stream' "http://$pod_ip:8932/hub/mcp"
refused_admin "DELETE /hub/mcp" -X DELETE "http://$pod_ip:8932/hub/mcp"
refused_admin "GET /" "http://$pod_ip:8932/"
refused_admin "GET /metrics/../hub/mcp" --path-as-is "http://$pod_ip:8932/metrics/../hub/mcp"
refused_admin "POST /livez" -X POST --data "$mcp" "http://$pod_ip:8932/livez"
refused_admin "as a forward proxy" -x "http://$pod_ip:8932" -X POST --data "$mcp" \
  "http://127.0.0.1:8931/hub/mcp"
refused_admin "CONNECT tunnel" -p -x "http://$pod_ip:8932" "http://127.0.0.1:8931/hub/mcp"
refused_admin "with Host: 127.0.0.1:8931" -X POST -H 'Host: 127.0.0.1:8931' --data "$mcp" \
  "http://$pod_ip:8932/hub/mcp"
after=$(hub_requests)
if [ "$after" = "$base" ]; then ok "the hub saw no request from the neighbour ($after in total)"; else bad "the hub saw $((after - base)) request(s) during the neighbour's attempts"; fi

# --- route_localnet: the neighbour reaches the pod's 127.0.0.1 at the IP level ------------
# What kube-proxy's route_localnet=1 did (CVE-2020-8558): packets for 127.0.0.1 arriving from the
# link are accepted. The kernel no longer protects the loopback listener; the sidecar must.
in_pod sysctl -qw "net.ipv4.conf.$vp.route_localnet=1" "net.ipv4.conf.all.route_localnet=1"
in_other sysctl -qw "net.ipv4.conf.$vo.route_localnet=1" "net.ipv4.conf.all.route_localnet=1"
in_pod sysctl -qw net.ipv4.conf.all.rp_filter=0 "net.ipv4.conf.$vp.rp_filter=0"
in_other ip rule add pref 100 lookup local
in_other ip rule del pref 0 lookup local
in_other ip rule add pref 10 to 127.0.0.1/32 lookup 100
in_other ip route add 127.0.0.1/32 via "$pod_ip" dev "$vo" src "$other_ip" table 100
# The TCP handshake must now reach the pod (proving the bypass is real) ...
if in_other bash -c 'exec 3<>/dev/tcp/127.0.0.1/8932 && printf "GET /livez HTTP/1.0\r\n\r\n" >&3 && head -c 12 <&3' \
    2>/dev/null | grep -q '200'; then
  ok "route_localnet: the neighbour reaches the pod's 127.0.0.1 (admin /livez answers)"
  set +e
  status_of "$other" -X POST -H 'Host: 127.0.0.1:8931' -H 'Content-Type: application/json' \
    -H 'Accept: application/json, text/event-stream' --data "$mcp" http://127.0.0.1:8931/hub/mcp >/dev/null
  rc=$?
  set -e
  code=$(head -c 100 "$work/body" 2>/dev/null || true)
  case "$rc" in
    7|52|56) ok "route_localnet: the proxy refuses a non-loopback peer (curl exit $rc)" ;;
    *) bad "route_localnet: the proxy answered a neighbour (curl exit $rc): $code" ;;
  esac
  last=$(hub_requests)
  if [ "$last" = "$after" ]; then ok "the hub saw nothing from the route_localnet attempt"; else bad "the hub saw $((last - after)) request(s) from the route_localnet attempt"; fi
else
  bad "route_localnet: could not reach the pod's loopback; the check proved nothing"
fi

# --- the sidecar stayed up and logged no secret --------------------------------------------
if in_pod curl -fsS -o /dev/null http://127.0.0.1:8932/livez; then ok "sidecar still live"; else bad "sidecar died"; fi
if grep -qF -e "$secret" -e "${subject#*.}" \
    -e "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImNpdmljLXRlc3RraXQifQ" "$work/sidecar.log"; then
  bad "the sidecar log contains a secret or token"
else
  ok "the sidecar log ($(wc -l <"$work/sidecar.log") lines) contains no secret or token"
fi
mkdir -p "$target/civic-test-logs"
cp "$work/sidecar.log" "$target/civic-test-logs/isolation-sidecar-$tag.log"

echo "isolation: $((checks - failures))/$checks checks passed"
[ "$failures" = 0 ]
