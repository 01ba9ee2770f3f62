# Shared by the wrangler end-to-end scripts (run_worker_test.sh, run_wrangler_plugin_test.sh,
# tanstack/run.sh). Source it first; set TMP (a scratch directory) before installing or starting
# anything, BASE (the running Worker's URL) before `wait_ready`, and REQ_TIMEOUT (curl's
# per-request limit) before `request`; BASE may change between wrangler runs. LABEL, when set,
# prefixes every PASS/FAIL line (e.g. "[wrangler 4.164.0] ").

PASSED=0
FAILED=0
WRANGLER_PID=""
LABEL="${LABEL:-}"

pass() { PASSED=$((PASSED + 1)); echo "PASS: $LABEL$1"; }
fail() {
  FAILED=$((FAILED + 1)); echo "FAIL: $LABEL$1"
  if [[ $# -gt 1 ]]; then printf '      %s\n' "${2:0:2000}"; fi
}

# need_ember_url: strips EMBER_URL's trailing slash; without EMBER_URL, says so and exits 2.
need_ember_url() {
  if [[ -z "${EMBER_URL:-}" ]]; then
    echo "EMBER_URL is required (e.g. EMBER_URL=http://127.0.0.1:8787)" >&2
    echo "0 passed, 1 failed"
    exit 2
  fi
  EMBER_URL="${EMBER_URL%/}"
}

# need_tools TOOL...: exits 2 naming the first that is not on PATH.
need_tools() {
  local tool
  for tool in "$@"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      echo "missing required tool: $tool" >&2
      echo "0 passed, 1 failed"
      exit 2
    fi
  done
}

# npm_ci DIR [MARKER]: `npm ci` in DIR when DIR/MARKER (default node_modules/.bin/wrangler) is
# missing (never with E2E_SKIP_NPM_CI=1); fails (returns 1) when it cannot. Then, where DIR has
# wrangler, seeds miniflare's Request.cf cache so wrangler does not fetch
# https://workers.cloudflare.com/cf.json at startup (no timeout on that fetch: offline it only
# logs a warning, but a black-holed network adds connect timeouts); it affects only request.cf.
npm_ci() {
  local dir=$1 marker=${2:-node_modules/.bin/wrangler} t0
  if [[ ! -e "$dir/$marker" ]]; then
    [[ "${E2E_SKIP_NPM_CI:-}" != "1" ]] || { fail "npm ci" "$dir/$marker missing and E2E_SKIP_NPM_CI=1"; return 1; }
    echo "npm ci in $dir ..."
    t0=$(date +%s)
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) >"$TMP/npm.log" 2>&1 \
      || { cat "$TMP/npm.log"; fail "npm ci in $dir"; return 1; }
    echo "npm ci took $(( $(date +%s) - t0 ))s"
  fi
  if [[ -x "$dir/node_modules/.bin/wrangler" && ! -f "$dir/node_modules/.mf/cf.json" ]]; then
    mkdir -p "$dir/node_modules/.mf"
    echo '{"colo":"DFW","country":"US","asn":395747,"httpProtocol":"HTTP/1.1","clientTcpRtt":0}' >"$dir/node_modules/.mf/cf.json"
  fi
}

# show_log: the end of the wrangler run's log ($WRANGLER_LOG), if there is one.
show_log() {
  [[ -n "${WRANGLER_LOG:-}" && -f "$WRANGLER_LOG" ]] || return 0
  echo "----- wrangler log (last 80 lines of $WRANGLER_LOG) -----"
  tail -n 80 "$WRANGLER_LOG"
  echo "----- end wrangler log -----"
}

# e2e_exit, the EXIT trap: stops wrangler, shows its log when something failed, removes $TMP and
# prints the summary line "N passed, N failed"; exits non-zero on a failure.
e2e_exit() {
  local rc=$?
  stop_wrangler
  if [[ $FAILED -gt 0 || $rc -ne 0 ]]; then show_log; fi
  rm -rf "$TMP"
  echo "$PASSED passed, $FAILED failed"
  if [[ $FAILED -gt 0 && $rc -eq 0 ]]; then exit 1; fi
  exit "$rc"
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
