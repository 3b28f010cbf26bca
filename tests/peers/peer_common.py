"""Shared helpers of the Python test peers: the fake Civic Auth's HS256 check, a
header-logging ASGI wrapper and an error describer. Kept in sync with civic-testkit's `secrets`
module."""

import base64
import hashlib
import hmac
import json
import os
import time

# Same constants as testkit/src/secrets.rs (JWT_KEY, AUTH_ISSUER).
JWT_KEY = os.environ.get("CIVIC_TEST_JWT_KEY", "civic-testkit-hs256-shared-key-for-tests-only").encode()
AUTH_ISSUER = os.environ.get("CIVIC_TEST_AUTH_ISSUER", "https://auth.civic.test")


def _b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def verify_civic_token(token: str):
    """Claims of a token the fake Civic Auth issued (HS256 with the shared key, `iss` the fake
    auth, not expired), else None. Subject tokens have another `iss` and are refused."""
    try:
        header, payload, sig = token.split(".")
        want = hmac.new(JWT_KEY, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(want, _b64d(sig)):
            return None
        if json.loads(_b64d(header)).get("alg") != "HS256":
            return None
        claims = json.loads(_b64d(payload))
    except (ValueError, json.JSONDecodeError):
        return None
    if claims.get("iss") != AUTH_ISSUER:
        return None
    exp = claims.get("exp")
    if exp is not None and exp <= time.time():
        return None
    return claims


def token_digest(token: str) -> str:
    """How the header log shows a bearer token: never the token itself."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def _loggable(name: str, value: str) -> str:
    if name == "authorization":
        scheme, _, rest = value.partition(" ")
        return f"{scheme} {token_digest(rest)}" if rest else token_digest(value)
    return value


class HeaderLog:
    """ASGI wrapper writing one JSON line per HTTP exchange: request method, path, query,
    headers in order (the bearer token as a digest) and the response status and headers."""

    def __init__(self, app, path: str | None):
        self.app = app
        self.path = path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.path:
            return await self.app(scope, receive, send)
        entry = {
            "method": scope["method"],
            "path": scope["path"],
            "query": scope.get("query_string", b"").decode("latin-1"),
            "headers": [
                [k.decode("latin-1"), _loggable(k.decode("latin-1").lower(), v.decode("latin-1"))]
                for k, v in scope["headers"]
            ],
        }

        async def logging_send(message):
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
                entry["response_headers"] = [
                    [k.decode("latin-1"), v.decode("latin-1")] for k, v in message.get("headers", [])
                ]
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(entry) + "\n")
            await send(message)

        await self.app(scope, receive, logging_send)


def describe(e: BaseException) -> str:
    """The innermost exceptions of a (possibly nested) exception group, as one line."""
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(describe(x) for x in e.exceptions)
    return f"{type(e).__name__}: {e}"
