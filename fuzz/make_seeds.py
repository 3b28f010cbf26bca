#!/usr/bin/env python3
"""Regenerates the checked-in seed corpora under fuzz/corpus/<target>/ (needs PyYAML).

Seeds are small, valid-looking inputs that reach deep into each target; libFuzzer mutates from
there. Run from anywhere: python3 fuzz/make_seeds.py
"""
import hashlib
import json
import os
import pathlib

import yaml

FUZZ = pathlib.Path(__file__).resolve().parent
GOLDEN = FUZZ.parent / "operator" / "tests" / "golden"
PROFILE = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = FUZZ / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


# token_response: first byte selects the status (index into STATUSES), the rest is the body.
STATUS = {200: 0, 201: 1, 204: 2, 400: 6, 401: 7, 403: 8, 429: 10, 500: 11, 503: 13}
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
       "eyJzdWIiOiJ1c2VyIiwiZXhwIjoxODAwMDAwMzYwfQ.c2lnbmF0dXJl")
for status, body in [
    (200, {"access_token": "abc.def", "token_type": "Bearer", "expires_in": 3600}),
    (200, {"access_token": JWT, "issued_token_type":
           "urn:ietf:params:oauth:token-type:access_token", "token_type": "bearer"}),
    (200, {"access_token": "x", "expires_in": "120"}),
    (200, {"access_token": "x", "expires_in": 1e300}),
    (200, {"access_token": "x", "expires_in": -5, "token_type": None}),
    (200, {"token_type": "Bearer", "expires_in": 3600}),
    (201, {"access_token": "", "token_type": "mac"}),
    (400, {"error": "invalid_grant", "error_description": "Token expired fuzz-subject-token-0001"}),
    (401, {"error": "invalid_client", "error_description": "bad fuzz-client-secret-0001\n"}),
    (403, {"error": "unauthorized_client"}),
    (429, {"error": "slow_down"}),
]:
    write("token_response", bytes([STATUS[status]]) + json.dumps(body).encode())
write("token_response", bytes([STATUS[503]]) + b"<html>upstream trouble</html>")
write("token_response", bytes([STATUS[429]]) + b"Fri, 27 Nov 2026 22:00:00 GMT")
write("token_response", bytes([STATUS[500]]) + b"120")
write("token_response", bytes([STATUS[200]]) + JWT.encode())

# config: first byte = file modes (1 subject file, 2 static token file, 4 secret file), then
# one line per setting in the target's FUZZED order.
SETTINGS = ["127.0.0.1:8931", "0.0.0.0:8932", "https://app.civic.com/hub/mcp",
            "https://auth.civic.com/oauth/token", "client-123", PROFILE, "true", "",
            "urn:ietf:params:oauth:token-type:access_token", "3600", "openid profile",
            "x-civic-profile-id", "4194304", "loopback", "30", "10", "1000", "1", "info", "json"]
write("config", "\x05\n" + "\n".join(SETTINGS))
header_mode = list(SETTINGS)
header_mode[7] = "authorization"
write("config", "\x04\n" + "\n".join(header_mode))
write("config", "\x02\n[::1]:0\n127.0.0.1:0\nhttp://127.0.0.1:9/hub/mcp")
write("config", "\x07\n0.0.0.0:8931")
write("config", "\x05\n127.0.0.1:8931\n\nhttp://evil.example/hub/mcp\n\n\nnot-a-uuid\nmaybe")
write("config", "\x05\n\n\n\n\n\n\n\nx-user token\n\n0\n\nhost\n-1\nftp://x\n1e9\n99\n0\n0\n[\nxml")

# proxy_request: raw HTTP/1.1 from the workload (header mode: the subject is Authorization).
BODY = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}})
H = "Host: 127.0.0.1:8931\r\n"
AUTH = "Authorization: Bearer user-subject-token\r\n"
def post(target="/hub/mcp", extra="", body=BODY):
    return (f"POST {target} HTTP/1.1\r\n{H}{AUTH}Content-Type: application/json\r\n"
            f"Accept: application/json, text/event-stream\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n{body}")
write("proxy_request", post())
write("proxy_request", post("/hub/mcp?profile=x&lock=0&accountId=a&skills=s&keep=1"))
write("proxy_request", post("/hub/mcp?%70rofile=x&l%6Fck=1"))
write("proxy_request", post(extra="Mcp-Session-Id: abc\r\nMCP-Protocol-Version: 2025-11-25\r\n"
                            "x-civic-profile-id: 00000000-0000-0000-0000-000000000000\r\n"
                            "Connection: keep-alive, x-drop\r\nx-drop: 1\r\nTE: trailers\r\n"
                            "Proxy-Authorization: Basic eDp5\r\nUpgrade: h2c\r\n"))
write("proxy_request", f"GET /hub/mcp HTTP/1.1\r\n{H}{AUTH}Accept: text/event-stream\r\n"
      "Last-Event-ID: 7\r\n\r\n")
write("proxy_request", f"DELETE /hub/mcp HTTP/1.1\r\n{H}{AUTH}Mcp-Session-Id: abc\r\n\r\n")
write("proxy_request", f"POST /hub/mcp HTTP/1.1\r\n{H}{AUTH}Transfer-Encoding: chunked\r\n\r\n"
      f"{len(BODY):x}\r\n{BODY}\r\n0\r\n\r\n")
write("proxy_request", post() + post())
write("proxy_request", post("http://127.0.0.1:8931/hub/mcp"))
write("proxy_request", post("http://evil.example/hub/mcp"))
write("proxy_request", post().replace(H, "Host: evil.example\r\n"))
write("proxy_request", post(extra="Origin: http://localhost:3000\r\n"))
write("proxy_request", post(extra="Authorization: Bearer second\r\n"))
write("proxy_request", post("/hub/mcp/../x"))
write("proxy_request", f"PUT /hub/mcp HTTP/1.1\r\n{H}{AUTH}Content-Length: 0\r\n\r\n")
write("proxy_request", f"CONNECT app.civic.com:443 HTTP/1.1\r\n{H}\r\n")
write("proxy_request", post(extra="Expect: 100-continue\r\n"))
write("proxy_request", post().replace("\r\n", "\n"))
write("proxy_request", post("/profiles/support/hub/mcp?profile=x"))
write("proxy_request", post("/profiles/billing-tools/hub/mcp",
                            extra="x-civic-profile-id: 00000000-0000-0000-0000-000000000000\r\n"))
write("proxy_request", post("/profiles/sales/hub/mcp") + post("/profiles/support/../billing-tools/hub/mcp"))
write("proxy_request", post("/profiles/support%2Fhub%2Fmcp/hub/mcp"))

# admission: AdmissionReviews of the golden pods, plus a few operations and kinds.
def review(obj, operation="CREATE", kind="Pod", uid="705ab4f5-6393-11e8-b7cc-42010a800002"):
    return json.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid, "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team", "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": obj, "dryRun": False,
        },
    })
for path in sorted(GOLDEN.glob("*.in.yaml")):
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc:
            continue
        if doc.get("kind") == "Pod":
            pod = doc
        elif "template" in doc.get("spec", {}):
            pod = {"apiVersion": "v1", "kind": "Pod", **doc["spec"]["template"]}
        else:
            continue
        pod.setdefault("metadata", {}).setdefault("namespace", "team")
        write("admission", review(pod))
pod = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"name": "p", "namespace": "team",
                    "labels": {"app": "support-agent", "mcp.civic.com/inject": "enabled"}},
       "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}}
write("admission", review(pod))
write("admission", review(pod, operation="UPDATE"))
write("admission", review(pod, kind="Deployment"))
write("admission", '{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}')
