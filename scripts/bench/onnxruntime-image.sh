#!/usr/bin/env bash
# Installs onnxruntime, onnx, numpy and Pillow (PyPI, pinned) into a virtual environment outside
# the clone for `ember bench image`, and prints its python. A rerun with them installed prints the
# path only. Everything lives in $EMBER_BENCH_VENV (default ~/.cache/ember/bench-venv).
set -euo pipefail

venv="${EMBER_BENCH_VENV:-$HOME/.cache/ember/bench-venv}"
if ! "$venv/bin/python" -c 'import onnxruntime, onnx, numpy, PIL' 2>/dev/null; then
  echo "installing onnxruntime 1.28.0, onnx, numpy and Pillow into $venv" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q onnxruntime==1.28.0 onnx==1.20.0 numpy==2.4.6 pillow==13.0.0 >&2
fi
echo "$venv/bin/python"
