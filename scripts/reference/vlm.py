"""Tiny random Gemma 3 vision-language model for the VLM fixtures (see vlm.sh).

    python vlm.py build  --out HF_DIR               # seeded random Gemma3ForConditionalGeneration + tokenizer
    python vlm.py patch-cli --src mtmd-cli.cpp --out vlmref-mtmd-cli.cpp
    python vlm.py record --hf HF_DIR --runs RUN_DIR --out reference.json ...

Nothing is downloaded: the tokenizer is a SentencePiece model trained here on a small corpus, the
weights come from torch.manual_seed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
from pathlib import Path

SEED = 20260806

# Gemma's fixed low ids, then the special tokens the chat template and mtmd use.
PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
SPECIALS = ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
VOCAB_SIZE = 512

TEXT_CONFIG = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    query_pre_attn_scalar=16,
    max_position_embeddings=512,
    sliding_window=512,  # >= every context used, so sliding and full attention agree
    rms_norm_eps=1e-6,
    hidden_activation="gelu_pytorch_tanh",
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
    tie_word_embeddings=True,
)
VISION_CONFIG = dict(
    model_type="siglip_vision_model",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_channels=3,
    image_size=64,
    patch_size=8,  # 8x8 = 64 patches
    layer_norm_eps=1e-6,
    hidden_act="gelu_pytorch_tanh",
    vision_use_head=False,
)
MM_TOKENS_PER_IMAGE = 16  # 4x4 after the projector's 2x2 average pool

# Gemma 3's own chat template (google/gemma-3-*-it), unchanged.
CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)

CORPUS = """\
A cat sits on a warm windowsill and watches the birds outside.
The astronaut floats above the Earth in a white space suit.
Describe this image in one sentence.
What is in the picture? There is a small orange cat with green eyes.
The quick brown fox jumps over the lazy dog.
An espresso cup stands on a wooden table next to a spoon.
The photo shows a person, a helmet, a flag and the blue sky.
Numbers like 1, 2, 3, 10 and 2026 appear in text too.
Images, pictures and photos: colors are red, green, blue, yellow, black and white.
Ember runs models on the machine you already have.
"""


def train_tokenizer(out: Path) -> None:
    import sentencepiece as spm

    corpus = out / "corpus.txt"
    corpus.write_text(CORPUS * 20, encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(out / "tokenizer"),
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        character_coverage=1.0,
        # no byte pieces: every piece is valid UTF-8 text, so generated text is too (random weights pick
        # any piece); "\n", which lines never contain, is a user-defined piece instead
        byte_fallback=False,
        split_digits=True,
        add_dummy_prefix=False,  # Gemma 3 has no space prefix
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece=PAD, eos_piece=EOS, bos_piece=BOS, unk_piece=UNK,
        user_defined_symbols=SPECIALS + ["\n"],
        num_threads=1,
        minloglevel=2,
    )
    corpus.unlink()
    (out / "tokenizer.vocab").unlink()


def build(out: Path) -> None:
    import torch
    import sentencepiece as spm
    from safetensors.torch import save_file
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    out.mkdir(parents=True, exist_ok=True)
    train_tokenizer(out)
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    assert sp.get_piece_size() == VOCAB_SIZE, sp.get_piece_size()
    ids = {t: sp.piece_to_id(t) for t in [PAD, EOS, BOS, UNK] + SPECIALS}
    assert [ids[t] for t in [PAD, EOS, BOS, UNK]] == [0, 1, 2, 3], ids

    config = Gemma3Config(
        text_config=TEXT_CONFIG,
        vision_config=VISION_CONFIG,
        mm_tokens_per_image=MM_TOKENS_PER_IMAGE,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
        tie_word_embeddings=True,
    )
    config.architectures = ["Gemma3ForConditionalGeneration"]
    torch.manual_seed(SEED)
    model = Gemma3ForConditionalGeneration(config).eval()

    # Re-draw every tensor with a scale that keeps activations O(1): with the default 0.02 init the
    # logits of a model this small are nearly uniform (greedy picks would hang on near-ties) and the
    # image would barely change them.
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.ndim >= 2:
                fan_in = math.prod(p.shape[1:])
                if "embed_tokens" in name:
                    # Gemma scales the input embeddings by sqrt(hidden): this makes them RMS 0.25, small
                    # next to the blocks' (post-normed, RMS ~1) outputs. With input embeddings as large
                    # as those, the tied output matrix mostly copies the last input token back.
                    std = 0.25 / math.sqrt(p.shape[1])
                elif "position_embedding" in name:
                    std = 0.5
                else:
                    std = 1.0 / math.sqrt(fan_in)
                p.copy_(torch.randn(p.shape, generator=gen) * std)
            elif name == "model.language_model.norm.weight":
                # final norm, (1 + w) ~ 4: spreads the logits (std ~1) so greedy picks have clear margins
                p.copy_(3.0 + torch.randn(p.shape, generator=gen) * 0.1)
            elif name.endswith(("q_norm.weight", "k_norm.weight")) and "vision_tower" not in name:
                # (1 + w) ~ 3 on queries and keys: attention scores of std ~9 instead of ~1, so
                # attention is peaked and position-dependent; near-uniform attention made every
                # step see the same context average and the output a single repeated piece
                p.copy_(2.0 + torch.randn(p.shape, generator=gen) * 0.1)
            elif name.endswith("norm.weight") and "vision_tower" not in name:
                # Gemma RMSNorm multiplies by (1 + w)
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif name.endswith(".weight"):  # SigLIP LayerNorm
                p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.1)
            else:  # biases
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)

        # the control tokens' rows (<pad> .. <image_soft_token>, ids 0-8) 100x smaller: their logits
        # stay near 0, so greedy decoding never picks them (a real model never emits
        # <image_soft_token>; random weights did, and its text is awkward in a reference)
        emb = model.model.language_model.embed_tokens.weight
        n_ctl = 4 + len(SPECIALS)
        emb[:n_ctl] *= 0.01

    model.save_pretrained(out, safe_serialization=True)
    # transformers 5 writes the SigLIP tower as `vision_tower.*`; the Hub checkpoints (and llama.cpp's
    # tensor map) name it `vision_tower.vision_model.*`, so store it under the Hub names.
    from safetensors.torch import load_file
    tensors = load_file(out / "model.safetensors")
    hub = {}
    for k, v in tensors.items():
        if k.startswith("vision_tower.") and not k.startswith("vision_tower.vision_model."):
            k = "vision_tower.vision_model." + k[len("vision_tower."):]
        hub[k] = v.contiguous()
    save_file(dict(sorted(hub.items())), out / "model.safetensors", metadata={"format": "pt"})
    # check it loads back (every tensor found) with the library's own classes and gives the same logits
    reloaded, info = Gemma3ForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    reloaded.eval()
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    n_img = MM_TOKENS_PER_IMAGE
    input_ids = torch.tensor([[ids[BOS], ids["<start_of_image>"]] + [ids["<image_soft_token>"]] * n_img + [ids["<end_of_image>"], 10, 11]])
    pixel_values = torch.zeros(1, 3, VISION_CONFIG["image_size"], VISION_CONFIG["image_size"])
    pixel_values = torch.randn(pixel_values.shape, generator=torch.Generator().manual_seed(1))
    kw = dict(input_ids=input_ids, pixel_values=pixel_values,
              token_type_ids=(input_ids == ids["<image_soft_token>"]).long())
    with torch.no_grad():
        logits = reloaded(**kw).logits
        expected = model(**kw).logits
    assert logits.shape == (1, input_ids.shape[1], VOCAB_SIZE), logits.shape
    assert torch.equal(logits, expected), (logits - expected).abs().max()

    added = {str(ids[t]): {"content": t, "lstrip": False, "rstrip": False, "normalized": False,
                           "single_word": False, "special": True}
             for t in [PAD, EOS, BOS, UNK] + SPECIALS}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK,
        "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>",
        "added_tokens_decoder": added,
        "model_max_length": TEXT_CONFIG["max_position_embeddings"],
        "chat_template": CHAT_TEMPLATE,
    }, indent=2) + "\n", encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK}, indent=2) + "\n")
    size = VISION_CONFIG["image_size"]
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Gemma3ImageProcessor",
        "do_resize": True, "size": {"height": size, "width": size}, "resample": 2,
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "do_convert_rgb": True, "do_pan_and_scan": False,
        "image_seq_length": MM_TOKENS_PER_IMAGE,
        "processor_class": "Gemma3Processor",
    }, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 2, "eos_token_id": [1, ids["<end_of_turn>"]], "pad_token_id": 0, "do_sample": False}, indent=2) + "\n")
    print(json.dumps({"token_ids": ids, "n_params": sum(p.numel() for p in model.parameters())}))


# --- a copy of mtmd-cli.cpp that also prints the token ids (the plain CLI prints pieces only) ---

PATCHES = [
    # the prompt after the chat template, before the media marker is replaced
    ('    LOG_DBG("formatted_chat.prompt: %s\\n", formatted_chat.c_str());\n',
     '    LOG_DBG("formatted_chat.prompt: %s\\n", formatted_chat.c_str());\n'
     '    { std::string j = "[vlmref] formatted_chat "; j += json_quote(formatted_chat); fprintf(vlmref_out(), "%s\\n", j.c_str()); }\n'),
    # the chunks mtmd made of it: text token ids, media token counts
    ('    ctx.bitmaps.entries.clear();\n',
     '    for (size_t ci = 0; ci < mtmd_input_chunks_size(chunks.ptr.get()); ci++) {\n'
     '        auto ch = mtmd_input_chunks_get(chunks.ptr.get(), ci);\n'
     '        if (mtmd_input_chunk_get_type(ch) == MTMD_INPUT_CHUNK_TYPE_TEXT) {\n'
     '            size_t nt = 0; const llama_token * tk = mtmd_input_chunk_get_tokens_text(ch, &nt);\n'
     '            fprintf(vlmref_out(), "[vlmref] chunk text");\n'
     '            for (size_t k = 0; k < nt; k++) fprintf(vlmref_out(), " %d", tk[k]);\n'
     '            fprintf(vlmref_out(), "\\n");\n'
     '        } else {\n'
     '            fprintf(vlmref_out(), "[vlmref] chunk media n_tokens=%zu n_pos=%d\\n", mtmd_input_chunk_get_n_tokens(ch), (int) mtmd_input_chunk_get_n_pos(ch));\n'
     '        }\n'
     '    }\n'
     # the same prompt through mtmd_tokenize (what llama-cpp-2's MtmdContext::tokenize calls): the
     # whole formatted text with the marker, add_special and parse_special on
     '    {\n'
     '        mtmd::input_chunks chunks2(mtmd_input_chunks_init());\n'
     '        mtmd_input_text t2 = {formatted_chat.c_str(), formatted_chat.size(), add_bos, true};\n'
     '        int32_t r2 = mtmd_tokenize(ctx.ctx_vision.get(), chunks2.ptr.get(), &t2, bitmaps_c_ptr.data(), bitmaps_c_ptr.size());\n'
     '        fprintf(vlmref_out(), "[vlmref] mtmd_tokenize rc=%d\\n", (int) r2);\n'
     '        for (size_t ci = 0; r2 == 0 && ci < mtmd_input_chunks_size(chunks2.ptr.get()); ci++) {\n'
     '            auto ch = mtmd_input_chunks_get(chunks2.ptr.get(), ci);\n'
     '            if (mtmd_input_chunk_get_type(ch) == MTMD_INPUT_CHUNK_TYPE_TEXT) {\n'
     '                size_t nt = 0; const llama_token * tk = mtmd_input_chunk_get_tokens_text(ch, &nt);\n'
     '                fprintf(vlmref_out(), "[vlmref] tok2 text");\n'
     '                for (size_t k = 0; k < nt; k++) fprintf(vlmref_out(), " %d", tk[k]);\n'
     '                fprintf(vlmref_out(), "\\n");\n'
     '            } else {\n'
     '                fprintf(vlmref_out(), "[vlmref] tok2 media n_tokens=%zu n_pos=%d\\n", mtmd_input_chunk_get_n_tokens(ch), (int) mtmd_input_chunk_get_n_pos(ch));\n'
     '            }\n'
     '        }\n'
     '    }\n'
     '    ctx.bitmaps.entries.clear();\n'),
    # the greedy margin of each step: top logit minus the runner-up
    ('        llama_token token_id = common_sampler_sample(ctx.smpl, ctx.lctx, -1);\n',
     '        llama_token token_id = common_sampler_sample(ctx.smpl, ctx.lctx, -1);\n'
     '        { const float * lg = llama_get_logits_ith(ctx.lctx, -1); const int nv = llama_vocab_n_tokens(ctx.vocab);\n'
     '          float a = -1e30f, b = -1e30f; int ia = -1;\n'
     '          for (int k = 0; k < nv; k++) { if (lg[k] > a) { b = a; a = lg[k]; ia = k; } else if (lg[k] > b) { b = lg[k]; } }\n'
     '          fprintf(vlmref_out(), "[vlmref] step argmax=%d top=%.9g margin=%.9g\\n", ia, a, a - b); }\n'),
    # the image embeddings mtmd computed (what mtmd_helper_decode_image_chunk feeds the model)
    ('            GGML_ASSERT(embd != nullptr);\n',
     '            GGML_ASSERT(embd != nullptr);\n'
     '            { const size_t n = mtmd_input_chunk_get_n_tokens(chunk) * (size_t) llama_model_n_embd(ctx.model);\n'
     '              fprintf(vlmref_out(), "[vlmref] embd %zu", n);\n'
     '              for (size_t k = 0; k < n; k++) fprintf(vlmref_out(), " %.9g", embd[k]);\n'
     '              fprintf(vlmref_out(), "\\n"); }\n'),
    # every sampled token id
    ('        generated_tokens.push_back(token_id);\n',
     '        generated_tokens.push_back(token_id);\n'
     '        { std::string pc = common_token_to_piece(ctx.lctx, token_id); fprintf(vlmref_out(), "[vlmref] token %d ", token_id);\n'
     '          for (unsigned char b : pc) fprintf(vlmref_out(), "%02x", b); fprintf(vlmref_out(), "\\n"); }\n'),
]
JSON_HELPER = '''
#include <string>
#include <cstdio>
#include <cstdlib>
// the [vlmref] lines go to the file named by VLMREF_DUMP: on stderr, llama.cpp's logger thread
// would interleave its own lines with them
static FILE * vlmref_out() {
    static FILE * f = [] {
        const char * p = std::getenv("VLMREF_DUMP");
        FILE * o = p ? std::fopen(p, "w") : nullptr;
        return o ? o : stderr;
    }();
    return f;
}
static std::string json_quote(const std::string & s) {  // minimal JSON string escaping
    std::string o = "\\"";
    for (unsigned char c : s) {
        if (c == '"' || c == '\\\\') { o += '\\\\'; o += (char) c; }
        else if (c < 0x20) { char b[8]; snprintf(b, sizeof b, "\\\\u%04x", c); o += b; }
        else o += (char) c;
    }
    return o + "\\"";
}
'''


def patch_cli(src: Path, out: Path) -> None:
    text = src.read_text(encoding="utf-8")
    for old, new in PATCHES:
        assert text.count(old) == 1, f"patch anchor not found exactly once: {old!r}"
        text = text.replace(old, new)
    anchor = '#include "mtmd-helper.h"\n'
    assert text.count(anchor) == 1
    text = text.replace(anchor, anchor + JSON_HELPER)
    out.write_text(text, encoding="utf-8")


# --- reference.json ---

def parse_ids_log(path: Path) -> dict:
    formatted, chunks, chunks2, tokens, pieces, steps, embds = None, [], [], [], [], [], []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("[vlmref] "):
            continue
        rest = line[len("[vlmref] "):]
        if rest.startswith("formatted_chat "):
            formatted = json.loads(rest[len("formatted_chat "):])
        elif rest.startswith("mtmd_tokenize rc="):
            assert rest == "mtmd_tokenize rc=0", rest
        elif rest.startswith("tok2 text"):
            chunks2.append({"type": "text", "tokens": [int(t) for t in rest[len("tok2 text"):].split()]})
        elif rest.startswith("tok2 media"):
            m = re.match(r"tok2 media n_tokens=(\d+) n_pos=(\d+)", rest)
            chunks2.append({"type": "image", "n_tokens": int(m.group(1)), "n_pos": int(m.group(2))})
        elif rest.startswith("chunk text"):
            chunks.append({"type": "text", "tokens": [int(t) for t in rest[len("chunk text"):].split()]})
        elif rest.startswith("chunk media"):
            m = re.match(r"chunk media n_tokens=(\d+) n_pos=(\d+)", rest)
            chunks.append({"type": "image", "n_tokens": int(m.group(1)), "n_pos": int(m.group(2))})
        elif rest.startswith("step "):
            m = re.match(r"step argmax=(-?\d+) top=(\S+) margin=(\S+)", rest)
            steps.append({"argmax": int(m.group(1)), "top": float(m.group(2)), "margin": float(m.group(3))})
        elif rest.startswith("embd "):
            vals = rest.split()[1:]
            assert int(vals[0]) == len(vals) - 1
            embds.append([float(v) for v in vals[1:]])
        elif rest.startswith("token "):
            tid, piece_hex = (rest[len("token "):].split(" ", 1) + [""])[:2]
            tokens.append(int(tid))
            pieces.append(bytes.fromhex(piece_hex))
    assert [st["argmax"] for st in steps] == tokens, (steps, tokens)  # greedy: the sample is the argmax
    assert chunks2 == chunks, ("mtmd_tokenize and mtmd_tokenize_from_parts disagree", chunks2, chunks)
    return {"formatted_chat": formatted, "chunks": chunks, "tokens": tokens, "pieces": pieces,
            "steps": steps, "embds": embds}


def record(args) -> None:
    import torch
    import transformers
    import sentencepiece
    import gguf

    hf = Path(args.hf)
    runs = Path(args.runs)
    cases_in = json.loads(Path(args.cases).read_text())
    sp = sentencepiece.SentencePieceProcessor(model_file=str(hf / "tokenizer.model"))
    cases = []
    for c in cases_in:
        raw = (runs / f"{c['name']}.out").read_bytes()
        ids_raw = (runs / f"{c['name']}.ids.out").read_bytes()
        if raw != ids_raw:
            sys.exit(f"{c['name']}: the id-printing CLI printed {ids_raw!r}, the plain CLI {raw!r}")
        dump = parse_ids_log(runs / f"{c['name']}.ids.dump")
        # stdout: a newline after the prompt is evaluated, the pieces of the sampled tokens (not the
        # end-of-generation token), then "\n" (only when generation stopped on an end-of-generation
        # token) and "\n\n" at exit
        eog_ids = {sp.piece_to_id(EOS), sp.piece_to_id("<end_of_turn>")}  # llama.cpp's end-of-generation set here
        stopped = bool(dump["tokens"]) and dump["tokens"][-1] in eog_ids
        pieces = b"".join(dump["pieces"][:-1] if stopped else dump["pieces"])
        assert raw.startswith(b"\n") and raw[1:].startswith(pieces), (raw, pieces)
        generated_bytes = pieces
        generated = generated_bytes.decode("utf-8", errors="replace")
        prompt_tokens = []
        for ch in dump["chunks"]:
            prompt_tokens += ch["tokens"] if ch["type"] == "text" else [None] * ch["n_tokens"]
        cases.append({
            "name": c["name"],
            "image": c["image"],
            "prompt": c["prompt"],
            "argv": c["argv"],
            "command": shlex.join(c["argv"]),
            "formatted_prompt": dump["formatted_chat"],
            # what mtmd made of the formatted prompt (the CLI's mtmd_tokenize_from_parts; checked equal to
            # mtmd_tokenize(formatted_prompt, add_special=true, parse_special=true, [bitmap]))
            "prompt_chunks": dump["chunks"],
            "prompt_tokens_with_image_as_null": prompt_tokens,
            "generated_text": generated,
            "generated_text_hex": generated_bytes.hex(),
            "cli_stdout": raw.decode("utf-8", errors="replace"),
            "generated_tokens": dump["tokens"],
            # llama.cpp's common_token_to_piece of each id (bytes; a byte-fallback piece may be part of a character)
            "generated_pieces": [p.decode("utf-8", errors="replace") for p in dump["pieces"]],
            "generated_pieces_hex": [p.hex() for p in dump["pieces"]],
            "stopped_on_eog": stopped,
            # top logit minus the runner-up at each step (llama.cpp f32 logits on this CPU); another
            # build may legitimately pick differently only where this is tiny
            "step_logit_margins": [round(st["margin"], 6) for st in dump["steps"]],
            "min_step_logit_margin": round(min(st["margin"] for st in dump["steps"]), 6),
            # the image chunk's embeddings as mtmd returned them (n_tokens x n_embd, row-major),
            # rounded to 7 significant digits
            "image_embeddings": {"n_tokens": MM_TOKENS_PER_IMAGE, "n_embd": TEXT_CONFIG["hidden_size"],
                                 "values": [[float(f"{v:.7g}") for v in e] for e in dump["embds"]]},
        })
    texts = [c["generated_text"] for c in cases]
    if len(set(texts)) != len(texts):
        sys.exit(f"two cases generated the same text: {texts}")

    tok = {sp.id_to_piece(i): i for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.id_to_piece(i) in SPECIALS}
    ref = {
        "description": "Tiny random Gemma 3 VLM (Gemma3ForConditionalGeneration), converted with llama.cpp's "
                       "convert_hf_to_gguf.py (text GGUF + --mmproj), generated greedily by llama-mtmd-cli built "
                       "from the llama.cpp that llama-cpp-sys-2 0.1.161 vendors. Made by scripts/reference/vlm.sh.",
        "model": "model.gguf",
        "mmproj": "mmproj.gguf",
        "media_marker": "<__media__>",
        "special_tokens": tok,
        "image_preprocessing": {
            "projector_type": "gemma3",
            "image_size": VISION_CONFIG["image_size"],
            "patch_size": VISION_CONFIG["patch_size"],
            "n_merge": 2,
            "tokens_per_image": MM_TOKENS_PER_IMAGE,
            "resize": "aspect-preserving bilinear (pillow-style) resize to fit 64x64, new size rounded up, "
                      "centered on a black (0,0,0) 64x64 canvas (PAD_CEIL, offset = (64 - new) / 2 rounded down)",
            "normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "scale": "x / 255"},
            "image_wrapped_in": ["<start_of_image>", "<end_of_image>"],
            "attention_over_image_tokens": "non-causal (mtmd_decode_use_non_causal is true for gemma3)",
        },
        "sampling": args.sampling,
        "cases": cases,
        "versions": {
            "llama_cpp_sys_2": "0.1.161 (llama-cpp-2 0.1.160)",
            "llama_cpp_tree": args.llama_tree,
            "llama_cpp_build_info": args.build_info,
            "cmake_flags": args.cmake_flags,
            "converter": args.converter,
            "gguf_py": gguf.__version__ if hasattr(gguf, "__version__") else "0.19.0 (from the converter's tree)",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "sentencepiece": sentencepiece.__version__,
            "python": sys.version.split()[0],
        },
        "architecture": {
            "hf_class": "Gemma3ForConditionalGeneration",
            "gguf_text_arch": "gemma3",
            "seed": SEED,
            "config": json.loads((hf / "config.json").read_text()),
        },
    }
    Path(args.out).write_text(json.dumps(ref, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", required=True)
    p = sub.add_parser("patch-cli")
    p.add_argument("--src", required=True)
    p.add_argument("--out", required=True)
    r = sub.add_parser("record")
    for k in ["hf", "runs", "cases", "out", "llama-tree", "build-info", "cmake-flags", "converter", "sampling"]:
        r.add_argument("--" + k, required=True)
    args = ap.parse_args()
    if args.cmd == "build":
        build(Path(args.out))
    elif args.cmd == "patch-cli":
        patch_cli(Path(args.src), Path(args.out))
    else:
        args.sampling = json.loads(args.sampling)
        record(args)


if __name__ == "__main__":
    main()
