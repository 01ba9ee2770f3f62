//! The speech recognition runner: decodes the uploaded audio (`audio`) and transcribes it with
//! Whisper (`whisper`) on the model's worker thread, with word timestamps, mapping Workers AI's
//! settings onto Whisper's decoding options (`vad_filter`: faster-whisper's default VAD).

use crate::audio::{self, DecodeOptions};
use crate::whisper::vad::VadOptions;
use crate::whisper::{self, TranscribeOptions, Whisper};
use crate::wrong_task;
use ember_core::InferError;
use ember_core::runner::Runner;
use ember_core::tasks::speech_recognition::{
    MAX_AUDIO_SECONDS, SpeechRecognitionOutput, SpeechRecognitionRequest, TimedWord,
    TranscriptSegment,
};
use ember_core::tasks::{TaskOutput, TaskRequest};
use std::path::Path;

/// Whisper's input rate.
const SAMPLE_RATE: u32 = 16_000;
/// Requests transcribed together, their decoding steps batched (`Runner::run_together`).
const TRANSCRIPTIONS_AT_ONCE: usize = 8;

pub struct SpeechRecognizer {
    whisper: Whisper,
}

impl SpeechRecognizer {
    pub fn load(dir: &Path) -> Result<SpeechRecognizer, InferError> {
        let whisper = Whisper::load(dir).map_err(|error| InferError::LoadFailed {
            model: dir.display().to_string(),
            reason: format!("{error:#}"),
        })?;
        Ok(SpeechRecognizer { whisper })
    }

    fn transcribe(
        &self,
        request: SpeechRecognitionRequest,
    ) -> Result<SpeechRecognitionOutput, InferError> {
        let decode = DecodeOptions {
            target_rate: SAMPLE_RATE,
            max_seconds: MAX_AUDIO_SECONDS,
            hint: request.content_type.as_deref(),
        };
        let samples = audio::decode_to_mono(&request.audio, &decode)
            .map_err(|error| InferError::invalid("/audio", error.to_string()))?;
        if samples.is_empty() {
            return Err(InferError::invalid("/audio", "the audio holds no samples"));
        }
        let settings = &request.settings;
        // Not implemented yet: refused rather than silently ignored.
        if settings.prefix.is_some() {
            return Err(InferError::invalid(
                "/prefix",
                "is not supported by this version of Ember",
            ));
        }
        if settings.vad_filter
            && let Err(why) = self.whisper.vad()
        {
            return Err(InferError::invalid("/vad_filter", why));
        }
        if settings.translate && !self.whisper.is_multilingual() {
            return Err(InferError::invalid(
                "/task",
                "this model is English-only and cannot translate",
            ));
        }
        let options = TranscribeOptions {
            language: settings.language.clone(),
            task: match settings.translate {
                true => whisper::Task::Translate,
                false => whisper::Task::Transcribe,
            },
            beam_size: settings.beam_size as usize,
            compression_ratio_threshold: Some(settings.compression_ratio_threshold.into()),
            log_prob_threshold: Some(settings.log_prob_threshold.into()),
            no_speech_threshold: Some(settings.no_speech_threshold.into()),
            condition_on_previous_text: settings.condition_on_previous_text,
            initial_prompt: settings.initial_prompt.clone(),
            word_timestamps: true,
            vad_filter: settings.vad_filter.then(VadOptions::default),
            ..TranscribeOptions::default()
        };
        let transcription = self
            .whisper
            .transcribe(&samples, &options)
            .map_err(|error| InferError::Internal(format!("transcription failed: {error:#}")))?;
        Ok(SpeechRecognitionOutput {
            language: transcription.language,
            language_probability: transcription.language_probability as f32,
            duration: transcription.duration,
            duration_after_vad: transcription.duration_after_vad,
            segments: transcription.segments.into_iter().map(segment).collect(),
            detailed: request.detailed,
        })
    }
}

impl Runner for SpeechRecognizer {
    fn run(&mut self, request: TaskRequest) -> Result<TaskOutput, InferError> {
        match request {
            TaskRequest::SpeechRecognition(request) => {
                self.transcribe(request).map(TaskOutput::SpeechRecognition)
            }
            other => Err(wrong_task(&other)),
        }
    }

    fn batch_size(&self) -> usize {
        TRANSCRIPTIONS_AT_ONCE
    }

    /// Each request on a thread of its own: their decoding steps meet in Whisper's step queue
    /// and run as one, and the rest (audio decoding, beam bookkeeping, word alignment)
    /// overlaps.
    fn run_together(&mut self, requests: Vec<TaskRequest>) -> Vec<Result<TaskOutput, InferError>> {
        let this = &*self;
        std::thread::scope(|scope| {
            let running: Vec<_> = requests
                .into_iter()
                .map(|request| {
                    std::thread::Builder::new()
                        .name("whisper-request".into())
                        .spawn_scoped(scope, move || {
                            let TaskRequest::SpeechRecognition(request) = request else {
                                return Err(wrong_task(&request));
                            };
                            this.transcribe(request).map(TaskOutput::SpeechRecognition)
                        })
                })
                .collect();
            running
                .into_iter()
                .map(|thread| match thread {
                    Ok(thread) => thread
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                    Err(error) => Err(InferError::Internal(format!(
                        "no thread for the request: {error}"
                    ))),
                })
                .collect()
        })
    }
}

fn segment(segment: whisper::Segment) -> TranscriptSegment {
    TranscriptSegment {
        start: segment.start,
        end: segment.end,
        text: segment.text,
        temperature: segment.temperature,
        avg_logprob: segment.avg_logprob as f32,
        compression_ratio: segment.compression_ratio as f32,
        no_speech_prob: segment.no_speech_prob as f32,
        words: segment
            .words
            .into_iter()
            .map(|word| TimedWord {
                word: word.word,
                start: word.start,
                end: word.end,
            })
            .collect(),
    }
}
