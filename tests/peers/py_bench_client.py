"""Official Python MCP client (mcp 2.3.0, legacy handshake) timed per tool call, for civic-bench's
`wan` scenario. Prints one JSON object: {"ok": true, "ms": [per-call milliseconds, ...]}.

usage: py_bench_client.py URL --mode session-per-call|long-lived --calls N [--warmup W]
                          [--token-env NAME] [--ca FILE]

session-per-call: each call is a whole session as langchain-mcp-adapters runs one: a new client
(new connections), initialize, notifications/initialized, tools/call `echo`, and the session's
DELETE on close; the time is the whole session's. long-lived: one session, one tools/call per
timed call. --token-env names a variable holding the bearer token the client sends itself (the
hub reached directly); --ca trusts that CA file for https URLs.
"""

import argparse
import asyncio
import json
import os
import ssl
import sys
import time

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from peer_common import describe


def http_client(args) -> httpx2.AsyncClient:
    kwargs = {"timeout": httpx2.Timeout(30.0, read=300.0)}
    if args.token_env:
        kwargs["headers"] = {"Authorization": f"Bearer {os.environ[args.token_env]}"}
    if args.ca:
        kwargs["verify"] = ssl.create_default_context(cafile=args.ca)
    return httpx2.AsyncClient(**kwargs)


async def call(client) -> None:
    res = await client.call_tool("echo", {"text": "hello"})
    if getattr(res, "is_error", False) or getattr(res, "isError", False):
        raise RuntimeError(f"tool error: {res}")


async def session_per_call(args, n: int, out: list) -> None:
    for _ in range(n):
        t = time.perf_counter()
        async with http_client(args) as http:
            async with Client(streamable_http_client(args.url, http_client=http), mode="legacy") as c:
                await call(c)
        out.append((time.perf_counter() - t) * 1000)


async def run(args) -> list:
    ms: list = []
    if args.mode == "session-per-call":
        await session_per_call(args, args.warmup, [])
        await session_per_call(args, args.calls, ms)
        return ms
    async with http_client(args) as http:
        async with Client(streamable_http_client(args.url, http_client=http), mode="legacy") as c:
            for _ in range(args.warmup):
                await call(c)
            for _ in range(args.calls):
                t = time.perf_counter()
                await call(c)
                ms.append((time.perf_counter() - t) * 1000)
    return ms


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--mode", choices=["session-per-call", "long-lived"], required=True)
    p.add_argument("--calls", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--token-env", default=None)
    p.add_argument("--ca", default=None)
    p.add_argument("--timeout", type=float, default=300.0)
    args = p.parse_args()
    try:
        ms = asyncio.run(asyncio.wait_for(run(args), args.timeout))
    except BaseException as e:  # noqa: BLE001 - report any failure as JSON
        print(json.dumps({"ok": False, "error": describe(e)}), flush=True)
        sys.exit(1)
    print(json.dumps({"ok": True, "ms": ms}), flush=True)


if __name__ == "__main__":
    main()
