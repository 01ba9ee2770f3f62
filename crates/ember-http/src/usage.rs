//! `GET /client/v4/accounts/{id}/ai/usage?since=&until=&model=` (Ember's extension): the
//! caller's ledger, one row per UTC day and model, in the REST envelope.

use crate::AppState;
use crate::error::ApiError;
use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use ember_access::Caller;
use ember_core::InferError;
use ember_store::UsageQuery;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    since: Option<String>,
    until: Option<String>,
    model: Option<String>,
}

pub async fn rest_usage(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Response {
    let query = match usage_query(&state, &caller, query.as_deref().unwrap_or_default()) {
        Ok(query) => query,
        Err(error) => return error.rest_response(),
    };
    match state.access.stores().ledger.usage(&query).await {
        Ok(rows) => {
            let result: Vec<_> = rows
                .into_iter()
                .map(|row| {
                    json!({
                        "date": row.day,
                        "model": row.model,
                        "requests": row.requests,
                        "errors": row.errors,
                        "input_tokens": row.input_tokens,
                        "output_tokens": row.output_tokens,
                        "neurons": row.neurons,
                        "billable_neurons": row.billable_neurons,
                    })
                })
                .collect();
            crate::run::rest_result(json!(result))
        }
        Err(error) => ApiError::Infer(InferError::Internal(error.to_string())).rest_response(),
    }
}

fn usage_query(state: &AppState, caller: &Caller, query: &str) -> Result<UsageQuery, ApiError> {
    let params: Params = serde_urlencoded::from_str(query).map_err(|e| {
        ApiError::Infer(InferError::invalid(
            "query",
            format!("bad usage parameters: {e}"),
        ))
    })?;
    UsageQuery::new(
        caller.account.id.clone(),
        params.since,
        params.until,
        params.model,
        state.access.now_ms(),
    )
    .map_err(|(field, problem)| ApiError::Infer(InferError::invalid(field, problem)))
}
