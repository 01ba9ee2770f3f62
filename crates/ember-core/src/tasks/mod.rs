//! Workers AI tasks, one module per task family: its typed request and output, plain Rust (the
//! wire formats that carry them live in ember-http). This module registers them: the `Task` kinds
//! with their published names, UUIDs and rate limits, the task-neutral request and output, `Usage`
//! with its one pricing rule, and what a request may cost before it runs.

pub mod classification;
pub mod embeddings;
pub mod reranking;
pub mod speech_recognition;
pub mod summarization;
pub mod text_generation;
pub mod text_to_speech;
pub mod translation;

pub use embeddings::*;
pub use text_generation::*;

use crate::catalog::{ModelSpec, Price};
use classification::{ClassificationOutput, ClassificationRequest};
use reranking::{RerankOutput, RerankRequest};
use serde::{Deserialize, Serialize};
use speech_recognition::{SpeechRecognitionOutput, SpeechRecognitionRequest};
use summarization::{SummarizationOutput, SummarizationRequest};
use text_to_speech::{SpeechSynthesisOutput, SpeechSynthesisRequest};
use translation::{TranslationOutput, TranslationRequest};

/// Workers AI task kinds Ember serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    TextGeneration,
    TextEmbeddings,
    TextClassification,
    /// Workers AI files its reranker under Text Classification; its schema is its own.
    Reranking,
    Translation,
    Summarization,
    SpeechRecognition,
    TextToSpeech,
}

impl Task {
    /// The name Workers AI uses for the task in catalog results and `task=` filters.
    pub fn display_name(self) -> &'static str {
        match self {
            Task::TextGeneration => "Text Generation",
            Task::TextEmbeddings => "Text Embeddings",
            Task::TextClassification | Task::Reranking => "Text Classification",
            Task::Translation => "Translation",
            Task::Summarization => "Summarization",
            Task::SpeechRecognition => "Automatic Speech Recognition",
            Task::TextToSpeech => "Text-to-Speech",
        }
    }

    /// Stable task UUID published by Workers AI.
    pub fn uuid(self) -> &'static str {
        match self {
            Task::TextGeneration => "c329a1f9-323d-4e91-b2aa-582dd4188d34",
            Task::TextEmbeddings => "0137cdcf-162a-4108-94f2-1ca59e8c65ee",
            Task::TextClassification | Task::Reranking => "19606750-23ed-4371-aab2-c20349b53a60",
            Task::Translation => "f57d07cb-9087-487a-bbbf-bc3e17fecc4b",
            Task::Summarization => "6f4e65d8-da0f-40d2-9aa4-db582a5a04fd",
            Task::SpeechRecognition => "dfce1c48-2a81-462e-a7fd-de97ce985207",
            Task::TextToSpeech => "b52660a1-9a95-4ab2-8b1d-f232be34604a",
        }
    }

    /// Requests per minute per account and task, as Workers AI publishes them.
    pub fn requests_per_minute(self) -> u32 {
        match self {
            Task::TextGeneration => 300,
            Task::TextEmbeddings => 3000,
            Task::TextClassification | Task::Reranking => 2000,
            Task::Translation => 720,
            Task::Summarization => 1500,
            Task::SpeechRecognition => 720,
            // Not in the published table; as speech recognition.
            Task::TextToSpeech => 720,
        }
    }

    /// The task whose rate limit applies (Workers AI limits its reranker as Text Classification).
    pub fn rate_limited_as(self) -> Task {
        match self {
            Task::Reranking => Task::TextClassification,
            other => other,
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Task::TextGeneration => {
                "Family of generative text models, such as large language models (LLM), that can be adapted for a variety of natural language tasks."
            }
            Task::TextEmbeddings => {
                "Feature extraction models transform raw data into numerical features that can be processed while preserving the information in the original dataset. These models are ideal as part of building vector search applications or Retrieval Augmented Generation workflows with Large Language Models (LLM)."
            }
            Task::TextClassification | Task::Reranking => {
                "Sentiment analysis or text classification is a common NLP task that classifies a text input into labels or classes."
            }
            Task::Translation => {
                "Translation models convert a sequence of text from one language to another."
            }
            Task::SpeechRecognition => {
                "Automatic speech recognition (ASR) models convert a speech signal, typically an audio input, to text."
            }
            Task::TextToSpeech => {
                "Text-to-Speech (TTS) is the task of generating natural sounding speech given text input."
            }
            Task::Summarization => {
                "Summarization is the task of producing a shorter version of a document while preserving its important information. Some models can extract text from the original input, while other models can generate entirely new text."
            }
        }
    }
}

/// Most tokens a chat template adds around the caller's text (system prompt, tool instructions).
pub(crate) const TEMPLATE_TOKENS: u32 = 256;

/// A validated request for a model that answers whole results: every task but text generation,
/// which streams.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskRequest {
    Embeddings(EmbeddingsRequest),
    Classification(ClassificationRequest),
    Reranking(RerankRequest),
    Translation(TranslationRequest),
    Summarization(SummarizationRequest),
    SpeechRecognition(SpeechRecognitionRequest),
    TextToSpeech(SpeechSynthesisRequest),
}

impl TaskRequest {
    pub fn task(&self) -> Task {
        match self {
            TaskRequest::Embeddings(_) => Task::TextEmbeddings,
            TaskRequest::Classification(_) => Task::TextClassification,
            TaskRequest::Reranking(_) => Task::Reranking,
            TaskRequest::Translation(_) => Task::Translation,
            TaskRequest::Summarization(_) => Task::Summarization,
            TaskRequest::SpeechRecognition(_) => Task::SpeechRecognition,
            TaskRequest::TextToSpeech(_) => Task::TextToSpeech,
        }
    }
}

/// What a `TaskRequest` produced, with the tokens it used.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutput {
    Embeddings(EmbeddingsOutput),
    Classification(ClassificationOutput),
    Reranking(RerankOutput),
    Translation(TranslationOutput),
    Summarization(SummarizationOutput),
    SpeechRecognition(SpeechRecognitionOutput),
    TextToSpeech(SpeechSynthesisOutput),
}

impl TaskOutput {
    /// The tokens the run used, not yet priced.
    pub fn usage(&self) -> Usage {
        match self {
            TaskOutput::Embeddings(output) => Usage::new(output.input_tokens(), 0),
            TaskOutput::Classification(output) => Usage::new(output.input_tokens, 0),
            TaskOutput::Reranking(output) => Usage::new(output.input_tokens, 0),
            TaskOutput::Translation(output) => output.usage,
            TaskOutput::Summarization(output) => output.usage,
            TaskOutput::SpeechRecognition(output) => Usage::of_audio(output.duration),
            TaskOutput::TextToSpeech(output) => Usage {
                characters: output.characters,
                ..Usage::of_audio(output.duration)
            },
        }
    }
}

/// A parsed input: a generation (which may stream) or a whole-result task.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskInput {
    TextGeneration(TextGenerationRequest),
    Task(TaskRequest),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub prompt_tokens_details: PromptTokensDetails,
    /// Seconds of audio the request heard or spoke (speech is priced by the minute).
    #[serde(skip)]
    pub audio_seconds: f64,
    /// Characters of text spoken (some speech models are priced by the thousand).
    #[serde(skip)]
    pub characters: u32,
    /// What the request costs at the model's published price (fractional, like Workers AI's).
    pub neurons: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose KV cells came from the prefix cache instead of being computed.
    pub cached_tokens: u32,
}

impl Usage {
    pub fn new(prompt_tokens: u32, completion_tokens: u32) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails::default(),
            audio_seconds: 0.0,
            characters: 0,
            neurons: 0.0,
        }
    }

    /// The usage of a request that processed `seconds` of audio.
    pub fn of_audio(seconds: f64) -> Usage {
        Usage {
            audio_seconds: seconds,
            ..Usage::new(0, 0)
        }
    }

    /// The usage with its cost at `price`: the one rule by which every request is charged.
    pub fn priced(mut self, price: &Price) -> Usage {
        self.neurons = price.neurons(&self);
        self
    }

    pub fn with_cached_tokens(mut self, cached_tokens: u32) -> Usage {
        self.prompt_tokens_details.cached_tokens = cached_tokens;
        self
    }
}

/// What running `input` on `spec` can cost at most, known before the model runs: each of the
/// `input_bytes` the caller sent may be a token (plus a chat template's own), and every token the
/// request allows may be generated. It is held against an account's daily allocation until the
/// real usage is known.
pub fn estimate_usage(spec: &ModelSpec, input: &TaskInput, input_bytes: usize) -> Usage {
    match input {
        TaskInput::TextGeneration(request) => estimate_generation(spec, request, input_bytes),
        TaskInput::Task(request) => estimate_task(spec, request, input_bytes),
    }
}

/// `estimate_usage` of a whole-result task.
pub fn estimate_task(spec: &ModelSpec, request: &TaskRequest, input_bytes: usize) -> Usage {
    let input_bytes = u32::try_from(input_bytes).unwrap_or(u32::MAX);
    let usage = match request {
        TaskRequest::Translation(request) => {
            // Each text is prompted on its own, so each has its template.
            let texts = u32::try_from(request.items.len()).unwrap_or(u32::MAX);
            Usage::new(
                input_bytes.saturating_add(TEMPLATE_TOKENS.saturating_mul(texts)),
                input_bytes
                    .saturating_mul(2)
                    .saturating_add(32u32.saturating_mul(texts)),
            )
        }
        TaskRequest::Summarization(request) => Usage::new(
            input_bytes.saturating_add(TEMPLATE_TOKENS),
            request.max_length,
        ),
        TaskRequest::Embeddings(_) | TaskRequest::Classification(_) | TaskRequest::Reranking(_) => {
            Usage::new(input_bytes, 0)
        }
        TaskRequest::SpeechRecognition(request) => {
            Usage::of_audio(speech_recognition::most_seconds(&request.audio))
        }
        TaskRequest::TextToSpeech(request) => {
            let characters = u32::try_from(request.text.chars().count()).unwrap_or(u32::MAX);
            Usage {
                characters,
                ..Usage::of_audio(text_to_speech::most_seconds(characters))
            }
        }
    };
    usage.priced(&spec.price)
}

/// `estimate_usage` of a text generation.
pub fn estimate_generation(
    spec: &ModelSpec,
    request: &TextGenerationRequest,
    input_bytes: usize,
) -> Usage {
    let input_bytes = u32::try_from(input_bytes).unwrap_or(u32::MAX);
    Usage::new(
        input_bytes.saturating_add(TEMPLATE_TOKENS),
        request.max_tokens,
    )
    .priced(&spec.price)
}
