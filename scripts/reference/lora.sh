#!/usr/bin/env bash
# Makes the LoRA fixtures in crates/ember-engines/tests/fixtures/lora/ (see lora.py): a PEFT
# adapter with seeded random weights for Qwen2.5-Coder-0.5B-Instruct, and what llama.cpp's own
# llama-completion generates greedily with it (the adapter converted by llama.cpp's gguf-py) and
# without it. Run by hand when a fixture has to change; CI reads only the committed files.
#
# Needs the default models (`ember models pull --defaults`); builds llama-completion once with
# scripts/bench/build-llama-tools.sh (llama.cpp from the llama-cpp-python 0.3.36 sdist, as its users
# build it) and a venv with numpy and PyYAML (which gguf-py imports) in $LORAREF_VENV (default /tmp/loraref), gguf-py coming from
# the same sdist. ~1 minute once llama.cpp is built.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${LORAREF_VENV:-/tmp/loraref}"
model="${EMBER_HOME:-$HOME/.cache/ember}/models/hf--qwen--qwen2.5-coder-0.5b-instruct/model.gguf"
[ -f "$model" ] || { echo "$model is missing: run ember models pull --defaults" >&2; exit 1; }

bin="$("$repo/scripts/bench/build-llama-tools.sh")"
tools="$(dirname "$(dirname "$bin")")"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q numpy==2.4.6 PyYAML==6.0.3
PYTHONPATH="$tools/src/gguf-py" "$venv/bin/python" "$here/lora.py" \
  --model "$model" --completion "$bin/llama-completion" \
  --out "$repo/crates/ember-engines/tests/fixtures/lora"
