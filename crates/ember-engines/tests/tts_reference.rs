//! The text-to-speech engine against `scripts/reference/tts.py` (espeak-ng and ONNX Runtime's
//! Python API on the same voices), from `crates/ember-engines/tests/fixtures/tts/reference.json`:
//! phoneme ids of every model call, and the waveform of each text (Piper with both noises at 0,
//! which makes VITS deterministic; Kokoro with `jf_alpha`, which draws no noise). Then the
//! encoders (each file decoded back by `audio::decode_to_mono`) and a round trip through Whisper.
//!
//! Needs the voices in the model cache (`$EMBER_HOME/models`, EMBER_HOME defaulting to
//! `~/.cache/ember`): `hf--rhasspy--piper-en-us-joe-medium` (Piper en_US-joe-medium) and
//! `hf--hexgrad--kokoro-82m` (Kokoro v1.0 int8), `cf--openai--whisper-tiny-en` for the round trip,
//! ONNX Runtime (`scripts/install-deps.sh`) and espeak-ng; a missing one fails.
//!
//! Tolerances: ids exactly (the fixture's espeak-ng is 1.51; another version may phonemize
//! differently); waveform lengths exactly; samples within 2e-3 of full scale and the RMS within
//! 0.5%. The same ONNX Runtime (1.28.0) on the same CPU gives identical samples; the margin is
//! for CPUs whose kernels sum in another order (AVX2 against AVX-512: Kokoro's dynamically
//! quantized LSTMs round their activations to int8, so a tiny difference can move one code).

use ember_engines::audio::{DecodeOptions, decode_to_mono};
use ember_engines::tts::{Encoding, Pcm, SynthesisOptions, Voice, encode};
use ember_engines::whisper::{TranscribeOptions, Whisper};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

const SAMPLE_TOLERANCE: f32 = 2e-3;
const RMS_TOLERANCE: f64 = 0.005;

#[derive(Deserialize)]
struct Fixture {
    sentence_silence: f32,
    piper: VoiceCases,
    kokoro: VoiceCases,
}

#[derive(Deserialize)]
struct VoiceCases {
    sample_rate: u32,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    calls: Vec<Call>,
    audio: Audio,
}

#[derive(Deserialize)]
struct Call {
    phonemes: String,
    ids: Vec<i64>,
}

#[derive(Deserialize)]
struct Audio {
    length: usize,
    rms: f64,
    excerpt_start: usize,
    excerpt: Vec<f32>,
    stride: usize,
    strided: Vec<f32>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tts/reference.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    })
}

fn model_dir(name: &str) -> PathBuf {
    let dir = ember_core::installed::default_home()
        .join("models")
        .join(name);
    assert!(
        dir.is_dir(),
        "{} is missing (install it with `ember models pull`)",
        dir.display()
    );
    dir
}

fn piper() -> &'static Voice {
    static VOICE: OnceLock<Voice> = OnceLock::new();
    VOICE.get_or_init(|| Voice::load(&model_dir("hf--rhasspy--piper-en-us-joe-medium")).unwrap())
}

fn kokoro() -> &'static Voice {
    static VOICE: OnceLock<Voice> = OnceLock::new();
    VOICE.get_or_init(|| Voice::load(&model_dir("hf--hexgrad--kokoro-82m")).unwrap())
}

/// Piper without noise: the reference's settings.
fn deterministic() -> SynthesisOptions {
    SynthesisOptions {
        noise_scale: Some(0.0),
        noise_w: Some(0.0),
        ..SynthesisOptions::default()
    }
}

fn rms(samples: &[f32]) -> f64 {
    (samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
}

/// Compares `voice` on every case of `cases`; returns the failures.
fn compare(voice: &Voice, cases: &VoiceCases, options: &SynthesisOptions) -> Vec<String> {
    assert_eq!(voice.sample_rate(), cases.sample_rate);
    let mut failures = Vec::new();
    for case in &cases.cases {
        let text = &case.text;
        let ids: Vec<Vec<i64>> = voice
            .phoneme_ids(text, options)
            .unwrap()
            .into_iter()
            .flatten()
            .collect();
        let expected: Vec<&Vec<i64>> = case.calls.iter().map(|c| &c.ids).collect();
        if ids.iter().collect::<Vec<_>>() != expected {
            let phonemes: Vec<&str> = case.calls.iter().map(|c| c.phonemes.as_str()).collect();
            failures.push(format!(
                "{text:?}: ids\n  ours   {ids:?}\n  theirs {expected:?} ({phonemes:?})"
            ));
            continue;
        }
        let pcm = voice.synthesize(text, options).unwrap();
        let audio = &case.audio;
        if pcm.samples.len() != audio.length {
            failures.push(format!(
                "{text:?}: {} samples vs {}",
                pcm.samples.len(),
                audio.length
            ));
            continue;
        }
        let got_rms = rms(&pcm.samples);
        if (got_rms / audio.rms - 1.0).abs() > RMS_TOLERANCE {
            failures.push(format!("{text:?}: RMS {got_rms} vs {}", audio.rms));
        }
        let excerpt = &pcm.samples[audio.excerpt_start..audio.excerpt_start + audio.excerpt.len()];
        let strided = pcm.samples.iter().step_by(audio.stride).copied();
        let pairs = excerpt.iter().copied().zip(audio.excerpt.iter().copied());
        let max_diff = pairs
            .chain(strided.zip(audio.strided.iter().copied()))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        if max_diff > SAMPLE_TOLERANCE {
            failures.push(format!("{text:?}: samples differ by up to {max_diff}"));
        }
        eprintln!(
            "{text:?}: max sample difference {max_diff:e}, RMS {got_rms} vs {}",
            audio.rms
        );
    }
    failures
}

#[test]
fn piper_matches_reference() {
    let failures = compare(piper(), &fixture().piper, &deterministic());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn kokoro_matches_reference() {
    let options = SynthesisOptions {
        speaker: Some("jf_alpha".into()),
        ..SynthesisOptions::default()
    };
    let failures = compare(kokoro(), &fixture().kokoro, &options);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn sentences_are_joined_by_silence() {
    // The second text is two sentences: 0.2 s of zeros sit between their audio.
    let fixture = fixture();
    let pcm = piper()
        .synthesize(&fixture.piper.cases[1].text, &deterministic())
        .unwrap();
    let silence = (fixture.sentence_silence * pcm.sample_rate as f32) as usize;
    let zeros = pcm
        .samples
        .windows(silence)
        .any(|w| w.iter().all(|&s| s == 0.0));
    assert!(zeros, "no run of {silence} zero samples");
}

#[test]
fn speakers_and_options() {
    assert_eq!(piper().speakers(), ["joe"]);
    assert_eq!(
        kokoro().speakers(),
        [
            "jf_alpha",
            "jf_gongitsune",
            "jf_nezumi",
            "jf_tebukuro",
            "jm_kumo"
        ]
    );
    let with = |speaker: Option<&str>, speed: f32, language: Option<&str>| SynthesisOptions {
        speaker: speaker.map(Into::into),
        speed,
        language: language.map(Into::into),
        ..SynthesisOptions::default()
    };
    let error = |voice: &Voice, options: SynthesisOptions, text: &str| {
        voice.synthesize(text, &options).unwrap_err().to_string()
    };
    assert!(error(kokoro(), with(Some("nobody"), 1.0, None), "Hi.").contains("jm_kumo"));
    assert!(error(piper(), with(Some("nobody"), 1.0, None), "Hi.").contains("joe"));
    assert!(error(piper(), with(None, 0.0, None), "Hi.").contains("speed"));
    assert!(error(piper(), with(None, 1.0, Some("-w /tmp/x")), "Hi.").contains("voice name"));
    assert!(error(piper(), with(None, 1.0, Some("xx-nowhere")), "Hi.").contains("espeak-ng"));
    assert!(error(piper(), with(None, 1.0, None), " .. ,").contains("nothing"));

    // Faster speech is shorter; another espeak-ng voice reads the same text otherwise.
    let length = |speed: f32| {
        let options = SynthesisOptions {
            speed,
            ..deterministic()
        };
        piper()
            .synthesize("One two three four.", &options)
            .unwrap()
            .samples
            .len()
    };
    assert!(length(2.0) < length(1.0) * 6 / 10);
    let ids = |language: &str| {
        piper()
            .phoneme_ids("Paris", &with(None, 1.0, Some(language)))
            .unwrap()
    };
    assert_ne!(ids("en-us"), ids("fr-fr"));
}

#[test]
fn long_text_stays_within_the_models_input() {
    // 150 words without a mark: one sentence, longer than either model takes in one call.
    let text = "seven hundred and twenty one ".repeat(30);
    for (voice, max_ids) in [(piper(), 2 * 500 + 3), (kokoro(), 509 + 2)] {
        let sentences = voice.phoneme_ids(&text, &deterministic()).unwrap();
        assert_eq!(sentences.len(), 1);
        let calls = &sentences[0];
        assert!(calls.len() >= 2, "{} calls", calls.len());
        assert!(calls.iter().all(|ids| ids.len() <= max_ids));
    }
    // Every piece is spoken: 150 words at under 4 words a second (Piper; Kokoro takes twice the
    // audio's length to compute on 2 cores).
    let pcm = piper().synthesize(&text, &deterministic()).unwrap();
    assert!(pcm.samples.len() as f32 / pcm.sample_rate as f32 > 40.0);
}

/// Pearson correlation of `a` and `b` over their common length.
fn correlation(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mean = |x: &[f32]| x.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
    let (ma, mb) = (mean(a), mean(b));
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x) - ma, f64::from(y) - mb);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa * bb).sqrt()
}

/// The best correlation of `decoded` with `reference` delayed by up to `max_delay` samples (an MP3
/// without its LAME tag starts with the encoder's delay).
fn best_correlation(decoded: &[f32], reference: &[f32], max_delay: usize) -> (f64, usize) {
    (0..=max_delay.min(decoded.len()))
        .map(|delay| (correlation(&decoded[delay..], reference), delay))
        .fold((f64::MIN, 0), |best, c| if c.0 > best.0 { c } else { best })
}

fn decode(bytes: &[u8], rate: u32, hint: &str) -> Vec<f32> {
    let options = DecodeOptions {
        target_rate: rate,
        max_seconds: 60.0,
        hint: Some(hint),
    };
    decode_to_mono(bytes, &options).unwrap_or_else(|e| panic!("{hint}: {e}"))
}

/// The speech at `rate`, as the encoders resample it (a WAV at that rate, read back).
fn at_rate(pcm: &Pcm, rate: u32) -> Vec<f32> {
    let (wav, _) = encode(pcm, Encoding::Wav, Some(rate), None).unwrap();
    wav[44..]
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32_767.0)
        .collect()
}

#[test]
fn encoders_produce_files_that_decode_to_the_speech() {
    let pcm = piper()
        .synthesize(&fixture().piper.cases[1].text, &deterministic())
        .unwrap();
    // (encoding, rate, bit rate, MIME type, least correlation with the speech at that rate,
    // most samples of delay). Only an MP3 without the LAME tag (LAME leaves it out when it does
    // not fit a frame: below 64 kbit/s at 22.05 and 24 kHz) has a delay, LAME's 1,105 samples,
    // and is up to 3 frames longer; the others decode to the speech's exact length.
    let cases = [
        (Encoding::Wav, 24_000, None, "audio/wav", 0.9999, 0),
        (Encoding::Flac, 48_000, None, "audio/flac", 0.9999, 0),
        (Encoding::Flac, 22_050, None, "audio/flac", 0.9999, 0),
        (Encoding::Mp3, 22_050, None, "audio/mpeg", 0.95, 1_105),
        (Encoding::Mp3, 24_000, Some(64_000), "audio/mpeg", 0.97, 0),
        (Encoding::Mp3, 48_000, Some(128_000), "audio/mpeg", 0.99, 0),
        (Encoding::Opus, 48_000, None, "audio/ogg", 0.85, 0),
        (Encoding::Opus, 48_000, Some(64_000), "audio/ogg", 0.9, 0),
        (Encoding::Opus, 16_000, Some(24_000), "audio/ogg", 0.9, 0),
        (Encoding::MulawWav, 8_000, None, "audio/wav", 0.999, 0),
        (Encoding::AlawWav, 16_000, None, "audio/wav", 0.999, 0),
    ];
    let mut failures = Vec::new();
    for (encoding, rate, bit_rate, mime, least, delay) in cases {
        let (bytes, got_mime) = encode(&pcm, encoding, Some(rate), bit_rate).unwrap();
        assert_eq!(got_mime, mime, "{encoding:?}");
        let decoded = decode(&bytes, rate, mime);
        let reference = at_rate(&pcm, rate);
        let (r, found_delay) = best_correlation(&decoded, &reference, 2 * delay);
        eprintln!(
            "{encoding:?} {rate} Hz {bit_rate:?}: {} bytes, {} samples for {}, delay {found_delay}, \
             correlation {r:.5}",
            bytes.len(),
            decoded.len(),
            reference.len()
        );
        let extra = if delay > 0 { 3 * 1_152 } else { 0 };
        if decoded.len() < reference.len() || decoded.len() > reference.len() + extra {
            failures.push(format!(
                "{encoding:?} {rate}: {} samples vs {}",
                decoded.len(),
                reference.len()
            ));
        }
        if r < least || found_delay.abs_diff(delay) > 32 {
            failures.push(format!(
                "{encoding:?} {rate}: correlation {r} (least {least}) at delay {found_delay}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Raw formats are the WAV files' data.
    let (wav, _) = encode(&pcm, Encoding::Wav, Some(24_000), None).unwrap();
    let (raw, mime) = encode(&pcm, Encoding::Linear16, Some(24_000), None).unwrap();
    assert_eq!((&wav[44..], mime), (&raw[..], "application/octet-stream"));
    for (wav_encoding, raw_encoding, raw_mime) in [
        (Encoding::MulawWav, Encoding::Mulaw, "audio/PCMU"),
        (Encoding::AlawWav, Encoding::Alaw, "audio/PCMA"),
    ] {
        let (wav, _) = encode(&pcm, wav_encoding, None, None).unwrap();
        let (raw, mime) = encode(&pcm, raw_encoding, None, None).unwrap();
        assert_eq!(mime, raw_mime);
        // 8 kHz by default; the data follows a 58-byte header (fmt of 18 bytes, fact).
        assert_eq!(u32::from_le_bytes(wav[24..28].try_into().unwrap()), 8_000);
        assert_eq!(&wav[58..58 + raw.len()], &raw[..]);
    }
    // Opus and MP3 defaults: 48 kHz, and the voice's own rate.
    let (opus, _) = encode(&pcm, Encoding::Opus, None, None).unwrap();
    assert_eq!(
        decode(&opus, 48_000, "opus").len(),
        at_rate(&pcm, 48_000).len()
    );
    let (mp3, _) = encode(&pcm, Encoding::Mp3, None, None).unwrap();
    let mp3_len = decode(&mp3, 22_050, "mp3").len();
    assert!((pcm.samples.len()..pcm.samples.len() + 3 * 1_152).contains(&mp3_len));
    assert!(encode(&pcm, Encoding::Mp3, Some(44_100), Some(50_000)).is_err());
    assert!(encode(&pcm, Encoding::Opus, Some(44_100), None).is_err());
}

#[test]
fn whisper_hears_what_piper_says() {
    let sentence = "The quick brown fox jumps over the lazy dog.";
    // The voice's own noise: speech as a client gets it.
    let pcm = piper()
        .synthesize(sentence, &SynthesisOptions::default())
        .unwrap();
    let (wav, _) = encode(&pcm, Encoding::Wav, Some(16_000), None).unwrap();
    let samples = decode(&wav, 16_000, "wav");
    let whisper = Whisper::load(&model_dir("cf--openai--whisper-tiny-en")).unwrap();
    let transcription = whisper
        .transcribe(&samples, &TranscribeOptions::default())
        .unwrap();
    let text: String = transcription
        .segments
        .iter()
        .map(|s| s.text.as_str())
        .collect();
    let words = |s: &str| {
        s.to_lowercase()
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(words(&text), words(sentence), "Whisper heard {text:?}");
}

/// Real-time factor of each voice on a 10-word sentence, on as many threads as the machine has:
/// `cargo test -p ember-engines --release --test tts_reference -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn real_time_factor() {
    let sentence = "Please remember to bring your notebook to the meeting tomorrow.";
    for (name, voice) in [("piper joe", piper()), ("kokoro", kokoro())] {
        voice
            .synthesize(sentence, &SynthesisOptions::default())
            .unwrap();
        let runs = 5;
        let (mut compute, mut audio, mut phonemize) = (0.0, 0.0, 0.0);
        for _ in 0..runs {
            let start = Instant::now();
            voice
                .phoneme_ids(sentence, &SynthesisOptions::default())
                .unwrap();
            phonemize += start.elapsed().as_secs_f64();
            let start = Instant::now();
            let pcm = voice
                .synthesize(sentence, &SynthesisOptions::default())
                .unwrap();
            compute += start.elapsed().as_secs_f64();
            audio += pcm.samples.len() as f64 / f64::from(pcm.sample_rate);
        }
        eprintln!(
            "{name}: {:.3} s of compute (espeak-ng {:.3} s) for {:.2} s of audio: real-time \
             factor {:.3}",
            compute / f64::from(runs),
            phonemize / f64::from(runs),
            audio / f64::from(runs),
            compute / audio
        );
    }
}
