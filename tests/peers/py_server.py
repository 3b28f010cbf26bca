"""Dual-era MCP upstream on the official Python SDK (mcp 2.3.0) for the sidecar's tests.

Serves /hub/mcp on 127.0.0.1, accepts only tokens the fake Civic Auth issued (HS256, shared key,
not expired), offers an `echo` tool and a `slow` tool that streams progress, logs every
request's headers as JSON lines, optionally gzips responses. Prints `LISTENING port=<n>`.

usage: py_server.py [--port N] [--header-log FILE] [--gzip] [--stateless] [--json-response]
"""

import argparse
import asyncio
import socket
import sys

import uvicorn
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context, MCPServer
from starlette.middleware.gzip import GZipMiddleware

from peer_common import HeaderLog, verify_civic_token


class CivicTokenVerifier:
    async def verify_token(self, token: str) -> AccessToken | None:
        claims = verify_civic_token(token)
        if claims is None:
            return None
        return AccessToken(
            token=token,
            client_id="civic-sidecar-test",
            scopes=[],
            expires_at=claims.get("exp"),
            subject=claims.get("sub"),
        )


def build_app(port: int, args):
    mcp = MCPServer(
        "civic-test-upstream",
        token_verifier=CivicTokenVerifier(),
        auth=AuthSettings(
            issuer_url="https://auth.civic.test",
            resource_server_url=f"http://127.0.0.1:{port}/hub/mcp",
            validate_token_resource=False,
        ),
    )

    @mcp.tool()
    async def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @mcp.tool()
    async def slow(steps: int, delay_ms: int, ctx: Context) -> str:
        """Report progress `steps` times, `delay_ms` apart, then finish."""
        for i in range(steps):
            await ctx.report_progress(i + 1, steps, f"step {i + 1}")
            await asyncio.sleep(delay_ms / 1000)
        return f"done after {steps} steps"

    app = mcp.streamable_http_app(
        streamable_http_path="/hub/mcp",
        json_response=args.json_response,
        stateless_http=args.stateless,
    )
    if args.gzip:
        # Every content type, SSE included; starlette sync-flushes each streamed chunk.
        app = GZipMiddleware(app, minimum_size=0, exclude_content_types=())
    return HeaderLog(app, args.header_log)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--header-log", default=None)
    p.add_argument("--gzip", action="store_true")
    p.add_argument("--stateless", action="store_true")
    p.add_argument("--json-response", action="store_true")
    args = p.parse_args()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(build_app(port, args), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    print(f"LISTENING port={port}", flush=True)
    await server.serve(sockets=[sock])


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
