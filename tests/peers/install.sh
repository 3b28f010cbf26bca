#!/usr/bin/env bash
# Installs the official MCP SDK peers used by civic-sidecar's integration tests, idempotently:
#   tests/peers/.venv         Python venv with requirements.txt (mcp==2.3.0, uvicorn)
#   tests/peers/node_modules  npm ci from package-lock.json (@modelcontextprotocol/sdk@1.32.2)
# Needs python3 (with venv) and node/npm. Re-running does nothing when both are up to date.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

stamp_ok() { # $1 stamp file, $2 input file: the stamp holds the input's checksum
  [[ -f "$1" ]] && [[ "$(cat "$1")" == "$(sha256sum "$2" | cut -d' ' -f1)" ]]
}

if ! stamp_ok .venv/.requirements.sha256 requirements.txt; then
  echo "peers: creating tests/peers/.venv" >&2
  rm -rf .venv
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
  sha256sum requirements.txt | cut -d' ' -f1 > .venv/.requirements.sha256
fi

if ! stamp_ok node_modules/.package-lock.sha256 package-lock.json; then
  echo "peers: installing tests/peers/node_modules" >&2
  npm ci --no-audit --no-fund --loglevel=error
  sha256sum package-lock.json | cut -d' ' -f1 > node_modules/.package-lock.sha256
fi

.venv/bin/python -c 'import mcp, uvicorn' >/dev/null
node -e 'import("@modelcontextprotocol/sdk/client/index.js")' >/dev/null
echo "peers: ready (mcp $(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("mcp"))'), sdk $(node -p 'require("./node_modules/@modelcontextprotocol/sdk/package.json").version'))" >&2
