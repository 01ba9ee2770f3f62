//! Text classification (`@cf/huggingface/distilbert-sst-2-int8`): `{text}` in, every label of the
//! model with its probability out, in the model's label order, the probabilities summing to 1.

use super::{as_object, bounded_string};
use crate::InferError;
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq)]
pub struct ClassificationRequest {
    pub text: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LabelScore {
    pub label: String,
    pub score: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClassificationOutput {
    pub labels: Vec<LabelScore>,
    pub input_tokens: u32,
}

impl ClassificationOutput {
    /// The result: `[{label, score}, ...]`.
    pub fn to_json(&self) -> Value {
        self.labels
            .iter()
            .map(|l| json!({ "label": l.label, "score": l.score }))
            .collect()
    }
}

/// Parses `{text: string}`.
pub fn parse(input: &Value) -> Result<ClassificationRequest, InferError> {
    let object = as_object(input)?;
    let text = object
        .get("text")
        .ok_or_else(|| InferError::invalid("/", "required properties are 'text'"))?;
    Ok(ClassificationRequest {
        text: bounded_string(text, "/text")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::field_of;

    #[test]
    fn inputs_and_errors() {
        assert_eq!(parse(&json!({"text": "good"})).unwrap().text, "good");
        for (input, field) in [
            (json!({}), "/"),
            (json!({"text": ""}), "/text"),
            (json!({"text": 3}), "/text"),
            (json!({"text": "x".repeat(200_000)}), "/text"),
            (json!("text"), "/"),
        ] {
            assert_eq!(field_of(parse(&input).unwrap_err()), field, "{input}");
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
            output.to_json(),
            json!([{"label": "NEGATIVE", "score": 0.25}, {"label": "POSITIVE", "score": 0.75}])
        );
    }
}
