#!/usr/bin/env python3
"""Reference transcriptions for Ember's Whisper engine, computed with faster-whisper.

Usage (from the repository root, in a venv with `pip install faster-whisper==1.2.1`, which brings
ctranslate2 4.8.5):
    python scripts/reference/whisper.py --model-dir ~/.cache/ember/models/cf--openai--whisper-tiny-en \
        --out crates/ember-engines/tests/fixtures/whisper/tiny-en.json
    python scripts/reference/whisper.py --model-dir ~/.cache/ember/models/cf--openai--whisper \
        --out crates/ember-engines/tests/fixtures/whisper/base.json
    python scripts/reference/whisper.py --model-dir DIR --bench    # times the long clip, writes nothing

The clips (`short.wav`, `long.wav` beside the fixtures) are made by `whisper_audio.sh`. Run once by
hand (see README.md); the JSON it writes is committed and compared against by
`crates/ember-engines/tests/whisper_reference.rs`.

The model folders are the CTranslate2 conversions Ember installs (`model.bin`, `config.json`,
`tokenizer.json`, `vocabulary.txt`), run with `compute_type="float32"` on the CPU with 2 threads.
The WAVs are read here (16-bit PCM / 32768) and handed over as arrays, so faster-whisper and the Rust
test see the same samples. Options: temperature 0 (no fallback), word timestamps, no VAD, conditioned
on previous text, every other option at faster-whisper's default (suppress_tokens [-1],
suppress_blank, max_initial_timestamp 1.0, no_speech_threshold 0.6, log_prob_threshold -1.0,
compression_ratio_threshold 2.4, patience 1, length_penalty 1).

Each case records the detected language and its probability, the duration and every segment with its
tokens (timestamp tokens included, as faster-whisper returns them), text, start/end, temperature,
avg_logprob, compression_ratio, no_speech_prob and words (word, start, end, probability). The first
case also records the log-mel features of 3 frames of the short clip (FeatureExtractor, the input of
the encoder) and the mel filter bank's shape and a few rows.
"""

import argparse
import json
import os
import time
import wave

import ctranslate2
import faster_whisper
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.feature_extractor import FeatureExtractor

CLIPS = os.path.join(
    os.path.dirname(__file__), "../../crates/ember-engines/tests/fixtures/whisper"
)

# (clip, beam_size): greedy on both clips, beam search on the one that crosses a window.
CASES = [("short", 1), ("long", 1), ("long", 5)]

# Frames of the short clip whose log-mel features are recorded (speech, silence at the end).
MEL_FRAMES = [0, 120, 410]


def read_wav(name: str) -> np.ndarray:
    with wave.open(os.path.join(CLIPS, name + ".wav"), "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2 and w.getframerate() == 16000
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def transcribe(model: WhisperModel, audio: np.ndarray, beam_size: int):
    segments, info = model.transcribe(
        audio,
        beam_size=beam_size,
        temperature=0.0,
        word_timestamps=True,
        vad_filter=False,
        condition_on_previous_text=True,
    )
    return list(segments), info


def case_json(clip: str, beam_size: int, segments, info) -> dict:
    return {
        "clip": clip + ".wav",
        "beam_size": beam_size,
        "language": info.language,
        "language_probability": info.language_probability,
        "duration": info.duration,
        "segments": [
            {
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": list(s.tokens),
                "temperature": s.temperature,
                "avg_logprob": s.avg_logprob,
                "compression_ratio": s.compression_ratio,
                "no_speech_prob": s.no_speech_prob,
                "words": [
                    {"word": w.word, "start": w.start, "end": w.end, "probability": w.probability}
                    for w in s.words
                ],
            }
            for s in segments
        ],
    }


def mel_json() -> dict:
    extractor = FeatureExtractor(feature_size=80)
    features = extractor(read_wav("short"))
    return {
        "clip": "short.wav",
        "n_frames": features.shape[1],
        "max": float(features.max()),
        "frames": {str(f): [float(v) for v in features[:, f]] for f in MEL_FRAMES},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--out")
    parser.add_argument("--bench", action="store_true", help="time the long clip (greedy), 3 runs")
    args = parser.parse_args()

    model = WhisperModel(args.model_dir, device="cpu", compute_type="float32", cpu_threads=2)

    if args.bench:
        audio = read_wav("long")
        transcribe(model, audio, 1)  # warm-up
        for beam_size in (1, 5):
            times = []
            for _ in range(3):
                start = time.perf_counter()
                transcribe(model, audio, beam_size)
                times.append(time.perf_counter() - start)
            print(f"long.wav beam_size={beam_size}: best {min(times):.2f} s of {times}")
        return

    cases = []
    for clip, beam_size in CASES:
        segments, info = transcribe(model, read_wav(clip), beam_size)
        cases.append(case_json(clip, beam_size, segments, info))
        print(clip, beam_size, info.language, [s.text for s in segments])

    fixture = {
        "reference": (
            f"faster-whisper {faster_whisper.__version__}, ctranslate2 {ctranslate2.__version__}, "
            "compute_type float32, cpu_threads 2"
        ),
        "model": os.path.basename(os.path.normpath(args.model_dir)),
        "options": {
            "temperature": 0.0,
            "word_timestamps": True,
            "vad_filter": False,
            "condition_on_previous_text": True,
        },
        "mel": mel_json(),
        "cases": cases,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
