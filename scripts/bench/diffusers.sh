#!/usr/bin/env bash
# Installs torch (the plain PyPI wheel, run on the CPU), diffusers, transformers and safetensors
# (pinned) into the bench's virtual environment outside the clone for `ember bench image`'s
# diffusion rows, and prints its python. A rerun with them installed prints the path only.
# Everything lives in $EMBER_BENCH_VENV (default ~/.cache/ember/bench-venv).
set -euo pipefail

venv="${EMBER_BENCH_VENV:-$HOME/.cache/ember/bench-venv}"
if ! "$venv/bin/python" -c 'import torch, diffusers, transformers, safetensors' 2>/dev/null; then
  echo "installing torch 2.15.0, diffusers 0.42.1 and transformers 5.25.0 into $venv" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q torch==2.15.0 diffusers==0.42.1 transformers==5.25.0 safetensors numpy pillow >&2
fi
echo "$venv/bin/python"
