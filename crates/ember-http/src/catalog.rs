//! Catalog routes: model search (REST with `result_info` paging, and the binding's
//! `/ai-api/models/search`) and per-model input/output JSON Schemas.

use crate::error::ApiError;
use crate::{AppState, wire};
use axum::extract::{Query, RawQuery, State};
use axum::response::{IntoResponse, Response};
use ember_core::InferError;
use ember_core::catalog::ModelSpec;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, Default, Deserialize)]
pub struct SearchParams {
    search: Option<String>,
    task: Option<String>,
    author: Option<String>,
    page: Option<usize>,
    per_page: Option<usize>,
}

const DEFAULT_PER_PAGE: usize = 50;
const MAX_PER_PAGE: usize = 1000;

pub async fn rest_search(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let params = match parse_params(query.as_deref().unwrap_or_default()) {
        Ok(params) => params,
        Err(error) => return error.rest_response(),
    };
    let matches = matching(&state, &params);
    let per_page = params
        .per_page
        .unwrap_or(DEFAULT_PER_PAGE)
        .clamp(1, MAX_PER_PAGE);
    let page = params.page.unwrap_or(1).max(1);
    let items: Vec<Value> = matches
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|m| model_object(m))
        .collect();
    axum::Json(json!({
        "result": items,
        "success": true,
        "errors": [],
        "messages": [],
        "result_info": { "page": page, "per_page": per_page, "count": items.len(), "total_count": matches.len() },
    }))
    .into_response()
}

pub async fn binding_search(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    binding_search_query(&state, query.as_deref().unwrap_or_default())
}

/// `env.AI.models(params)`: every match, as `{result: [...]}`.
pub fn binding_search_query(state: &AppState, query: &str) -> Response {
    match parse_params(query) {
        Ok(params) => {
            let items: Vec<Value> = matching(state, &params)
                .iter()
                .map(|m| model_object(m))
                .collect();
            axum::Json(json!({ "result": items })).into_response()
        }
        Err(error) => error.binding_response(),
    }
}

#[derive(Debug, Deserialize)]
pub struct SchemaParams {
    model: Option<String>,
}

pub async fn rest_schema(
    State(state): State<AppState>,
    Query(params): Query<SchemaParams>,
) -> Response {
    let Some(model) = params.model.filter(|m| !m.is_empty()) else {
        return ApiError::Infer(InferError::invalid(
            "model",
            "the `model` query parameter is required",
        ))
        .rest_response();
    };
    let spec = match state.ember.resolve(&model) {
        Ok(spec) => spec,
        Err(error) => return ApiError::Infer(error).rest_response(),
    };
    let schema: Value = serde_json::from_str(wire::schema(spec)).unwrap_or(Value::Null);
    axum::Json(json!({ "result": schema, "success": true, "errors": [], "messages": [] }))
        .into_response()
}

fn parse_params(query: &str) -> Result<SearchParams, ApiError> {
    serde_urlencoded::from_str(query).map_err(|e| {
        ApiError::Infer(InferError::invalid(
            "query",
            format!("bad search parameters: {e}"),
        ))
    })
}

fn matching<'a>(state: &'a AppState, params: &SearchParams) -> Vec<&'a ModelSpec> {
    let needle = params.search.as_deref().map(str::to_lowercase);
    state
        .ember
        .catalog()
        .models()
        .iter()
        .filter(|m| {
            needle.as_deref().is_none_or(|n| {
                m.id.to_lowercase().contains(n) || m.description.to_lowercase().contains(n)
            })
        })
        .filter(|m| {
            params
                .task
                .as_deref()
                .is_none_or(|t| t.eq_ignore_ascii_case(m.task.display_name()) || t == m.task.uuid())
        })
        .filter(|m| {
            params
                .author
                .as_deref()
                .is_none_or(|a| a.eq_ignore_ascii_case(m.author()))
        })
        .collect()
}

/// A catalog entry as Workers AI's `AiModelsSearchObject`.
fn model_object(spec: &ModelSpec) -> Value {
    let mut properties: Vec<Value> = Vec::new();
    let mut property =
        |id: &str, value: Value| properties.push(json!({ "property_id": id, "value": value }));
    if spec.context_window > 0 {
        property("context_window", json!(spec.context_window.to_string()));
    }
    if let Some(tokens) = spec.max_input_tokens {
        property("max_input_tokens", json!(tokens.to_string()));
    }
    if let Some(stand_in) = &spec.stand_in {
        property("stand_in", json!(stand_in));
    }
    if let Some(dims) = spec.output_dimensions {
        property("output_dimensions", json!(dims.to_string()));
    }
    // Published prices are in dollars; Ember's catalog keeps neurons (1 neuron = $0.000011).
    let price = &spec.price;
    let prices: Vec<Value> = [
        ("per M input tokens", price.neurons_per_m_input_tokens),
        ("per M output tokens", price.neurons_per_m_output_tokens),
        ("per audio minute", price.neurons_per_audio_minute),
        ("per 1k characters", price.neurons_per_k_characters),
        ("per M images", price.neurons_per_m_images),
        ("per 512x512 tile", price.neurons_per_tile),
        ("per step", price.neurons_per_step),
    ]
    .into_iter()
    .filter(|(_, neurons)| *neurons > 0.0)
    .map(|(unit, neurons)| json!({ "unit": unit, "price": dollars(neurons), "currency": "USD" }))
    .collect();
    if !prices.is_empty() {
        property("price", Value::Array(prices));
    }
    for (id, value) in &spec.properties {
        property(id, json!(value));
    }
    json!({
        "id": spec.uuid(),
        "source": 1,
        "name": spec.id,
        "description": spec.description,
        "task": { "id": spec.task.uuid(), "name": spec.task.display_name(), "description": spec.task.description() },
        "tags": [],
        "properties": properties,
    })
}

/// Dollars for `neurons`, to the tenth of a cent as Workers AI publishes its prices, or to three
/// significant digits below a cent (per-minute and per-character prices).
fn dollars(neurons: f64) -> f64 {
    let dollars = neurons * 0.000011;
    let scale = if dollars >= 0.01 {
        1000.0
    } else {
        10f64.powi(2 - dollars.log10().floor() as i32)
    };
    (dollars * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_in_dollars() {
        assert_eq!(dollars(2394.0), 0.026);
        assert_eq!(dollars(228_055.0), 2.509);
        assert_eq!(dollars(41.14), 0.000453);
    }

    #[test]
    fn every_model_has_an_input_and_output_schema() {
        use ember_core::Catalog;
        for spec in Catalog::builtin().unwrap().models() {
            let schema: Value = serde_json::from_str(wire::schema(spec)).unwrap();
            assert!(
                (schema["input"].is_object() && schema["output"].is_object()),
                "{}",
                spec.id
            );
        }
    }
}
