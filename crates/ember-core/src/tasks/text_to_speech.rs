//! Text-to-speech (`@cf/myshell-ai/melotts`, `@cf/deepgram/aura-1`): a text and a voice in, encoded
//! audio out, as base64 in JSON (MeloTTS) or as the response body (Aura). Charged per minute of
//! audio or per thousand characters, as the model's price says.

use super::{TaskInfo, Usage};

pub const INFO: TaskInfo = TaskInfo {
    name: "Text-to-Speech",
    uuid: "b52660a1-9a95-4ab2-8b1d-f232be34604a",
    // Not in the published table; as speech recognition.
    requests_per_minute: 720,
    description: "Text-to-Speech (TTS) is the task of generating natural sounding speech given text input.",
};

pub fn usage(output: &SpeechSynthesisOutput) -> Usage {
    Usage {
        characters: output.characters,
        ..Usage::of_audio(output.duration)
    }
}

pub fn most_usage(request: &SpeechSynthesisRequest, _input_bytes: u32) -> Usage {
    let characters = u32::try_from(request.text.chars().count()).unwrap_or(u32::MAX);
    Usage {
        characters,
        ..Usage::of_audio(most_seconds(characters))
    }
}

/// Longest text accepted, in characters (Aura takes 2,000).
pub const MAX_TEXT_CHARS: usize = 2000;

/// The most seconds `characters` of text can take to say: no voice is slower than five characters a
/// second at normal speed.
pub fn most_seconds(characters: u32) -> f64 {
    f64::from(characters) / 5.0
}

/// The audio formats Aura's `encoding` and `container` pick between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioFormat {
    Mp3,
    /// 16-bit PCM in a WAV container.
    Wav,
    /// 16-bit little-endian PCM, no container.
    Linear16,
    Mulaw,
    Alaw,
    MulawWav,
    AlawWav,
    Flac,
    /// Opus in an Ogg container.
    OggOpus,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpeechSynthesisRequest {
    pub text: String,
    /// A voice of the model (`None`: its first).
    pub speaker: Option<String>,
    /// The language of the text, as an ISO 639-1 code (`None`: the voice's own).
    pub language: Option<String>,
    pub format: AudioFormat,
    /// Hz (`None`: the format's default).
    pub sample_rate: Option<u32>,
    /// Bits per second for MP3 and Opus (`None`: the format's default).
    pub bit_rate: Option<u32>,
    /// The answer is `{audio: <base64>}` (MeloTTS) rather than the audio itself (Aura).
    pub base64_json: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpeechSynthesisOutput {
    pub audio: Vec<u8>,
    /// The MIME type of `audio`.
    pub content_type: String,
    /// Seconds of speech.
    pub duration: f64,
    /// Characters of text spoken.
    pub characters: u32,
    pub base64_json: bool,
}
