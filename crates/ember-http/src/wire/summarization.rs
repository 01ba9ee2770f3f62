//! Summarization in Workers AI's JSON: `{input_text, max_length?}` in, `{summary}` out.

use super::{Incoming, as_object, bounded_string, optional_integer};
use ember_core::InferError;
use ember_core::catalog::ModelSpec;
use ember_core::tasks::summarization::{
    DEFAULT_MAX_LENGTH, MAX_LENGTH, SummarizationOutput, SummarizationRequest,
};
use serde_json::{Value, json};

/// Parses a request's input; a binary body is refused.
pub fn parse(incoming: Incoming<'_>) -> Result<SummarizationRequest, InferError> {
    from_json(incoming.json()?)
}

/// Parses `{input_text: string, max_length?: integer}`.
pub fn from_json(input: &Value) -> Result<SummarizationRequest, InferError> {
    let object = as_object(input)?;
    let text = object
        .get("input_text")
        .ok_or_else(|| InferError::invalid("/", "required properties are 'input_text'"))?;
    let max_length = optional_integer(object, "max_length", 1, u64::from(MAX_LENGTH))?
        .map_or(DEFAULT_MAX_LENGTH, |n| n as u32);
    Ok(SummarizationRequest {
        input_text: bounded_string(text, "/input_text")?,
        max_length,
    })
}

pub fn result(output: &SummarizationOutput) -> Value {
    json!({ "summary": output.summary })
}

/// The input and output JSON Schema.
pub fn schema(_: &ModelSpec) -> &'static str {
    include_str!("../../schemas/summarization.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::field_of;

    #[test]
    fn inputs_and_errors() {
        let request = from_json(&json!({"input_text": "long text"})).unwrap();
        assert_eq!(request.max_length, DEFAULT_MAX_LENGTH);
        for (input, field) in [
            (json!({"text": "a"}), "/"),
            (json!({"input_text": ""}), "/input_text"),
            (json!({"input_text": ["a"]}), "/input_text"),
            (json!({"input_text": "a", "max_length": 0}), "/max_length"),
            (
                json!({"input_text": "a", "max_length": 5000}),
                "/max_length",
            ),
            (json!({"input_text": "a", "max_length": "9"}), "/max_length"),
        ] {
            assert_eq!(field_of(from_json(&input).unwrap_err()), field, "{input}");
        }
    }
}
