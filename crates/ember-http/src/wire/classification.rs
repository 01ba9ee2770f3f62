//! Text classification in Workers AI's JSON: `{text}` in, `[{label, score}, ...]` out.

use super::{Incoming, as_object, bounded_string};
use ember_core::InferError;
use ember_core::catalog::ModelSpec;
use ember_core::tasks::classification::{ClassificationOutput, ClassificationRequest, LabelScore};
use serde_json::{Value, json};

/// Parses a request's input; a binary body is refused.
pub fn parse(incoming: Incoming<'_>) -> Result<ClassificationRequest, InferError> {
    from_json(incoming.json()?)
}

/// Parses `{text: string}`.
pub fn from_json(input: &Value) -> Result<ClassificationRequest, InferError> {
    let object = as_object(input)?;
    let text = object
        .get("text")
        .ok_or_else(|| InferError::invalid("/", "required properties are 'text'"))?;
    Ok(ClassificationRequest {
        text: bounded_string(text, "/text")?,
    })
}

/// The result: `[{label, score}, ...]`.
pub fn result(output: &ClassificationOutput) -> Value {
    label_scores(&output.labels)
}

/// `[{label, score}, ...]`, in the order given (image classification answers the same way).
pub(crate) fn label_scores(labels: &[LabelScore]) -> Value {
    labels
        .iter()
        .map(|l| json!({ "label": l.label, "score": l.score }))
        .collect()
}

/// The input and output JSON Schema.
pub fn schema(_: &ModelSpec) -> &'static str {
    include_str!("../../schemas/text-classification.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::field_of;

    #[test]
    fn inputs_and_errors() {
        assert_eq!(from_json(&json!({"text": "good"})).unwrap().text, "good");
        for (input, field) in [
            (json!({}), "/"),
            (json!({"text": ""}), "/text"),
            (json!({"text": 3}), "/text"),
            (json!({"text": "x".repeat(200_000)}), "/text"),
            (json!("text"), "/"),
        ] {
            assert_eq!(field_of(from_json(&input).unwrap_err()), field, "{input}");
        }
    }

    #[test]
    fn every_label_in_order() {
        let output = ClassificationOutput {
            labels: vec![
                LabelScore {
                    label: "NEGATIVE".into(),
                    score: 0.25,
                },
                LabelScore {
                    label: "POSITIVE".into(),
                    score: 0.75,
                },
            ],
            input_tokens: 3,
        };
        assert_eq!(
            result(&output),
            json!([{"label": "NEGATIVE", "score": 0.25}, {"label": "POSITIVE", "score": 0.75}])
        );
    }
}
