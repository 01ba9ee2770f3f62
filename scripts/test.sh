#!/usr/bin/env bash
# One command from a fresh clone to every test: install dependencies, fetch and verify the
# default models (cached in ~/.cache/ember), check formatting and lints, run the Rust tests
# (unit, real-model and HTTP tests), then start `ember serve` and run the real clients against
# it: the official `cloudflare`, `openai` and `anthropic` Python SDKs, LangChain, the Vercel AI SDK and
# an unmodified Worker under `wrangler dev`.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

# Each step says when it started, so a slow CI run shows where its time went.
step() { echo "== $1 (at ${SECONDS}s)"; }

./scripts/install-deps.sh --tests

# A fresh clone (no target/ yet) builds into ~/.cache/ember/target, kept beside the models, so a
# machine that keeps ~/.cache (CI) rebuilds only what changed: the dependencies take 25 minutes
# from nothing on 2 cores. A checkout that has built before keeps its own target/. One-shot builds
# gain nothing from incremental compilation's caches, only their writing.
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ ! -d target ]; then
  export CARGO_TARGET_DIR="$HOME/.cache/ember/target"
fi
export CARGO_INCREMENTAL=0

step "build"
cargo build -p ember
ember="${CARGO_TARGET_DIR:-$root/target}/debug/ember"

step "models"
"$ember" models pull --defaults
# The sliding-window prefix cache test needs a model with a sliding window; the voice tests run
# Kokoro too; the image generation and vision chat tests run the tiny generated Stable Diffusion
# and Gemma 3 from the repository.
"$ember" models pull @hf/google/gemma-3-270m @hf/hexgrad/kokoro-82m
"$ember" models pull @hf/ember/tiny-sd --from crates/ember-engines/tests/fixtures/diffusion/tiny-sd
"$ember" models pull @hf/ember/tiny-gemma3-vision --from crates/ember-engines/tests/fixtures/vlm

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

step "rust tests"
cargo test --workspace

step "end-to-end clients"
tmp="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
db="$tmp/ember.db"
embeddings_rpm=20
"$ember" serve --listen "127.0.0.1:$port" --db "$db" --rate-limit "text-embeddings=$embeddings_rpm" \
  --alias @cf/meta/llama-3.1-8b-instruct=@hf/qwen/qwen2.5-coder-0.5b-instruct \
  --preload @hf/qwen/qwen2.5-coder-0.5b-instruct,@hf/qwen/qwen2.5-coder-1.5b-instruct,@cf/google/embeddinggemma-300m,@hf/sentence-transformers/all-minilm-l6-v2 \
  >"$tmp/ember.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 1 300); do
  curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { cat "$tmp/ember.log"; exit 1; }
  sleep 1
done
export EMBER_URL="http://127.0.0.1:$port"

status=0
# Dev mode (no account yet): the README's wrangler recipe with a dummy token, then the same Worker
# and three seed Workers through the wrangler-ember plugin under the newest wrangler (Node 24 from
# PyPI) and the newest that Node 20 runs, and TanStack AI in its four modes.
tests/e2e/run_worker_test.sh || status=1
(cd packages/wrangler-ember && npm test) || status=1
tests/e2e/run_wrangler_plugin_test.sh || status=1
tests/e2e/tanstack/run.sh || status=1

# From here on tokens are required: the clients use a real account's.
EMBER_ACCOUNT_ID="$("$ember" accounts create --db "$db" --name e2e --plan paid)"
EMBER_TOKEN="$("$ember" tokens create --db "$db" --account "$EMBER_ACCOUNT_ID" --name e2e)"
export EMBER_ACCOUNT_ID EMBER_TOKEN EMBER_BIN="$ember" EMBER_DB="$db" EMBER_EMBEDDINGS_RPM="$embeddings_rpm"

python3 -m venv tests/e2e/.venv
tests/e2e/.venv/bin/pip install -q -r tests/e2e/requirements.txt
tests/e2e/.venv/bin/python -m pytest -v -p no:cacheprovider tests/e2e/test_cloudflare_sdk.py tests/e2e/test_openai_sdk.py \
  tests/e2e/test_openai_responses.py tests/e2e/test_anthropic_sdk.py tests/e2e/test_langchain.py \
  tests/e2e/test_structured_output.py tests/e2e/test_accounts.py || status=1
# The JavaScript libraries (Vercel AI SDK in REST and binding mode, LangChain JS), pinned in their
# lock files; on Node 24 from PyPI where the machine's Node is older than 22.
tests/e2e/js-clients/run.sh || status=1
step "done"
if [ $status -ne 0 ]; then
  echo "== ember log"; tail -n 100 "$tmp/ember.log"
fi
exit $status
