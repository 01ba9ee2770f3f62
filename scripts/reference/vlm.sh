#!/usr/bin/env bash
# Makes the vision-language (image-to-text) fixtures in crates/ember-engines/tests/fixtures/vlm/:
# a tiny Gemma 3 VLM with seeded random weights as llama.cpp GGUF files (model.gguf, the text model,
# and mmproj.gguf, the SigLIP tower + projector that libmtmd loads), and reference.json, what
# llama.cpp's llama-mtmd-cli generates greedily from them for a few image + prompt cases (text,
# token ids, the prompt after the chat template and the chunks mtmd made of it). Ember's VLM engine
# runs the same llama.cpp (llama-cpp-2 0.1.160 / llama-cpp-sys-2 0.1.161, `mtmd` feature), so it
# must reproduce these tokens exactly. Run by hand when a fixture has to change; CI reads only the
# committed files. Nothing is downloaded from Hugging Face.
#
# Architecture: Gemma3ForConditionalGeneration (SigLIP vision tower, 2x2 average-pool + RMSNorm +
# linear projector, Gemma 3 text model). Chosen because
#   - transformers builds it from a config (vlm.py checks the saved folder loads back, every tensor
#     found, and gives the same logits);
#   - llama.cpp's converter supports small test models of it explicitly (`tinygemma3`: a non-default
#     projector scale factor is written to the mmproj GGUF), with a SentencePiece tokenizer.model,
#     so there is no BPE pre-tokenizer hash to get past;
#   - mtmd preprocesses it the simplest way: one fixed-size image (no tiling), a fixed number of
#     image tokens (here 16) between <start_of_image> and <end_of_image>.
# Sizes: text hidden 64, 2 layers, 4 heads (2 KV), vocab 512; vision 64x64 px, patch 8, hidden 32,
# 2 layers; 16 image tokens. f32 GGUFs (the converter keeps the projector matrix in f16), ~0.55 MB.
# Weights: torch.manual_seed, then every tensor redrawn at a scale that gives varied, image- and
# prompt-dependent greedy text with clear margins (see vlm.py; with transformers' default 0.02 init
# the model just repeats the last prompt token). Tokenizer: SentencePiece BPE trained by vlm.py on a
# small English corpus, Gemma's ids (<pad> 0, <eos> 1, <bos> 2, <unk> 3), then <start_of_turn> 4,
# <end_of_turn> 5, <start_of_image> 6, <end_of_image> 7, <image_soft_token> 8, "\n" 9; no byte
# fallback (so every piece is valid UTF-8); Gemma 3's own chat template in tokenizer_config.json.
#
# reference.json, per case: the image, the prompt, the CLI's argv, the prompt after the chat
# template (still holding mtmd's marker <__media__>), the chunks mtmd made of it (text token ids;
# the image's token count), the generated text, ids and pieces, each step's logit margin, and the
# image chunk's embeddings; plus the preprocessing, versions and the HF config. The whole pipeline
# is deterministic: a rerun gives byte-identical GGUFs and the same tokens.
#
# The converter: the llama.cpp that llama-cpp-sys-2 vendors (~/.cargo/registry/src/*/
# llama-cpp-sys-2-0.1.161/llama.cpp) is trimmed for the crate: it has convert_hf_to_gguf.py but not
# the `conversion/` package that script imports, nor gguf-py's code. So the converter and gguf-py
# come from the llama.cpp that the llama-cpp-python 0.3.36 sdist vendors (commit 0c1e57098bba43ac
# per requirements.txt; downloaded from PyPI and checked by sha256;
# its convert_hf_to_gguf.py is byte-identical to the crate's; its mtmd is a little older than the
# crate's). llama-mtmd-cli is built from the crate's own tree (CPU, Release, GGML_NATIVE=ON without
# AMX and with OpenMP, as Ember's build; see .cargo/config.toml), via a small wrapper CMake project,
# because the crate's tree lacks the other tools that LLAMA_BUILD_TOOLS would pull in. A second
# binary, vlmref-mtmd-cli, is the same mtmd-cli.cpp with a few print statements added, written to
# the file $VLMREF_DUMP (the prompt after the chat template, the chunk token ids, the image
# embeddings, each step's top logit and margin, each sampled id); the script checks that it
# generates exactly the plain CLI's text.
#
# llama-mtmd-cli itself loses its queued log output now and then when this tiny model's run ends
# (empty stdout, exit status 0), so each run is retried until its output is complete.
#
# Rerun (from anywhere; ~15 min on 2 cores, most of it the llama.cpp build, which is kept in
# $VLMREF_BUILD for reruns; then ~30 s):
#   scripts/reference/vlm.sh
# Environment: VLMREF_VENV (default /tmp/vlmref), VLMREF_BUILD (default /tmp/vlmref-build),
# VLMREF_CMAKE_SRC (default /tmp/vlmref-cmake), VLMREF_WORK (default /tmp/vlmref-work),
# VLMREF_JOBS (default 2). torch comes from plain PyPI
# (with its CUDA libraries, ~5 GB; only the CPU is used). To reuse a venv that already has torch
# 2.15.0 and transformers 5.25.0 instead, set VLMREF_BASE_SITE=/path/to/venv/lib/python3.11/site-packages:
# the new venv then sees those packages through a .pth file and pip installs only what is missing.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="$repo/crates/ember-engines/tests/fixtures/vlm"
images="$repo/crates/ember-engines/tests/fixtures/vision/images"
venv="${VLMREF_VENV:-/tmp/vlmref}"
build="${VLMREF_BUILD:-/tmp/vlmref-build}"
work="${VLMREF_WORK:-/tmp/vlmref-work}"
jobs="${VLMREF_JOBS:-2}"

llama_src="$(ls -d "$HOME"/.cargo/registry/src/*/llama-cpp-sys-2-0.1.161/llama.cpp | head -n1)"
[ -f "$llama_src/tools/mtmd/mtmd-cli.cpp" ] || { echo "vendored llama.cpp not found (cargo fetch first)" >&2; exit 1; }

sdist_url="https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-0.3.36.tar.gz"
sdist_sha256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
conv="$work/converter/llama_cpp_python-0.3.36/vendor/llama.cpp"

mkdir -p "$work"

# 1. The converter and gguf-py (from the llama-cpp-python sdist, see above).
if [ ! -f "$conv/convert_hf_to_gguf.py" ]; then
  mkdir -p "$work/converter"
  curl -fsSL -o "$work/converter/sdist.tar.gz" "$sdist_url"
  echo "$sdist_sha256  $work/converter/sdist.tar.gz" | sha256sum -c -
  tar -xzf "$work/converter/sdist.tar.gz" -C "$work/converter" \
    llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py \
    llama_cpp_python-0.3.36/vendor/llama.cpp/conversion \
    llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py
  rm "$work/converter/sdist.tar.gz"
fi
if ! cmp -s "$conv/convert_hf_to_gguf.py" "$llama_src/convert_hf_to_gguf.py"; then
  echo "note: the converter script differs from the crate's convert_hf_to_gguf.py" >&2
fi

# 2. The Python environment.
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  if [ -n "${VLMREF_BASE_SITE:-}" ]; then
    site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "$VLMREF_BASE_SITE" > "$site/_vlmref_base.pth"
  fi
fi
"$venv/bin/pip" install -q torch==2.15.0 transformers==5.25.0 safetensors==0.8.0 numpy==2.4.6 \
  sentencepiece==0.2.1 protobuf "$conv/gguf-py"
py="$venv/bin/python"

# 3. llama-mtmd-cli (and the id-printing copy) from the crate's llama.cpp.
cmsrc="${VLMREF_CMAKE_SRC:-/tmp/vlmref-cmake}"   # the wrapper project (kept next to its build dir)
mkdir -p "$cmsrc"
"$py" "$here/vlm.py" patch-cli --src "$llama_src/tools/mtmd/mtmd-cli.cpp" --out "$cmsrc/vlmref-mtmd-cli.cpp"
cat > "$cmsrc/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.14)
project(vlmref C CXX)
add_subdirectory(${LLAMA_SRC} llama.cpp)
find_package(Threads REQUIRED)
foreach(t llama-mtmd-cli vlmref-mtmd-cli)
  if (t STREQUAL "llama-mtmd-cli")
    add_executable(${t} ${LLAMA_SRC}/tools/mtmd/mtmd-cli.cpp)
  else()
    add_executable(${t} ${CMAKE_CURRENT_SOURCE_DIR}/vlmref-mtmd-cli.cpp)
    target_include_directories(${t} PRIVATE ${LLAMA_SRC}/tools/mtmd)
  endif()
  target_link_libraries(${t} PRIVATE llama-common mtmd Threads::Threads)
  target_compile_features(${t} PRIVATE cxx_std_17)
endforeach()
EOF
no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
cmake_flags=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
  -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_MTMD=ON -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF
  -DGGML_NATIVE=ON -DGGML_OPENMP=ON)
CFLAGS="$no_amx" CXXFLAGS="$no_amx" cmake -S "$cmsrc" -B "$build" -DLLAMA_SRC="$llama_src" \
  "${cmake_flags[@]}" > "$work/cmake-configure.log"
cmake --build "$build" --target llama-mtmd-cli vlmref-mtmd-cli -j "$jobs" > "$work/cmake-build.log" 2>&1 \
  || { tail -40 "$work/cmake-build.log" >&2; exit 1; }
cli="$build/llama-mtmd-cli"
idcli="$build/vlmref-mtmd-cli"

# 4. The tiny model, and its GGUFs.
hf="$work/tiny-random-gemma3-vlm"
rm -rf "$hf"
"$py" "$here/vlm.py" build --out "$hf"
"$py" "$conv/convert_hf_to_gguf.py" "$hf" --outtype f32 --outfile "$work/model.gguf" > "$work/convert-text.log" 2>&1 \
  || { tail -20 "$work/convert-text.log" >&2; exit 1; }
"$py" "$conv/convert_hf_to_gguf.py" "$hf" --outtype f32 --mmproj --outfile "$work/mmproj.gguf" > "$work/convert-mmproj.log" 2>&1 \
  || { tail -20 "$work/convert-mmproj.log" >&2; exit 1; }

# 5. The reference runs: greedy, 16 tokens, from the fixture directory so the command line holds
#    only relative file names.
mkdir -p "$out"
rm -f "$out"/*
cp "$work/model.gguf" "$work/mmproj.gguf" "$out/"
cp "$hf/config.json" "$out/hf_config.json"
stage="$work/stage"   # the runs' working directory: the two GGUFs and the images, by plain names
rm -rf "$stage" && mkdir -p "$stage"
cp "$work/model.gguf" "$work/mmproj.gguf" "$images/cat.png" "$images/astronaut.png" "$stage/"
runs="$work/runs"
rm -rf "$runs" && mkdir -p "$runs"
n_predict=16
flags=(-m model.gguf --mmproj mmproj.gguf -c 512 -n "$n_predict" --temp 0 --seed 42 -t 2)
cases='[]'
# llama-mtmd-cli prints through llama.cpp's asynchronous logger, which now and then loses
# everything still queued when this tiny model's run (~20 ms) exits (stdout empty, exit status 0).
# A complete run's stdout ends with the "\n\n" printed at exit; retry until one is complete.
run_cli() { # run_cli BINARY OUT_PREFIX ARGS...
  local bin="$1" pfx="$2"; shift 2
  local try
  for try in 1 2 3 4 5 6 7 8; do
    (cd "$stage" && VLMREF_DUMP="$pfx.dump" "$bin" "$@" > "$pfx.out" 2> "$pfx.err") || { tail -30 "$pfx.err" >&2; exit 1; }
    if [ "$(tail -c 2 "$pfx.out" | od -An -c | tr -d ' ')" = '\n\n' ]; then return 0; fi
    echo "retrying $(basename "$bin") ($pfx): incomplete output" >&2
  done
  echo "no complete output from $bin" >&2; exit 1
}
run_case() { # run_case NAME IMAGE PROMPT
  local name="$1" image="$2" prompt="$3"
  local args=("${flags[@]}" --image "$image" -p "$prompt")
  run_cli "$cli" "$runs/$name" "${args[@]}"
  run_cli "$idcli" "$runs/$name.ids" "${args[@]}"
  cases="$("$py" -c 'import json,sys; c=json.loads(sys.argv[1]); c.append(dict(name=sys.argv[2], image=sys.argv[3], prompt=sys.argv[4], n_predict=int(sys.argv[5]), argv=["llama-mtmd-cli"]+sys.argv[6:])); print(json.dumps(c))' \
    "$cases" "$name" "$image" "$prompt" "$n_predict" "${args[@]}")"
}
run_case cat_describe cat.png "Describe this image."
run_case astronaut_describe astronaut.png "Describe this image."
run_case cat_question cat.png "What animal is this? Answer in one word."
echo "$cases" > "$runs/cases.json"

build_info="$("$cli" --version 2>&1 | tr '\n' ' ' | sed 's/ *$//')"
"$py" "$here/vlm.py" record --hf "$hf" --runs "$runs" --cases "$runs/cases.json" --out "$out/reference.json" \
  --llama-tree "llama-cpp-sys-2-0.1.161/llama.cpp (crate source, no git metadata; ggml 0.26.0, llama.cpp 0.6.0-dev)" \
  --build-info "$build_info" \
  --cmake-flags "${cmake_flags[*]} CFLAGS/CXXFLAGS=$no_amx" \
  --converter "convert_hf_to_gguf.py + conversion/ + gguf-py 0.19.0 from llama-cpp-python 0.3.36's vendored llama.cpp (0c1e57098bba43ac29e6e3b677cdceebdd22334f), --outtype f32" \
  --sampling "{\"temperature\": 0, \"seed\": 42, \"n_predict\": $n_predict, \"n_ctx\": 512, \"threads\": 2}"
ls -la "$out"
