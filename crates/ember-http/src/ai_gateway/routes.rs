//! The AI Gateway API: gateways (`/client/v4/accounts/{id}/ai-gateway/gateways[/{gw}]`), their
//! logs (list, get, bodies, feedback, delete) and URLs, in the REST envelope; and the binding's
//! `env.AI.gateway(id)` helpers (`/ai-gateway/gateways/{id}/logs/{log}`, `.../url/{provider}`),
//! which read the same envelope.

use super::options;
use super::{internal, invalid};
use crate::error::ApiError;
use crate::run::rest_result;
use crate::{AppState, images};
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use ember_access::Caller;
use ember_ai_gateway::dlp::{self, Dlp};
use ember_ai_gateway::guardrails::Guardrails;
use ember_ai_gateway::{Backoff, DEFAULT_GATEWAY, GatewaySettings};
use ember_store::{
    AnalyticsQuery, Gateway, GatewayLog, LogPatch, LogQuery, LogStrategy, RateTechnique, Route,
    RouteVersion,
};
use serde_json::{Map, Value, json};

const GATEWAYS: &str = "/client/v4/accounts/{account_id}/ai-gateway/gateways";
/// How much of a body a log shows inline (`request_head`, `response_head`).
const HEAD_BYTES: usize = 4096;
/// Logs per page: 20 unless asked, at most 50.
const LOGS_PER_PAGE: u32 = 20;
const MAX_LOGS_PER_PAGE: u32 = 50;

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route(GATEWAYS, get(list_gateways).post(create_gateway))
        .route(
            &format!("{GATEWAYS}/{{gateway_id}}"),
            get(get_gateway)
                .put(update_gateway)
                .patch(update_gateway)
                .delete(delete_gateway),
        )
        .route(
            &format!("{GATEWAYS}/{{gateway_id}}/logs"),
            get(list_logs).delete(delete_logs),
        )
        .route(
            &format!("{GATEWAYS}/{{gateway_id}}/logs/{{log_id}}"),
            get(rest_get_log).patch(rest_patch_log),
        )
        .route(
            &format!("{GATEWAYS}/{{gateway_id}}/logs/{{log_id}}/{{part}}"),
            get(log_body),
        )
        .route(
            &format!("{GATEWAYS}/{{gateway_id}}/url/{{provider}}"),
            get(rest_url),
        )
        .route(
            &format!("{GATEWAYS}/{{gateway_id}}/analytics"),
            get(analytics),
        )
        .route(
            &format!("{GATEWAYS}/{{gateway_id}}/routes"),
            get(list_routes).post(create_route),
        )
        .route(
            &format!("{GATEWAYS}/{{gateway_id}}/routes/{{route_id}}"),
            get(get_route).delete(delete_route),
        )
        .route(
            &format!("{GATEWAYS}/{{gateway_id}}/routes/{{route_id}}/versions"),
            get(list_versions).post(create_version),
        )
        .route(
            &format!("{GATEWAYS}/{{gateway_id}}/routes/{{route_id}}/deployments"),
            get(list_deployments).post(create_deployment),
        )
        .route(
            "/client/v4/accounts/{account_id}/dlp/profiles",
            get(dlp_profiles),
        )
        .route(
            "/ai-gateway/gateways/{gateway_id}/logs/{log_id}",
            get(binding_get_log).patch(binding_patch_log),
        )
        .route(
            "/ai-gateway/gateways/{gateway_id}/url/{provider}",
            get(binding_url),
        )
        .route(
            "/v1/{account_id}/{gateway_id}/{provider}/{*path}",
            post(super::providers::forward),
        )
}

/// A binding helper request that came through wrangler's proxy (`X-Forwarded` names its path).
pub(crate) async fn binding_helper(
    state: AppState,
    caller: Caller,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let answer = match (method, parts.as_slice()) {
        (&Method::GET, ["ai-gateway", "gateways", gateway, "logs", log]) => {
            get_log(&state, &caller, gateway, log).await
        }
        (&Method::PATCH, ["ai-gateway", "gateways", gateway, "logs", log]) => {
            patch_log(&state, &caller, gateway, log, body).await
        }
        (&Method::GET, ["ai-gateway", "gateways", gateway, "url", provider]) => {
            Ok(json!({ "url": url(&caller, gateway, provider, headers) }))
        }
        _ => Err(ApiError::NoRoute),
    };
    respond(answer)
}

fn respond(answer: Result<Value, ApiError>) -> Response {
    match answer {
        Ok(result) => rest_result(result),
        Err(error) => error.rest_response(),
    }
}

pub(crate) fn iso_time(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The caller's gateway a path names (`default` made on first use).
async fn open_gateway(
    state: &AppState,
    caller: &Caller,
    gateway_id: &str,
) -> Result<Gateway, ApiError> {
    let gateway = state.ai_gateway.open(&caller.account.id, gateway_id).await;
    gateway.map_err(super::gateway_error)
}

fn gateway_json(gateway: &Gateway) -> Value {
    json!({
        "id": gateway.id,
        "cache_ttl": gateway.cache_ttl,
        "cache_invalidate_on_update": gateway.cache_invalidate_on_update,
        "collect_logs": gateway.collect_logs,
        "rate_limiting_interval": gateway.rate_limiting_interval,
        "rate_limiting_limit": gateway.rate_limiting_limit,
        "rate_limiting_technique": gateway.rate_limiting_technique.as_str(),
        "authentication": gateway.authentication,
        "log_management": gateway.log_management,
        "log_management_strategy": gateway.log_management_strategy.as_str(),
        "is_default": gateway.id == DEFAULT_GATEWAY,
        "created_at": iso_time(gateway.created_at_ms),
        "modified_at": iso_time(gateway.modified_at_ms),
        "guardrails": Guardrails::parse_stored(gateway.guardrails.as_deref()).map(|g| g.to_json()),
        "retry_max_attempts": gateway.retry_max_attempts,
        "retry_delay": gateway.retry_delay_ms,
        "retry_backoff": gateway.retry_backoff,
        "dlp": Dlp::parse_stored(gateway.dlp.as_deref()).map(|d| d.to_json()),
    })
}

/// `GET .../dlp/profiles`: the detection profiles a gateway's DLP policies may name (Ember's
/// predefined ones), in the shape of Cloudflare's Zero Trust DLP API.
async fn dlp_profiles() -> Response {
    let profiles: Vec<Value> = dlp::PROFILES
        .iter()
        .map(|profile| {
            let entries: Vec<Value> = profile
                .entries
                .iter()
                .map(|entry| json!({"id": entry.id, "name": entry.name, "enabled": true, "type": "predefined"}))
                .collect();
            json!({"id": profile.id, "name": profile.name, "type": "predefined", "entries": entries})
        })
        .collect();
    rest_result(json!(profiles))
}

/// Documented gateway fields Ember does not apply (Logpush, OpenTelemetry export, billing and
/// spend limits); accepted so that clients sending whole objects (the `cloudflare` SDKs) work,
/// and otherwise ignored.
const IGNORED_FIELDS: [&str; 13] = [
    "byok_only",
    "log_classification",
    "spend_limits",
    "logpush",
    "logpush_public_key",
    "otel",
    "store_id",
    "stripe",
    "workers_ai_billing_mode",
    "zdr",
    "is_default",
    "created_at",
    "modified_at",
];

/// A create or update body: the settings it gives, each checked by type and name.
fn settings(body: &Map<String, Value>) -> Result<GatewaySettings, ApiError> {
    let mut settings = GatewaySettings::default();
    let whole = |field: &str, value: &Value| {
        value
            .as_u64()
            .ok_or_else(|| invalid(field, "must be a whole number"))
    };
    let nullable = |field: &str, value: &Value| match value {
        Value::Null => Ok(None),
        other => whole(field, other).map(Some),
    };
    let small = |field: &str, value: &Value| {
        nullable(field, value)?
            .map(|n| u32::try_from(n).map_err(|_| invalid(field, "is too large")))
            .transpose()
    };
    let flag = |field: &str, value: &Value| {
        value
            .as_bool()
            .ok_or_else(|| invalid(field, "must be true or false"))
    };
    for (field, value) in body {
        match field.as_str() {
            "id" => {}
            "cache_ttl" => settings.cache_ttl = Some(nullable(field, value)?.unwrap_or(0)),
            "cache_invalidate_on_update" => {
                settings.cache_invalidate_on_update = Some(flag(field, value)?)
            }
            "collect_logs" => settings.collect_logs = Some(flag(field, value)?),
            "authentication" => settings.authentication = Some(flag(field, value)?),
            "rate_limiting_limit" => settings.rate_limiting_limit = Some(small(field, value)?),
            "rate_limiting_interval" => {
                settings.rate_limiting_interval = Some(small(field, value)?)
            }
            "rate_limiting_technique" => {
                let technique = value.as_str().and_then(RateTechnique::parse);
                settings.rate_limiting_technique =
                    Some(technique.ok_or_else(|| invalid(field, "must be fixed or sliding"))?);
            }
            "log_management" => settings.log_management = Some(nullable(field, value)?),
            "log_management_strategy" => {
                let strategy = match value {
                    Value::Null => Some(LogStrategy::StopInserting),
                    other => other.as_str().and_then(LogStrategy::parse),
                };
                settings.log_management_strategy =
                    Some(strategy.ok_or_else(|| {
                        invalid(field, "must be STOP_INSERTING or DELETE_OLDEST")
                    })?);
            }
            "retry_max_attempts" => settings.retry_max_attempts = Some(nullable(field, value)?),
            "retry_delay" => settings.retry_delay_ms = Some(nullable(field, value)?),
            "retry_backoff" => {
                settings.retry_backoff = Some(match value {
                    Value::Null => None,
                    Value::String(text) => {
                        Some(Backoff::parse(field, text).map_err(super::gateway_error)?)
                    }
                    _ => return Err(invalid(field, "must be constant, linear or exponential")),
                })
            }
            "guardrails" => {
                settings.guardrails = Some(match value {
                    Value::Null => None,
                    rules => Some(Guardrails::from_json(rules).map_err(super::gateway_error)?),
                })
            }
            "dlp" => {
                settings.dlp = Some(match value {
                    Value::Null => None,
                    dlp => Some(Dlp::from_json(dlp).map_err(super::gateway_error)?),
                })
            }
            ignored if IGNORED_FIELDS.contains(&ignored) => {}
            unknown => return Err(invalid(unknown, "is not a gateway setting")),
        }
    }
    Ok(settings)
}

async fn json_object(body: Body, state: &AppState) -> Result<Map<String, Value>, ApiError> {
    match crate::run::read_json(body, state.config.max_body_bytes).await? {
        Value::Object(object) => Ok(object),
        _ => Err(invalid("/", "the body must be a JSON object")),
    }
}

async fn list_gateways(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let gateways = state
        .ai_gateway
        .stores()
        .gateways
        .gateways(&caller.account.id);
    respond(match gateways.await {
        Ok(list) => Ok(list.iter().map(gateway_json).collect()),
        Err(error) => Err(internal(error)),
    })
}

async fn create_gateway(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Response {
    let answer = async {
        let body = json_object(body, &state).await?;
        let id = match body.get("id") {
            Some(Value::String(id)) => id.clone(),
            _ => return Err(invalid("id", "is required: the gateway's id")),
        };
        let settings = settings(&body)?;
        let created = state
            .ai_gateway
            .create(&caller.account.id, &id, &settings)
            .await;
        Ok(gateway_json(&created.map_err(super::gateway_error)?))
    };
    respond(answer.await)
}

async fn get_gateway(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, gateway_id)): Path<(String, String)>,
) -> Response {
    let found = open_gateway(&state, &caller, &gateway_id).await;
    respond(found.map(|gateway| gateway_json(&gateway)))
}

async fn update_gateway(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, gateway_id)): Path<(String, String)>,
    body: Body,
) -> Response {
    let answer = async {
        let settings = settings(&json_object(body, &state).await?)?;
        let updated = state
            .ai_gateway
            .update(&caller.account.id, &gateway_id, &settings)
            .await;
        Ok(gateway_json(&updated.map_err(super::gateway_error)?))
    };
    respond(answer.await)
}

async fn delete_gateway(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, gateway_id)): Path<(String, String)>,
) -> Response {
    let deleted = state
        .ai_gateway
        .delete(&caller.account.id, &gateway_id)
        .await;
    respond(
        deleted
            .map(|gateway| gateway_json(&gateway))
            .map_err(super::gateway_error),
    )
}

/// The first `HEAD_BYTES` of a body as text, and whether that is all of it.
fn head(body: Option<&[u8]>) -> (String, bool) {
    let body = body.unwrap_or_default();
    let shown = &body[..body.len().min(HEAD_BYTES)];
    (
        String::from_utf8_lossy(shown).into_owned(),
        shown.len() == body.len(),
    )
}

fn log_json(log: &GatewayLog) -> Value {
    let (request_head, request_head_complete) = head(log.request_body.as_deref());
    let (response_head, response_head_complete) = head(log.response_body.as_deref());
    json!({
        "id": log.id,
        "provider": log.provider,
        "model": log.model,
        "model_type": log.model_type,
        "path": log.path,
        "duration": log.duration_ms,
        "request_content_type": log.request_content_type,
        "status_code": log.status_code,
        "response_content_type": log.response_content_type,
        "success": log.success,
        "cached": log.cached,
        "tokens_in": log.tokens_in,
        "tokens_out": log.tokens_out,
        "metadata": log.metadata,
        "step": log.step,
        "attempts": log.attempts,
        "cost": log.cost,
        "custom_cost": log.custom_cost,
        "request_size": log.request_size,
        "request_head": request_head,
        "request_head_complete": request_head_complete,
        "response_size": log.response_size,
        "response_head": response_head,
        "response_head_complete": response_head_complete,
        "event_id": log.event_id,
        "feedback": log.feedback,
        "score": log.score,
        // Ember's: what the guardrails found (Cloudflare shows it in separate evaluation logs).
        "guardrails": log.guardrails.as_deref().and_then(|g| serde_json::from_str::<Value>(g).ok()),
        // What DLP found and did, as in the `cf-aig-dlp` header.
        "dlp": log.dlp.as_deref().and_then(|d| serde_json::from_str::<Value>(d).ok()),
        "created_at": iso_time(log.created_at_ms),
    })
}

/// A log query from the list or delete parameters; unknown ones are refused by name.
fn log_query(caller: &Caller, gateway_id: &str, query: Option<&str>) -> Result<LogQuery, ApiError> {
    let mut log_query = LogQuery {
        account_id: caller.account.id.clone(),
        gateway_id: gateway_id.to_string(),
        page: 1,
        per_page: LOGS_PER_PAGE,
        ..LogQuery::default()
    };
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or_default())
        .map_err(|e| invalid("query", e.to_string()))?;
    // The `cloudflare` SDKs send `filters: [{key, operator, value: [v]}]` flattened, each part
    // repeated in order: `filters.key=a&filters.key=b&filters.operator=...&filters.value=...`.
    let mut filters: [Vec<String>; 3] = Default::default();
    for (name, value) in pairs {
        let part = ["filters.key", "filters.operator", "filters.value"]
            .iter()
            .position(|part| *part == name);
        if let Some(part) = part {
            filters[part].push(value);
            continue;
        }
        let count = |range: std::ops::RangeInclusive<u32>| {
            value
                .parse::<u32>()
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| {
                    invalid(
                        &name,
                        format!("must be from {} to {}", range.start(), range.end()),
                    )
                })
        };
        match name.as_str() {
            "page" => log_query.page = count(1..=u32::MAX)?,
            "per_page" => log_query.per_page = count(1..=MAX_LOGS_PER_PAGE)?,
            "start_date" => log_query.created_from_ms = Some(rfc3339_ms(&name, &value)?),
            "end_date" => log_query.created_until_ms = Some(rfc3339_ms(&name, &value)? + 1),
            // `success=true` is the filter `{key: success, operator: eq, value: true}`.
            "success" | "cached" | "model" | "model_type" | "provider" | "feedback" => {
                apply_filter(&mut log_query, &name, "eq", &value, &name)?
            }
            _ => return Err(invalid(&name, "is not a log filter")),
        }
    }
    let [keys, operators, values] = filters;
    if keys.len() != operators.len() || keys.len() != values.len() {
        return Err(invalid(
            "filters",
            "each filter needs one key, operator and value",
        ));
    }
    for ((key, operator), value) in keys.iter().zip(&operators).zip(&values) {
        apply_filter(&mut log_query, key, operator, value, "filters.value")?;
    }
    Ok(log_query)
}

/// A `{key, operator, value}` filter on the fields Ember keeps; a bad value is named as
/// `value_field` (the plain parameter, or the SDK's `filters.value`).
fn apply_filter(
    query: &mut LogQuery,
    key: &str,
    operator: &str,
    value: &str,
    value_field: &str,
) -> Result<(), ApiError> {
    let flag = || match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(value_field, format!("{key} is true or false"))),
    };
    match (key, operator) {
        ("created_at", "lt") => query.created_until_ms = Some(rfc3339_ms(value_field, value)?),
        ("created_at", "gt") => query.created_from_ms = Some(rfc3339_ms(value_field, value)? + 1),
        ("success", "eq") => query.success = Some(flag()?),
        ("success", "neq") => query.success = Some(!flag()?),
        ("cached", "eq") => query.cached = Some(flag()?),
        ("cached", "neq") => query.cached = Some(!flag()?),
        ("model", "eq") => query.model = Some(value.to_string()),
        ("model_type", "eq") => query.model_type = Some(value.to_string()),
        ("provider", "eq") => query.provider = Some(value.to_string()),
        ("feedback", "eq") => {
            query.feedback = Some(match value {
                "1" => 1,
                "-1" => -1,
                _ => return Err(invalid(value_field, "feedback is 1 or -1")),
            })
        }
        (
            "created_at" | "success" | "cached" | "model" | "model_type" | "provider" | "feedback",
            _,
        ) => {
            return Err(invalid(
                "filters.operator",
                format!(
                    "{key} takes eq (success and cached also neq; created_at lt or gt), not {operator}"
                ),
            ));
        }
        _ => {
            return Err(invalid(
                "filters.key",
                format!(
                    "Ember filters logs by created_at, success, cached, model, model_type, provider and feedback, not {key}"
                ),
            ));
        }
    }
    Ok(())
}

/// Milliseconds since the Unix epoch of an RFC 3339 time in the query parameter `name`.
fn rfc3339_ms(name: &str, value: &str) -> Result<i64, ApiError> {
    time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| invalid(name, "must be an RFC 3339 time, e.g. 2026-12-07T00:00:00Z"))
}

async fn list_logs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, gateway_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let answer = async {
        open_gateway(&state, &caller, &gateway_id).await?;
        let query = log_query(&caller, &gateway_id, query.as_deref())?;
        let logs = state.ai_gateway.stores().gateway_logs.logs(&query).await;
        logs.map_err(internal)
    };
    let (logs, totals) = match answer.await {
        Ok(found) => found,
        Err(error) => return error.rest_response(),
    };
    let query = log_query(&caller, &gateway_id, query.as_deref()).unwrap_or_default();
    axum::Json(json!({
        "result": logs.iter().map(log_json).collect::<Vec<_>>(),
        "result_info": {
            "count": logs.len(),
            "page": query.page,
            "per_page": query.per_page,
            "total_count": totals.count,
            "min_cost": totals.min_cost,
            "max_cost": totals.max_cost,
            "min_duration": totals.min_duration_ms,
            "max_duration": totals.max_duration_ms,
            "min_tokens_in": totals.min_tokens_in,
            "max_tokens_in": totals.max_tokens_in,
            "min_tokens_out": totals.min_tokens_out,
            "max_tokens_out": totals.max_tokens_out,
            "min_total_tokens": totals.min_total_tokens,
            "max_total_tokens": totals.max_total_tokens,
        },
        "success": true,
        "errors": [],
        "messages": [],
    }))
    .into_response()
}

async fn delete_logs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, gateway_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let answer = async {
        let query = log_query(&caller, &gateway_id, query.as_deref())?;
        let deleted = state.ai_gateway.stores().gateway_logs.delete_logs(&query);
        Ok(json!({ "deleted": deleted.await.map_err(internal)? }))
    };
    respond(answer.await)
}

async fn find_log(
    state: &AppState,
    caller: &Caller,
    gateway_id: &str,
    log_id: &str,
) -> Result<GatewayLog, ApiError> {
    let logs = &state.ai_gateway.stores().gateway_logs;
    logs.log(&caller.account.id, gateway_id, log_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::NotFound(format!("Log {log_id} not found")))
}

async fn get_log(
    state: &AppState,
    caller: &Caller,
    gateway_id: &str,
    log_id: &str,
) -> Result<Value, ApiError> {
    Ok(log_json(
        &find_log(state, caller, gateway_id, log_id).await?,
    ))
}

/// A feedback body: `{feedback: 1|-1|null, score: 0..=100|null, metadata: {...}|null}`;
/// `feedback` may also be `{rating, comment}` (the comment joins the metadata).
async fn patch_log(
    state: &AppState,
    caller: &Caller,
    gateway_id: &str,
    log_id: &str,
    body: Body,
) -> Result<Value, ApiError> {
    let body = json_object(body, state).await?;
    let mut patch = LogPatch::default();
    let mut comment = None;
    for (field, value) in &body {
        match field.as_str() {
            "feedback" => {
                let rating = match value {
                    Value::Object(object) => {
                        comment = object.get("comment").cloned();
                        object.get("rating").cloned().unwrap_or(Value::Null)
                    }
                    other => other.clone(),
                };
                let rating = match rating.as_i64().or_else(|| rating.as_str()?.parse().ok()) {
                    Some(1) => Some(1),
                    Some(-1) => Some(-1),
                    _ if rating.is_null() => None,
                    _ => return Err(invalid("feedback", "must be 1, -1 or null")),
                };
                patch.feedback = Some(rating);
            }
            "score" => {
                patch.score = Some(match value {
                    Value::Null => None,
                    other => Some(
                        other
                            .as_u64()
                            .filter(|score| *score <= 100)
                            .ok_or_else(|| invalid("score", "must be from 0 to 100"))?
                            as u8,
                    ),
                });
            }
            "metadata" => {
                patch.metadata = Some(match value {
                    Value::Null => None,
                    other => Some(options::metadata("metadata", other)?),
                });
            }
            unknown => return Err(invalid(unknown, "is not a log field that can be changed")),
        }
    }
    if let Some(comment) = comment.filter(|c| !c.is_null()) {
        let mut metadata: Map<String, Value> = match &patch.metadata {
            Some(Some(text)) => serde_json::from_str(text).unwrap_or_default(),
            _ => find_log(state, caller, gateway_id, log_id)
                .await?
                .metadata
                .and_then(|text| serde_json::from_str(&text).ok())
                .unwrap_or_default(),
        };
        metadata.insert("comment".into(), comment);
        patch.metadata = Some(Some(options::metadata(
            "feedback.comment",
            &Value::Object(metadata),
        )?));
    }
    let logs = &state.ai_gateway.stores().gateway_logs;
    let found = logs
        .patch_log(&caller.account.id, gateway_id, log_id, &patch)
        .await
        .map_err(internal)?;
    if !found {
        return Err(ApiError::NotFound(format!("Log {log_id} not found")));
    }
    Ok(json!({}))
}

async fn rest_get_log(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, gateway_id, log_id)): Path<(String, String, String)>,
) -> Response {
    respond(get_log(&state, &caller, &gateway_id, &log_id).await)
}

async fn rest_patch_log(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, gateway_id, log_id)): Path<(String, String, String)>,
    body: Body,
) -> Response {
    respond(patch_log(&state, &caller, &gateway_id, &log_id, body).await)
}

async fn binding_get_log(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((gateway_id, log_id)): Path<(String, String)>,
) -> Response {
    respond(get_log(&state, &caller, &gateway_id, &log_id).await)
}

async fn binding_patch_log(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((gateway_id, log_id)): Path<(String, String)>,
    body: Body,
) -> Response {
    respond(patch_log(&state, &caller, &gateway_id, &log_id, body).await)
}

/// `.../logs/{id}/request` and `/response`: the body as it was, with its content type.
async fn log_body(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, gateway_id, log_id, part)): Path<(String, String, String, String)>,
) -> Response {
    let log = match find_log(&state, &caller, &gateway_id, &log_id).await {
        Ok(log) => log,
        Err(error) => return error.rest_response(),
    };
    let (body, content_type) = match part.as_str() {
        "request" => (log.request_body, log.request_content_type),
        "response" => (log.response_body, log.response_content_type),
        _ => return ApiError::NoRoute.rest_response(),
    };
    let Some(body) = body else {
        return ApiError::NotFound(format!("Log {log_id} was kept without its bodies"))
            .rest_response();
    };
    let content_type = content_type.unwrap_or_else(|| "application/octet-stream".into());
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// This server's URL for a gateway's provider (`universal`: the gateway's own).
fn url(caller: &Caller, gateway_id: &str, provider: &str, headers: &HeaderMap) -> String {
    let base = format!(
        "{}/v1/{}/{gateway_id}",
        images::base_url(headers),
        caller.account.id
    );
    match provider {
        "universal" => base,
        provider => format!("{base}/{provider}"),
    }
}

async fn rest_url(
    Extension(caller): Extension<Caller>,
    Path((_, gateway_id, provider)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    rest_result(json!(url(&caller, &gateway_id, &provider, &headers)))
}

async fn binding_url(
    Extension(caller): Extension<Caller>,
    Path((gateway_id, provider)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    rest_result(json!({ "url": url(&caller, &gateway_id, &provider, &headers) }))
}

/// `GET .../gateways/{gw}/analytics?interval=minute|hour|day&since=&until=` (Ember's extension;
/// Cloudflare serves these numbers through GraphQL): the gateway's logged requests per interval,
/// provider and model, with errors, cache hits, tokens, cost and duration percentiles. `since`
/// and `until` are RFC 3339 times, by default the 24 hours up to now.
async fn analytics(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, gateway_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let answer = async {
        open_gateway(&state, &caller, &gateway_id).await?;
        let query = analytics_query(&state, &caller, &gateway_id, query.as_deref())?;
        let rows = state.ai_gateway.stores().gateway_logs.analytics(&query);
        let rows = rows.await.map_err(internal)?;
        let rows: Vec<Value> = rows
            .iter()
            .map(|row| {
                json!({
                    "time": iso_time(row.bucket_start_ms),
                    "provider": row.provider,
                    "model": row.model,
                    "requests": row.requests,
                    "errors": row.errors,
                    "cached": row.cached,
                    "cache_hit_ratio": row.cached as f64 / row.requests.max(1) as f64,
                    "tokens_in": row.tokens_in,
                    "tokens_out": row.tokens_out,
                    "cost": row.cost,
                    "duration_ms": {
                        "p50": row.duration_ms_p50,
                        "p95": row.duration_ms_p95,
                        "p99": row.duration_ms_p99,
                    },
                })
            })
            .collect();
        Ok(Value::Array(rows))
    };
    respond(answer.await)
}

fn analytics_query(
    state: &AppState,
    caller: &Caller,
    gateway_id: &str,
    query: Option<&str>,
) -> Result<AnalyticsQuery, ApiError> {
    const MINUTE_MS: i64 = 60_000;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or_default())
        .map_err(|e| invalid("query", e.to_string()))?;
    let now_ms = state.ai_gateway.now_ms();
    // `until` is exclusive; by default it takes in this very millisecond.
    let (mut since_ms, mut until_ms, mut bucket_ms) = (None, now_ms + 1, 60 * MINUTE_MS);
    for (name, value) in &pairs {
        match name.as_str() {
            "interval" => {
                bucket_ms = match value.as_str() {
                    "minute" => MINUTE_MS,
                    "hour" => 60 * MINUTE_MS,
                    "day" => 24 * 60 * MINUTE_MS,
                    _ => return Err(invalid(name, "must be minute, hour or day")),
                }
            }
            "since" => since_ms = Some(rfc3339_ms(name, value)?),
            "until" => until_ms = rfc3339_ms(name, value)?,
            _ => return Err(invalid(name, "is not an analytics parameter")),
        }
    }
    let since_ms = since_ms.unwrap_or(until_ms - 24 * 60 * MINUTE_MS);
    if since_ms >= until_ms {
        return Err(invalid("since", "must be before until"));
    }
    Ok(AnalyticsQuery {
        account_id: caller.account.id.clone(),
        gateway_id: gateway_id.to_string(),
        since_ms,
        until_ms,
        bucket_ms,
    })
}

// ------------------------------------------------------------------ dynamic routes

fn route_json(route: &Route, elements: Option<&RouteVersion>) -> Value {
    let mut object = json!({
        "id": route.id,
        "name": route.name,
        "gateway_id": route.gateway_id,
        "deployment": { "version_id": route.deployed_version_id },
        "created_at": iso_time(route.created_at_ms),
        "modified_at": iso_time(route.modified_at_ms),
    });
    if let Some(version) = elements {
        object["elements"] = serde_json::from_str(&version.elements).unwrap_or(Value::Null);
    }
    object
}

fn version_json(version: &RouteVersion) -> Value {
    json!({
        "id": version.id,
        "elements": serde_json::from_str::<Value>(&version.elements).unwrap_or(Value::Null),
        "created_at": iso_time(version.created_at_ms),
    })
}

/// The gateway and route a route path names.
async fn find_route(
    state: &AppState,
    caller: &Caller,
    gateway_id: &str,
    route_id: &str,
) -> Result<(Gateway, Route), ApiError> {
    let gateway = open_gateway(state, caller, gateway_id).await?;
    let route = state.ai_gateway.route(&gateway, route_id).await;
    Ok((gateway, route.map_err(super::gateway_error)?))
}

async fn list_routes(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, gateway_id)): Path<(String, String)>,
) -> Response {
    let answer = async {
        let gateway = open_gateway(&state, &caller, &gateway_id).await?;
        let routes = &state.ai_gateway.stores().routes;
        let list = routes.routes(&gateway.account_id, &gateway.id).await;
        let list = list.map_err(internal)?;
        Ok(list.iter().map(|route| route_json(route, None)).collect())
    };
    respond(answer.await)
}

/// The `elements` of a create body, required.
fn elements(body: &Map<String, Value>) -> Result<&Value, ApiError> {
    body.get("elements")
        .ok_or_else(|| invalid("elements", "is required: the route's graph"))
}

async fn create_route(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, gateway_id)): Path<(String, String)>,
    body: Body,
) -> Response {
    let answer = async {
        let body = json_object(body, &state).await?;
        let name = body.get("name").and_then(Value::as_str).unwrap_or_default();
        let gateway = open_gateway(&state, &caller, &gateway_id).await?;
        let created = state
            .ai_gateway
            .create_route(&gateway, name, elements(&body)?)
            .await;
        let (route, version) = created.map_err(super::gateway_error)?;
        Ok(route_json(&route, Some(&version)))
    };
    respond(answer.await)
}

async fn get_route(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, gateway_id, route_id)): Path<(String, String, String)>,
) -> Response {
    let answer = async {
        let (_, route) = find_route(&state, &caller, &gateway_id, &route_id).await?;
        let versions = state.ai_gateway.stores().routes.versions(&route).await;
        let versions = versions.map_err(internal)?;
        let deployed = versions.iter().find(|v| v.id == route.deployed_version_id);
        Ok(route_json(&route, deployed))
    };
    respond(answer.await)
}

async fn delete_route(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, gateway_id, route_id)): Path<(String, String, String)>,
) -> Response {
    let answer = async {
        let (_, route) = find_route(&state, &caller, &gateway_id, &route_id).await?;
        let routes = &state.ai_gateway.stores().routes;
        routes.delete_route(&route).await.map_err(internal)?;
        Ok(route_json(&route, None))
    };
    respond(answer.await)
}

async fn list_versions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, gateway_id, route_id)): Path<(String, String, String)>,
) -> Response {
    let answer = async {
        let (_, route) = find_route(&state, &caller, &gateway_id, &route_id).await?;
        let versions = state.ai_gateway.stores().routes.versions(&route).await;
        Ok(versions
            .map_err(internal)?
            .iter()
            .map(version_json)
            .collect())
    };
    respond(answer.await)
}

async fn create_version(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, gateway_id, route_id)): Path<(String, String, String)>,
    body: Body,
) -> Response {
    let answer = async {
        let body = json_object(body, &state).await?;
        let (_, route) = find_route(&state, &caller, &gateway_id, &route_id).await?;
        let version = state.ai_gateway.add_version(&route, elements(&body)?).await;
        Ok(version_json(&version.map_err(super::gateway_error)?))
    };
    respond(answer.await)
}

async fn list_deployments(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, gateway_id, route_id)): Path<(String, String, String)>,
) -> Response {
    let answer = async {
        let (_, route) = find_route(&state, &caller, &gateway_id, &route_id).await?;
        let deployments = state.ai_gateway.stores().routes.deployments(&route).await;
        let deployments = deployments.map_err(internal)?;
        Ok(deployments
            .iter()
            .map(|d| json!({"id": d.id, "version_id": d.version_id, "created_at": iso_time(d.created_at_ms)}))
            .collect())
    };
    respond(answer.await)
}

async fn create_deployment(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, gateway_id, route_id)): Path<(String, String, String)>,
    body: Body,
) -> Response {
    let answer = async {
        let body = json_object(body, &state).await?;
        let version_id = body
            .get("version_id")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("version_id", "is required: the version to deploy"))?;
        let (_, route) = find_route(&state, &caller, &gateway_id, &route_id).await?;
        let deployed = state.ai_gateway.deploy(&route, version_id).await;
        let deployment = deployed.map_err(super::gateway_error)?;
        Ok(
            json!({"id": deployment.id, "version_id": deployment.version_id,
                  "created_at": iso_time(deployment.created_at_ms)}),
        )
    };
    respond(answer.await)
}
