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
# The text-to-speech voices read text as phonemes from espeak-ng (run as a command).
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
command -v unzip >/dev/null 2>&1 || need+=(unzip)
# pip fetches ONNX Runtime's library from its PyPI wheel (below).
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
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

# ONNX Runtime for the text-to-speech engine, which loads it at run time (nothing is downloaded
# at build time): the libonnxruntime.so of PyPI's onnxruntime wheel (every Python's wheel carries
# the same library), fetched by pip and checked against its pinned SHA-256, into $EMBER_HOME/lib.
ort_version=1.28.0
case "$(uname -m)" in
  x86_64)
    ort_platform=manylinux_2_28_x86_64
    ort_sha256=a166b78ee04f3a37fa1ef82034b6a3ce96d9684e582d4d30b296de83e9998bb5 ;;
  aarch64)
    ort_platform=manylinux_2_28_aarch64
    ort_sha256=8d66f9ceb29909c70839e4e4fb3435c7b490050d8f162bd5f3aba4ca01ee517f ;;
  *)
    echo "no onnxruntime wheel is pinned for $(uname -m)" >&2
    exit 1 ;;
esac
ort_lib="${EMBER_HOME:-$HOME/.cache/ember}/lib"
if [ ! -f "$ort_lib/libonnxruntime.so.$ort_version" ]; then
  echo "installing ONNX Runtime $ort_version into $ort_lib"
  ort_tmp="$(mktemp -d)"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    --platform "$ort_platform" -d "$ort_tmp" "onnxruntime==$ort_version"
  ort_wheel="$(ls "$ort_tmp"/onnxruntime-*.whl)"
  echo "$ort_sha256  $ort_wheel" | sha256sum -c --quiet
  unzip -q -j "$ort_wheel" "onnxruntime/capi/libonnxruntime.so.$ort_version" -d "$ort_tmp"
  mkdir -p "$ort_lib"
  mv "$ort_tmp/libonnxruntime.so.$ort_version" "$ort_lib/"
  rm -rf "$ort_tmp"
fi
ln -sf "libonnxruntime.so.$ort_version" "$ort_lib/libonnxruntime.so"
