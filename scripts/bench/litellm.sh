#!/usr/bin/env bash
# Installs LiteLLM's proxy (PyPI, pinned) into a virtual environment outside the clone for
# `ember bench gateway`, and prints its `litellm` command. (1.100.0: the newer releases' proxy extra
# needs `litellm-proxy`, which this registry does not hold.) A rerun with it installed prints the
# path only. Everything lives in $EMBER_BENCH_VENV (default ~/.cache/ember/bench-venv).
set -euo pipefail

venv="${EMBER_BENCH_VENV:-$HOME/.cache/ember/bench-venv}"
if ! "$venv/bin/python" -c 'import litellm.proxy.proxy_server' 2>/dev/null; then
  echo "installing litellm[proxy] 1.100.0 into $venv" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q 'litellm[proxy]==1.100.0' >&2
fi
echo "$venv/bin/litellm"
