#!/usr/bin/env bash
# Builds llama.cpp's own `llama-bench`, `llama-batched-bench` and `llama-server` (CPU only) for
# `ember bench llm`, and `llama-completion` for the LoRA reference (scripts/reference/lora.sh),
# from the llama.cpp tree vendored in the PyPI sdist llama-cpp-python==0.3.36, and prints their
# folder.
#
# Everything lives outside the clone, in $EMBER_LLAMA_TOOLS (default ~/.cache/ember/llama.cpp-0.3.36):
# the sdist (downloaded once, sha256-checked), the extracted source, the cmake build. A rerun with the
# binaries present does nothing but print the folder. Only the last line goes to stdout.
#
# ggml is built as llama.cpp's users get it: its default CPU flags (GGML_NATIVE=ON, every
# instruction set of this CPU, as Ember's own build uses through `target-cpu=native` in
# .cargo/config.toml) and OpenMP. Only the web UI, the tests and the examples are left out, and
# AMX: this llama.cpp's AMX kernel dies with SIGILL (`tilezero` in ggml_backend_amx_mul_mat) on
# Sapphire Rapids, so its tools would not run at all on such a machine; the flags are no-ops
# elsewhere. Ember's build leaves AMX out the same way (.cargo/config.toml).
set -euo pipefail

version=0.3.36
sdist="llama_cpp_python-$version.tar.gz"
url="https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/$sdist"
# From PyPI's index for llama-cpp-python 0.3.36.
sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e

root="${EMBER_LLAMA_TOOLS:-$HOME/.cache/ember/llama.cpp-$version}"
src="$root/src"
build="$root/build-native-no-amx"
bin="$build/bin"

if [ -x "$bin/llama-bench" ] && [ -x "$bin/llama-batched-bench" ] && [ -x "$bin/llama-server" ] &&
  [ -x "$bin/llama-completion" ]; then
  echo "$bin"
  exit 0
fi

command -v cmake >/dev/null 2>&1 && command -v c++ >/dev/null 2>&1 ||
  "$(dirname "$0")/../install-deps.sh" >&2
mkdir -p "$root"

if [ ! -f "$src/CMakeLists.txt" ]; then
  if ! echo "$sha256  $root/$sdist" | sha256sum -c --status 2>/dev/null; then
    echo "downloading $sdist" >&2
    curl -fsSL --retry 3 -o "$root/$sdist.part" "$url" >&2
    echo "$sha256  $root/$sdist.part" | sha256sum -c --status ||
      { echo "sha256 mismatch for $sdist" >&2; exit 1; }
    mv "$root/$sdist.part" "$root/$sdist"
  fi
  echo "extracting vendor/llama.cpp" >&2
  rm -rf "$src" "$src.part"
  mkdir -p "$src.part"
  tar -xzf "$root/$sdist" -C "$src.part" --strip-components=3 "llama_cpp_python-$version/vendor/llama.cpp"
  mv "$src.part" "$src"
fi

flags=(
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=OFF
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
  "-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
)
# Newer llama.cpp dropped the curl option (it only warns when it is ON).
grep -q 'option(LLAMA_CURL' "$src/CMakeLists.txt" && flags+=(-DLLAMA_CURL=OFF)

echo "configuring in $build" >&2
cmake -S "$src" -B "$build" "${flags[@]}" >&2
echo "building llama-bench, llama-batched-bench, llama-server and llama-completion (takes a while on 2 cores)" >&2
cmake --build "$build" --config Release -j2 --target llama-bench llama-batched-bench llama-server \
  llama-completion >&2
echo "$bin"
