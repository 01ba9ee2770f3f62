//! Audio decoding against ffmpeg: every file in `fixtures/audio` (made by
//! `scripts/reference/audio_fixtures.sh`) decodes to 16 kHz mono of the right length that matches
//! ffmpeg's decode of the same file; empty, random, damaged and truncated input fails cleanly.

use ember_engines::audio::{AudioError, DecodeOptions, decode_to_mono};
use std::path::Path;
use symphonia::core::codecs::CodecParameters;
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::io::MediaSourceStream;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/audio");
const RATE: u32 = 16_000;

/// Each fixture: its file, how long its audio is (the 2 s master or the 0.3 s PCM excerpt), the
/// MIME type or extension a client might send with it, and the reference it must match: ffmpeg's
/// decode of the same audio, or for speech.flac (16 kHz mono already) the file itself, bit for bit.
#[rustfmt::skip]
const CASES: &[(&str, f64, Option<&str>, &str)] = &[
    ("speech.mp3", 2.0, Some("audio/mpeg"), "speech.mp3.ref.flac"),
    ("speech.flac", 2.0, None, "speech.flac"),
    ("speech.ogg", 2.0, Some("ogg"), "speech.ogg.ref.flac"),
    ("speech.opus", 2.0, None, "speech.opus.ref.flac"),
    ("speech.m4a", 2.0, Some("audio/mp4"), "speech.m4a.ref.flac"),
    ("speech_opus.webm", 2.0, Some("audio/webm"), "speech_opus.webm.ref.flac"),
    ("speech_vorbis.webm", 2.0, None, "speech_vorbis.webm.ref.flac"),
    // The same packets as speech_opus.webm, muxed as a browser's MediaRecorder does.
    ("recorder_opus.webm", 2.0, Some("audio/webm;codecs=opus"), "speech_opus.webm.ref.flac"),
    ("pcm_s16_stereo_22k.wav", 0.3, Some("wav"), "pcm_s16_stereo_22k.wav.ref.flac"),
    ("pcm_s24_16k.wav", 0.3, None, "pcm_s24_16k.wav.ref.flac"),
    ("pcm_s32_8k.wav", 0.3, None, "pcm_s32_8k.wav.ref.flac"),
    ("pcm_f32_8k.wav", 0.3, None, "pcm_f32_8k.wav.ref.flac"),
    ("pcm_u8_8k.wav", 0.3, None, "pcm_u8_8k.wav.ref.flac"),
    ("pcm_mulaw_8k.wav", 0.3, None, "pcm_mulaw_8k.wav.ref.flac"),
    ("pcm_alaw_8k.wav", 0.3, None, "pcm_alaw_8k.wav.ref.flac"),
    // pcm_u8_8k.wav piped out of ffmpeg: RIFF and data sizes 0xFFFFFFFF.
    ("streamed_u8_8k.wav", 0.3, None, "pcm_u8_8k.wav.ref.flac"),
];

/// Decoded length within this of the audio's true length.
const DURATION_TOLERANCE_S: f64 = 0.030;
/// Ember's decode against ffmpeg's, sample by sample over their common length (both at 16 kHz):
/// the difference at least this far below the signal. 30 dB is a correlation above 0.9995; what
/// remains is two different decoders of a lossy codec and two different resamplers.
const MIN_SNR_DB: f64 = 30.0;

fn options(hint: Option<&str>) -> DecodeOptions<'_> {
    DecodeOptions {
        target_rate: RATE,
        max_seconds: 60.0,
        hint,
    }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(FIXTURES).join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A 16 kHz mono FLAC's samples, read with symphonia directly (not through the code under test)
/// and checked against the MD5 of the samples that FLAC stores.
fn read_flac(name: &str) -> Vec<f32> {
    let bytes = fixture(name);
    let source = MediaSourceStream::new(Box::new(std::io::Cursor::new(bytes)), Default::default());
    let mut format = symphonia::default::get_probe()
        .probe(
            &Default::default(),
            source,
            Default::default(),
            Default::default(),
        )
        .unwrap();
    let Some(CodecParameters::Audio(params)) = format.tracks()[0].codec_params.clone() else {
        panic!("{name}: no audio track");
    };
    assert_eq!(
        (
            params.sample_rate,
            params.channels.as_ref().map(|c| c.count())
        ),
        (Some(RATE), Some(1))
    );
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default().verify(true))
        .unwrap();
    let (mut samples, mut packet_samples) = (Vec::new(), Vec::new());
    while let Some(packet) = format.next_packet().unwrap() {
        decoder
            .decode(&packet)
            .unwrap()
            .copy_to_vec_interleaved::<f32>(&mut packet_samples);
        samples.extend_from_slice(&packet_samples);
    }
    assert_eq!(
        decoder.finalize().verify_ok,
        Some(true),
        "{name}: MD5 of the samples"
    );
    samples
}

fn snr_db(reference: &[f32], decoded: &[f32]) -> f64 {
    let n = reference.len().min(decoded.len());
    let signal: f64 = reference[..n].iter().map(|&r| f64::from(r).powi(2)).sum();
    let noise: f64 = reference[..n]
        .iter()
        .zip(&decoded[..n])
        .map(|(&r, &d)| f64::from(r - d).powi(2))
        .sum();
    10.0 * (signal / noise.max(1e-30)).log10()
}

#[test]
fn every_format_decodes_to_16khz_mono_like_ffmpeg() {
    for &(name, seconds, hint, reference) in CASES {
        let decoded = decode_to_mono(&fixture(name), &options(hint))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let duration = decoded.len() as f64 / f64::from(RATE);
        assert!(
            (duration - seconds).abs() <= DURATION_TOLERANCE_S,
            "{name}: {duration:.4} s, want {seconds} s"
        );
        assert!(
            decoded.iter().all(|s| s.is_finite() && s.abs() <= 1.0),
            "{name}: out of range"
        );
        let expected = read_flac(reference);
        let snr = snr_db(&expected, &decoded);
        eprintln!("{name:24} {duration:.4} s, {snr:6.1} dB against {reference}");
        if reference == name {
            assert_eq!(decoded, expected, "{name}: not bit-exact");
        } else {
            assert!(
                snr >= MIN_SNR_DB,
                "{name}: {snr:.1} dB against ffmpeg's decode"
            );
        }
    }
}

#[test]
fn the_hint_never_overrides_the_bytes() {
    let wrong = decode_to_mono(&fixture("speech.ogg"), &options(Some("audio/mpeg"))).unwrap();
    let none = decode_to_mono(&fixture("speech.ogg"), &options(None)).unwrap();
    assert_eq!(wrong, none);
}

#[test]
fn audio_over_the_limit_is_refused() {
    let limited = DecodeOptions {
        max_seconds: 1.5,
        ..options(None)
    };
    for name in ["speech.mp3", "speech.opus", "speech.m4a", "speech.flac"] {
        assert_eq!(
            decode_to_mono(&fixture(name), &limited),
            Err(AudioError::TooLong { max_seconds: 1.5 }),
            "{name}"
        );
    }
}

#[test]
fn empty_input_and_a_zero_target_rate_are_errors() {
    assert_eq!(decode_to_mono(&[], &options(None)), Err(AudioError::Empty));
    let zero = DecodeOptions {
        target_rate: 0,
        ..options(None)
    };
    assert!(matches!(
        decode_to_mono(&fixture("speech.mp3"), &zero),
        Err(AudioError::InvalidSpec(_))
    ));
}

/// Streamed files declare no sizes: cut short, or followed by what the reader cannot parse
/// (and skips), they read as a shorter recording, as they do for ffmpeg.
fn declares_its_length(name: &str) -> bool {
    !name.starts_with("recorder_") && !name.starts_with("streamed_")
}

/// A deterministic byte stream (xorshift64*).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

#[test]
fn random_bytes_are_errors() {
    for (seed, len) in (0..200u64).zip((1..).map(|i| (i * 337) % 65_536 + 1)) {
        let result = decode_to_mono(&noise(seed, len), &options(None));
        // Mostly unrecognised; now and then the noise holds something like an MP3 frame header,
        // and the stream after it is corrupt.
        assert!(
            matches!(
                result,
                Err(AudioError::UnrecognisedContainer | AudioError::Corrupt(_))
            ),
            "{len} random bytes: {result:?}"
        );
    }
}

#[test]
fn damaged_files_neither_panic_nor_hang() {
    // Bytes overwritten at random: some files still decode (a damaged packet is skipped), most
    // fail, none may panic (caught, it would read "the decoder failed") or run away.
    for &(name, _, hint, _) in CASES {
        let file = fixture(name);
        for seed in 0..25u64 {
            let mut damaged = file.clone();
            let positions = noise(seed, 24);
            for pair in positions.chunks(3) {
                let at = usize::from(u16::from_le_bytes([pair[0], pair[1]])) * file.len() / 65_536;
                damaged[at] = pair[2];
            }
            let started = std::time::Instant::now();
            let result = decode_to_mono(&damaged, &options(hint));
            assert!(
                !matches!(&result, Err(AudioError::Corrupt(why)) if why.contains("decoder failed")),
                "{name}: seed {seed} panicked"
            );
            assert!(
                started.elapsed().as_secs() < 5,
                "{name}: seed {seed} ran away"
            );
        }
    }
}

#[test]
fn garbage_after_a_real_header_is_an_error() {
    // Each compressed fixture's first bytes (its container's signature and headers) followed by
    // noise: the demuxers get past probing and meet garbage. Not WAV (after its header noise is
    // PCM, as good as any other) nor streamed files (see `declares_its_length`).
    for &(name, _, hint, _) in CASES {
        if !declares_its_length(name) || name.ends_with(".wav") {
            continue;
        }
        let file = fixture(name);
        for (seed, keep) in [(1, 4), (2, 12), (3, 64), (4, 512)] {
            let mut damaged = file[..keep.min(file.len())].to_vec();
            damaged.extend(noise(seed, 20_000));
            let result = decode_to_mono(&damaged, &options(hint));
            assert!(
                result.is_err(),
                "{name}: header of {keep} bytes + noise decoded"
            );
        }
    }
}

#[test]
fn truncated_files_are_errors() {
    for &(name, _, hint, _) in CASES {
        if !declares_its_length(name) {
            continue;
        }
        let file = fixture(name);
        for fraction in [0.01, 0.1, 0.5, 0.9] {
            let cut = (file.len() as f64 * fraction) as usize;
            let result = decode_to_mono(&file[..cut], &options(hint));
            assert!(
                result.is_err(),
                "{name} cut to {cut} of {} bytes decoded",
                file.len()
            );
        }
    }
}
