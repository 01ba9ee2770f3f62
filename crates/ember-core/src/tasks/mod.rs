//! Workers AI tasks, one module per task family: its typed request and output, the parsing and
//! validation of the JSON a caller sends (errors name the offending field as a JSON pointer), the
//! contract's result object, and what the request may cost before it runs. This module holds what
//! they share: the task-neutral request and output, `Usage` and its one pricing rule, and the
//! JSON field readers.

pub mod classification;
pub mod embeddings;
pub mod reranking;
pub mod summarization;
pub mod text_generation;
pub mod translation;

pub use embeddings::*;
pub use text_generation::*;

use crate::InferError;
use crate::catalog::{ModelSpec, Price};
use classification::{ClassificationOutput, ClassificationRequest};
use reranking::{RerankOutput, RerankRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use summarization::{SummarizationOutput, SummarizationRequest};
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
}

impl TaskRequest {
    pub fn task(&self) -> Task {
        match self {
            TaskRequest::Embeddings(_) => Task::TextEmbeddings,
            TaskRequest::Classification(_) => Task::TextClassification,
            TaskRequest::Reranking(_) => Task::Reranking,
            TaskRequest::Translation(_) => Task::Translation,
            TaskRequest::Summarization(_) => Task::Summarization,
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
}

impl TaskOutput {
    /// The contract's result object.
    pub fn to_json(&self) -> Value {
        match self {
            TaskOutput::Embeddings(output) => output.to_json(),
            TaskOutput::Classification(output) => output.to_json(),
            TaskOutput::Reranking(output) => output.to_json(),
            TaskOutput::Translation(output) => output.to_json(),
            TaskOutput::Summarization(output) => output.to_json(),
        }
    }

    /// The tokens the run used, not yet priced.
    pub fn usage(&self) -> Usage {
        match self {
            TaskOutput::Embeddings(output) => Usage::new(output.input_tokens(), 0),
            TaskOutput::Classification(output) => Usage::new(output.input_tokens, 0),
            TaskOutput::Reranking(output) => Usage::new(output.input_tokens, 0),
            TaskOutput::Translation(output) => output.usage,
            TaskOutput::Summarization(output) => output.usage,
        }
    }
}

/// A parsed input: a generation (which may stream) or a whole-result task.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskInput {
    TextGeneration(TextGenerationRequest),
    Task(TaskRequest),
}

/// Parses and validates `input` for `spec`'s task.
pub fn parse(spec: &ModelSpec, input: &Value) -> Result<TaskInput, InferError> {
    let request = match spec.task {
        Task::TextGeneration => {
            return Ok(TaskInput::TextGeneration(parse_text_generation(
                input, spec,
            )?));
        }
        Task::TextEmbeddings => TaskRequest::Embeddings(parse_embeddings(input)?),
        Task::TextClassification => TaskRequest::Classification(classification::parse(input)?),
        Task::Reranking => TaskRequest::Reranking(reranking::parse(input)?),
        Task::Translation => TaskRequest::Translation(translation::parse(input, spec)?),
        Task::Summarization => TaskRequest::Summarization(summarization::parse(input)?),
    };
    Ok(TaskInput::Task(request))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub prompt_tokens_details: PromptTokensDetails,
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
            neurons: 0.0,
        }
    }

    /// The usage with its cost at `price`: the one rule by which every request is charged.
    pub fn priced(mut self, price: &Price) -> Usage {
        self.neurons = price.neurons(self.prompt_tokens.into(), self.completion_tokens.into());
        self
    }

    pub fn with_cached_tokens(mut self, cached_tokens: u32) -> Usage {
        self.prompt_tokens_details.cached_tokens = cached_tokens;
        self
    }
}

/// What running `input` on `spec` can cost at most, known before the model runs: every byte of
/// the input may be a token (plus a chat template's own), and every token the request allows may
/// be generated. It is held against an account's daily allocation until the real usage is known.
pub fn estimate_usage(spec: &ModelSpec, input: &Value) -> Usage {
    let input_bytes = u32::try_from(input.to_string().len()).unwrap_or(u32::MAX);
    let most = |key: &str, default: u32, cap: u32| {
        input
            .get(key)
            .and_then(Value::as_u64)
            .map_or(default, |n| n.min(u64::from(u32::MAX)) as u32)
            .min(cap)
    };
    let usage = match spec.task {
        Task::TextGeneration => Usage::new(
            input_bytes.saturating_add(TEMPLATE_TOKENS),
            most("max_tokens", DEFAULT_MAX_TOKENS, spec.max_output_tokens),
        ),
        Task::TextEmbeddings | Task::TextClassification | Task::Reranking => {
            Usage::new(input_bytes, 0)
        }
        Task::Translation => {
            // Each text is prompted on its own, so each has its template.
            let texts = input
                .get("requests")
                .and_then(Value::as_array)
                .map_or(1, Vec::len) as u32;
            Usage::new(
                input_bytes.saturating_add(TEMPLATE_TOKENS.saturating_mul(texts)),
                input_bytes
                    .saturating_mul(2)
                    .saturating_add(32u32.saturating_mul(texts)),
            )
        }
        Task::Summarization => Usage::new(
            input_bytes.saturating_add(TEMPLATE_TOKENS),
            most(
                "max_length",
                summarization::DEFAULT_MAX_LENGTH,
                summarization::MAX_LENGTH,
            ),
        ),
    };
    usage.priced(&spec.price)
}

// ------------------------------------------------------------------ helpers

pub(crate) fn as_object(input: &Value) -> Result<&Map<String, Value>, InferError> {
    input
        .as_object()
        .ok_or_else(|| type_mismatch("/", "object", input))
}

pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

pub(crate) fn type_mismatch(at: &str, expected: &str, got: &Value) -> InferError {
    InferError::invalid(at, format!("expected {expected}, got {}", kind(got)))
}

pub(crate) fn nonempty_string(value: &Value, at: &str) -> Result<String, InferError> {
    match value {
        Value::String(s) if s.is_empty() => Err(InferError::invalid(at, "must not be empty")),
        Value::String(s) => Ok(s.clone()),
        other => Err(type_mismatch(at, "string", other)),
    }
}

pub(crate) fn bounded_string(value: &Value, at: &str) -> Result<String, InferError> {
    let text = nonempty_string(value, at)?;
    if text.chars().count() > MAX_PROMPT_CHARS {
        return Err(InferError::invalid(
            at,
            format!("must be at most {MAX_PROMPT_CHARS} characters"),
        ));
    }
    Ok(text)
}

pub(crate) fn optional_bool(
    object: &Map<String, Value>,
    key: &str,
) -> Result<Option<bool>, InferError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(type_mismatch(&format!("/{key}"), "boolean", other)),
    }
}

pub(crate) fn optional_number(
    object: &Map<String, Value>,
    key: &str,
    min: f64,
    max: f64,
) -> Result<Option<f32>, InferError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let n = n.as_f64().unwrap_or(f64::NAN);
            if (min..=max).contains(&n) {
                Ok(Some(n as f32))
            } else {
                Err(InferError::invalid(
                    format!("/{key}"),
                    format!("must be between {min} and {max}, got {n}"),
                ))
            }
        }
        Some(other) => Err(type_mismatch(&format!("/{key}"), "number", other)),
    }
}

pub(crate) fn optional_integer(
    object: &Map<String, Value>,
    key: &str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, InferError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if (min..=max).contains(&v) => Ok(Some(v)),
            _ => Err(InferError::invalid(
                format!("/{key}"),
                format!("must be an integer between {min} and {max}, got {n}"),
            )),
        },
        Some(other) => Err(type_mismatch(&format!("/{key}"), "integer", other)),
    }
}

/// The field an `InvalidInput` names (test helper).
#[cfg(test)]
pub(crate) fn field_of(error: InferError) -> String {
    match error {
        InferError::InvalidInput { field, .. } => field,
        other => panic!("expected invalid input, got {other:?}"),
    }
}
