//! Whisper speech-to-text (candle; the encoder on ONNX Runtime where installed): the engine and
//! its plain Rust API (no JSON, no HTTP).
//!
//! `Whisper::load` reads a model folder in either layout: CTranslate2's (`model.bin`, what Ember
//! installs; `ct2.rs`) or Hugging Face's (`model.safetensors`; `hf.rs`), both with
//! `tokenizer.json`. `Whisper::transcribe` reproduces faster-whisper's `transcribe`: log-mel
//! features (`mel.rs`), language detection on the first window, sequential 30 s windows decoded
//! with timestamps, the previous text as prompt, temperature fallback (`decode.rs`), and word
//! timestamps from cross-attention (`align.rs`); with `vad_filter`, only the speech that Silero
//! VAD finds (`vad.rs`, `silero_vad_v6.onnx` in the folder, on ONNX Runtime) is transcribed and
//! the times are moved back onto the whole audio (`speech_chunks.rs`). `transcribe.rs` holds the
//! loop, `model.rs` the transformer, `tokens.rs` the tokenizer's special tokens and word splitting.
//! Transcriptions running at once on several threads step together (`steps.rs`).
//!
//! Checked token for token against faster-whisper on CTranslate2 float32, with and without VAD
//! (`tests/whisper_reference.rs`, fixtures from `scripts/reference/whisper.py`).

mod align;
mod ct2;
mod decode;
mod encoder_onnx;
mod hf;
mod matvec;
mod mel;
mod model;
mod softmax;
mod speech_chunks;
mod steps;
mod tokens;
mod transcribe;
pub mod vad;
mod weights;

use anyhow::{Context, anyhow};
use std::path::Path;
use vad::{SileroVad, VadOptions};

/// What to do with the speech.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Text in the spoken language.
    Transcribe,
    /// English text (multilingual models).
    Translate,
}

/// How to transcribe; `Default` is faster-whisper's `transcribe` defaults (beam search of 5,
/// temperature fallback, no word timestamps, no VAD).
#[derive(Debug, Clone)]
pub struct TranscribeOptions {
    /// A language code (`en`, `fr`, ...); `None` detects it on the first 30 s (multilingual
    /// models; English-only models always use `en`).
    pub language: Option<String>,
    pub task: Task,
    /// 1 decodes greedily; more runs beam search at temperature 0.
    pub beam_size: usize,
    /// Samples drawn at a temperature above 0; the likeliest is kept.
    pub best_of: usize,
    /// Beam search ends after `round(beam_size · patience)` finished hypotheses.
    pub patience: f32,
    /// Hypotheses are ranked by `sum log p / length ^ length_penalty`.
    pub length_penalty: f32,
    /// Tried in order while a window's result fails the thresholds below.
    pub temperatures: Vec<f32>,
    /// A window whose text compresses (zlib) better than this is too repetitive: try again hotter.
    pub compression_ratio_threshold: Option<f64>,
    /// A window whose average token log-probability is below this is retried hotter.
    pub log_prob_threshold: Option<f64>,
    /// A window is silence (skipped) when P(no speech) is above this and the average log-probability
    /// is below `log_prob_threshold`.
    pub no_speech_threshold: Option<f64>,
    /// Prompt each window with the text so far (reset after a window decoded hotter than
    /// `prompt_reset_on_temperature`).
    pub condition_on_previous_text: bool,
    pub prompt_reset_on_temperature: f32,
    /// Text that precedes the first window (vocabulary, spelling, style).
    pub initial_prompt: Option<String>,
    /// Never produced: token ids, where -1 stands for the default set (symbols and speaker-tag
    /// characters, the task tokens).
    pub suppress_tokens: Vec<i64>,
    /// No blank (a space or end of text) as a window's first token.
    pub suppress_blank: bool,
    /// Text without timestamp tokens: each window is one segment.
    pub without_timestamps: bool,
    /// The latest time (s) the first timestamp of a window may have.
    pub max_initial_timestamp: f64,
    pub word_timestamps: bool,
    /// Marks joined to the following word in word timestamps.
    pub prepend_punctuations: String,
    /// Marks joined to the preceding word in word timestamps.
    pub append_punctuations: String,
    /// Seed of the sampling at temperatures above 0.
    pub seed: u64,
    /// Transcribe only the speech Silero VAD finds with these options (faster-whisper's
    /// `vad_filter=True` with `vad_parameters`); `None` transcribes all the audio.
    pub vad_filter: Option<VadOptions>,
}

impl Default for TranscribeOptions {
    fn default() -> TranscribeOptions {
        TranscribeOptions {
            language: None,
            task: Task::Transcribe,
            beam_size: 5,
            best_of: 5,
            patience: 1.0,
            length_penalty: 1.0,
            temperatures: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            compression_ratio_threshold: Some(2.4),
            log_prob_threshold: Some(-1.0),
            no_speech_threshold: Some(0.6),
            condition_on_previous_text: true,
            prompt_reset_on_temperature: 0.5,
            initial_prompt: None,
            suppress_tokens: vec![-1],
            suppress_blank: true,
            without_timestamps: false,
            max_initial_timestamp: 1.0,
            word_timestamps: false,
            prepend_punctuations: "\"'“¿([{-".into(),
            append_punctuations: "\"'.。,，!！?？:：”)]}、".into(),
            seed: 0,
            vad_filter: None,
        }
    }
}

/// The result of `Whisper::transcribe`.
#[derive(Debug, Clone)]
pub struct Transcription {
    /// The language code used (given, detected, or `en` for English-only models).
    pub language: String,
    /// The detected language's probability (1 when it was not detected).
    pub language_probability: f64,
    /// Seconds of audio.
    pub duration: f64,
    /// Seconds of audio transcribed: the speech found with `vad_filter`, else `duration`.
    pub duration_after_vad: f64,
    pub segments: Vec<Segment>,
}

/// A stretch of speech with its text.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Seconds from the start of the audio.
    pub start: f64,
    pub end: f64,
    pub text: String,
    /// The decoded tokens, timestamp tokens included.
    pub tokens: Vec<u32>,
    /// The temperature of the decoding kept for the window.
    pub temperature: f32,
    /// The window's mean log-probability per token (end of text counted).
    pub avg_logprob: f64,
    /// The window's text length over its zlib-compressed length.
    pub compression_ratio: f64,
    /// P(no speech) for the window.
    pub no_speech_prob: f64,
    /// Empty unless word timestamps were asked for.
    pub words: Vec<Word>,
}

/// A word with its time and probability.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    /// The word as it appears in the text (with its leading space).
    pub word: String,
    pub start: f64,
    pub end: f64,
    pub probability: f64,
}

/// A loaded Whisper model. Immutable: `transcribe` may run on several threads at once.
pub struct Whisper {
    model: model::Model,
    /// Where concurrent transcriptions' decoding steps meet (`steps.rs`).
    steps: steps::StepQueue,
    tokens: tokens::Tokens,
    mel: mel::LogMel,
    /// (layer, head) of the cross-attention heads used for word timestamps.
    alignment_heads: Vec<(usize, usize)>,
    lang_ids: Vec<u32>,
    suppress_ids_begin: Vec<u32>,
    /// The ids `-1` in `suppress_tokens` stands for.
    non_speech: Vec<u32>,
    /// The voice activity detector for `vad_filter`, or why there is none.
    vad: Result<SileroVad, String>,
}

impl Whisper {
    /// Loads a model folder: `model.bin` (CTranslate2) or `model.safetensors` (Hugging Face),
    /// with `config.json` and `tokenizer.json`, and `silero_vad_v6.onnx` for `vad_filter` (a
    /// folder without it, or a machine without ONNX Runtime, transcribes without VAD only).
    pub fn load(dir: &Path) -> anyhow::Result<Whisper> {
        let loaded = if dir.join("model.bin").is_file() {
            ct2::load(dir)
        } else {
            hf::load(dir)
        }
        .with_context(|| format!("loading the Whisper model in {}", dir.display()))?;
        let mut weights = loaded.weights;
        let model = model::Model::new(&mut weights, loaded.encoder_heads, loaded.decoder_heads)?;
        let tokens = tokens::Tokens::load(dir)?;
        let (layers, heads) = (model.decoder_layers(), model.decoder_heads());
        // Without a list, the second half of the decoder layers' heads (OpenAI's default).
        let alignment_heads = loaded.alignment_heads.unwrap_or_else(|| {
            (layers / 2..layers)
                .flat_map(|l| (0..heads).map(move |h| (l, h)))
                .collect()
        });
        anyhow::ensure!(
            alignment_heads
                .iter()
                .all(|&(l, h)| l < layers && h < heads),
            "an alignment head is outside the decoder's {layers} layers × {heads} heads"
        );
        let suppress_ids_begin = match loaded.suppress_ids_begin {
            Some(ids) => ids,
            // A space and end of text, what the converters write.
            None => {
                let mut ids = tokens.encode(" ")?;
                ids.push(tokens.eot);
                ids
            }
        };
        Ok(Whisper {
            mel: mel::LogMel::new(model.dims.n_mels)?,
            lang_ids: loaded.lang_ids.unwrap_or_else(|| tokens.language_ids()),
            non_speech: tokens.non_speech()?,
            model,
            steps: steps::StepQueue::default(),
            tokens,
            alignment_heads,
            suppress_ids_begin,
            vad: load_vad(dir),
        })
    }

    /// Whether the model knows languages other than English (and the translate task).
    pub fn is_multilingual(&self) -> bool {
        // English-only vocabularies are one token shorter (51864).
        self.model.dims.n_vocab >= 51865
    }

    /// The voice activity detector `vad_filter` runs, or why this model has none.
    pub fn vad(&self) -> Result<&SileroVad, &str> {
        self.vad.as_ref().map_err(String::as_str)
    }

    /// Transcribes 16 kHz mono samples (in [-1, 1]).
    pub fn transcribe(
        &self,
        samples: &[f32],
        options: &TranscribeOptions,
    ) -> anyhow::Result<Transcription> {
        let Some(vad_options) = &options.vad_filter else {
            return transcribe::run(self, samples, options);
        };
        let vad = self.vad().map_err(|why| anyhow!("vad_filter: {why}"))?;
        let chunks = vad.speech_timestamps(samples, vad_options)?;
        let speech = speech_chunks::collect(samples, &chunks);
        let mut transcription = transcribe::run(self, &speech, options)?;
        transcription.duration = samples.len() as f64 / mel::SAMPLE_RATE as f64;
        speech_chunks::restore(&mut transcription.segments, &chunks);
        Ok(transcription)
    }
}

/// The folder's Silero VAD; a missing file or ONNX Runtime leaves the model usable without VAD.
fn load_vad(dir: &Path) -> Result<SileroVad, String> {
    let path = dir.join(vad::FILE);
    if !path.is_file() {
        return Err(format!(
            "the model has no {} (`ember models pull` adds it to the model's folder)",
            vad::FILE
        ));
    }
    SileroVad::load(&path).map_err(|error| {
        tracing::warn!(%error, "Silero VAD not loaded; vad_filter is refused");
        format!("the voice activity detector could not be loaded: {error:#}")
    })
}
