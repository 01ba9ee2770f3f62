//! Text embeddings in Workers AI's JSON: `{text: string | string[], pooling?}` in,
//! `{shape, data, pooling}` out.

use super::{Incoming, as_object, nonempty_string, type_mismatch};
use ember_core::InferError;
use ember_core::catalog::ModelSpec;
use ember_core::tasks::{EmbeddingsOutput, EmbeddingsRequest, MAX_EMBEDDING_TEXTS, Pooling};
use serde_json::{Value, json};

/// The result object: `{shape, data, pooling}`.
pub fn result(output: &EmbeddingsOutput) -> Value {
    let dims = output.vectors.first().map_or(0, Vec::len);
    json!({ "shape": [output.vectors.len(), dims], "data": output.vectors, "pooling": output.pooling })
}

/// Parses a request's input; a binary body is refused.
pub fn parse(incoming: Incoming<'_>) -> Result<EmbeddingsRequest, InferError> {
    from_json(incoming.json()?)
}

/// Parses `{text: string | string[], pooling?: "mean" | "cls"}`.
pub fn from_json(input: &Value) -> Result<EmbeddingsRequest, InferError> {
    let object = as_object(input)?;
    if object.get("requests").is_some() {
        return Err(InferError::invalid(
            "/requests",
            "async batch requests are not supported by this version of Ember",
        ));
    }
    let texts = match object.get("text") {
        None => return Err(InferError::invalid("/", "required properties are 'text'")),
        Some(Value::String(_)) => vec![nonempty_string(&object["text"], "/text")?],
        Some(Value::Array(items)) => {
            if items.is_empty() || items.len() > MAX_EMBEDDING_TEXTS {
                return Err(InferError::invalid(
                    "/text",
                    format!(
                        "must hold 1 to {MAX_EMBEDDING_TEXTS} strings, got {}",
                        items.len()
                    ),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| nonempty_string(item, &format!("/text/{i}")))
                .collect::<Result<_, _>>()?
        }
        Some(other) => return Err(type_mismatch("/text", "string or array", other)),
    };
    let pooling = match object.get("pooling") {
        None | Some(Value::Null) => Pooling::Mean,
        Some(Value::String(p)) if p == "mean" => Pooling::Mean,
        Some(Value::String(p)) if p == "cls" => Pooling::Cls,
        Some(Value::String(p)) => {
            return Err(InferError::invalid(
                "/pooling",
                format!("'{p}' is not one of mean, cls"),
            ));
        }
        Some(other) => return Err(type_mismatch("/pooling", "string", other)),
    };
    Ok(EmbeddingsRequest { texts, pooling })
}

/// The input and output JSON Schema.
pub fn schema(_: &ModelSpec) -> &'static str {
    include_str!("../../schemas/text-embeddings.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::field_of;

    #[test]
    fn embeddings_inputs() {
        let request = from_json(&json!({"text": ["a", "b"], "pooling": "cls"})).unwrap();
        assert_eq!(request.texts, vec!["a", "b"]);
        assert_eq!(request.pooling, Pooling::Cls);
        let too_many: Vec<String> = (0..101).map(|i| i.to_string()).collect();
        for (input, field) in [
            (json!({"text": too_many}), "/text"),
            (json!({"text": []}), "/text"),
            (json!({"text": ["a", ""]}), "/text/1"),
            (json!({"text": ["a", 1]}), "/text/1"),
            (json!({"text": "a", "pooling": "max"}), "/pooling"),
            (json!({"prompt": "a"}), "/"),
        ] {
            assert_eq!(field_of(from_json(&input).unwrap_err()), field, "{input}");
        }
    }

    #[test]
    fn embeddings_json_shape() {
        let output = EmbeddingsOutput {
            vectors: vec![vec![0.5, 0.5], vec![1.0, 0.0]],
            token_counts: vec![3, 4],
            pooling: Pooling::Mean,
        };
        assert_eq!(
            result(&output),
            json!({"shape": [2, 2], "data": [[0.5, 0.5], [1.0, 0.0]], "pooling": "mean"})
        );
    }
}
