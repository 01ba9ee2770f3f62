//! Reranking in Workers AI's JSON: `{query, contexts: [{text}], top_k?}` in, `{response: [{id,
//! score}]}` out, best first.

use super::{Incoming, as_object, bounded_string, optional_integer, type_mismatch};
use ember_core::InferError;
use ember_core::catalog::ModelSpec;
use ember_core::tasks::reranking::{MAX_CONTEXTS, RerankOutput, RerankRequest};
use serde_json::{Value, json};

/// The result: `{response: [{id, score}, ...]}`.
pub fn result(output: &RerankOutput) -> Value {
    let response: Vec<Value> = output
        .ranked
        .iter()
        .map(|(id, score)| json!({ "id": id, "score": score }))
        .collect();
    json!({ "response": response })
}

/// Validates a request's parts: a query, 1 to `MAX_CONTEXTS` passages, none of them empty.
/// Errors name Workers AI's fields (`/query`, `/contexts/3/text`).
pub fn request(
    query: &Value,
    contexts: Vec<&Value>,
    top_k: Option<usize>,
) -> Result<RerankRequest, InferError> {
    let query = bounded_string(query, "/query")?;
    if contexts.is_empty() || contexts.len() > MAX_CONTEXTS {
        return Err(InferError::invalid(
            "/contexts",
            format!(
                "must hold 1 to {MAX_CONTEXTS} contexts, got {}",
                contexts.len()
            ),
        ));
    }
    let contexts = contexts
        .into_iter()
        .enumerate()
        .map(|(i, text)| bounded_string(text, &format!("/contexts/{i}/text")))
        .collect::<Result<_, _>>()?;
    Ok(RerankRequest {
        query,
        contexts,
        top_k,
    })
}

/// Parses a request's input; a binary body is refused.
pub fn parse(incoming: Incoming<'_>) -> Result<RerankRequest, InferError> {
    from_json(incoming.json()?)
}

/// Parses `{query: string, contexts: [{text: string}], top_k?: integer >= 1}`.
pub fn from_json(input: &Value) -> Result<RerankRequest, InferError> {
    let object = as_object(input)?;
    let (Some(query), Some(contexts)) = (object.get("query"), object.get("contexts")) else {
        return Err(InferError::invalid(
            "/",
            "required properties are 'query,contexts'",
        ));
    };
    let Value::Array(items) = contexts else {
        return Err(type_mismatch("/contexts", "array", contexts));
    };
    let texts = items
        .iter()
        .enumerate()
        .map(|(i, item)| match item.get("text") {
            Some(text) => Ok(text),
            None if item.is_object() => Err(InferError::invalid(
                format!("/contexts/{i}"),
                "required properties are 'text'",
            )),
            None => Err(type_mismatch(&format!("/contexts/{i}"), "object", item)),
        })
        .collect::<Result<_, _>>()?;
    let top_k = optional_integer(object, "top_k", 1, u64::from(u32::MAX))?.map(|k| k as usize);
    request(query, texts, top_k)
}

/// The input and output JSON Schema.
pub fn schema(_: &ModelSpec) -> &'static str {
    include_str!("../../schemas/reranking.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::field_of;

    #[test]
    fn inputs_and_errors() {
        let request =
            from_json(&json!({"query": "q", "contexts": [{"text": "a"}, {"text": "b"}], "top_k": 1}))
                .unwrap();
        assert_eq!(request.contexts, vec!["a", "b"]);
        assert_eq!(request.top_k, Some(1));
        for (input, field) in [
            (json!({"query": "q"}), "/"),
            (json!({"query": "", "contexts": [{"text": "a"}]}), "/query"),
            (json!({"query": "q", "contexts": []}), "/contexts"),
            (json!({"query": "q", "contexts": "a"}), "/contexts"),
            (json!({"query": "q", "contexts": ["a"]}), "/contexts/0"),
            (
                json!({"query": "q", "contexts": [{"text": "a"}, {}]}),
                "/contexts/1",
            ),
            (
                json!({"query": "q", "contexts": [{"text": 1}]}),
                "/contexts/0/text",
            ),
            (
                json!({"query": "q", "contexts": [{"text": "a"}], "top_k": 0}),
                "/top_k",
            ),
        ] {
            assert_eq!(field_of(from_json(&input).unwrap_err()), field, "{input}");
        }
    }

    #[test]
    fn best_first_and_cut_to_top_k() {
        let output = RerankOutput::new(&[0.1, 0.9, 0.5], Some(2), 7);
        assert_eq!(
            result(&output),
            json!({"response": [{"id": 1, "score": 0.9f32}, {"id": 2, "score": 0.5f32}]})
        );
    }
}
