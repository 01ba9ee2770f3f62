#!/usr/bin/env python3
"""Reference phoneme ids and waveforms for Ember's text-to-speech engine, computed with espeak-ng and
ONNX Runtime's Python API.

Usage (from the repository root, in a venv in /tmp with `pip install onnxruntime==1.28.0 numpy`, and
espeak-ng installed):
    python scripts/reference/tts.py \
        --piper-dir ~/.cache/ember/models/hf--rhasspy--piper-en-us-joe-medium \
        --kokoro-dir ~/.cache/ember/models/hf--hexgrad--kokoro-82m \
        --out crates/ember-engines/tests/fixtures/tts/reference.json

Run once by hand; the JSON it writes is committed and compared against by
`crates/ember-engines/tests/tts_reference.rs`. Nothing here imports Ember: the text splitting, the
espeak-ng calls and the id mapping are written again from their definitions.

- Text: clauses end at `. ! ? , ; :` (a run of marks and closing quotes counts as one) followed by a
  space or the end; `. ! ?` end a sentence. Each clause is phonemized alone by
  `espeak-ng -q --ipa -b 1 -v <voice> --stdin`, its output lines joined by spaces with language flags
  `(xx)` and U+200D removed; then its mark is appended, plus a space after `, ; :` (Piper's rule).
- Piper (en_US-joe-medium): NFD code points through `phoneme_id_map` as `^ _ (id _)* $`; inputs
  `input`, `input_lengths`, `scales` = [noise_scale 0, length_scale 1, noise_w 0]: both noises at 0
  make VITS deterministic (the graph draws them with RandomNormalLike). Each call's audio is scaled
  to a peak of 1, as Piper's `normalize_audio` (on by default) does.
- Kokoro (v1.0 int8): characters through vocab.json (others dropped), `[0, ids..., 0]`; `style` is row
  len(ids) of the `jf_alpha` pack (kokoro-onnx's choice), `speed` 1.
- The text's audio is each sentence's audio with 0.2 s of silence between sentences.

Both sessions run on the CPU with 2 intra-op threads. The fixture keeps, per voice and text, the
phonemes and ids of every model call, and of the whole waveform its length, RMS, peak, 400 samples
from the middle and every 100th sample (floats to 7 significant digits).
"""

import argparse
import glob
import json
import os
import re
import subprocess
import unicodedata

import numpy as np
import onnxruntime as ort

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! Is it 3.5 degrees outside today?",
]
SENTENCE_SILENCE = 0.2
KOKORO_VOICE = "jf_alpha"
KOKORO_RATE = 24000
THREADS = 2
EXCERPT = 400
STRIDE = 100

MARKS = {".": ".", "!": "!", "?": "?", ",": ",", ";": ";", ":": ":"}
CLOSERS = set("\"')]}\u201d\u2019\u00bb")


def sentences(text):
    """[[(clause text, mark or None)]] by the rule above (the fixture texts need no more of it)."""
    out, clauses, start, i = [], [], 0, 0
    while i < len(text):
        c = text[i]
        if c not in MARKS:
            i += 1
            continue
        mark, end = MARKS[c], i + 1
        while end < len(text) and (text[end] in MARKS or text[end] in CLOSERS):
            mark = MARKS.get(text[end], mark)
            end += 1
        if end < len(text) and not text[end].isspace():
            i = end
            continue
        if text[start:end].strip():
            clauses.append((text[start:end].strip(), mark))
        start = i = end
        if mark in ".!?" and clauses:
            out.append(clauses)
            clauses = []
    if text[start:].strip():
        clauses.append((text[start:].strip(), None))
    if clauses:
        out.append(clauses)
    return out


def espeak(text, voice):
    ipa = subprocess.run(
        ["espeak-ng", "-q", "--ipa", "-b", "1", "-v", voice, "--stdin"],
        input=text.encode(),
        capture_output=True,
        check=True,
    ).stdout.decode()
    ipa = re.sub(r"\([^)]*\)", "", ipa).replace("\u200d", "")
    return " ".join(ipa.split())


def sentence_phonemes(clauses, voice):
    out = []
    for text, mark in clauses:
        ph = espeak(text, voice)
        if not ph:
            continue
        if mark:
            ph += mark + (" " if mark in ",;:" else "")
        out.append(ph)
    return "".join(out).rstrip()


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def piper_ids(phonemes, id_map):
    ids = id_map["^"] + id_map["_"]
    for c in unicodedata.normalize("NFD", phonemes):
        if c in id_map:
            ids += id_map[c] + id_map["_"]
    return ids + id_map["$"]


def summary(audio):
    audio = np.asarray(audio, dtype=np.float32)
    mid = max(0, len(audio) // 2 - EXCERPT // 2)
    r = lambda xs: [float(f"{float(x):.7g}") for x in xs]
    return {
        "length": len(audio),
        "rms": float(np.sqrt(np.mean(np.square(audio.astype(np.float64))))),
        "peak": float(np.max(np.abs(audio))),
        "excerpt_start": mid,
        "excerpt": r(audio[mid : mid + EXCERPT]),
        "stride": STRIDE,
        "strided": r(audio[::STRIDE]),
    }


def run_voice(name, voice, infer, ids_of, rate):
    cases = []
    for text in TEXTS:
        calls, audio = [], []
        for i, clauses in enumerate(sentences(text)):
            phonemes = sentence_phonemes(clauses, voice)
            ids = ids_of(phonemes)
            calls.append({"phonemes": phonemes, "ids": ids})
            if i > 0:
                audio.append(np.zeros(int(SENTENCE_SILENCE * rate), np.float32))
            audio.append(infer(ids).ravel())
        cases.append({"text": text, "calls": calls, "audio": summary(np.concatenate(audio))})
        print(name, repr(text), [c["phonemes"] for c in calls], cases[-1]["audio"]["length"])
    return cases


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--piper-dir", required=True)
    parser.add_argument("--kokoro-dir", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    (piper_config,) = glob.glob(os.path.join(args.piper_dir, "*.onnx.json"))
    config = json.load(open(piper_config))
    piper = session(piper_config[: -len(".json")])
    id_map = config["phoneme_id_map"]

    def piper_infer(ids):
        audio = piper.run(
            None,
            {
                "input": np.array([ids], dtype=np.int64),
                "input_lengths": np.array([len(ids)], dtype=np.int64),
                "scales": np.array([0.0, 1.0, 0.0], dtype=np.float32),
            },
        )[0]
        # Piper's normalize_audio (on by default): each call's audio scaled to a peak of 1.
        peak = np.max(np.abs(audio))
        return audio / peak if peak >= 1e-8 else np.zeros_like(audio)

    (kokoro_model,) = glob.glob(os.path.join(args.kokoro_dir, "*.onnx"))
    (pack,) = glob.glob(os.path.join(args.kokoro_dir, "*.npz"))
    kokoro = session(kokoro_model)
    vocab = json.load(open(os.path.join(args.kokoro_dir, "vocab.json")))["vocab"]
    style = np.load(pack)[KOKORO_VOICE]

    def kokoro_ids(phonemes):
        return [0] + [vocab[c] for c in phonemes if c in vocab] + [0]

    def kokoro_infer(ids):
        return kokoro.run(
            None,
            {
                "tokens": np.array([ids], dtype=np.int64),
                "style": style[len(ids) - 2].reshape(1, 256).astype(np.float32),
                "speed": np.array([1.0], dtype=np.float32),
            },
        )[0]

    espeak_version = subprocess.run(
        ["espeak-ng", "--version"], capture_output=True, check=True
    ).stdout.decode().strip()
    fixture = {
        "reference": f"scripts/reference/tts.py: onnxruntime {ort.__version__} (Python, CPU, "
        f"{THREADS} threads), {espeak_version}",
        "sentence_silence": SENTENCE_SILENCE,
        "piper": {
            "noise_scale": 0.0,
            "noise_w": 0.0,
            "sample_rate": config["audio"]["sample_rate"],
            "cases": run_voice(
                "piper",
                config["espeak"]["voice"],
                piper_infer,
                lambda ph: piper_ids(ph, id_map),
                config["audio"]["sample_rate"],
            ),
        },
        "kokoro": {
            "voice": KOKORO_VOICE,
            "sample_rate": KOKORO_RATE,
            "cases": run_voice("kokoro", "en-us", kokoro_infer, kokoro_ids, KOKORO_RATE),
        },
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    text = json.dumps(fixture, indent=1, ensure_ascii=False)
    # Number lists on one line each.
    text = re.sub(r"\[([-+0-9.e,\s]+)\]", lambda m: "[" + re.sub(r"\s+", "", m.group(1)) + "]", text)
    with open(args.out, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
