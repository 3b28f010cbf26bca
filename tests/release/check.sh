#!/usr/bin/env bash
# Checks of the scripts the release workflow (.github/workflows/release.yaml) runs, with a fake
# version in temporary directories; run by scripts/test.sh:
#   - scripts/chart-package.sh: the package carries the version as version and appVersion, lints,
#     and renders (helm template) the operator and sidecar images at that tag under the given
#     registry; bad versions and registries are refused; the checkout is left untouched;
#   - scripts/release-notes.sh, in a scratch git repository: the commits since the previous tag,
#     or the CHANGELOG.md section when there is one; the install and verify commands; an
#     unknown tag is refused;
#   - shellcheck of these scripts.
# Needs helm (scripts/install-helm.sh) and git.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cache/civic-mcp/bin:$PATH"

command -v helm >/dev/null || { echo "release: helm not found (run scripts/install-helm.sh)" >&2; exit 1; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
failures=0
passed=0
ok() { passed=$((passed + 1)); echo "release: ok: $*"; }
bad() { failures=$((failures + 1)); echo "release: FAILED: $*" >&2; }

version=9.8.7-check.1
registry=ghcr.io/example-owner

# 1. chart-package.sh
chart_sum() { find charts/civic-mcp -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum; }
before=$(chart_sum)
if package=$(scripts/chart-package.sh --registry "$registry" "$version" "$work/dist" 2>"$work/package.log"); then
  ok "chart-package.sh --registry $registry $version"
else
  cat "$work/package.log" >&2; bad "chart-package.sh"; package=
fi
if [ "$package" = "$work/dist/civic-mcp-$version.tgz" ] && [ -f "$package" ]; then
  ok "package path printed: civic-mcp-$version.tgz"
else
  bad "chart-package.sh printed '$package', not $work/dist/civic-mcp-$version.tgz"
fi
if [ "$(chart_sum)" = "$before" ]; then ok "charts/civic-mcp untouched"; else bad "chart-package.sh modified charts/civic-mcp"; fi

if [ -f "$package" ]; then
  meta=$(helm show chart "$package")
  if grep -qx "version: $version" <<<"$meta" && grep -qx "appVersion: $version" <<<"$meta"; then
    ok "Chart.yaml: version and appVersion $version"
  else
    bad "Chart.yaml of the package: $meta"
  fi
  # Rendered here independently of the script's own check, with a release namespace of its own.
  if helm template rel "$package" --namespace rel-ns >"$work/render.yaml" 2>"$work/render.err"; then
    ok "helm template of the package"
  else
    cat "$work/render.err" >&2; bad "helm template of the package"
  fi
  images=$(sed -n 's/^ *image: "\(.*\)"$/\1/p' "$work/render.yaml" | sort -u)
  if [ "$images" = "$registry/civic-operator:$version" ]; then
    ok "operator pods run $images"
  else
    bad "operator images rendered: $images"
  fi
  if grep -A1 'name: CIVIC_OPERATOR_SIDECAR_IMAGE$' "$work/render.yaml" |
      grep -qF "value: \"$registry/civic-sidecar:$version\""; then
    ok "injected sidecar image $registry/civic-sidecar:$version"
  else
    bad "the sidecar image is not $registry/civic-sidecar:$version"
  fi
  if grep -A1 'name: CIVIC_OPERATOR_ALLOWED_SIDECAR_IMAGES$' "$work/render.yaml" |
      grep -qF "value: \"$registry/civic-sidecar\""; then
    ok "policy allows the release's sidecar repository"
  else
    bad "the policy's allowed sidecar images do not follow the registry"
  fi
  if grep -q 'ghcr.io/civic-mcp' "$work/render.yaml"; then
    bad "the render still names ghcr.io/civic-mcp"
  else
    ok "no image left under the default registry"
  fi
fi

# Without --registry the chart's own repositories stay.
if scripts/chart-package.sh 0.0.1 "$work/default" >/dev/null 2>"$work/package.log" &&
    helm template rel "$work/default/civic-mcp-0.0.1.tgz" | grep -qF 'image: "ghcr.io/civic-mcp/civic-operator:0.0.1"'; then
  ok "chart-package.sh 0.0.1 keeps ghcr.io/civic-mcp"
else
  cat "$work/package.log" >&2; bad "chart-package.sh without --registry"
fi

refuse() {
  if scripts/chart-package.sh "$@" >/dev/null 2>&1; then
    bad "chart-package.sh accepted: $*"
  else
    ok "chart-package.sh refuses: $*"
  fi
}
refuse v1.2.3 "$work/refused"
refuse 1.2 "$work/refused"
refuse 1.2.3+build.1 "$work/refused"
refuse 01.2.3 "$work/refused"
refuse --registry GHCR.io/Upper 1.2.3 "$work/refused"
refuse 1.2.3

# 2. release-notes.sh, in a scratch repository with two release tags, a merge and a later commit.
repo="$work/repo"
mkdir -p "$repo/scripts"
cp scripts/release-notes.sh "$repo/scripts/"
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
export GIT_AUTHOR_NAME=check GIT_AUTHOR_EMAIL=check@example.invalid
export GIT_COMMITTER_NAME=check GIT_COMMITTER_EMAIL=check@example.invalid
g() { git -C "$repo" "$@" >/dev/null 2>&1; }
commit() { echo "$1" >>"$repo/log.txt"; g add -A; g commit -q -m "$1"; }
g init -q -b main
commit "first change"
g tag v0.1.0
commit "second change"
g checkout -q -b topic
commit "topic change"
g checkout -q main
g merge -q --no-ff -m "Merge branch topic" topic
g tag v0.2.0-rc.1
commit "third change"
g tag v0.2.0
commit "after the release"
notes() { "$repo/scripts/release-notes.sh" "$@" 2>"$work/notes.err"; }

if out=$(notes --registry "$registry" --repository example-owner/civic-mcp 0.2.0); then
  ok "release-notes.sh 0.2.0"
else
  cat "$work/notes.err" >&2; bad "release-notes.sh 0.2.0"
fi
if grep -qx '## Changes since v0.2.0-rc.1' <<<"$out" && grep -q '^- third change (' <<<"$out" &&
    ! grep -qE 'second|topic|first|after the release|Merge' <<<"$out"; then
  ok "0.2.0: the commits since v0.2.0-rc.1, merges left out"
else
  bad "0.2.0 notes:"$'\n'"$out"
fi
if grep -qF "helm install civic-mcp oci://$registry/charts/civic-mcp --version 0.2.0" <<<"$out" &&
    grep -qF "cosign verify $registry/civic-operator:0.2.0" <<<"$out" &&
    grep -qF -- "--certificate-identity https://github.com/example-owner/civic-mcp/.github/workflows/release.yaml@refs/tags/v0.2.0" <<<"$out"; then
  ok "0.2.0: install and verify commands for $registry"
else
  bad "0.2.0 install section:"$'\n'"$out"
fi
out=$(notes 0.2.0-rc.1 || true)
if grep -qx '## Changes since v0.1.0' <<<"$out" && grep -q '^- second change' <<<"$out" &&
    grep -q '^- topic change' <<<"$out" && ! grep -qE 'first|third' <<<"$out"; then
  ok "0.2.0-rc.1: the commits since v0.1.0, the merged branch's included"
else
  bad "0.2.0-rc.1 notes:"$'\n'"$out"
fi
out=$(notes 0.1.0 || true)
if grep -qx '## Changes' <<<"$out" && grep -q '^- first change' <<<"$out" && ! grep -q second <<<"$out"; then
  ok "0.1.0: every commit up to the first tag"
else
  bad "0.1.0 notes:"$'\n'"$out"
fi
out=$(notes 0.3.0-dryrun HEAD || true)
if grep -qx '## Changes since v0.2.0' <<<"$out" && grep -q '^- after the release' <<<"$out"; then
  ok "dry run (REF HEAD): the commits since the last tag"
else
  bad "dry-run notes:"$'\n'"$out"
fi
if notes 9.9.9 >/dev/null; then bad "release-notes.sh accepted a version with no tag"; else ok "release-notes.sh refuses a version with no tag"; fi
if notes v0.2.0 >/dev/null; then bad "release-notes.sh accepted v0.2.0"; else ok "release-notes.sh refuses a version with a leading v"; fi

printf '# Changelog\n\n## Unreleased\n\n- not yet\n\n## [0.2.0] - 2030-01-01\n\n- Hand-written entry.\n\n## 0.1.0\n\n- Old entry.\n' >"$repo/CHANGELOG.md"
out=$(notes 0.2.0 || true)
if [ "$(sed -n 1p <<<"$out")" = "- Hand-written entry." ] &&
    ! grep -qE 'Old entry|not yet|Changes since|third change' <<<"$out" && grep -qx '## Install' <<<"$out"; then
  ok "0.2.0 with a CHANGELOG.md section: that section alone, then the install section"
else
  bad "0.2.0 notes from CHANGELOG.md:"$'\n'"$out"
fi
out=$(notes 0.1.0 || true)
if [ "$(sed -n 1p <<<"$out")" = "- Old entry." ]; then
  ok "0.1.0 with a CHANGELOG.md section (the last one, no heading brackets)"
else
  bad "0.1.0 notes from CHANGELOG.md:"$'\n'"$out"
fi

# The real repository: notes for an untagged version up to HEAD (what a dry run prints).
if scripts/release-notes.sh 0.0.0-check HEAD >"$work/real.md" 2>"$work/notes.err" && grep -qx '## Install' "$work/real.md"; then
  ok "release-notes.sh 0.0.0-check HEAD in this checkout ($(grep -c '^- ' "$work/real.md") entries)"
else
  cat "$work/notes.err" >&2; bad "release-notes.sh in this checkout"
fi

# 3. Scripts.
if shellcheck scripts/chart-package.sh scripts/release-notes.sh tests/release/*.sh; then
  ok "shellcheck scripts/chart-package.sh scripts/release-notes.sh tests/release/*.sh"
else
  bad "shellcheck"
fi

echo "release: $passed passed, $failures failed"
[ "$failures" = 0 ]
