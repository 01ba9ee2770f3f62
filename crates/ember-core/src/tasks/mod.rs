//! Workers AI tasks, one module per task family: its typed request and output, plain Rust (the
//! wire formats that carry them live in ember-http), what Workers AI publishes about it (name,
//! UUID, rate limit) and its usage rules. This module registers them (`for_each_task!`, one line
//! per task, from which core and ember-http build their dispatch): the `Task` kinds, the
//! task-neutral request and output, `Usage` with its one pricing rule, and what a request may cost
//! before it runs.

pub mod text_generation;

pub use embeddings::{EmbeddingsOutput, EmbeddingsRequest, MAX_EMBEDDING_TEXTS, Pooling};
pub use text_generation::{
    ChatMessage, Completion, DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, FinishReason, ImagePart,
    Lora, MAX_PROMPT_CHARS, PromptInput, Sampling, TextGenerationRequest,
};

use crate::catalog::{ModelSpec, Price};
use serde::{Deserialize, Serialize};

/// What Workers AI publishes about a task.
pub struct TaskInfo {
    /// The task's name in catalog results and `task=` filters.
    pub name: &'static str,
    pub uuid: &'static str,
    /// Requests per minute per account.
    pub requests_per_minute: u32,
    pub description: &'static str,
}

/// Core's half of the registry, built from `for_each_task!`'s list: the task modules, the `Task`
/// kinds, `TaskRequest` and `TaskOutput` and their dispatch. Each module provides `INFO`,
/// `usage(&Output) -> Usage` (what a run used, unpriced) and `most_usage(&Request, input_bytes) ->
/// Usage` (what it may use at most, known before it runs). Text generation, which streams, is
/// registered by hand around it.
macro_rules! tasks {
    ($($(#[$doc:meta])* $task:ident => $module:ident::{$request:ident, $output:ident},)*) => {
        $(pub mod $module;)*

        /// Workers AI task kinds Ember serves.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "kebab-case")]
        pub enum Task {
            TextGeneration,
            $($(#[$doc])* $task,)*
        }

        impl Task {
            /// What Workers AI publishes about the task.
            pub fn info(self) -> &'static TaskInfo {
                match self {
                    Task::TextGeneration => &text_generation::INFO,
                    $(Task::$task => &$module::INFO,)*
                }
            }
        }

        /// A validated request for a model that answers whole results: every task but text
        /// generation, which streams.
        #[derive(Debug, Clone, PartialEq)]
        pub enum TaskRequest {
            $($task($module::$request),)*
        }

        impl TaskRequest {
            pub fn task(&self) -> Task {
                match self {
                    $(TaskRequest::$task(_) => Task::$task,)*
                }
            }

            fn most_usage(&self, input_bytes: u32) -> Usage {
                match self {
                    $(TaskRequest::$task(request) => $module::most_usage(request, input_bytes),)*
                }
            }
        }

        /// What a `TaskRequest` produced, with the tokens it used.
        #[derive(Debug, Clone, PartialEq)]
        pub enum TaskOutput {
            $($task($module::$output),)*
        }

        impl TaskOutput {
            /// What the run used, not yet priced.
            pub fn usage(&self) -> Usage {
                match self {
                    $(TaskOutput::$task(output) => $module::usage(output),)*
                }
            }
        }
    };
}

/// The registry: one line per whole-result task names its `Task` variant (the catalog's `task`,
/// in kebab case), its module and the module's request and output types, and hands the list to
/// `$callback`. Core builds its types from it (`tasks!`, above); ember-http builds its wire
/// dispatch from the same list, so a task is registered here and nowhere else.
#[macro_export]
macro_rules! for_each_task {
    ($callback:ident) => {
        $callback! {
            TextEmbeddings => embeddings::{EmbeddingsRequest, EmbeddingsOutput},
            TextClassification => classification::{ClassificationRequest, ClassificationOutput},
            /// Workers AI files its reranker under Text Classification; its schema is its own.
            Reranking => reranking::{RerankRequest, RerankOutput},
            Translation => translation::{TranslationRequest, TranslationOutput},
            Summarization => summarization::{SummarizationRequest, SummarizationOutput},
            SpeechRecognition => speech_recognition::{SpeechRecognitionRequest, SpeechRecognitionOutput},
            TextToSpeech => text_to_speech::{SpeechSynthesisRequest, SpeechSynthesisOutput},
            ImageClassification => image_classification::{ImageClassificationRequest, ImageClassificationOutput},
            ObjectDetection => object_detection::{ObjectDetectionRequest, ObjectDetectionOutput},
            TextToImage => text_to_image::{TextToImageRequest, TextToImageOutput},
            ImageToText => image_to_text::{ImageToTextRequest, ImageToTextOutput},
        }
    };
}

for_each_task!(tasks);

impl Task {
    /// The name Workers AI uses for the task in catalog results and `task=` filters.
    pub fn display_name(self) -> &'static str {
        self.info().name
    }

    /// Stable task UUID published by Workers AI.
    pub fn uuid(self) -> &'static str {
        self.info().uuid
    }

    /// Requests per minute per account and task, as Workers AI publishes them.
    pub fn requests_per_minute(self) -> u32 {
        self.info().requests_per_minute
    }

    /// The task whose rate limit applies (Workers AI limits its reranker as Text Classification).
    pub fn rate_limited_as(self) -> Task {
        match self {
            Task::Reranking => Task::TextClassification,
            other => other,
        }
    }

    pub fn description(self) -> &'static str {
        self.info().description
    }
}

/// Most tokens a chat template adds around the caller's text (system prompt, tool instructions).
pub(crate) const TEMPLATE_TOKENS: u32 = 256;
/// Most prompt positions one image may take (LLaVA 1.5 takes 576, Gemma 3 256).
pub(crate) const IMAGE_TOKENS_AT_MOST: u32 = 2048;

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
    /// Images looked at (image models are priced per image).
    #[serde(skip)]
    pub images: u32,
    /// 512×512 tiles of images generated, and the denoising steps that made them (image
    /// generation is priced by both).
    #[serde(skip)]
    pub tiles: u32,
    #[serde(skip)]
    pub steps: u32,
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
            images: 0,
            tiles: 0,
            steps: 0,
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

    /// The usage of a request that looked at `images` images.
    pub fn of_images(images: u32) -> Usage {
        Usage {
            images,
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
    request.most_usage(input_bytes).priced(&spec.price)
}

/// `estimate_usage` of a text generation. An image takes at least 4/3 of its size in the body
/// (base64; more as an array of byte values) but at most `IMAGE_TOKENS_AT_MOST` prompt positions.
pub fn estimate_generation(
    spec: &ModelSpec,
    request: &TextGenerationRequest,
    input_bytes: usize,
) -> Usage {
    let images: Vec<&ImagePart> = match &request.prompt {
        PromptInput::Messages(messages) => messages.iter().flat_map(|m| &m.images).collect(),
        PromptInput::Prompt { .. } => Vec::new(),
    };
    let encoded: usize = images.iter().map(|i| i.bytes.len().div_ceil(3) * 4).sum();
    let prompt = input_bytes.saturating_sub(encoded)
        + images.len() * IMAGE_TOKENS_AT_MOST as usize
        + TEMPLATE_TOKENS as usize;
    Usage::new(
        u32::try_from(prompt).unwrap_or(u32::MAX),
        request.max_tokens,
    )
    .priced(&spec.price)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Catalog;

    #[test]
    fn an_image_counts_as_its_positions_at_most_not_its_bytes() {
        let catalog = Catalog::builtin().unwrap();
        let spec = catalog.get("@hf/ember/tiny-gemma3-vision").unwrap();
        let mut message = ChatMessage::text("user", "What is it?");
        message.images.push(ImagePart {
            bytes: vec![0; 300_000],
            text_offset: 0,
            at: String::new(),
        });
        let request = TextGenerationRequest::new(
            PromptInput::Messages(vec![message]),
            16,
            Sampling::greedy(),
        );
        // The image in base64, and 100 bytes of JSON around it.
        let usage = estimate_generation(spec, &request, 400_000 + 100);
        assert_eq!(
            (usage.prompt_tokens, usage.completion_tokens),
            (100 + IMAGE_TOKENS_AT_MOST + TEMPLATE_TOKENS, 16)
        );
    }
}
