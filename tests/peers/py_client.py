"""Official Python MCP client (mcp 2.3.0) for the sidecar's tests: connects WITHOUT credentials,
lists tools, calls `echo` (and optionally `slow`), prints one JSON object and exits 0, or prints
{"ok": false, "error": ...} and exits 1.

usage: py_client.py URL --mode legacy|auto [--slow] [--timeout SECONDS] [--token-env NAME]

--token-env names an environment variable holding a bearer token, for checking a peer directly
(without the sidecar); through the sidecar the client sends no credentials.
"""

import argparse
import asyncio
import json
import sys
import os
import time

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from peer_common import describe


async def run(args) -> dict:
    started = time.monotonic()
    out = {"ok": False, "mode": args.mode}
    progress = []

    async def on_progress(p, total, message):
        progress.append(p)

    server = args.url
    if args.token_env:
        headers = {"Authorization": f"Bearer {os.environ[args.token_env]}"}
        server = streamable_http_client(args.url, http_client=httpx2.AsyncClient(headers=headers))
    async with Client(server, mode=args.mode) as client:
        out["connect_ms"] = round((time.monotonic() - started) * 1000, 1)
        tools = await client.list_tools()
        out["tools"] = sorted(t.name for t in tools.tools)
        res = await client.call_tool("echo", {"text": "hello through the sidecar"})
        out["echo"] = "".join(getattr(c, "text", "") for c in res.content)
        out["echo_is_error"] = bool(res.is_error) if hasattr(res, "is_error") else bool(getattr(res, "isError", False))
        if args.slow:
            res = await client.call_tool("slow", {"steps": 3, "delay_ms": 100}, progress_callback=on_progress)
            out["slow"] = "".join(getattr(c, "text", "") for c in res.content)
            out["progress"] = progress
    out["ok"] = True
    out["total_ms"] = round((time.monotonic() - started) * 1000, 1)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--mode", choices=["legacy", "auto"], default="auto")
    p.add_argument("--slow", action="store_true")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--token-env", default=None)
    args = p.parse_args()
    try:
        out = asyncio.run(asyncio.wait_for(run(args), args.timeout))
    except BaseException as e:  # noqa: BLE001 - report any failure as JSON
        print(json.dumps({"ok": False, "mode": args.mode, "error": describe(e)}), flush=True)
        sys.exit(1)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
