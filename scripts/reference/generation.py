#!/usr/bin/env python3
"""Reference greedy generations for Ember's GGUF text-generation models, via llama-cpp-python.

Usage:
    python generation.py --gguf PATH --model-id ID --out tests/fixtures/generation/<slug>.json

Run once by hand (see README.md); the JSON it writes is committed and compared against by the
Rust tests. For each case:
  1. chat cases: the chat template stored in the GGUF (tokenizer.chat_template) is rendered with
     jinja2 the way transformers' apply_chat_template does it (ImmutableSandboxedEnvironment,
     trim_blocks=True, lstrip_blocks=True, loopcontrols, tojson/raise_exception/strftime_now),
     with messages, add_generation_prompt=True and the vocab's bos/eos token strings.
     raw cases: the prompt string is used as-is.
  2. prompt_tokens = llm.tokenize(prompt_text.encode(), add_bos=True, special=True), i.e. llama.cpp
     llama_tokenize(add_special=True, parse_special=True): BOS is only prepended when the GGUF's
     tokenizer.ggml.add_bos_token says so (and likewise EOS for add_eos_token).
  3. greedy decoding: the prompt is evaluated in one llm.eval() call, then repeatedly take
     numpy argmax of the last token's logits (llama_get_logits, read straight from the context;
     no llama.cpp sampler involved), stop at an end-of-generation token (llama_vocab_is_eog) or
     after max_tokens.
"""

import argparse
import hashlib
import json
import os
import sys
from datetime import datetime

import jinja2
import jinja2.ext
import llama_cpp
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment
from llama_cpp import Llama

N_CTX = 4096
N_BATCH = 512
N_THREADS = 2
MAX_TOKENS = 64

CASES = [
    {"name": "simple_fact",
     "messages": [{"role": "user", "content": "What is the capital of France?"}]},
    {"name": "system_user",
     "messages": [{"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
                  {"role": "user", "content": "Why is the sky blue?"}]},
    {"name": "multi_turn",
     "messages": [{"role": "user", "content": "My name is Alice. Please remember it."},
                  {"role": "assistant", "content": "Nice to meet you, Alice! I will remember your name."},
                  {"role": "user", "content": "What is my name?"}]},
    {"name": "non_ascii",
     "messages": [{"role": "user", "content": "Translate 'good morning' into Japanese and Chinese."}]},
    {"name": "non_ascii_chinese",
     "messages": [{"role": "user", "content": "请用中文介绍一下你自己。"}]},
    {"name": "code",
     "messages": [{"role": "user", "content": "Write a Python function that checks whether a number is prime."}]},
    {"name": "raw_completion", "raw": True, "prompt": "The capital of France is"},
]


def jinja_env():
    """Mirror transformers.utils.chat_template_utils._compile_jinja_template."""

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    envs = {}
    for trim in (True, False):
        env = ImmutableSandboxedEnvironment(trim_blocks=trim, lstrip_blocks=trim,
                                            extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = strftime_now
        envs[trim] = env
    return envs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--model-id", required=True)
    ap.add_argument("--out", required=True)
    # llama.cpp enables flash attention on CPU by default ("auto"), and so does Ember.
    ap.add_argument("--flash-attn", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--llama-cpp-commit", default=os.environ.get("LLAMA_CPP_COMMIT", "unknown"))
    args = ap.parse_args()

    llm = Llama(model_path=args.gguf, n_ctx=N_CTX, n_batch=N_BATCH, n_ubatch=N_BATCH,
                n_threads=N_THREADS, n_threads_batch=N_THREADS, logits_all=False,
                flash_attn=args.flash_attn, verbose=False, seed=0)
    vocab = llm._model.vocab
    n_vocab = llm.n_vocab()
    meta = llm.metadata
    template = meta["tokenizer.chat_template"]
    bos_id, eos_id, eot_id = llm.token_bos(), llm.token_eos(), llm._model.token_eot()
    bos_token = llm._model.token_get_text(bos_id) if bos_id != -1 else ""
    eos_token = llm._model.token_get_text(eos_id) if eos_id != -1 else ""
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
    add_eos = bool(llama_cpp.llama_vocab_get_add_eos(vocab))
    eog_ids = [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    print(f"bos={bos_id} {bos_token!r} eos={eos_id} {eos_token!r} eot={eot_id} add_bos={add_bos} "
          f"add_eos={add_eos} eog={eog_ids}", file=sys.stderr)

    envs = jinja_env()
    compiled = {trim: env.from_string(template) for trim, env in envs.items()}

    def is_eog(tok):
        return bool(llama_cpp.llama_vocab_is_eog(vocab, tok)) or tok in (eos_id, eot_id)

    out_cases = []
    for case in CASES:
        raw = bool(case.get("raw", False))
        messages = case.get("messages")
        if raw:
            prompt_text = case["prompt"]
        else:
            kwargs = dict(messages=messages, add_generation_prompt=True,
                          bos_token=bos_token, eos_token=eos_token)
            prompt_text = compiled[True].render(**kwargs)
            alt = compiled[False].render(**kwargs)
            if alt != prompt_text:
                print(f"NOTE [{case['name']}]: trim_blocks/lstrip_blocks=False renders differently:\n"
                      f"{alt!r}", file=sys.stderr)
        prompt_tokens = llm.tokenize(prompt_text.encode("utf-8"), add_bos=True, special=True)

        llm.reset()
        llm.eval(prompt_tokens)
        completion = []
        margins = []  # top-1 minus top-2 logit at every decoding step (incl. the EOG step)
        finish_reason = "length"
        for _ in range(MAX_TOKENS):
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))
            tok = int(np.argmax(logits))
            top2 = np.partition(logits, -2)[-2:]
            margins.append(round(float(top2[1] - top2[0]), 4))
            if is_eog(tok):
                finish_reason = "stop"
                break
            completion.append(tok)
            llm.eval([tok])
        text_bytes = llm.detokenize(completion)
        utf8_valid = True
        try:
            completion_text = text_bytes.decode("utf-8")
        except UnicodeDecodeError:
            utf8_valid = False
            completion_text = text_bytes.decode("utf-8", errors="replace")
            print(f"NOTE [{case['name']}]: completion is not valid UTF-8 (cut mid-character)", file=sys.stderr)
        print(f"--- {case['name']} ({len(prompt_tokens)} prompt tokens, {len(completion)} generated, "
              f"{finish_reason})\n{prompt_text}\x1b[1m{completion_text}\x1b[0m", file=sys.stderr)
        out_cases.append({
            "name": case["name"],
            "messages": messages if not raw else None,
            "prompt": case["prompt"] if raw else None,
            "raw": raw,
            "max_tokens": MAX_TOKENS,
            "prompt_text": prompt_text,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "completion_text": completion_text,
            "completion_utf8_valid": utf8_valid,
            "finish_reason": finish_reason,
            "step_logit_margins": margins,
        })

    fixture = {
        "model": args.model_id,
        "reference": f"llama-cpp-python=={llama_cpp.__version__} (llama.cpp {args.llama_cpp_commit})",
        "gguf_sha256": sha256(args.gguf),
        "n_ctx": N_CTX,
        "n_batch": N_BATCH,
        "n_ubatch": N_BATCH,
        "flash_attn": args.flash_attn,
        "n_threads": N_THREADS,
        "kv_cache_type": "f16 (llama.cpp default)",
        "decoding": ("greedy: argmax over the last position's logits (numpy, first index on ties), "
                     "no sampler/penalties; stop on llama_vocab_is_eog; EOG token not included"),
        "step_logit_margins": ("per decoding step, top-1 minus top-2 logit; a tiny margin marks a step where "
                               "an implementation with slightly different numerics may legitimately diverge"),
        "chat_template_sha256": hashlib.sha256(template.encode("utf-8")).hexdigest(),
        "chat_template_rendering": ("jinja2 ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, "
                                    "loopcontrols) as in transformers' apply_chat_template; variables: messages, "
                                    "add_generation_prompt=true, bos_token, eos_token"),
        "tokenize": "llama_tokenize(add_special=true, parse_special=true)",
        "detokenize": ("completion_text = llama_token_to_piece of each completion token (special=false) "
                       "concatenated as bytes, decoded as UTF-8; if max_tokens cut a multi-byte character, "
                       "completion_utf8_valid=false and invalid bytes are U+FFFD (errors='replace')"),
        "bos_token": {"id": bos_id, "text": bos_token},
        "eos_token": {"id": eos_id, "text": eos_token},
        "eot_token_id": eot_id,
        "add_bos": add_bos,
        "add_eos": add_eos,
        "eog_token_ids": eog_ids,
        "cases": out_cases,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {args.out}", file=sys.stderr)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


if __name__ == "__main__":
    main()
