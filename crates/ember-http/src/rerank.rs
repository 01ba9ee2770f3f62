//! `POST /v1/rerank` (and under `.../ai/v1`): reranking in the shape Cohere, Jina and TEI clients
//! send, `{model, query, documents, top_n?, return_documents?}` → `{id, model, results: [{index,
//! relevance_score, document?}], usage}`, run as the model's Workers AI reranking task.

use crate::error::ApiError;
use crate::openai::{as_object, invalid, renamed, resolve_model};
use crate::run::{self, Call};
use crate::{AppState, wire};
use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::Response;
use ember_core::catalog::Task;
use ember_core::tasks::reranking::RerankRequest;
use ember_core::tasks::{TaskOutput, TaskRequest};
use serde_json::{Value, json};

pub(crate) async fn rerank(call: Call, headers: HeaderMap, body: Body) -> Response {
    let id = call.id.clone();
    let state = call.state.clone();
    let parse = |body: &Value| {
        let (spec, request, return_documents) = parse(&state, body)?;
        // The documents go back with their results when asked for.
        let documents = return_documents.then(|| request.contexts.clone());
        Ok((spec.clone(), TaskRequest::Reranking(request), documents))
    };
    run::task_route(
        call,
        &headers,
        body,
        parse,
        |model, output, usage, documents| {
            let TaskOutput::Reranking(ranked) = output else {
                return None;
            };
            let results: Vec<Value> = ranked
                .ranked
                .iter()
                .map(|&(index, score)| {
                    let mut result = json!({ "index": index, "relevance_score": score });
                    if let Some(documents) = &documents {
                        result["document"] = json!({ "text": documents[index] });
                    }
                    result
                })
                .collect();
            Some(json!({
                "id": id,
                "model": model,
                "results": results,
                "usage": { "total_tokens": usage.prompt_tokens, "neurons": usage.neurons },
            }))
        },
    )
    .await
}

/// The model, the request, and whether results carry their documents. `documents` may be strings
/// or `{text}` objects (Cohere accepts both); `top_n` is Workers AI's `top_k`.
fn parse<'a>(
    state: &'a AppState,
    body: &Value,
) -> Result<(&'a ember_core::ModelSpec, RerankRequest, bool), ApiError> {
    let object = as_object(body)?;
    let spec = resolve_model(state, object, Task::Reranking)?;
    let query = object
        .get("query")
        .ok_or_else(|| invalid("/query", "is required"))?;
    let documents = match object.get("documents") {
        Some(Value::Array(documents)) => documents,
        Some(_) => return Err(invalid("/documents", "must be an array")),
        None => return Err(invalid("/documents", "is required")),
    };
    let texts = documents
        .iter()
        .map(|document| document.get("text").unwrap_or(document))
        .collect();
    let top_n = match object.get("top_n") {
        None | Some(Value::Null) => None,
        Some(n) => match n.as_u64() {
            Some(n) if n >= 1 => Some(n as usize),
            _ => return Err(invalid("/top_n", "must be an integer of at least 1")),
        },
    };
    let return_documents = match object.get("return_documents") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(flag)) => *flag,
        Some(_) => return Err(invalid("/return_documents", "must be a boolean")),
    };
    let request = wire::reranking::request(query, texts, top_n)
        .map_err(|error| renamed(error, "/contexts", "/documents"))?;
    Ok((spec, request, return_documents))
}
