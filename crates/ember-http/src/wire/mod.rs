//! Workers AI's JSON for every task, converted once, at the edge: `parse` turns a model input (and
//! a binary body, for tasks with a binary input) into core's typed request, every error naming the
//! offending field as a JSON pointer, `result` turns a typed output into the contract's result
//! object, and `schema` is what `models/schema` shows. One module per task; this one registers them
//! (one arm per task in each of the three) and holds the field readers they share.

pub mod binary;
pub mod classification;
pub mod embeddings;
pub mod image_classification;
pub mod object_detection;
pub mod reranking;
pub mod speech_recognition;
pub mod summarization;
pub mod text_generation;
pub mod text_to_image;
pub mod text_to_speech;
pub mod tools;
pub mod translation;

use binary::BinaryBody;
use ember_core::catalog::{ModelSpec, Task};
use ember_core::tasks::{MAX_PROMPT_CHARS, TaskInput, TaskOutput, TaskRequest};
use ember_core::{InferError, Target};
use serde_json::{Map, Value};

/// Parses and validates `input` for `target`'s task: the requested model's contract, the serving
/// model's abilities. `body` is the request body when it was bytes rather than JSON.
pub fn parse(
    target: Target<'_>,
    input: &Value,
    body: Option<BinaryBody>,
) -> Result<TaskInput, InferError> {
    let spec = target.served;
    let takes_bytes = matches!(
        spec.task,
        Task::SpeechRecognition | Task::ImageClassification | Task::ObjectDetection
    );
    if let Some(body) = &body
        && !takes_bytes
    {
        return Err(InferError::invalid(
            "/",
            format!(
                "{} takes a JSON body, not {}",
                target.requested.id, body.content_type
            ),
        ));
    }
    let request = match spec.task {
        Task::TextGeneration => {
            return Ok(TaskInput::TextGeneration(text_generation::parse(
                input, spec,
            )?));
        }
        Task::TextEmbeddings => TaskRequest::TextEmbeddings(embeddings::parse(input)?),
        Task::TextClassification => TaskRequest::TextClassification(classification::parse(input)?),
        Task::Reranking => TaskRequest::Reranking(reranking::parse(input)?),
        Task::Translation => TaskRequest::Translation(translation::parse(input, spec)?),
        Task::Summarization => TaskRequest::Summarization(summarization::parse(input)?),
        Task::SpeechRecognition => {
            TaskRequest::SpeechRecognition(speech_recognition::parse(target, input, body)?)
        }
        Task::TextToSpeech => TaskRequest::TextToSpeech(text_to_speech::parse(target, input)?),
        Task::ImageClassification => {
            TaskRequest::ImageClassification(image_classification::parse(input, body)?)
        }
        Task::ObjectDetection => {
            TaskRequest::ObjectDetection(object_detection::parse(input, body)?)
        }
        Task::TextToImage => TaskRequest::TextToImage(text_to_image::parse(input)?),
    };
    Ok(TaskInput::Task(request))
}

/// A task's answer: the contract's result object, or bytes with their MIME type (audio, images).
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Json(Value),
    Binary {
        bytes: Vec<u8>,
        content_type: String,
    },
}

impl From<Value> for Answer {
    fn from(json: Value) -> Answer {
        Answer::Json(json)
    }
}

/// The contract's answer for `output`.
pub fn result(output: &TaskOutput) -> Answer {
    match output {
        TaskOutput::TextEmbeddings(output) => embeddings::result(output).into(),
        TaskOutput::TextClassification(output) => classification::result(output).into(),
        TaskOutput::Reranking(output) => reranking::result(output).into(),
        TaskOutput::Translation(output) => translation::result(output).into(),
        TaskOutput::Summarization(output) => summarization::result(output).into(),
        TaskOutput::SpeechRecognition(output) => speech_recognition::result(output).into(),
        TaskOutput::TextToSpeech(output) => text_to_speech::result(output),
        TaskOutput::ImageClassification(output) => image_classification::result(output).into(),
        TaskOutput::ObjectDetection(output) => object_detection::result(output).into(),
        TaskOutput::TextToImage(output) => text_to_image::result(output),
    }
}

/// The model's input and output JSON Schema, as `models/schema` returns it.
pub fn schema(spec: &ModelSpec) -> &'static str {
    match spec.task {
        Task::TextGeneration => include_str!("../../schemas/text-generation.json"),
        Task::TextEmbeddings => include_str!("../../schemas/text-embeddings.json"),
        Task::TextClassification => include_str!("../../schemas/text-classification.json"),
        Task::Reranking => include_str!("../../schemas/reranking.json"),
        Task::Translation => include_str!("../../schemas/translation.json"),
        Task::Summarization => include_str!("../../schemas/summarization.json"),
        Task::SpeechRecognition if speech_recognition::answers_segments(spec) => {
            include_str!("../../schemas/automatic-speech-recognition-segments.json")
        }
        Task::SpeechRecognition => include_str!("../../schemas/automatic-speech-recognition.json"),
        Task::TextToSpeech if text_to_speech::speaks_aura(spec) => {
            include_str!("../../schemas/text-to-speech-aura.json")
        }
        Task::TextToSpeech => include_str!("../../schemas/text-to-speech.json"),
        Task::ImageClassification => include_str!("../../schemas/image-classification.json"),
        Task::ObjectDetection => include_str!("../../schemas/object-detection.json"),
        Task::TextToImage => include_str!("../../schemas/text-to-image.json"),
    }
}

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

/// A non-empty string of at most `MAX_PROMPT_CHARS` characters.
pub(crate) fn bounded_string(value: &Value, at: &str) -> Result<String, InferError> {
    string_at_most(value, at, MAX_PROMPT_CHARS)
}

/// A non-empty string of at most `max` characters.
pub(crate) fn string_at_most(value: &Value, at: &str, max: usize) -> Result<String, InferError> {
    let text = nonempty_string(value, at)?;
    if text.chars().count() > max {
        return Err(InferError::invalid(
            at,
            format!("must be at most {max} characters"),
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
