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
PASSED=0
FAILED=0
WRANGLER_PID=""

if [[ -z "${EMBER_URL:-}" ]]; then
  echo "EMBER_URL is required (e.g. EMBER_URL=http://127.0.0.1:8787)" >&2
  echo "0 passed, 1 failed"
  exit 2
fi
export EMBER_URL="${EMBER_URL%/}"
export EMBER_ACCOUNT_ID="${EMBER_ACCOUNT_ID:-local}"
export EMBER_TOKEN="${EMBER_TOKEN:-dummy}"

for tool in node npm curl; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "missing required tool: $tool" >&2
    echo "0 passed, 1 failed"
    exit 2
  fi
done

TMP="$(mktemp -d "${TMPDIR:-/tmp}/ember-e2e-tanstack.XXXXXX")"
WRANGLER_LOG="$TMP/wrangler.log"

stop_wrangler() {
  [[ -n "$WRANGLER_PID" ]] || return 0
  # wrangler runs in its own process group (setsid below): end node and both workerd processes.
  kill -TERM -- "-$WRANGLER_PID" 2>/dev/null || kill -TERM "$WRANGLER_PID" 2>/dev/null
  for _ in $(seq 1 50); do
    kill -0 -- "-$WRANGLER_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$WRANGLER_PID" 2>/dev/null || true
  wait "$WRANGLER_PID" 2>/dev/null || true
  WRANGLER_PID=""
}

on_exit() {
  local rc=$?
  stop_wrangler
  if [[ ($FAILED -gt 0 || $rc -ne 0) && -s "$WRANGLER_LOG" ]]; then
    echo "----- wrangler log (last 60 lines) -----"
    tail -n 60 "$WRANGLER_LOG"
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
npm_ci() {
  local dir=$1 marker=$2
  [[ -e "$dir/$marker" ]] && return 0
  echo "npm ci in $dir ..."
  if ! (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) >"$TMP/npm.log" 2>&1; then
    cat "$TMP/npm.log"
    echo "FAIL: npm ci in $dir"
    FAILED=$((FAILED + 1))
    exit 1
  fi
}
npm_ci "$HERE" node_modules/@cloudflare/tanstack-ai/package.json
npm_ci "$HERE/worker" node_modules/.bin/wrangler

# Seed miniflare's Request.cf cache so wrangler does not fetch https://workers.cloudflare.com/cf.json
# at startup (same as tests/e2e/run_worker_test.sh).
if [[ ! -f "$HERE/worker/node_modules/.mf/cf.json" ]]; then
  mkdir -p "$HERE/worker/node_modules/.mf"
  echo '{"colo":"DFW","country":"US","asn":395747,"httpProtocol":"HTTP/1.1","clientTcpRtt":0}' \
    >"$HERE/worker/node_modules/.mf/cf.json"
fi

# ---------------------------------------------------------------- start wrangler
PORT="${PORT:-$(node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')}"
export WORKER_URL="http://127.0.0.1:$PORT"
echo "starting wrangler dev on $WORKER_URL (AI -> $EMBER_URL/client/v4/accounts/$EMBER_ACCOUNT_ID/ai/run/proxy)"
t0=$(date +%s)
# --local: wrangler 4.44 then sends every env.AI call to CLOUDFLARE_API_BASE_URL/.../ai/run/proxy.
# setsid: its own process group, so stop_wrangler can end the whole tree.
(
  cd "$HERE/worker" &&
    exec env WRANGLER_SEND_METRICS=false CI=true NO_COLOR=1 FORCE_COLOR=0 \
      CLOUDFLARE_API_BASE_URL="$EMBER_URL/client/v4" \
      CLOUDFLARE_ACCOUNT_ID="$EMBER_ACCOUNT_ID" \
      CLOUDFLARE_API_TOKEN="$EMBER_TOKEN" \
      setsid node_modules/.bin/wrangler dev --local --ip 127.0.0.1 --port "$PORT" \
      --show-interactive-dev-session=false
) </dev/null >"$WRANGLER_LOG" 2>&1 &
WRANGLER_PID=$!

ready=""
deadline=$(( $(date +%s) + ${E2E_STARTUP_TIMEOUT:-120} ))
while [[ $(date +%s) -lt $deadline ]] && kill -0 "$WRANGLER_PID" 2>/dev/null; do
  if [[ "$(curl -s --max-time 5 "$WORKER_URL/" 2>/dev/null)" == "ok" ]]; then ready=1; break; fi
  sleep 0.5
done
if [[ -n "$ready" ]]; then
  echo "wrangler ready after $(( $(date +%s) - t0 ))s"
else
  # The binding tests still run and fail one by one, naming the unreachable Worker.
  echo "FAIL: wrangler dev did not answer on $WORKER_URL"
  FAILED=$((FAILED + 1))
fi

# ---------------------------------------------------------------- tests
# spec output on the terminal, TAP into a file for the counts.
cd "$HERE"
node --test --test-concurrency=1 \
  --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=tap --test-reporter-destination="$TMP/tap" \
  test/rest.test.js test/binding.test.js
# Skipped and todo tests are counted apart by node and are neither passed nor failed here.
count() { sed -n "s/^# $1 \([0-9]*\)$/\1/p" "$TMP/tap" | tail -n 1; }
pass=$(count pass)
fail=$(count fail)
PASSED=$((PASSED + ${pass:-0}))
FAILED=$((FAILED + ${fail:-0}))
if [[ -z "$pass" ]]; then
  echo "FAIL: node --test wrote no summary"
  FAILED=$((FAILED + 1))
fi
echo "todo: $(count todo), skipped: $(count skipped)"
[[ $FAILED -eq 0 ]]
