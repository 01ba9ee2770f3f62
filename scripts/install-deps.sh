#!/usr/bin/env bash
# Installs what building Ember needs on a Debian/Ubuntu machine: cmake and libclang for the
# vendored llama.cpp (llama-cpp-sys-2 builds it with cmake and generates bindings with bindgen),
# cmake also for the vendored libopus (opusic-sys), a C/C++ compiler, and python3-venv/node for
# the end-to-end client tests. Needs root (or sudo).
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v c++ >/dev/null 2>&1 || need+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v curl >/dev/null 2>&1 || need+=(curl)
# libclang itself: libclang-cpp (which some images carry without it) does not serve bindgen.
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || need+=(libclang-dev clang)
if [ "${1:-}" = "--tests" ]; then
  command -v node >/dev/null 2>&1 || need+=(nodejs npm)
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust (https://rustup.rs), then rerun" >&2
  exit 1
fi
