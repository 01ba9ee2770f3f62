//! Automatic speech recognition (`@cf/openai/whisper`, `whisper-tiny-en`, `whisper-large-v3-turbo`):
//! audio bytes in (any container the decoder knows) with Whisper's decoding settings, the
//! transcription out with segment and word timings. Charged per minute of audio.

use super::{TaskInfo, Usage};

pub const INFO: TaskInfo = TaskInfo {
    name: "Automatic Speech Recognition",
    uuid: "dfce1c48-2a81-462e-a7fd-de97ce985207",
    requests_per_minute: 720,
    description: "Automatic speech recognition (ASR) models convert a speech signal, typically an audio input, to text.",
};

pub fn usage(output: &SpeechRecognitionOutput) -> Usage {
    Usage::of_audio(output.duration)
}

pub fn most_usage(request: &SpeechRecognitionRequest, _input_bytes: u32) -> Usage {
    Usage::of_audio(most_seconds(&request.audio))
}

/// Longest audio accepted, in seconds. Its decoded samples take 230 MB at 16 kHz, and a few
/// hundred bytes of a compressed file can claim that much silence, so the bound is on what one
/// request may make a model hold and decode.
pub const MAX_AUDIO_SECONDS: f64 = 3600.0;

/// The most seconds `audio` can hold: no codec a caller would use goes below 6 kbit/s, and the
/// decoder refuses more than `MAX_AUDIO_SECONDS`.
pub fn most_seconds(audio: &[u8]) -> f64 {
    (audio.len() as f64 / 750.0).min(MAX_AUDIO_SECONDS)
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpeechRecognitionRequest {
    /// The encoded audio, as the caller sent it.
    pub audio: Vec<u8>,
    /// What the caller said the audio is (a MIME type), a hint for the decoder.
    pub content_type: Option<String>,
    pub settings: TranscribeSettings,
    /// The answer carries `transcription_info` and `segments` (whisper-large-v3-turbo's shape);
    /// otherwise `words` (whisper's and whisper-tiny-en's).
    pub detailed: bool,
}

/// Whisper's decoding settings, with Workers AI's (and faster-whisper's) defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct TranscribeSettings {
    /// Translate into English instead of transcribing.
    pub translate: bool,
    /// ISO 639-1 code of the spoken language; detected when absent.
    pub language: Option<String>,
    /// Text that conditions the first window (names, spelling, style).
    pub initial_prompt: Option<String>,
    /// Text the transcription of the first window starts with.
    pub prefix: Option<String>,
    pub beam_size: u32,
    pub condition_on_previous_text: bool,
    pub no_speech_threshold: f32,
    pub compression_ratio_threshold: f32,
    pub log_prob_threshold: f32,
    /// Skip the stretches without speech before decoding.
    pub vad_filter: bool,
}

impl Default for TranscribeSettings {
    fn default() -> TranscribeSettings {
        TranscribeSettings {
            translate: false,
            language: None,
            initial_prompt: None,
            prefix: None,
            beam_size: 5,
            condition_on_previous_text: true,
            no_speech_threshold: 0.6,
            compression_ratio_threshold: 2.4,
            log_prob_threshold: -1.0,
            vad_filter: false,
        }
    }
}

/// A word with its time span in seconds from the start of the audio.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedWord {
    pub word: String,
    pub start: f64,
    pub end: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TranscriptSegment {
    pub start: f64,
    pub end: f64,
    pub text: String,
    /// The sampling temperature the segment was finally decoded at (after fallbacks).
    pub temperature: f32,
    pub avg_logprob: f32,
    pub compression_ratio: f32,
    pub no_speech_prob: f32,
    pub words: Vec<TimedWord>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpeechRecognitionOutput {
    pub language: String,
    pub language_probability: f32,
    /// Seconds of audio.
    pub duration: f64,
    /// Seconds left after removing silence (the duration when VAD was off).
    pub duration_after_vad: f64,
    pub segments: Vec<TranscriptSegment>,
    pub detailed: bool,
}

impl SpeechRecognitionOutput {
    /// The whole transcription: the segments' texts joined.
    pub fn text(&self) -> String {
        let joined: String = self.segments.iter().map(|s| s.text.as_str()).collect();
        joined.trim().to_string()
    }

    pub fn words(&self) -> impl Iterator<Item = &TimedWord> {
        self.segments.iter().flat_map(|s| &s.words)
    }
}
