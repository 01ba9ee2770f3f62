#!/usr/bin/env bash
# Makes the audio fixtures of `crates/ember-engines/tests/audio_decode.rs`: one spoken sentence
# (espeak-ng) padded to exactly 2.000 s, encoded into every container and codec Ember decodes, and
# for each file the reference decode that the test compares Ember's decode with: ffmpeg's decoder
# (libopus for Opus), channels averaged, resampled to 16 kHz by soxr at high precision, as FLAC. Run by hand
# when a fixture has to change (needs ffmpeg with libmp3lame, libvorbis, libopus and soxr, sox,
# espeak-ng and python3: `apt-get install ffmpeg sox espeak-ng`); CI only reads the committed files.
#
# Size: the PCM family (8/16/24/32-bit, float, mu-law, a-law) uses a 0.3 s excerpt, because WAV is
# uncompressed; the references keep 12 bits (16-bit FLAC whose low 4 bits are zero, which FLAC
# stores as "wasted bits"), whose rounding noise is still ~50 dB below the speech.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=crates/ember-engines/tests/fixtures/audio
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"
rm -f "$out"/*

# The master: the sentence at espeak's own 22 050 Hz, padded with silence to exactly 2 s.
espeak-ng -v en-us -s 215 -w "$tmp/speech.wav" "Ember turns this sentence into text."
sox -D "$tmp/speech.wav" "$tmp/mono22k.wav" pad 0 0.1 trim 0 2
# A stereo master whose channels differ (right: the speech at half level over a 440 Hz tone), so a
# decoder that kept one channel instead of averaging both would not match the reference.
sox -D "$tmp/mono22k.wav" -r 44100 "$tmp/left.wav" rate -v
sox -D -n -r 44100 -c 1 -b 16 "$tmp/tone.wav" synth 2 sine 440 vol 0.1
sox -D -m -v 0.5 "$tmp/left.wav" -v 1 "$tmp/tone.wav" "$tmp/right.wav"
sox -D -M "$tmp/left.wav" "$tmp/right.wav" "$tmp/stereo44k.wav"
# The 0.3 s excerpt for the PCM family (it starts inside the speech).
sox -D "$tmp/stereo44k.wav" "$tmp/excerpt.wav" trim 0.3 0.3

ff() { ffmpeg -nostdin -hide_banner -loglevel error -y "$@"; }
common=(-map_metadata -1 -fflags +bitexact -flags:a +bitexact)

# Compressed formats, 2 s each.
ff -i "$tmp/stereo44k.wav" "${common[@]}" -c:a libmp3lame -b:a 48k "$out/speech.mp3"
ff -i "$tmp/mono22k.wav" "${common[@]}" -ar 16000 -c:a flac -compression_level 8 "$out/speech.flac"
ff -i "$tmp/stereo44k.wav" "${common[@]}" -c:a libvorbis -q:a 1 "$out/speech.ogg"
ff -i "$tmp/stereo44k.wav" "${common[@]}" -c:a libopus -b:a 32k "$out/speech.opus"
# AAC in MP4 with the moov box after the media data (ffmpeg's default), as phones often write it.
ff -i "$tmp/stereo44k.wav" "${common[@]}" -c:a aac -b:a 64k "$out/speech.m4a"
ff -i "$tmp/mono22k.wav" "${common[@]}" -c:a libopus -b:a 24k "$out/speech_opus.webm"
ff -i "$tmp/stereo44k.wav" "${common[@]}" -c:a libvorbis -q:a 1 "$out/speech_vorbis.webm"

# The PCM family, 0.3 s each, at several rates and channel counts.
ff -i "$tmp/excerpt.wav" "${common[@]}" -ar 22050 -c:a pcm_s16le "$out/pcm_s16_stereo_22k.wav"
ff -i "$tmp/excerpt.wav" "${common[@]}" -ac 1 -ar 16000 -c:a pcm_s24le "$out/pcm_s24_16k.wav"
ff -i "$tmp/excerpt.wav" "${common[@]}" -ac 1 -ar 8000 -c:a pcm_s32le "$out/pcm_s32_8k.wav"
ff -i "$tmp/excerpt.wav" "${common[@]}" -ac 1 -ar 8000 -c:a pcm_f32le "$out/pcm_f32_8k.wav"
ff -i "$tmp/excerpt.wav" "${common[@]}" -ac 1 -ar 8000 -c:a pcm_u8 "$out/pcm_u8_8k.wav"
ff -i "$tmp/excerpt.wav" "${common[@]}" -ac 1 -ar 8000 -c:a pcm_mulaw "$out/pcm_mulaw_8k.wav"
ff -i "$tmp/excerpt.wav" "${common[@]}" -ac 1 -ar 8000 -c:a pcm_alaw "$out/pcm_alaw_8k.wav"

# Streamed files, as browsers and pipes write them: WebM from MediaRecorder (segment and clusters
# of unknown size; ffmpeg writes cluster sizes even to a pipe, so they are marked unknown here)
# and WAV piped out of ffmpeg (RIFF and data sizes 0xFFFFFFFF). Stream copies of two files above,
# so they share those files' references.
ffmpeg -nostdin -loglevel error -i "$out/speech_opus.webm" "${common[@]}" -c:a copy -f webm pipe:1 \
  > "$tmp/streamed.webm"
python3 -c '
import sys
data = bytearray(open(sys.argv[1], "rb").read())
at = 0
while (at := data.find(bytes.fromhex("1f43b675"), at)) >= 0:  # each Cluster ID
    at += 4
    width = 1
    while not data[at] & (0x80 >> (width - 1)):
        width += 1
    # An EBML size with every value bit set is "unknown"; keep the width, so nothing moves.
    data[at] = 0xFF >> (width - 1)
    data[at + 1 : at + width] = b"\xff" * (width - 1)
open(sys.argv[2], "wb").write(data)
' "$tmp/streamed.webm" "$out/recorder_opus.webm"
ffmpeg -nostdin -loglevel error -i "$out/pcm_u8_8k.wav" "${common[@]}" -c:a copy -f wav pipe:1 \
  > "$out/streamed_u8_8k.wav"

# The references. speech.flac needs none: it is 16 kHz mono already, and its STREAMINFO holds the
# MD5 of its samples, which the test checks. Opus is decoded by libopus, the reference decoder
# (ffmpeg's own Opus decoder is not bit-exact: ~20 dB from libopus on these files). soxr's passband
# ends at 97% of 8 kHz, about where Ember's resampler's does, so that the comparison measures the
# decoding rather than where two low-pass filters roll off (left at soxr's default, the two differ
# by ~30 dB in the 7.3-8 kHz band).
for f in "$out"/*; do
  case "$f" in *.ref.flac | */speech.flac | */recorder_* | */streamed_*) continue ;; esac
  decoder=()
  codec="$(ffprobe -v error -select_streams a:0 -show_entries stream=codec_name -of csv=p=0 "$f")"
  [ "$codec" = opus ] && decoder=(-c:a libopus)
  mix=""
  channels="$(ffprobe -v error -select_streams a:0 -show_entries stream=channels -of csv=p=0 "$f")"
  [ "$channels" = 2 ] && mix="pan=mono|c0=0.5*c0+0.5*c1,"
  ff "${decoder[@]}" -i "$f" -af "${mix}aresample=16000:resampler=soxr:precision=28:cutoff=0.97" \
    -f f32le "$tmp/ref.f32"
  python3 -c '
import array, sys
samples = array.array("f", open(sys.argv[1], "rb").read())
rounded = array.array("h", (max(-2048, min(2047, round(x * 2048))) * 16 for x in samples))
open(sys.argv[2], "wb").write(rounded.tobytes())
' "$tmp/ref.f32" "$tmp/ref.s16"
  ff -f s16le -ar 16000 -ac 1 -i "$tmp/ref.s16" "${common[@]}" -c:a flac -compression_level 8 "$f.ref.flac"
done
du -ch "$out"/* | tail -n 1
