//! The Whisper engine against faster-whisper 1.2.1 on CTranslate2 4.8.5 (float32, CPU), from
//! `crates/ember-engines/tests/fixtures/whisper/{tiny-en,base}.json` made by
//! `scripts/reference/whisper.py` on the clips beside them (espeak-ng speech, 4 s and 44 s, the
//! latter over two windows), greedy and with a beam of 5, temperature 0, word timestamps.
//!
//! Needs `cf--openai--whisper-tiny-en` and `cf--openai--whisper` in the model cache
//! (`$EMBER_HOME/models`, EMBER_HOME defaulting to `~/.cache/ember`); a missing one fails.
//!
//! Tolerances: tokens, text, segment count and words exactly; segment and word times within
//! 0.1 s (word times are DTW path positions of 20 ms: a different cell in a near-tie moves a
//! boundary by 20-40 ms); avg_logprob within 0.05 and probabilities within 0.05 (both sides
//! compute in f32 with different summation orders; greedy choices with a margin under ~1e-4 could
//! flip, and none does on these clips); the language probability within 0.01 (faster-whisper
//! detects on the features including the frame past the audio, this engine on the first window).
//!
//! `vad_filter` against the same faster-whisper (`fixtures/whisper/vad.json`, `--vad` of the
//! script): the clips joined with 1.5-4 s of silence around and between them (63 s, 55 s of it
//! speech) and 3 s of silence. Silero VAD's speech probability of every window within 1e-4 (the
//! same ONNX file on ONNX Runtime 1.28 both sides, different thread counts), the speech chunks to
//! the sample; the transcriptions as above but with times within 0.2 s (a time moved back by the
//! silence before its chunk is rounded to 10 ms again) and the speech duration within 0.01 s.

use ember_engines::whisper::vad::{self, SileroVad, VadOptions};
use ember_engines::whisper::{TranscribeOptions, Transcription, Whisper, Word};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const TIME_TOLERANCE: f64 = 0.1;
const VAD_TIME_TOLERANCE: f64 = 0.2;
const VAD_PROBABILITY_TOLERANCE: f32 = 1e-4;
const DURATION_AFTER_VAD_TOLERANCE: f64 = 0.01;
const LOGPROB_TOLERANCE: f64 = 0.05;
const PROBABILITY_TOLERANCE: f64 = 0.05;
const LANGUAGE_PROBABILITY_TOLERANCE: f64 = 0.01;

#[derive(Deserialize)]
struct Fixture {
    reference: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    /// The clip, for the cases without VAD.
    #[serde(default)]
    clip: String,
    beam_size: usize,
    language: String,
    language_probability: f64,
    duration: f64,
    segments: Vec<RefSegment>,
}

#[derive(Deserialize)]
struct RefSegment {
    start: f64,
    end: f64,
    text: String,
    tokens: Vec<u32>,
    avg_logprob: f64,
    no_speech_prob: f64,
    words: Vec<RefWord>,
}

#[derive(Deserialize)]
struct RefWord {
    word: String,
    start: f64,
    end: f64,
    probability: f64,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/whisper")
}

fn model_dir(name: &str) -> PathBuf {
    let dir = ember_core::installed::default_home()
        .join("models")
        .join(name);
    assert!(
        dir.join("model.bin").is_file() && dir.join("tokenizer.json").is_file(),
        "the Whisper model is not installed at {} (model.bin, config.json, tokenizer.json; \
         set EMBER_HOME or install it as scripts/reference/whisper.py describes)",
        dir.display()
    );
    dir
}

/// The samples of a 16 kHz mono 16-bit PCM WAV, as faster-whisper was given them (/ 32768).
fn read_wav(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..4], b"RIFF");
    let mut at = 12;
    let mut format_ok = false;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        let body = &bytes[at + 8..at + 8 + len];
        if id == b"fmt " {
            let word = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
            let rate = u32::from_le_bytes(body[4..8].try_into().unwrap());
            format_ok = word(0) == 1 && word(2) == 1 && rate == 16_000 && word(14) == 16;
        } else if id == b"data" {
            assert!(format_ok, "{}: not 16 kHz mono 16-bit PCM", path.display());
            return body
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
                .collect();
        }
        at += 8 + len + len % 2;
    }
    panic!("{}: no data chunk", path.display());
}

/// The failed comparisons of one case, and the largest difference seen per quantity.
#[derive(Default)]
struct Checks {
    failures: Vec<String>,
    largest: BTreeMap<&'static str, f64>,
}

impl Checks {
    fn close(&mut self, quantity: &'static str, at: &str, ours: f64, theirs: f64, tolerance: f64) {
        let difference = (ours - theirs).abs();
        let largest = self.largest.entry(quantity).or_default();
        *largest = largest.max(difference);
        if difference > tolerance {
            self.failures.push(format!(
                "{at} {quantity}: {ours} vs faster-whisper {theirs} (tolerance {tolerance})"
            ));
        }
    }

    fn equal<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, ours: T, theirs: T) -> bool {
        if ours != theirs {
            self.failures
                .push(format!("{what}:\n  ours   {ours:?}\n  theirs {theirs:?}"));
        }
        ours == theirs
    }
}

fn compare(case: &Case, got: &Transcription, time_tolerance: f64) -> Checks {
    let mut c = Checks::default();
    c.equal("language", &got.language, &case.language);
    let probability = (got.language_probability, case.language_probability);
    c.close(
        "language probability",
        "",
        probability.0,
        probability.1,
        LANGUAGE_PROBABILITY_TOLERANCE,
    );
    c.close("duration", "", got.duration, case.duration, 1e-9);
    let texts: Vec<&str> = got.segments.iter().map(|s| s.text.as_str()).collect();
    let theirs: Vec<&str> = case.segments.iter().map(|s| s.text.as_str()).collect();
    if !c.equal("segments", texts, theirs) {
        return c;
    }
    for (i, (ours, theirs)) in got.segments.iter().zip(&case.segments).enumerate() {
        let at = format!("segment {i}");
        c.equal(&format!("{at} tokens"), &ours.tokens, &theirs.tokens);
        c.close(
            "segment time",
            &at,
            ours.start,
            theirs.start,
            time_tolerance,
        );
        c.close("segment time", &at, ours.end, theirs.end, time_tolerance);
        c.close(
            "avg_logprob",
            &at,
            ours.avg_logprob,
            theirs.avg_logprob,
            LOGPROB_TOLERANCE,
        );
        c.close(
            "no_speech_prob",
            &at,
            ours.no_speech_prob,
            theirs.no_speech_prob,
            PROBABILITY_TOLERANCE,
        );
        let words = |w: &[Word]| w.iter().map(|w| w.word.clone()).collect::<Vec<_>>();
        let theirs_words: Vec<String> = theirs.words.iter().map(|w| w.word.clone()).collect();
        if !c.equal(&format!("{at} words"), words(&ours.words), theirs_words) {
            continue;
        }
        for (a, b) in ours.words.iter().zip(&theirs.words) {
            let at = format!("{at} word {:?}", a.word);
            c.close("word time", &at, a.start, b.start, time_tolerance);
            c.close("word time", &at, a.end, b.end, time_tolerance);
            c.close(
                "word probability",
                &at,
                a.probability,
                b.probability,
                PROBABILITY_TOLERANCE,
            );
        }
    }
    // Words never run backwards nor past the audio.
    let mut last = 0.0;
    for word in got.segments.iter().flat_map(|s| &s.words) {
        if word.start < last - 1e-9 || word.end < word.start || word.end > got.duration + 1e-9 {
            c.failures.push(format!(
                "word {:?} at {}..{} after {last} (duration {})",
                word.word, word.start, word.end, got.duration
            ));
        }
        last = word.end;
    }
    c
}

/// The fixture's decoding: its beam, greedy at temperature 0 only, with word timestamps.
fn options_of(case: &Case) -> TranscribeOptions {
    TranscribeOptions {
        beam_size: case.beam_size,
        temperatures: vec![0.0],
        word_timestamps: true,
        ..TranscribeOptions::default()
    }
}

fn check_model(fixture_file: &str, model: &str) {
    let path = fixtures().join(fixture_file);
    let fixture: Fixture = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let whisper = Whisper::load(&model_dir(model)).unwrap();
    let mut failures = Vec::new();
    for case in &fixture.cases {
        let samples = read_wav(&fixtures().join(&case.clip));
        let started = std::time::Instant::now();
        let got = whisper.transcribe(&samples, &options_of(case)).unwrap();
        let seconds = started.elapsed().as_secs_f64();
        let checks = compare(case, &got, TIME_TOLERANCE);
        let largest: Vec<String> = checks
            .largest
            .iter()
            .map(|(q, d)| format!("{q} {d:.1e}"))
            .collect();
        eprintln!(
            "{model} {} beam {}: {seconds:.2} s; largest differences: {}",
            case.clip,
            case.beam_size,
            largest.join(", ")
        );
        for failure in checks.failures {
            failures.push(format!("{} beam {}: {failure}", case.clip, case.beam_size));
        }
    }
    assert!(
        failures.is_empty(),
        "{model} against {}:\n{}",
        fixture.reference,
        failures.join("\n")
    );
}

#[test]
fn tiny_en_matches_faster_whisper() {
    check_model("tiny-en.json", "cf--openai--whisper-tiny-en");
}

#[test]
fn base_matches_faster_whisper() {
    check_model("base.json", "cf--openai--whisper");
}

/// Every case of the fixture at once, one thread each, as `ember serve` runs requests that
/// arrive together: their decoding steps run as one (`whisper/steps.rs`), and each still
/// matches faster-whisper.
#[test]
fn concurrent_transcriptions_match_faster_whisper() {
    let fixture: Fixture =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("base.json")).unwrap())
            .unwrap();
    let whisper = Whisper::load(&model_dir("cf--openai--whisper")).unwrap();
    let failures: Vec<String> = std::thread::scope(|scope| {
        let running: Vec<_> = fixture
            .cases
            .iter()
            .map(|case| {
                let whisper = &whisper;
                scope.spawn(move || {
                    let samples = read_wav(&fixtures().join(&case.clip));
                    let got = whisper.transcribe(&samples, &options_of(case)).unwrap();
                    compare(case, &got, TIME_TOLERANCE)
                        .failures
                        .into_iter()
                        .map(|failure| format!("{} beam {}: {failure}", case.clip, case.beam_size))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        running
            .into_iter()
            .flat_map(|thread| thread.join().unwrap())
            .collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The temperature fallback, which the fixtures (temperature 0) never reach: with a
/// log-probability threshold no decoding meets, every temperature is tried (sampling two
/// candidates above 0), the likeliest result is kept and reported with the last temperature, as faster-whisper
/// does; the same seed gives the same result.
#[test]
fn temperature_fallback_keeps_the_likeliest() {
    let whisper = Whisper::load(&model_dir("cf--openai--whisper-tiny-en")).unwrap();
    let samples = read_wav(&fixtures().join("short.wav"));
    let greedy = TranscribeOptions {
        beam_size: 1,
        temperatures: vec![0.0],
        ..TranscribeOptions::default()
    };
    let fallback = TranscribeOptions {
        beam_size: 1,
        best_of: 2,
        temperatures: vec![0.0, 0.5, 1.0],
        log_prob_threshold: Some(0.0),
        no_speech_threshold: None,
        ..TranscribeOptions::default()
    };
    let greedy = whisper.transcribe(&samples, &greedy).unwrap();
    let first = whisper.transcribe(&samples, &fallback).unwrap();
    let again = whisper.transcribe(&samples, &fallback).unwrap();
    assert!(!first.segments.is_empty());
    for segment in &first.segments {
        assert_eq!(segment.temperature, 1.0);
    }
    let tokens = |t: &Transcription| {
        t.segments
            .iter()
            .map(|s| s.tokens.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(tokens(&first), tokens(&again));
    // The greedy decoding was one of the candidates.
    assert!(first.segments[0].avg_logprob >= greedy.segments[0].avg_logprob - 1e-9);
}

/// Silence and empty input give no segments (faster-whisper: none for both).
#[test]
fn silence_gives_no_segments() {
    let whisper = Whisper::load(&model_dir("cf--openai--whisper-tiny-en")).unwrap();
    let options = TranscribeOptions {
        beam_size: 1,
        word_timestamps: true,
        ..TranscribeOptions::default()
    };
    for seconds in [3, 0] {
        let got = whisper
            .transcribe(&vec![0.0; 16_000 * seconds], &options)
            .unwrap();
        assert!(
            got.segments.is_empty(),
            "{seconds} s of silence: {:?}",
            got.segments
        );
        assert_eq!(got.duration, seconds as f64);
    }
}

#[derive(Deserialize)]
struct VadFixture {
    reference: String,
    audio: Vec<Part>,
    samples: usize,
    probabilities: Vec<f32>,
    speech_timestamps: Vec<Chunk>,
    tail: Tail,
    cases: Vec<VadCase>,
}

/// A piece of a VAD case's audio: a clip, or seconds of silence.
#[derive(Deserialize)]
struct Part {
    clip: Option<String>,
    silence: Option<f64>,
}

#[derive(Deserialize)]
struct Chunk {
    start: usize,
    end: usize,
}

/// The first `samples` of a clip, ending inside speech less than a context short of a window.
#[derive(Deserialize)]
struct Tail {
    clip: String,
    samples: usize,
    probabilities: Vec<f32>,
}

#[derive(Deserialize)]
struct VadCase {
    model: String,
    audio: Vec<Part>,
    duration_after_vad: f64,
    #[serde(flatten)]
    case: Case,
}

fn vad_fixture() -> VadFixture {
    let path = fixtures().join("vad.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The samples of a recipe, as the script builds them: clips and whole samples of silence.
fn build(audio: &[Part]) -> Vec<f32> {
    let mut samples = Vec::new();
    for part in audio {
        match (&part.clip, part.silence) {
            (Some(clip), None) => samples.extend(read_wav(&fixtures().join(clip))),
            (None, Some(seconds)) => samples.extend(std::iter::repeat_n(
                0.0,
                (seconds * 16_000.0).round() as usize,
            )),
            _ => panic!("a part is a clip or a silence"),
        }
    }
    samples
}

/// The largest difference between two runs of probabilities of the same length.
fn largest_difference(ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len(), "window count");
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

#[test]
fn vad_matches_faster_whisper() {
    let fixture = vad_fixture();
    let dir = model_dir("cf--openai--whisper-tiny-en");
    let vad = SileroVad::load(&dir.join(vad::FILE)).unwrap();
    let samples = build(&fixture.audio);
    assert_eq!(samples.len(), fixture.samples);

    let probabilities = vad.probabilities(&samples).unwrap();
    let difference = largest_difference(&probabilities, &fixture.probabilities);
    let tail = read_wav(&fixtures().join(&fixture.tail.clip))[..fixture.tail.samples].to_vec();
    let tail_difference = largest_difference(
        &vad.probabilities(&tail).unwrap(),
        &fixture.tail.probabilities,
    );
    eprintln!(
        "VAD probabilities against {}: largest difference {difference:.1e}, {tail_difference:.1e} \
         at the tail",
        fixture.reference
    );
    assert!(difference <= VAD_PROBABILITY_TOLERANCE, "{difference}");
    assert!(
        tail_difference <= VAD_PROBABILITY_TOLERANCE,
        "{tail_difference}"
    );

    let chunks = vad
        .speech_timestamps(&samples, &VadOptions::default())
        .unwrap();
    let ours: Vec<(usize, usize)> = chunks.iter().map(|c| (c.start, c.end)).collect();
    let theirs: Vec<(usize, usize)> = fixture
        .speech_timestamps
        .iter()
        .map(|c| (c.start, c.end))
        .collect();
    assert_eq!(ours, theirs);
}

fn check_vad_model(model: &str) {
    let fixture = vad_fixture();
    let whisper = Whisper::load(&model_dir(model)).unwrap();
    let mut failures = Vec::new();
    let cases: Vec<&VadCase> = fixture.cases.iter().filter(|c| c.model == model).collect();
    assert!(!cases.is_empty(), "no VAD case for {model}");
    for case in cases {
        let samples = build(&case.audio);
        let options = TranscribeOptions {
            beam_size: case.case.beam_size,
            temperatures: vec![0.0],
            word_timestamps: true,
            vad_filter: Some(VadOptions::default()),
            ..TranscribeOptions::default()
        };
        let got = whisper.transcribe(&samples, &options).unwrap();
        let at = format!("{:.1} s, beam {}", got.duration, case.case.beam_size);
        let mut checks = compare(&case.case, &got, VAD_TIME_TOLERANCE);
        checks.close(
            "duration after VAD",
            "",
            got.duration_after_vad,
            case.duration_after_vad,
            DURATION_AFTER_VAD_TOLERANCE,
        );
        let largest: Vec<String> = checks
            .largest
            .iter()
            .map(|(q, d)| format!("{q} {d:.1e}"))
            .collect();
        eprintln!(
            "{model} VAD {at}: largest differences: {}",
            largest.join(", ")
        );
        failures.extend(checks.failures.into_iter().map(|f| format!("{at}: {f}")));
    }
    assert!(
        failures.is_empty(),
        "{model} with vad_filter against {}:\n{}",
        fixture.reference,
        failures.join("\n")
    );
}

#[test]
fn tiny_en_with_vad_matches_faster_whisper() {
    check_vad_model("cf--openai--whisper-tiny-en");
}

#[test]
fn base_with_vad_matches_faster_whisper() {
    check_vad_model("cf--openai--whisper");
}

/// A model folder without the VAD's file still transcribes, and refuses `vad_filter` saying why.
#[test]
fn vad_filter_without_the_vad_file_is_an_error() {
    let installed = model_dir("cf--openai--whisper-tiny-en");
    let dir = std::env::temp_dir().join(format!("ember-whisper-no-vad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["model.bin", "config.json", "tokenizer.json"] {
        let link = dir.join(file);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(installed.join(file), &link).unwrap();
    }
    let whisper = Whisper::load(&dir).unwrap();
    let why = whisper.vad().err().unwrap().to_string();
    assert!(why.contains(vad::FILE), "{why}");
    let samples = read_wav(&fixtures().join("short.wav"));
    let options = TranscribeOptions {
        beam_size: 1,
        vad_filter: Some(VadOptions::default()),
        ..TranscribeOptions::default()
    };
    let error = format!("{:#}", whisper.transcribe(&samples, &options).unwrap_err());
    assert!(
        error.contains("vad_filter") && error.contains(vad::FILE),
        "{error}"
    );
    let options = TranscribeOptions {
        vad_filter: None,
        ..options
    };
    assert!(
        !whisper
            .transcribe(&samples, &options)
            .unwrap()
            .segments
            .is_empty()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
