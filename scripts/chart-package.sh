#!/usr/bin/env bash
# Packages charts/civic-mcp as a release: chart version and appVersion VERSION (so the images
# default to the VERSION tag), optionally with the image repositories moved to REGISTRY, then
# lints the package and checks that it renders the versioned images.
#
#   scripts/chart-package.sh [--registry REGISTRY] VERSION OUTDIR
#
# VERSION is SemVer without the tag's "v" (1.2.3, 1.2.3-rc.1); build metadata (+...) is refused
# because image tags cannot carry a "+". REGISTRY (e.g. ghcr.io/acme) replaces the chart's default
# ghcr.io/civic-mcp in image.repository and sidecar.image.repository, so a fork's release points
# at the fork's images. The checkout is never modified: the chart is copied first.
# Prints the path of OUTDIR/civic-mcp-VERSION.tgz on stdout. Needs helm 3.8+ on PATH or in
# ~/.cache/civic-mcp/bin (scripts/install-helm.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cache/civic-mcp/bin:$PATH"

chart=charts/civic-mcp
default_registry=ghcr.io/civic-mcp

die() {
  printf 'chart-package: error: %s\n' "$*" >&2
  exit 1
}

registry=$default_registry
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --registry)
      [ $# -ge 2 ] || die "--registry needs a value"
      registry=$2
      shift 2
      ;;
    -h | --help)
      awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
      exit 0
      ;;
    -*) die "unknown flag $1" ;;
    *)
      args+=("$1")
      shift
      ;;
  esac
done
[ ${#args[@]} -eq 2 ] || die "usage: scripts/chart-package.sh [--registry REGISTRY] VERSION OUTDIR"
version=${args[0]}
outdir=${args[1]}

# SemVer 2.0 without build metadata: what helm accepts as a chart version and what is also a
# valid image tag.
semver='^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$'
[[ $version =~ $semver ]] || die "version '$version' is not SemVer MAJOR.MINOR.PATCH[-PRERELEASE] (no leading v, no +build)"
[[ $registry =~ ^[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)*$ ]] || die "registry '$registry' is not a lowercase registry path"
command -v helm >/dev/null || die "helm not found (run scripts/install-helm.sh)"

work=$(mktemp -d "${TMPDIR:-/tmp}/civic-chart-package.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp -r "$chart" "$work/civic-mcp"
values="$work/civic-mcp/values.yaml"

if [ "$registry" != "$default_registry" ]; then
  # Exactly the two repository lines; any other count means values.yaml changed shape and this
  # rewrite must be revisited rather than silently miss one.
  pattern="^( *repository: )${default_registry//./\\.}/(civic-operator|civic-sidecar)\$"
  n=$(grep -cE "$pattern" "$values" || true)
  [ "$n" = 2 ] || die "expected 2 image repositories under $default_registry in $chart/values.yaml, found $n"
  sed -E -i "s#$pattern#\\1$registry/\\2#" "$values"
fi

mkdir -p "$outdir"
helm package "$work/civic-mcp" --version "$version" --app-version "$version" --destination "$outdir" >&2
package="$outdir/civic-mcp-$version.tgz"
[ -f "$package" ] || die "helm package did not write $package"
helm lint --strict "$package" >&2

# The package must run the images this release publishes.
render=$(helm template civic-mcp "$package" --namespace civic-system)
for want in "image: \"$registry/civic-operator:$version\"" "value: \"$registry/civic-sidecar:$version\""; do
  grep -qF "$want" <<<"$render" || die "the packaged chart does not render $want"
done
echo "$package"
