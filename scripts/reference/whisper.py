#!/usr/bin/env python3
"""Reference transcriptions for Ember's Whisper engine, computed with faster-whisper.

Usage (from the repository root, in a venv with `pip install faster-whisper==1.2.1`, which brings
ctranslate2 4.8.5):
    python scripts/reference/whisper.py --model-dir ~/.cache/ember/models/cf--openai--whisper-tiny-en \
        --out crates/ember-engines/tests/fixtures/whisper/tiny-en.json
    python scripts/reference/whisper.py --model-dir ~/.cache/ember/models/cf--openai--whisper \
        --out crates/ember-engines/tests/fixtures/whisper/base.json
    python scripts/reference/whisper.py --model-dir DIR --bench    # times the long clip, writes nothing
    python scripts/reference/whisper.py --vad ~/.cache/ember/models/cf--openai--whisper-tiny-en \
        ~/.cache/ember/models/cf--openai--whisper --out crates/ember-engines/tests/fixtures/whisper/vad.json

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

`--vad` writes the fixture of `vad_filter=True` (faster-whisper's Silero VAD, `VadOptions()`'s
defaults) instead, for the models given: the clips joined with silences between them (`VAD_AUDIO`,
rebuilt by the Rust test from the recipe in the fixture), the VAD's speech probability of every
512-sample window of it (`SileroVADModel` called as `get_speech_timestamps` calls it, on the audio
zero-padded to whole windows), its speech timestamps (samples) and the duration left after VAD; the
same probabilities for the first `VAD_TAIL_SAMPLES` of `short.wav`, which ends in speech less than
64 samples short of a whole window (faster-whisper zeroes the last 64 samples of the last window);
and, per model, `transcribe(..., vad_filter=True)` of the joined clips and of silence, recorded as
the cases above plus `audio` (the recipe) and `duration_after_vad`.
"""

import argparse
import json
import os
import time
import wave

import ctranslate2
import faster_whisper
import numpy as np
import onnxruntime
from faster_whisper import WhisperModel
from faster_whisper.feature_extractor import FeatureExtractor
from faster_whisper.vad import VadOptions, get_speech_timestamps, get_vad_model

CLIPS = os.path.join(
    os.path.dirname(__file__), "../../crates/ember-engines/tests/fixtures/whisper"
)

# (clip, beam_size): greedy on both clips, beam search on the one that crosses a window.
CASES = [("short", 1), ("long", 1), ("long", 5)]

# Frames of the short clip whose log-mel features are recorded (speech, silence at the end).
MEL_FRAMES = [0, 120, 410]

# The VAD clip: the clips with silences (seconds) around and between them. The VAD ends speech
# after 2 s of silence, so this is three speech chunks; the speech left (about 54 s) spans two
# windows. The recipe is written into the fixture, and the Rust test builds the same samples.
VAD_AUDIO = [
    {"silence": 2.5},
    {"clip": "short.wav"},
    {"silence": 3.0},
    {"clip": "long.wav"},
    {"silence": 4.0},
    {"clip": "short.wav"},
    {"silence": 1.5},
]
# The VAD cases per model (by folder name): the joined clips with these beams (greedy on tiny.en,
# the routes' beam of 5 on base), then silence, greedy.
VAD_BEAMS = {"cf--openai--whisper-tiny-en": [1], "cf--openai--whisper": [5]}
VAD_SILENCE = [{"silence": 3.0}]
# 34 windows and 500 samples of short.wav: the last window's last 64 samples are 52 of speech
# and 12 of padding, and zeroing them moves its probability by about 0.05.
VAD_TAIL_SAMPLES = 34 * 512 + 500


def read_wav(name: str) -> np.ndarray:
    with wave.open(os.path.join(CLIPS, name + ".wav"), "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2 and w.getframerate() == 16000
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def build(recipe: list) -> np.ndarray:
    """The samples of a VAD recipe: clips (as read_wav reads them) and silences of whole samples."""
    parts = []
    for part in recipe:
        if "clip" in part:
            parts.append(read_wav(part["clip"].removesuffix(".wav")))
        else:
            parts.append(np.zeros(round(part["silence"] * 16000), dtype=np.float32))
    return np.concatenate(parts)


def transcribe(model: WhisperModel, audio: np.ndarray, beam_size: int, vad_filter: bool = False):
    segments, info = model.transcribe(
        audio,
        beam_size=beam_size,
        temperature=0.0,
        word_timestamps=True,
        vad_filter=vad_filter,
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


def vad_probabilities(audio: np.ndarray) -> list:
    """The speech probability per window, fed as get_speech_timestamps feeds the model."""
    padded = np.pad(audio, (0, 512 - audio.shape[0] % 512))
    return [round(float(p), 8) for p in np.asarray(get_vad_model()(padded)).ravel()]


def vad_fixture(model_dirs: list) -> dict:
    audio = build(VAD_AUDIO)
    speech = get_speech_timestamps(audio, VadOptions())
    cases = []
    for model_dir in model_dirs:
        model = WhisperModel(model_dir, device="cpu", compute_type="float32", cpu_threads=2)
        name = os.path.basename(os.path.normpath(model_dir))
        beams = VAD_BEAMS.get(name, [1])
        for recipe, beam_size in [(VAD_AUDIO, b) for b in beams] + [(VAD_SILENCE, 1)]:
            segments, info = transcribe(model, build(recipe), beam_size, vad_filter=True)
            case = case_json("", beam_size, segments, info)
            del case["clip"]
            case = {"model": name, "audio": recipe, **case}
            case["duration_after_vad"] = info.duration_after_vad
            cases.append(case)
            print(name, beam_size, info.duration_after_vad, [s.text for s in segments])
    tail = read_wav("short")[:VAD_TAIL_SAMPLES]
    return {
        "reference": (
            f"faster-whisper {faster_whisper.__version__} (silero_vad_v6.onnx on onnxruntime "
            f"{onnxruntime.__version__}), ctranslate2 {ctranslate2.__version__}, "
            "compute_type float32, cpu_threads 2"
        ),
        "options": {
            "temperature": 0.0,
            "word_timestamps": True,
            "vad_filter": True,
            # JSON has no infinity: the unlimited speech duration is written "inf".
            "vad_parameters": {
                k: "inf" if v == float("inf") else v for k, v in VadOptions().__dict__.items()
            },
            "condition_on_previous_text": True,
        },
        "audio": VAD_AUDIO,
        "samples": int(audio.shape[0]),
        "probabilities": vad_probabilities(audio),
        "speech_timestamps": speech,
        "duration_after_vad": sum(c["end"] - c["start"] for c in speech) / 16000,
        "tail": {
            "clip": "short.wav",
            "samples": VAD_TAIL_SAMPLES,
            "probabilities": vad_probabilities(tail),
        },
        "cases": cases,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir")
    parser.add_argument("--out")
    parser.add_argument("--bench", action="store_true", help="time the long clip (greedy), 3 runs")
    parser.add_argument("--vad", nargs="+", metavar="MODEL_DIR", help="write the VAD fixture")
    args = parser.parse_args()

    if args.vad:
        write(args.out, vad_fixture(args.vad))
        return
    if not args.model_dir:
        parser.error("--model-dir is needed without --vad")

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
    write(args.out, fixture)


def write(path: str, fixture: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(fixture, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
