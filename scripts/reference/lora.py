#!/usr/bin/env python3
"""The LoRA fixtures in crates/ember-engines/tests/fixtures/lora/, run by lora.sh:

1. A PEFT LoRA adapter for Qwen2.5-Coder-0.5B-Instruct with seeded random weights, written as PEFT
   writes one: adapter_config.json and adapter_model.safetensors (f16; tensors named
   `base_model.model.model.layers.{i}.self_attn.{q,v}_proj.lora_{A,B}.weight`, A [r, in], B [out, r]).
   PEFT itself starts B at zero (no change); here both are random, so the adapter changes the
   greedy text. Written with numpy (the safetensors layout is a JSON header and raw bytes), so no
   torch is needed.
2. The same adapter as llama.cpp's GGUF LoRA, written by llama.cpp's own gguf-py the way its
   convert_lora_to_gguf.py names and lays it out (`blk.{i}.attn_{q,v}.weight.lora_{a,b}`, f32,
   general.type "adapter", adapter.type "lora", adapter.lora.alpha): the reference's converter,
   independent of Ember's (`llm/lora.rs`).
3. llama.cpp's llama-completion (built as its users build it: scripts/bench/build-llama-tools.sh)
   generating greedily from a raw prompt, with and without the adapter.

reference.json holds the prompt, both texts, the versions and the base model's sha256. Ember's
test converts the PEFT files itself and must generate the same texts.

    python lora.py --model MODEL.gguf --completion LLAMA_COMPLETION --out DIR
"""

import argparse
import hashlib
import json
import struct
import subprocess
import tempfile
from pathlib import Path

import gguf
import numpy as np

SEED = 20261207
RANK = 4
ALPHA = 8.0
LAYERS = 24
HIDDEN = 896
KV = 128
# Standard deviations that change Qwen2.5-0.5B's greedy text from its first line and keep it code-like
# (at 0.04 and below the 32 tokens do not change; at 0.05 it only repeats a token).
STD_A = 0.045
STD_B = 0.045
PROMPT = "def is_prime(n):\n"
MAX_TOKENS = 32
THREADS = 2


def adapter_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    tensors = {}
    for layer in range(LAYERS):
        for proj, out in (("q_proj", HIDDEN), ("v_proj", KV)):
            name = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{name}.lora_A.weight"] = rng.normal(0, STD_A, (RANK, HIDDEN)).astype(np.float16)
            tensors[f"{name}.lora_B.weight"] = rng.normal(0, STD_B, (out, RANK)).astype(np.float16)
    return tensors


def write_safetensors(tensors: dict[str, np.ndarray], path: Path) -> None:
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        data = tensors[name].tobytes()
        header[name] = {"dtype": "F16", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def write_gguf(tensors: dict[str, np.ndarray], path: Path) -> None:
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, ALPHA)
    names = {"q_proj": "attn_q", "v_proj": "attn_v"}
    for name in sorted(tensors):
        parts = name.split(".")
        layer, proj, which = parts[4], parts[6], parts[7]
        suffix = {"lora_A": "lora_a", "lora_B": "lora_b"}[which]
        writer.add_tensor(f"blk.{layer}.{names[proj]}.weight.{suffix}", tensors[name].astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def complete(binary: str, model: str, lora: Path | None) -> str:
    command = [binary, "-m", model, "-p", PROMPT, "-n", str(MAX_TOKENS), "--temp", "0", "--seed", "0",
               "-t", str(THREADS), "-no-cnv", "--no-display-prompt", "--no-warmup"]
    if lora is not None:
        command += ["--lora", str(lora)]
    run = subprocess.run(command, capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL)
    # The tool ends its output with a blank line (and " [end of text]" before it at an EOS, which
    # 32 tokens of these cases never reach).
    text = run.stdout
    assert text.endswith("\n\n") and "[end of text]" not in text, repr(text)
    return text[:-2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--completion", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = adapter_tensors()
    write_safetensors(tensors, out / "adapter_model.safetensors")
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "Qwen/Qwen2.5-Coder-0.5B-Instruct",
        "r": RANK, "lora_alpha": ALPHA, "lora_dropout": 0.0, "bias": "none", "use_rslora": False,
        "target_modules": ["q_proj", "v_proj"], "model_type": "qwen2",
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    with tempfile.TemporaryDirectory() as work:
        reference_gguf = Path(work) / "adapter.gguf"
        write_gguf(tensors, reference_gguf)
        with_lora = complete(args.completion, args.model, reference_gguf)
    base = complete(args.completion, args.model, None)
    assert with_lora != base, "the adapter does not change the greedy text"
    reference = {
        "prompt": PROMPT,
        "raw": True,
        "max_tokens": MAX_TOKENS,
        "with_lora": with_lora,
        "without_lora": base,
        "model_sha256": hashlib.sha256(Path(args.model).read_bytes()).hexdigest(),
        "adapter": {"seed": SEED, "rank": RANK, "alpha": ALPHA, "std_a": STD_A, "std_b": STD_B},
        "reference": "llama-completion (llama.cpp from llama-cpp-python 0.3.36's sdist, GGML_NATIVE=ON), "
                     "--temp 0 -t 2, adapter written by gguf-py",
        "numpy": np.__version__,
    }
    (out / "reference.json").write_text(json.dumps(reference, indent=2) + "\n")


if __name__ == "__main__":
    main()
