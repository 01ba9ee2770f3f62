#!/usr/bin/env bash
# Installs faster-whisper (PyPI, pinned) into a virtual environment outside the clone for
# `ember bench speech`, and prints its python. A rerun with it installed prints the path only.
# Everything lives in $EMBER_BENCH_VENV (default ~/.cache/ember/bench-venv).
set -euo pipefail

venv="${EMBER_BENCH_VENV:-$HOME/.cache/ember/bench-venv}"
if ! "$venv/bin/python" -c 'import faster_whisper' 2>/dev/null; then
  echo "installing faster-whisper 1.2.1 into $venv" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q faster-whisper==1.2.1 >&2
fi
echo "$venv/bin/python"
