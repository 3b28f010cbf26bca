#!/usr/bin/env bash
# Checks of the GitHub workflows (.github/workflows/*.yaml), run by scripts/test.sh:
#   - actionlint (pinned by scripts/setup.sh) with shellcheck over every run: block;
#   - the lint can fail: copies of release.yaml with a planted shell, expression and
#     permissions error are each refused for that reason;
#   - every workflow sets top-level permissions, and every third-party action is pinned by a
#     full commit SHA with its version in a comment.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cache/civic-mcp/bin:$PATH"

actionlint_version=1.7.12
workflows=(.github/workflows/*.yaml)
failures=0
passed=0
ok() { passed=$((passed + 1)); echo "workflows: ok: $*"; }
bad() { failures=$((failures + 1)); echo "workflows: FAILED: $*" >&2; }

command -v actionlint >/dev/null || { echo "workflows: actionlint not found (run scripts/setup.sh)" >&2; exit 1; }
# Without shellcheck actionlint silently skips the run: blocks; naming it makes a missing one fail.
shellcheck=$(command -v shellcheck) || { echo "workflows: shellcheck not found (run scripts/setup.sh)" >&2; exit 1; }
have=$(actionlint -version | head -n 1)
[ "$have" = "v$actionlint_version" ] || { echo "workflows: actionlint $have, want v$actionlint_version (run scripts/setup.sh)" >&2; exit 1; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

lint() { actionlint -shellcheck "$shellcheck" -pyflakes= "$@"; }

# 1. The workflows as they are.
if lint "${workflows[@]}"; then
  ok "actionlint $have (with shellcheck): ${workflows[*]}"
else
  bad "actionlint"
fi

# 2. The lint must be able to fail: one planted error per copy, each caught by its own rule.
planted() { # $1 label, $2 expected actionlint rule, $3 sed script planting the error
  local dir="$work/$1"
  mkdir -p "$dir/.github/workflows"
  sed "$3" .github/workflows/release.yaml >"$dir/.github/workflows/release.yaml"
  if cmp -s .github/workflows/release.yaml "$dir/.github/workflows/release.yaml"; then
    bad "$1: the sed script planted nothing (release.yaml changed shape?)"; return
  fi
  if (cd "$dir" && lint .github/workflows/release.yaml) >"$dir/out" 2>&1; then
    bad "$1: actionlint passed a workflow with $1"
  elif grep -qF "[$2]" "$dir/out"; then
    ok "$1: refused by actionlint [$2]"
  else
    cat "$dir/out" >&2; bad "$1: actionlint failed, but not by [$2]"
  fi
}
# shellcheck disable=SC2016 # the sed scripts name the workflow's own $VARS and ${{ }}, literally
planted "an unquoted variable in a run: block" shellcheck \
  's|touch "$RUNNER_TEMP/digests/${DIGEST#sha256:}"|touch $RUNNER_TEMP/digests/${DIGEST#sha256:}|'
# shellcheck disable=SC2016
planted "an output of a job it does not need" expression \
  's|name=${{ needs.prepare.outputs.registry }}|name=${{ needs.nosuch.outputs.registry }}|'
planted "a misspelt permission" permissions 's|id-token: write|id-token: writ|'

# 3. Least privilege and pinning, which actionlint does not enforce.
unpinned() { # uses: lines other than owner/repo@<40 hex> # vX (local ./ and docker:// excepted)
  grep -nE '^\s*(-\s+)?uses:' "$1" | grep -vE 'uses:\s+(\./|docker://)' |
    grep -vE 'uses:\s+[^@ ]+@[0-9a-f]{40}\s+#\s+v[0-9]' || true
}
printf 'steps:\n  - uses: actions/checkout@v4\n  - uses: a/b@%s\n' "$(printf '0%.0s' {1..40})" >"$work/tag-pinned.yaml"
if [ "$(unpinned "$work/tag-pinned.yaml" | wc -l)" = 2 ]; then
  ok "the pin check refuses a tag and a SHA without a version comment"
else
  bad "the pin check passed an action pinned by tag or without a version comment"
fi
for wf in "${workflows[@]}"; do
  if grep -q '^permissions:' "$wf"; then
    ok "$wf: top-level permissions"
  else
    bad "$wf: no top-level permissions (the token would get the repository default)"
  fi
  unpinned=$(unpinned "$wf")
  if [ -z "$unpinned" ]; then
    ok "$wf: actions pinned by commit"
  else
    bad "$wf: actions not pinned by commit with a version comment:"$'\n'"$unpinned"
  fi
done

if shellcheck tests/workflows/*.sh; then
  ok "shellcheck tests/workflows/*.sh"
else
  bad "shellcheck tests/workflows/*.sh"
fi

echo "workflows: $passed passed, $failures failed"
[ "$failures" = 0 ]
