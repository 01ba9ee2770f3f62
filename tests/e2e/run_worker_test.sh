#!/usr/bin/env bash
# End-to-end test: an unmodified Worker (tests/e2e/worker, env.AI binding) run by
# `wrangler dev --local` (wrangler 4.44.0), with wrangler's AI proxy pointed at Ember.
#
# wrangler <= 4.44 sends every env.AI call to
#   {CLOUDFLARE_API_BASE_URL}/accounts/{CLOUDFLARE_ACCOUNT_ID}/ai/run/proxy
# (original binding URL in the X-Forwarded header, chunked body), so no code or config in
# the Worker changes; only the environment below does. The helpers (e2e_lib.sh) and the check
# list (worker_checks.sh) are shared with run_wrangler_plugin_test.sh (wrangler >= 4.45).
#
# Usage: EMBER_URL=http://127.0.0.1:8787 tests/e2e/run_worker_test.sh [PORT]
#   PORT (or env PORT): port for wrangler dev; a free one is picked when omitted.
# Env:
#   EMBER_URL          (required) base URL of a running Ember
#   EMBER_ACCOUNT_ID   account id wrangler puts in the proxy path (default "local")
#   EMBER_TOKEN        token wrangler sends as "Authorization: Bearer" (default "dummy")
#   E2E_STARTUP_TIMEOUT seconds to wait for wrangler to answer (default 120)
#   E2E_TIMEOUT        per-request curl timeout in seconds (default 300)
#   E2E_SKIP_NPM_CI=1  never run npm ci (node_modules must exist)
# Last line of output: "N passed, N failed". Exit status non-zero on any failure.

set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORKER_DIR="$HERE/worker"

source "$HERE/e2e_lib.sh"
need_ember_url
need_tools node npm curl
ACCOUNT_ID="${EMBER_ACCOUNT_ID:-local}"
STARTUP_TIMEOUT="${E2E_STARTUP_TIMEOUT:-120}"
REQ_TIMEOUT="${E2E_TIMEOUT:-300}"

PORT="${1:-${PORT:-$(free_port)}}"
BASE="http://127.0.0.1:$PORT"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/ember-e2e-worker.XXXXXX")"
WRANGLER_LOG="$TMP/wrangler.log"
trap e2e_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

npm_ci "$WORKER_DIR" || exit 1
cd "$WORKER_DIR"

# ---------------------------------------------------------------- start wrangler
echo "starting wrangler dev on $BASE (AI -> $EMBER_URL/client/v4/accounts/$ACCOUNT_ID/ai/run/proxy)"
t0=$(date +%s)
# --local disables remote bindings in 4.44 (same as --x-remote-bindings=false), which is what
# routes env.AI through CLOUDFLARE_API_BASE_URL .../ai/run/proxy.
start_wrangler "$WRANGLER_LOG" env \
  CLOUDFLARE_API_BASE_URL="$EMBER_URL/client/v4" \
  CLOUDFLARE_ACCOUNT_ID="$ACCOUNT_ID" \
  CLOUDFLARE_API_TOKEN="${EMBER_TOKEN:-dummy}" \
  node_modules/.bin/wrangler dev --local \
    --ip 127.0.0.1 --port "$PORT" \
    --show-interactive-dev-session=false

if ! wait_ready "$STARTUP_TIMEOUT"; then
  if kill -0 "$WRANGLER_PID" 2>/dev/null; then
    fail "wrangler dev did not answer on $BASE within ${STARTUP_TIMEOUT}s"
  else
    fail "wrangler dev exited during startup"
  fi
  exit 1
fi
echo "wrangler ready after $(( $(date +%s) - t0 ))s"

# The check list is shared with run_wrangler_plugin_test.sh.
source "$HERE/worker_checks.sh"
run_worker_checks

# Summary line and exit status come from e2e_exit.
[[ $FAILED -eq 0 ]]
