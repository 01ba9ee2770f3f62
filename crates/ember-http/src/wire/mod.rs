//! Workers AI's JSON for every task, converted once, at the edge: `parse` turns a model input (and
//! a binary body, for tasks with a binary input) into core's typed request, every error naming the
//! offending field as a JSON pointer, `result` turns a typed output into the contract's result
//! object, and `schema` is what `models/schema` shows. One module per task, registered by core's
//! task list (`ember_core::for_each_task!`); this module builds the dispatch from that list and
//! holds the field readers the modules share.

pub mod binary;
pub mod text_generation;
pub mod tools;

use binary::BinaryBody;
use ember_core::catalog::{ModelSpec, Task};
use ember_core::tasks::{MAX_PROMPT_CHARS, TaskInput, TaskOutput, TaskRequest};
use ember_core::{InferError, Target};
use serde_json::{Map, Value};

/// What a task's `parse` reads: the model input, the request body when it was bytes rather than
/// JSON, and the models it is for (the requested model's contract, the serving model's abilities).
pub struct Incoming<'a> {
    pub target: Target<'a>,
    json: &'a Value,
    body: Option<BinaryBody>,
}

impl<'a> Incoming<'a> {
    pub fn new(target: Target<'a>, json: &'a Value, body: Option<BinaryBody>) -> Incoming<'a> {
        Incoming { target, json, body }
    }

    /// The input of a task that takes JSON only: a binary body is refused.
    pub fn json(&self) -> Result<&'a Value, InferError> {
        match &self.body {
            Some(body) => Err(InferError::invalid(
                "/",
                format!(
                    "{} takes a JSON body, not {}",
                    self.target.requested.id, body.content_type
                ),
            )),
            None => Ok(self.json),
        }
    }

    /// The input object of a task that takes JSON only.
    pub fn object(&self) -> Result<&'a Map<String, Value>, InferError> {
        as_object(self.json()?)
    }

    /// The input of a task with the binary input `field`: the input object, and that input's
    /// bytes (the request body, or the field).
    pub fn with_bytes(self, field: &str) -> Result<WithBytes<'a>, InferError> {
        let object = as_object(self.json)?;
        let (bytes, content_type) = binary::bytes_field(object, field, self.body)?;
        Ok(WithBytes {
            object,
            bytes,
            content_type,
        })
    }

    /// The same input with `body` as the request body (test helper).
    #[cfg(test)]
    pub(crate) fn with_body(self, body: BinaryBody) -> Incoming<'a> {
        Incoming {
            body: Some(body),
            ..self
        }
    }
}

/// The input of a task with a binary field.
pub struct WithBytes<'a> {
    pub object: &'a Map<String, Value>,
    pub bytes: Vec<u8>,
    /// The content type the caller gave, if any.
    pub content_type: Option<String>,
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

/// ember-http's half of the registry, built from core's task list: each task's wire module
/// (same name as its core module) provides `parse(Incoming) -> Result<Request, InferError>`,
/// `result(&Output)` (a JSON value or an `Answer`) and `schema(&ModelSpec) -> &'static str`.
macro_rules! wire_tasks {
    ($($(#[$doc:meta])* $task:ident => $module:ident::{$request:ident, $output:ident},)*) => {
        $(pub mod $module;)*

        /// Parses and validates the input for `incoming.target`'s task.
        pub fn parse(incoming: Incoming<'_>) -> Result<TaskInput, InferError> {
            Ok(match incoming.target.served.task {
                Task::TextGeneration => TaskInput::TextGeneration(text_generation::parse(
                    incoming.json()?,
                    incoming.target,
                )?),
                $(Task::$task => TaskInput::Task(TaskRequest::$task($module::parse(incoming)?)),)*
            })
        }

        /// The contract's answer for `output`.
        pub fn result(output: &TaskOutput) -> Answer {
            match output {
                $(TaskOutput::$task(output) => $module::result(output).into(),)*
            }
        }

        /// The model's input and output JSON Schema, as `models/schema` returns it.
        pub fn schema(spec: &ModelSpec) -> &'static str {
            match spec.task {
                Task::TextGeneration => text_generation::schema(spec),
                $(Task::$task => $module::schema(spec),)*
            }
        }
    };
}

ember_core::for_each_task!(wire_tasks);

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

/// `json` as the input for `model` of the built-in catalog (test helper).
#[cfg(test)]
pub(crate) fn input_for<'a>(model: &str, json: &'a Value) -> Incoming<'a> {
    static CATALOG: std::sync::LazyLock<ember_core::Catalog> =
        std::sync::LazyLock::new(|| ember_core::Catalog::builtin().unwrap());
    let spec = CATALOG.get(model).unwrap();
    let target = Target {
        requested: spec,
        served: spec,
    };
    Incoming::new(target, json, None)
}
