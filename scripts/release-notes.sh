#!/usr/bin/env bash
# Prints the release notes (Markdown) of VERSION: its CHANGELOG.md section ("## VERSION" or
# "## [VERSION]", up to the next "## "), or, when there is none, the commits since the previous
# release tag; then how to install and verify that release.
#
#   scripts/release-notes.sh [--registry REGISTRY] [--repository OWNER/NAME] VERSION [REF]
#
# REF is the release's commit (default: the tag vVERSION); the previous release is the nearest
# tag vX.Y.Z[-PRE] reachable from REF's parent, and with none every commit up to REF is listed.
# REGISTRY (default ghcr.io/civic-mcp) holds the images and, under charts/, the chart.
# REPOSITORY (owner/name on GitHub) pins the signer identity in the cosign command to this
# repository's release workflow at the tag; without it, any release.yaml of REGISTRY's owner.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() {
  printf 'release-notes: error: %s\n' "$*" >&2
  exit 1
}

registry=ghcr.io/civic-mcp
repository=
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --registry | --repository)
      [ $# -ge 2 ] || die "$1 needs a value"
      if [ "$1" = --registry ]; then registry=$2; else repository=$2; fi
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
[[ ${#args[@]} -ge 1 && ${#args[@]} -le 2 ]] ||
  die "usage: scripts/release-notes.sh [--registry REGISTRY] [--repository OWNER/NAME] VERSION [REF]"
version=${args[0]}
ref=${args[1]:-v$version}
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]] || die "version '$version' is not X.Y.Z[-PRE] (no leading v)"
git rev-parse -q --verify "$ref^{commit}" >/dev/null || die "no commit '$ref' (tag the release first, or pass REF)"

# The previous release: tags only (a branch name never matches), nearest first.
prev=$(git describe --tags --abbrev=0 --match 'v[0-9]*.[0-9]*.[0-9]*' "$ref^" 2>/dev/null || true)

# The CHANGELOG.md section of this version without its heading, leading blank lines dropped
# (the command substitution drops the trailing ones).
section=
if [ -f CHANGELOG.md ]; then
  section=$(awk -v v="$version" '
    /^## / {
      if (found) exit
      h = $2; gsub(/[][]/, "", h)
      if (h == v) { found = 1; next }
    }
    found { print }
  ' CHANGELOG.md | sed -e '/./,$!d')
fi

if [ -n "$section" ]; then
  printf '%s\n' "$section"
else
  if [ -n "$prev" ]; then
    printf '## Changes since %s\n\n' "$prev"
    range="$prev..$ref"
  else
    printf '## Changes\n\n'
    range=$ref
  fi
  # Merge commits only restate their branch's commits.
  log=$(git log --no-merges --format='- %s (%h)' "$range")
  [ -n "$log" ] || log="- No changes."
  printf '%s\n' "$log"
fi

owner=${registry##*/}
if [ -n "$repository" ]; then
  identity="--certificate-identity https://github.com/$repository/.github/workflows/release.yaml@refs/tags/v$version"
else
  identity="--certificate-identity-regexp '^https://github\\.com/$owner/[^/]+/\\.github/workflows/release\\.yaml@refs/tags/v'"
fi
cat <<EOF

## Install

\`\`\`sh
helm install civic-mcp oci://$registry/charts/civic-mcp --version $version \\
  --namespace civic-system --create-namespace --wait
\`\`\`

Images (linux/amd64 and linux/arm64, SBOM attached): \`$registry/civic-operator:$version\`,
\`$registry/civic-sidecar:$version\`. The images and the chart are signed with cosign (keyless,
by this repository's release workflow); to check one:

\`\`\`sh
cosign verify $registry/civic-operator:$version \\
  $identity \\
  --certificate-oidc-issuer https://token.actions.githubusercontent.com
\`\`\`
EOF
