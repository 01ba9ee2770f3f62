#!/usr/bin/env bash
# End-to-end test: an unmodified Worker (tests/e2e/worker, env.AI binding) run by
# `wrangler dev --local` (wrangler 4.44.0), with wrangler's AI proxy pointed at Ember.
#
# wrangler <= 4.44 sends every env.AI call to
#   {CLOUDFLARE_API_BASE_URL}/accounts/{CLOUDFLARE_ACCOUNT_ID}/ai/run/proxy
# (original binding URL in the X-Forwarded header, chunked body), so no code or config in
# the Worker changes; only the environment below does.
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

PASSED=0
FAILED=0
WRANGLER_PID=""
TMP="$(mktemp -d "${TMPDIR:-/tmp}/ember-e2e-worker.XXXXXX")"
WRANGLER_LOG="$TMP/wrangler.log"

pass() { PASSED=$((PASSED + 1)); echo "PASS: $1"; }
fail() {
  FAILED=$((FAILED + 1)); echo "FAIL: $1"
  if [[ $# -gt 1 ]]; then printf '      %s\n' "${2:0:2000}"; fi
}

stop_wrangler() {
  [[ -n "$WRANGLER_PID" ]] || return 0
  # wrangler runs in its own process group (setsid): node + both workerd processes.
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
# setsid: own process group, so the whole tree (node, workerd x2) can be killed at once.
# --local disables remote bindings in 4.44 (same as --x-remote-bindings=false), which is what
# routes env.AI through CLOUDFLARE_API_BASE_URL .../ai/run/proxy.
SETSID=setsid
if ! command -v setsid >/dev/null 2>&1; then SETSID=""; set -m; fi  # job control => own process group
env \
  CLOUDFLARE_API_BASE_URL="$EMBER_URL/client/v4" \
  CLOUDFLARE_ACCOUNT_ID="$ACCOUNT_ID" \
  CLOUDFLARE_API_TOKEN="${EMBER_TOKEN:-dummy}" \
  WRANGLER_SEND_METRICS=false \
  CI=true \
  NO_COLOR=1 FORCE_COLOR=0 \
  $SETSID node_modules/.bin/wrangler dev --local \
    --ip 127.0.0.1 --port "$PORT" \
    --show-interactive-dev-session=false \
    </dev/null >"$WRANGLER_LOG" 2>&1 &
WRANGLER_PID=$!
[[ -n "$SETSID" ]] || set +m

ready=0
deadline=$(( $(date +%s) + STARTUP_TIMEOUT ))
while [[ $(date +%s) -lt $deadline ]]; do
  if ! kill -0 "$WRANGLER_PID" 2>/dev/null; then
    fail "wrangler dev exited during startup"; exit 1
  fi
  if [[ "$(curl -s --max-time 5 "$BASE/" 2>/dev/null)" == "ok" ]]; then ready=1; break; fi
  sleep 0.5
done
if [[ $ready -ne 1 ]]; then
  fail "wrangler dev did not answer on $BASE within ${STARTUP_TIMEOUT}s"; exit 1
fi
echo "wrangler ready after $(( $(date +%s) - t0 ))s"

# ---------------------------------------------------------------- helpers
# request METHOD PATH [JSON_BODY] -> sets STATUS and BODY; body in $TMP/b, headers in $TMP/h
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

CHAT='{"messages":[{"role":"system","content":"You are a helpful assistant. Answer briefly."},{"role":"user","content":"Write a Python function that adds two numbers."}]}'

# ---------------------------------------------------------------- /chat
request POST /chat "$CHAT"
check "/chat returns {response, usage}" '
  if (status !== "200") return "status " + status;
  const j = JSON.parse(body);
  if (typeof j.response !== "string" || !j.response.trim()) return "no non-empty response string";
  if (!j.usage || typeof j.usage !== "object") return "no usage object";
  return true;'
check "/chat: binding saw cf-ai-req-id (AI.lastRequestId)" '
  const id = headers["x-last-request-id"];
  return (id && id !== "null" && id !== "undefined") ? true : "x-last-request-id empty: Ember sent no cf-ai-req-id header";'

# ---------------------------------------------------------------- /chat/stream
request POST /chat/stream "$CHAT"
check "/chat/stream is SSE with response events, text, usage and [DONE]" '
  if (status !== "200") return "status " + status;
  if (!(headers["content-type"] || "").startsWith("text/event-stream")) return "content-type " + headers["content-type"];
  const data = body.split(/\r?\n/).filter(l => l.startsWith("data:")).map(l => l.slice(5).trim());
  if (!data.length) return "no data: lines";
  if (data[data.length - 1] !== "[DONE]") return "last event is not [DONE]: " + data[data.length - 1];
  if (!body.includes("data: {\"response\"")) return "no data: {\"response\" events";
  const ev = data.slice(0, -1).map(d => JSON.parse(d));
  const text = ev.map(e => typeof e.response === "string" ? e.response : "").join("");
  if (!text.trim()) return "concatenated text is empty";
  if (!ev.some(e => e.usage && typeof e.usage === "object")) return "no usage event";
  return true;'

# ---------------------------------------------------------------- /embed
request POST /embed '{"text":"Ember runs Workers AI models locally."}'
check "/embed returns shape [1,768] and 768 floats" '
  if (status !== "200") return "status " + status;
  const j = JSON.parse(body);
  if (JSON.stringify(j.shape) !== "[1,768]") return "shape " + JSON.stringify(j.shape);
  if (!Array.isArray(j.data) || j.data.length !== 1 || !Array.isArray(j.data[0])) return "data is not [[...]]";
  const v = j.data[0];
  if (v.length !== 768) return "vector length " + v.length;
  if (!v.every(x => typeof x === "number" && Number.isFinite(x))) return "non-finite or non-number entries";
  if (v.every(x => x === 0)) return "all-zero vector";
  return true;'

# ---------------------------------------------------------------- /run: the text tasks
request POST /run '{"model":"@cf/huggingface/distilbert-sst-2-int8","inputs":{"text":"I love this movie"}}'
check "/run classification: both labels, POSITIVE wins, scores sum to 1" '
  if (status !== "200") return "status " + status;
  const j = JSON.parse(body);
  if (!Array.isArray(j) || j.length !== 2) return "not two labels";
  const p = j.find(l => l.label === "POSITIVE"), n = j.find(l => l.label === "NEGATIVE");
  if (!p || !n) return "labels " + JSON.stringify(j);
  if (Math.abs(p.score + n.score - 1) > 1e-4) return "scores do not sum to 1";
  return p.score > n.score ? true : "POSITIVE lost";'
request POST /run '{"model":"@cf/baai/bge-reranker-base","inputs":{"query":"Which planet is the Red Planet?","contexts":[{"text":"Venus is hot."},{"text":"Mars is the Red Planet."}],"top_k":1}}'
check "/run reranking: {response: [{id, score}]}, the relevant passage first" '
  if (status !== "200") return "status " + status;
  const j = JSON.parse(body);
  if (!Array.isArray(j.response) || j.response.length !== 1) return "response " + JSON.stringify(j);
  return j.response[0].id === 1 && typeof j.response[0].score === "number" ? true : JSON.stringify(j);'
request POST /run '{"model":"@cf/meta/m2m100-1.2b","inputs":{"text":"Thank you very much.","target_lang":"spanish"}}'
check "/run translation: {translated_text}" '
  if (status !== "200") return "status " + status;
  const j = JSON.parse(body);
  return typeof j.translated_text === "string" && /gracias/i.test(j.translated_text) ? true : JSON.stringify(j);'
request POST /run '{"model":"@cf/facebook/bart-large-cnn","inputs":{"input_text":"The museum reopened on Monday after a two-year renovation that cost 40 million euros. Visitors queued for hours to see the restored paintings.","max_length":60}}'
check "/run summarization: {summary}" '
  if (status !== "200") return "status " + status;
  const j = JSON.parse(body);
  return typeof j.summary === "string" && j.summary.trim().length > 0 ? true : JSON.stringify(j);'
request POST /run '{"model":"@cf/meta/m2m100-1.2b","inputs":{"text":"hi","target_lang":"klingon"}}'
check "/run translation of an unknown language: binding threw 5006 naming target_lang" '
  if (status !== "500") return "status " + status;
  const j = JSON.parse(body);
  return String(j.message).includes("5006") && String(j.message).includes("target_lang") ? true : j.message;'

# ---------------------------------------------------------------- speech: binary inputs
SPEECH="$HERE/../../crates/ember-engines/tests/fixtures/whisper/short.wav"
request POST /transcribe/bytes "@$SPEECH"
check "/transcribe/bytes: whisper-tiny-en on {audio: [bytes]} gives {text, word_count, words, vtt}" '
  if (status !== "200") return "status " + status;
  const j = JSON.parse(body);
  if (!/lazy dog/i.test(j.text)) return "text " + j.text;
  if (j.word_count !== j.words.length) return "word_count " + j.word_count;
  return j.vtt.startsWith("WEBVTT") ? true : "vtt " + j.vtt;'
request POST /transcribe/stream "@$SPEECH"
check "/transcribe/stream: whisper-large-v3-turbo on {audio: {body: stream}} gives segments" '
  if (status !== "200") return "status " + status;
  const j = JSON.parse(body);
  if (!/lazy dog/i.test(j.text)) return "text " + j.text;
  if (j.transcription_info.language !== "en") return "language " + j.transcription_info.language;
  return Array.isArray(j.segments) && j.segments.length > 0 ? true : "segments " + JSON.stringify(j.segments);'

# ---------------------------------------------------------------- images: binary inputs
CAT="$HERE/../../crates/ember-engines/tests/fixtures/vision/images/cat.png"
request POST /classify "@$CAT"
check "/classify: resnet-50 on {image: [bytes]} gives five [{label, score}], a cat first" '
  if (status !== "200") return "status " + status;
  const j = JSON.parse(body);
  if (!Array.isArray(j) || j.length !== 5) return JSON.stringify(j);
  return /cat/.test(j[0].label) && typeof j[0].score === "number" ? true : JSON.stringify(j);'

request POST /gateway '{}'
check "/gateway: two runs through AI Gateway, the second cached; feedback, getLog and getUrl through env.AI.gateway()" '
  if (status !== "200") return "status " + status;
  const j = JSON.parse(body);
  if (JSON.stringify(j.first) !== JSON.stringify(j.second)) return "the cached result differs";
  if (!j.firstLogId || !j.secondLogId || j.firstLogId === j.secondLogId) return "log ids " + j.firstLogId + " " + j.secondLogId;
  if (j.firstLog.cached !== false || j.secondLog.cached !== true) return "cached flags " + j.firstLog.cached + " " + j.secondLog.cached;
  if (j.firstLog.feedback !== 1 || j.firstLog.score !== 80) return "feedback not kept: " + JSON.stringify(j.firstLog);
  if (j.firstLog.metadata !== "{\"suite\":\"e2e\"}") return "metadata " + j.firstLog.metadata;
  if (j.missing !== "AiGatewayLogNotFound") return "a missing log threw " + j.missing;
  return j.url.endsWith("/v1/local/default/workers-ai") ? true : "url " + j.url;'
request POST /see "@$CAT"
check "/see: an image_url part through the binding gives llama-mtmd-cli's text" '
  if (status !== "200") return "status " + status;
  const j = JSON.parse(body);
  return j.response === " flo flo arith rictu next smictuhesxtnaangepiidid" ? true : JSON.stringify(j);'

# ---------------------------------------------------------------- images: a binary output
request POST /imagine
check "/imagine: the tiny Stable Diffusion answers a 320x256 PNG through the binding" '
  if (status !== "200") return "status " + status;
  const j = JSON.parse(body);
  return j.signature && j.width === 320 && j.height === 256 ? true : JSON.stringify(j);'

# ---------------------------------------------------------------- /models (AI.models -> GET .../ai/run/proxy)
request GET /models
check "/models (env.AI.models({task: \"Text Embeddings\"})) lists embeddinggemma" '
  if (status !== "200") return "status " + status;
  const j = JSON.parse(body);
  if (!Array.isArray(j)) return "not an array";
  const names = j.map(m => m && m.name);
  if (!names.includes("@cf/google/embeddinggemma-300m")) return "embeddinggemma missing: " + JSON.stringify(names);
  const bad = j.filter(m => !m.task || m.task.name !== "Text Embeddings").map(m => m.name);
  if (bad.length) return "task filter not applied: " + JSON.stringify(bad);
  return true;'

# ---------------------------------------------------------------- /bad-model
request GET /bad-model
check "/bad-model: binding threw 5007" '
  if (status !== "500") return "status " + status;
  const j = JSON.parse(body);
  return String(j.message).includes("5007") ? true : "message lacks 5007: " + j.message;'
check "/bad-model: error name is InvalidModel" '
  const j = JSON.parse(body);
  return j.name === "InvalidModel" ? true : "name is " + j.name;'

# Summary line and exit status come from on_exit.
[[ $FAILED -eq 0 ]]
