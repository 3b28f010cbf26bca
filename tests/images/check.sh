#!/usr/bin/env bash
# Checks of the Docker-free image tooling (scripts/images.sh, scripts/oci_image.py) and of the
# e2e workload image's binary:
#   1. the oci_image.py unit tests (Dockerfile drift, determinism, refusals) and the workload's
#      go vet + go test;
#   2. shellcheck of the image scripts (skipped when shellcheck is missing);
#   3. mcp-workload for real against civic-fakes + civic-sidecar on 127.0.0.1 (ephemeral ports):
#      call/once/serve through the sidecar in file mode and in per-user header mode, and the
#      failure cases (nothing listening, no URL, no user header); no output may carry a token;
#   4. when archives exist in ${CIVIC_IMAGES_DIR:-target/images}, each one reads back and verifies.
#
# Binaries: CIVIC_BIN_DIR (holding civic-fakes and civic-sidecar) or a debug cargo build;
# MCP_WORKLOAD_BIN or a go build of tests/e2e/workload. CHECK_VERBOSE=1 prints each workload
# output line. Ends with "N passed, N failed".
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

passed=0
failed=0
pass() {
  passed=$((passed + 1))
  printf 'ok   %s\n' "$*"
}
fail() {
  failed=$((failed + 1))
  printf 'FAIL %s\n' "$*"
}
log() { printf 'check: %s\n' "$*" >&2; }

work="$(mktemp -d "${TMPDIR:-/tmp}/civic-images-check.XXXXXX")"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# --- 1. unit tests -------------------------------------------------------------------------------
if python3 -m unittest discover -s tests/images -p 'test_*.py' >"$work/unit.log" 2>&1; then
  pass "oci_image.py unit tests ($(grep -o 'Ran [0-9]* tests' "$work/unit.log"))"
else
  cat "$work/unit.log"
  fail "oci_image.py unit tests"
fi

if (cd tests/e2e/workload && GOFLAGS=-mod=readonly GOTOOLCHAIN=local go vet ./... &&
  GOFLAGS=-mod=readonly GOTOOLCHAIN=local go test -count=1 ./...) >"$work/go.log" 2>&1; then
  pass "mcp-workload go vet + unit tests"
else
  cat "$work/go.log"
  fail "mcp-workload go vet + unit tests"
fi

# --- 2. shellcheck -------------------------------------------------------------------------------
if command -v shellcheck >/dev/null; then
  if shellcheck scripts/images.sh tests/images/check.sh; then
    pass "shellcheck scripts/images.sh tests/images/check.sh"
  else
    fail "shellcheck"
  fi
else
  log "shellcheck not installed: skipped"
fi

# --- 3. the workload against the fakes and the sidecar -------------------------------------------
if [[ -n "${CIVIC_BIN_DIR:-}" ]]; then
  bin_dir="$CIVIC_BIN_DIR"
else
  log "cargo build (debug) civic-fakes, civic-sidecar"
  cargo build --locked -q -p civic-testkit --bin civic-fakes -p civic-sidecar --bin civic-sidecar >&2
  bin_dir="${CARGO_TARGET_DIR:-target}/debug"
fi
fakes_bin="$bin_dir/civic-fakes"
sidecar_bin="$bin_dir/civic-sidecar"
if [[ -n "${MCP_WORKLOAD_BIN:-}" ]]; then
  workload="$MCP_WORKLOAD_BIN"
else
  log "go build tests/e2e/workload"
  (cd tests/e2e/workload && CGO_ENABLED=0 GOFLAGS=-mod=readonly GOTOOLCHAIN=local \
    go build -trimpath -buildvcs=false -o "$work/mcp-workload" .)
  workload="$work/mcp-workload"
fi
for b in "$fakes_bin" "$sidecar_bin" "$workload"; do
  [[ -x "$b" ]] || {
    fail "missing binary $b"
    printf '%d passed, %d failed\n' "$passed" "$failed"
    exit 1
  }
done

# Everything below is bounded: each wait polls for at most 15 s, each client call has a 10 s
# timeout, and the whole section is usually done in a few seconds.
deadline=$((SECONDS + 60))

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=check CA" \
  -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
  -keyout "$work/tls.key" -out "$work/tls.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' >"$work/ext.cnf"
openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial \
  -days 1 -extfile "$work/ext.cnf" -out "$work/tls.crt" 2>/dev/null

client_secret="check-secret-$(openssl rand -hex 12)"
printf '%s\n' "$client_secret" >"$work/client-secret"
profile="5b1f0c4e-2d7a-4e8b-9c3f-0a1b2c3d4e5f"
# Service-account-shaped JWTs: the fake Civic Auth checks audience, subject and expiry only.
sa_jwt() {
  python3 - "$1" <<'EOF'
import base64, json, sys, time
b64 = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
claims = {"aud": ["civic"], "sub": sys.argv[1], "exp": int(time.time()) + 3600, "iss": "https://kubernetes.default.svc"}
print(b64({"alg": "RS256", "typ": "JWT"}) + "." + b64(claims) + ".c2ln")
EOF
}
sa_jwt system:serviceaccount:e2e:workload >"$work/subject.jwt"
user_jwt="$(sa_jwt system:serviceaccount:e2e:alice)"
printf '%s\n' "$user_jwt" >"$work/user.jwt"

wait_for() { # file pattern -> 0 once the file has a line matching pattern
  local i
  for ((i = 0; i < 150; i++)); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# A clean environment: a CIVIC_* variable of the caller must not change the sidecar's mode.
env -i PATH="$PATH" "$fakes_bin" --auth-addr 127.0.0.1:0 --hub-addr 127.0.0.1:0 \
  --control-addr 127.0.0.1:0 --tls-cert "$work/tls.crt" --tls-key "$work/tls.key" \
  --client-id check-client --client-secret-file "$work/client-secret" --profile-id "$profile" \
  >"$work/fakes.log" 2>&1 &
pids+=("$!")
live_ok=1
if ! wait_for "$work/fakes.log" 'civic-fakes: auth on'; then
  cat "$work/fakes.log"
  fail "civic-fakes did not start"
  live_ok=0
fi
auth_addr="$(sed -n 's/.*auth on \([0-9.:]*\) .*/\1/p' "$work/fakes.log")"
hub_addr="$(sed -n 's/.*hub on \([0-9.:]*\) .*/\1/p' "$work/fakes.log")"

start_sidecar() { # log-file extra-args... (prints nothing; the address is read from the log)
  local logf="$1"
  shift
  env -i PATH="$PATH" "$sidecar_bin" --listen-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 \
    --hub-url "https://$hub_addr/hub/mcp" --token-url "https://$auth_addr/oauth/token" \
    --ca-file "$work/ca.crt" --client-id check-client --client-secret-file "$work/client-secret" \
    --profile-id "$profile" --log-format json "$@" >"$logf" 2>&1 &
  pids+=("$!")
}
proxy_addr_of() { # log-file -> proxy address
  sed -n '/proxy listening/s/.*"addr":"\([^"]*\)".*/\1/p' "$1" | head -n1
}

if [[ $live_ok == 1 ]]; then
  start_sidecar "$work/sidecar-file.log" --subject-token-file "$work/subject.jwt"
  start_sidecar "$work/sidecar-header.log" --subject-header X-Civic-Subject
  for l in "$work/sidecar-file.log" "$work/sidecar-header.log"; do
    if ! wait_for "$l" 'proxy listening'; then
      cat "$l"
      fail "civic-sidecar did not start ($l)"
      live_ok=0
    fi
  done
fi

# Asserts on one JSON line: want_ok event [expected sub] [error substring].
check_json() {
  python3 - "$@" <<'EOF'
import json, sys
line, want_ok, event, sub = sys.argv[1], sys.argv[2] == "true", sys.argv[3], sys.argv[4]
profile = sys.argv[5]
out = json.loads(line)
assert out["event"] == event, out
assert out["ok"] is want_ok, out
for k in ("started_at", "finished_at", "tools", "whoami"):
    assert k in out, (k, out)
if want_ok:
    assert "whoami" in out["tools"], out
    who = json.loads(out["whoami"])
    assert who["civic_profile"] == profile, who
    assert who["sub"] == sub, who
    assert "error" not in out, out
else:
    assert out.get("error"), out
EOF
}

secrets_in() { # file -> 0 when the file holds a token or the client secret
  grep -qF -e "$(cat "$work/subject.jwt")" -e "$user_jwt" -e "$client_secret" "$1"
}

run_case() { # name want-exit want-ok event sub -- workload args...
  local name="$1" want_exit="$2" want_ok="$3" event="$4" sub="$5" rc=0
  shift 6
  timeout 15 "$workload" "$@" >"$work/out" 2>"$work/err" || rc=$?
  if [[ $rc != "$want_exit" ]]; then
    fail "$name: exit $rc, want $want_exit: $(cat "$work/out" "$work/err")"
  elif ! check_json "$(head -n1 "$work/out")" "$want_ok" "$event" "$sub" "$profile" 2>"$work/assert"; then
    fail "$name: $(cat "$work/assert") :: $(cat "$work/out")"
  elif secrets_in "$work/out" || secrets_in "$work/err"; then
    fail "$name: the output carries a token or secret"
  else
    pass "$name"
    [[ -z "${CHECK_VERBOSE:-}" ]] || sed 's/^/     /' "$work/out"
  fi
}

if [[ $live_ok == 1 ]]; then
  file_url="http://$(proxy_addr_of "$work/sidecar-file.log")/hub/mcp"
  header_url="http://$(proxy_addr_of "$work/sidecar-header.log")/hub/mcp"
  sa=system:serviceaccount:e2e:workload
  alice=system:serviceaccount:e2e:alice
  run_case "call via the sidecar (file mode): ok, whoami shows the profile" 0 true call "$sa" -- \
    call --url "$file_url" --timeout 10s
  run_case "once via the sidecar" 0 true once "$sa" -- once --url "$file_url" --timeout 10s
  run_case "call with the user's token in a header (header mode)" 0 true call "$alice" -- \
    call --url "$header_url" --header "X-Civic-Subject=$user_jwt" --timeout 10s
  run_case "call with the user's token from a header file" 0 true call "$alice" -- \
    call --url "$header_url" --header-file "X-Civic-Subject=$work/user.jwt" --timeout 10s
  run_case "call in header mode without the header fails" 1 false call "" -- \
    call --url "$header_url" --timeout 10s
  free_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  run_case "call where nothing listens: ok:false, exit 1" 1 false call "" -- \
    call --url "http://127.0.0.1:$free_port/hub/mcp" --timeout 5s

  # serve: one first_call line at start, then runs until SIGTERM and says so.
  env -i PATH="$PATH" CIVIC_MCP_URL="$file_url" "$workload" >"$work/serve.out" 2>"$work/serve.err" &
  serve_pid=$!
  pids+=("$serve_pid")
  if wait_for "$work/serve.out" first_call &&
    check_json "$(head -n1 "$work/serve.out")" true first_call "$sa" "$profile" 2>"$work/assert"; then
    sleep 0.3
    if kill -0 "$serve_pid" 2>/dev/null; then
      kill -TERM "$serve_pid"
      rc=0
      wait "$serve_pid" || rc=$?
      if [[ $rc == 0 ]] && sed -n 2p "$work/serve.out" | grep -q '"event":"stopping"'; then
        pass "serve: first_call ok, keeps running, stops on SIGTERM with exit 0"
      else
        fail "serve: exit $rc after SIGTERM: $(cat "$work/serve.out" "$work/serve.err")"
      fi
    else
      fail "serve exited after the first call: $(cat "$work/serve.out" "$work/serve.err")"
    fi
  else
    fail "serve: $(cat "$work/assert" 2>/dev/null) :: $(cat "$work/serve.out" "$work/serve.err")"
  fi
  rc=0
  env -i PATH="$PATH" timeout 5 "$workload" serve >"$work/out" 2>"$work/err" || rc=$?
  if [[ $rc == 2 ]] && grep -q CIVIC_MCP_URL "$work/err"; then
    pass "serve without CIVIC_MCP_URL fails clearly"
  else
    fail "serve without CIVIC_MCP_URL: exit $rc: $(cat "$work/err")"
  fi
  ((SECONDS <= deadline)) || fail "the live checks took more than 60 s"
fi

# --- 4. built archives ---------------------------------------------------------------------------
images_dir="${CIVIC_IMAGES_DIR:-target/images}"
for archive in "$images_dir"/*.tar; do
  [[ -f "$archive" ]] || continue
  if info="$(python3 scripts/oci_image.py inspect "$archive")" &&
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); assert d["ref"] == d["oci_ref_name"] == d["repo_tags"][0] and d["ref"].startswith("docker.io/civic-mcp/"), d["ref"]' "$info"; then
    pass "archive $archive verifies ($(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["ref"])' "$info"))"
  else
    fail "archive $archive"
  fi
done

printf '%d passed, %d failed\n' "$passed" "$failed"
[[ $failed == 0 ]]
