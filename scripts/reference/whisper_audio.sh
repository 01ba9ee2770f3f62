#!/usr/bin/env bash
# Makes the Whisper test clips: English speech synthesized by espeak-ng (Debian's 1.51), resampled
# by sox to 16 kHz mono 16-bit PCM WAV (no dither, so reruns give the same bytes). Synthetic
# speech keeps the fixtures free of recordings' licences; the clips are committed, so this runs
# only when they must change.
#   apt-get install -y espeak-ng sox
#   scripts/reference/whisper_audio.sh [OUT_DIR]
set -euo pipefail
out=${1:-crates/ember-engines/tests/fixtures/whisper}
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

say() { # say NAME TEXT: synthesize TEXT to $out/NAME.wav
  espeak-ng -v en-us -s 160 -w "$tmp/$1.wav" "$2"
  sox -D "$tmp/$1.wav" -r 16000 -c 1 -b 16 -e signed-integer "$out/$1.wav"
}

# A short sentence (about 3.5 s): one window, one segment.
say short "The quick brown fox jumps over the lazy dog near the river bank."

# A passage of about 40 s: the second 30 s window, several segments, punctuation to merge.
say long "Lighthouses have guided sailors for more than two thousand years. \
The ancient Pharos of Alexandria stood over one hundred meters tall, and its fire could be seen \
far out at sea. In the Middle Ages, monks and local lords kept lights burning on dangerous coasts, \
often charging passing ships a small fee. Everything changed in eighteen twenty two, when the French \
physicist Augustin Fresnel designed a lens that gathered almost all of the light from a single lamp. \
Today, most lighthouses are automated. Their keepers are gone, but the lights still turn every night, \
warning ships about rocks, reefs, and sandbanks. Would you like to visit one? Many are open to the public \
during the summer months."
soxi "$out"/*.wav | grep -E "Input File|Duration"
