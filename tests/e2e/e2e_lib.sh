# Shared by the wrangler end-to-end scripts (run_worker_test.sh, run_wrangler_plugin_test.sh).
# Source it after setting TMP (a scratch directory), BASE (the running Worker's URL) and
# REQ_TIMEOUT (curl's per-request limit); BASE may change between wrangler runs.
# LABEL, when set, prefixes every PASS/FAIL line (e.g. "[wrangler 4.164.0] ").

PASSED=0
FAILED=0
WRANGLER_PID=""
LABEL="${LABEL:-}"

pass() { PASSED=$((PASSED + 1)); echo "PASS: $LABEL$1"; }
fail() {
  FAILED=$((FAILED + 1)); echo "FAIL: $LABEL$1"
  if [[ $# -gt 1 ]]; then printf '      %s\n' "${2:0:2000}"; fi
}

# A free TCP port on 127.0.0.1 (node is required anyway).
free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

# start_wrangler LOG COMMAND...: runs COMMAND (a `wrangler dev` line, with its own env) in the
# background in its own process group, output in LOG; sets WRANGLER_PID.
start_wrangler() {
  local log=$1; shift
  # setsid: own process group, so the whole tree (node, workerd x2) can be killed at once.
  local setsid=setsid
  if ! command -v setsid >/dev/null 2>&1; then setsid=""; set -m; fi  # job control => own process group
  env WRANGLER_SEND_METRICS=false CI=true NO_COLOR=1 FORCE_COLOR=0 \
    $setsid "$@" </dev/null >"$log" 2>&1 &
  WRANGLER_PID=$!
  [[ -n "$setsid" ]] || set +m
}

# wait_ready TIMEOUT [PATH] [BODY]: waits until GET $BASE$PATH answers BODY (default "/" and "ok");
# fails (returns 1) when wrangler exits or the time is up.
wait_ready() {
  local timeout=$1 path=${2:-/} want=${3:-ok}
  local deadline=$(( $(date +%s) + timeout ))
  while [[ $(date +%s) -lt $deadline ]]; do
    kill -0 "$WRANGLER_PID" 2>/dev/null || return 1
    if [[ "$(curl -s --max-time 5 "$BASE$path" 2>/dev/null)" == "$want" ]]; then return 0; fi
    sleep 0.5
  done
  return 1
}

stop_wrangler() {
  [[ -n "$WRANGLER_PID" ]] || return 0
  kill -TERM -- "-$WRANGLER_PID" 2>/dev/null || kill -TERM "$WRANGLER_PID" 2>/dev/null
  for _ in $(seq 1 50); do
    kill -0 -- "-$WRANGLER_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$WRANGLER_PID" 2>/dev/null || true
  wait "$WRANGLER_PID" 2>/dev/null || true
  WRANGLER_PID=""
}

# request METHOD PATH [JSON_BODY | @FILE] -> sets STATUS and BODY; body in $TMP/b, headers in $TMP/h
request() {
  local method=$1 path=$2 data=${3:-}
  local args=(-sS -N --max-time "$REQ_TIMEOUT" -X "$method" -D "$TMP/h" -o "$TMP/b" -w '%{http_code}')
  if [[ -n "$data" ]]; then args+=(-H 'content-type: application/json' --data-binary "$data"); fi
  rm -f "$TMP/b" "$TMP/h"
  STATUS=$(curl "${args[@]}" "$BASE$path" 2>"$TMP/curl.err") || STATUS="curl-error: $(cat "$TMP/curl.err")"
  BODY=$(head -c 600 "$TMP/b" 2>/dev/null || true)
}

# check NAME JS_EXPR : runs JS with `body` (string), `status`, `headers` (lower-cased map) of the last request;
# the expression must evaluate to true, or throw / return a string explaining the failure.
check() {
  local name=$1 expr=$2 out
  out=$(STATUS="$STATUS" node -e '
    const fs = require("fs");
    const rd = f => { try { return fs.readFileSync(f, "utf8"); } catch { return ""; } };
    const body = rd(process.argv[1]), status = process.env.STATUS;
    const headers = {};
    for (const l of rd(process.argv[2]).split(/\r?\n/)) {
      const i = l.indexOf(":"); if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
    }
    let r;
    try { r = (() => { '"$expr"' })(); } catch (e) { r = "exception: " + e.message; }
    if (r === true) process.exit(0);
    console.log(typeof r === "string" ? r : "check returned " + JSON.stringify(r));
    process.exit(1);
  ' "$TMP/b" "$TMP/h" 2>&1)
  if [[ $? -eq 0 ]]; then pass "$name"; else fail "$name" "$out | status=$STATUS body=${BODY:0:600}"; fi
}
