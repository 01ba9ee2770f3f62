#!/usr/bin/env python3
"""faster-whisper's side of `ember bench speech`: loads one model, then times the transcription
requests `ember bench speech` sends on stdin, one JSON object per line, answering each on stdout.

    python faster_whisper_driver.py --model-dir DIR --threads 2
    stdin:  {"clips": ["a.wav", "b.wav"], "concurrency": 8, "beam_size": 5}
    stdout: {"seconds": 12.3, "texts": ["...", "..."]}

The model is loaded as faster-whisper's users load it on a CPU: `WhisperModel(dir, device="cpu",
cpu_threads=threads)` with the default `num_workers=1` and `compute_type="float32"` (the weights'
own precision on a CPU, as Ember runs them). Each clip is transcribed from its file (PyAV decodes
it) with the options Ember applies to every Workers AI request: beam search of 5, word timestamps,
conditioning on the previous text, no VAD. With `concurrency` above 1 that many Python threads
call `transcribe` at once, as a server would; the time covers every segment of every clip.
"""

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from faster_whisper import WhisperModel


def transcribe(model: WhisperModel, clip: str, beam_size: int) -> str:
    segments, _ = model.transcribe(
        clip,
        beam_size=beam_size,
        word_timestamps=True,
        condition_on_previous_text=True,
        vad_filter=False,
    )
    return "".join(segment.text for segment in segments).strip()


def with_vocabulary(model_dir: str) -> str:
    """The folder CTranslate2 loads: `model_dir` itself, or, where Ember installed no
    `vocabulary.*` (it reads `tokenizer.json` only), a folder of links to its files plus the
    `vocabulary.json` CTranslate2's converter would have written: the tokens in id order, then
    the timestamps."""
    folder = Path(model_dir)
    if any(folder.glob("vocabulary.*")):
        return model_dir
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokens = dict(tokenizer["model"]["vocab"])
    tokens.update({added["content"]: added["id"] for added in tokenizer.get("added_tokens", [])})
    vocabulary = [token for token, _ in sorted(tokens.items(), key=lambda item: item[1])]
    # The 1501 timestamp tokens follow, which tokenizer.json does not list.
    vocabulary += [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    linked = Path(tempfile.mkdtemp(prefix="faster-whisper-"))
    for file in folder.iterdir():
        (linked / file.name).symlink_to(file.resolve())
    (linked / "vocabulary.json").write_text(json.dumps(vocabulary))
    return str(linked)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model = WhisperModel(
        with_vocabulary(args.model_dir), device="cpu", compute_type="float32", cpu_threads=args.threads
    )
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        clips = request["clips"]
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=request["concurrency"]) as pool:
            texts = list(
                pool.map(
                    lambda clip: transcribe(model, clip, request["beam_size"]),
                    clips,
                )
            )
        seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds, "texts": texts}), flush=True)


if __name__ == "__main__":
    main()
