//! The text-to-speech runner: speaks a request's text with an ONNX voice (`tts`) on the model's
//! worker thread and encodes it as asked. A speaker the voice does not have (Aura's names, when a
//! local voice stands in for Aura) is spoken by the voice's own first speaker.

use crate::tts::{self, Encoding, SynthesisOptions, Voice};
use crate::wrong_task;
use ember_core::InferError;
use ember_core::runner::Runner;
use ember_core::tasks::text_to_speech::{
    AudioFormat, SpeechSynthesisOutput, SpeechSynthesisRequest,
};
use ember_core::tasks::{TaskOutput, TaskRequest};
use std::path::Path;

pub struct SpeechSynthesizer {
    voice: Voice,
}

impl SpeechSynthesizer {
    pub fn load(dir: &Path) -> Result<SpeechSynthesizer, InferError> {
        let voice = Voice::load(dir).map_err(|error| InferError::LoadFailed {
            model: dir.display().to_string(),
            reason: format!("{error:#}"),
        })?;
        Ok(SpeechSynthesizer { voice })
    }

    fn speak(&self, request: SpeechSynthesisRequest) -> Result<SpeechSynthesisOutput, InferError> {
        let speaker = request
            .speaker
            .filter(|name| self.voice.speakers().contains(name));
        let options = SynthesisOptions {
            speaker,
            language: request.language.as_deref().and_then(espeak_voice),
            ..SynthesisOptions::default()
        };
        // What fails here is the text (nothing espeak-ng can read aloud, a language it lacks):
        // the caller's to change.
        let pcm = self
            .voice
            .synthesize(&request.text, &options)
            .map_err(|error| InferError::ModelInputRejected(format!("{error:#}")))?;
        let (audio, content_type) = tts::encode(
            &pcm,
            encoding(request.format),
            request.sample_rate,
            request.bit_rate,
        )
        // The rates and bit rates a format cannot take are the caller's to fix.
        .map_err(|error| InferError::invalid("/sample_rate", format!("{error:#}")))?;
        Ok(SpeechSynthesisOutput {
            audio,
            content_type: content_type.to_string(),
            duration: pcm.samples.len() as f64 / f64::from(pcm.sample_rate),
            characters: u32::try_from(request.text.chars().count()).unwrap_or(u32::MAX),
            base64_json: request.base64_json,
        })
    }
}

impl Runner for SpeechSynthesizer {
    fn run(&mut self, request: TaskRequest) -> Result<TaskOutput, InferError> {
        match request {
            TaskRequest::TextToSpeech(request) => self.speak(request).map(TaskOutput::TextToSpeech),
            other => Err(wrong_task(&other)),
        }
    }
}

/// The espeak-ng voice that reads a language (MeloTTS's codes); English is the voice's own.
fn espeak_voice(language: &str) -> Option<String> {
    let voice = match language {
        "es" => "es",
        "fr" => "fr-fr",
        "zh" => "cmn",
        "jp" => "ja",
        "kr" => "ko",
        _ => return None,
    };
    Some(voice.to_string())
}

fn encoding(format: AudioFormat) -> Encoding {
    match format {
        AudioFormat::Mp3 => Encoding::Mp3,
        AudioFormat::Wav => Encoding::Wav,
        AudioFormat::Linear16 => Encoding::Linear16,
        AudioFormat::Mulaw => Encoding::Mulaw,
        AudioFormat::Alaw => Encoding::Alaw,
        AudioFormat::MulawWav => Encoding::MulawWav,
        AudioFormat::AlawWav => Encoding::AlawWav,
        AudioFormat::Flac => Encoding::Flac,
        AudioFormat::OggOpus => Encoding::Opus,
    }
}
