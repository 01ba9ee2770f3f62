#!/usr/bin/env bash
# End-to-end test: TanStack AI through @cloudflare/tanstack-ai against a running Ember, in the
# package's four modes (see README.md):
#   REST, AI Gateway REST        test/rest.test.js, in Node (the package's hard-coded Cloudflare
#                                hosts are swapped for EMBER_URL by test/redirect.js)
#   binding, AI Gateway binding  test/binding.test.js, calling worker/ under `wrangler dev --local`
#                                (wrangler 4.44.0), env.AI proxied to Ember via CLOUDFLARE_API_BASE_URL
#
# Usage: EMBER_URL=http://127.0.0.1:PORT EMBER_ACCOUNT_ID=... EMBER_TOKEN=... tests/e2e/tanstack/run.sh
# Env:
#   EMBER_URL           (required) base URL of a running Ember
#   EMBER_ACCOUNT_ID    account id in the REST paths and wrangler's proxy path (default "local")
#   EMBER_TOKEN         bearer token (default "dummy"; any works in Ember's dev mode)
#   PORT                port for wrangler dev (default: a free one)
#   E2E_STARTUP_TIMEOUT seconds to wait for wrangler (default 120)
# npm ci runs in this folder and in worker/ when their node_modules are missing.
# Last line of output: "N passed, N failed". Exit status non-zero on any failure.

set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../e2e_lib.sh"
need_ember_url
need_tools node npm curl
export EMBER_URL
export EMBER_ACCOUNT_ID="${EMBER_ACCOUNT_ID:-local}"
export EMBER_TOKEN="${EMBER_TOKEN:-dummy}"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/ember-e2e-tanstack.XXXXXX")"
WRANGLER_LOG="$TMP/wrangler.log"
trap e2e_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

npm_ci "$HERE" node_modules/@cloudflare/tanstack-ai/package.json || exit 1
npm_ci "$HERE/worker" || exit 1

# ---------------------------------------------------------------- start wrangler
PORT="${PORT:-$(free_port)}"
BASE="http://127.0.0.1:$PORT"
export WORKER_URL="$BASE"
echo "starting wrangler dev on $WORKER_URL (AI -> $EMBER_URL/client/v4/accounts/$EMBER_ACCOUNT_ID/ai/run/proxy)"
t0=$(date +%s)
# --local: wrangler 4.44 then sends every env.AI call to CLOUDFLARE_API_BASE_URL/.../ai/run/proxy.
cd "$HERE/worker"
start_wrangler "$WRANGLER_LOG" env \
  CLOUDFLARE_API_BASE_URL="$EMBER_URL/client/v4" \
  CLOUDFLARE_ACCOUNT_ID="$EMBER_ACCOUNT_ID" \
  CLOUDFLARE_API_TOKEN="$EMBER_TOKEN" \
  node_modules/.bin/wrangler dev --local --ip 127.0.0.1 --port "$PORT" \
  --show-interactive-dev-session=false
cd "$HERE"
if wait_ready "${E2E_STARTUP_TIMEOUT:-120}"; then
  echo "wrangler ready after $(( $(date +%s) - t0 ))s"
else
  # The binding tests still run and fail one by one, naming the unreachable Worker.
  fail "wrangler dev did not answer on $WORKER_URL"
fi

# ---------------------------------------------------------------- tests
# spec output on the terminal, TAP into a file for the counts.
node --test --test-concurrency=1 \
  --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=tap --test-reporter-destination="$TMP/tap" \
  test/rest.test.js test/binding.test.js
# Skipped and todo tests are counted apart by node and are neither passed nor failed here.
count() { sed -n "s/^# $1 \([0-9]*\)$/\1/p" "$TMP/tap" | tail -n 1; }
pass=$(count pass)
failed=$(count fail)
PASSED=$((PASSED + ${pass:-0}))
FAILED=$((FAILED + ${failed:-0}))
[[ -n "$pass" ]] || fail "node --test wrote no summary"
echo "todo: $(count todo), skipped: $(count skipped)"
[[ $FAILED -eq 0 ]]
