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

if [[ -z "${EMBER_URL:-}" ]]; then
  echo "EMBER_URL is required (e.g. EMBER_URL=http://127.0.0.1:8787)" >&2
  echo "0 passed, 1 failed"
  exit 2
fi
EMBER_URL="${EMBER_URL%/}"
ACCOUNT_ID="${EMBER_ACCOUNT_ID:-local}"
STARTUP_TIMEOUT="${E2E_STARTUP_TIMEOUT:-120}"
REQ_TIMEOUT="${E2E_TIMEOUT:-300}"

for tool in node npm curl; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "missing required tool: $tool" >&2
    echo "0 passed, 1 failed"
    exit 2
  fi
done

PORT="${1:-${PORT:-}}"
if [[ -z "$PORT" ]]; then
  PORT="$(node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')"
fi
BASE="http://127.0.0.1:$PORT"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/ember-e2e-worker.XXXXXX")"
WRANGLER_LOG="$TMP/wrangler.log"

source "$HERE/e2e_lib.sh"

on_exit() {
  local rc=$?
  stop_wrangler
  if [[ $FAILED -gt 0 || $rc -ne 0 ]] && [[ -f "$WRANGLER_LOG" ]]; then
    echo "----- wrangler log (last 80 lines of $WRANGLER_LOG) -----"
    tail -n 80 "$WRANGLER_LOG"
    echo "----- end wrangler log -----"
  fi
  rm -rf "$TMP"
  echo "$PASSED passed, $FAILED failed"
  if [[ $FAILED -gt 0 && $rc -eq 0 ]]; then exit 1; fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- install
cd "$WORKER_DIR"
if [[ ! -x node_modules/.bin/wrangler ]]; then
  if [[ "${E2E_SKIP_NPM_CI:-}" == "1" ]]; then
    fail "npm ci" "node_modules missing and E2E_SKIP_NPM_CI=1"; exit 1
  fi
  echo "npm ci in $WORKER_DIR ..."
  t0=$(date +%s)
  if ! npm ci --no-audit --no-fund --loglevel=error >"$TMP/npm.log" 2>&1; then
    cat "$TMP/npm.log"
    fail "npm ci"; exit 1
  fi
  echo "npm ci took $(( $(date +%s) - t0 ))s"
fi

# Seed miniflare's Request.cf cache so wrangler does not fetch https://workers.cloudflare.com/cf.json
# at startup (no timeout on that fetch; offline CI only logs a warning, but a black-holed network
# would add connect timeouts). Only written if absent; affects nothing but request.cf.
if [[ ! -f node_modules/.mf/cf.json ]]; then
  mkdir -p node_modules/.mf
  echo '{"colo":"DFW","country":"US","asn":395747,"httpProtocol":"HTTP/1.1","clientTcpRtt":0}' >node_modules/.mf/cf.json
fi

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

# Summary line and exit status come from on_exit.
[[ $FAILED -eq 0 ]]
