//! A request's gateway options from the wire: the `cf-aig-*` headers (REST, OpenAI and provider
//! URLs) or the binding's `options.gateway` object, which maps onto the same headers one for one.
//! Each bad value is refused naming the header or the binding field.

use super::invalid;
use crate::error::ApiError;
use axum::http::HeaderMap;
use ember_ai_gateway::options::MAX_METADATA_ENTRIES;
use ember_ai_gateway::{Backoff, CustomCost, RequestOptions, Retries};
use serde_json::{Map, Value};

/// Each option: its header (with Cloudflare's older name, if any) and its binding field.
const OPTIONS: &[(&str, Option<&str>, &str)] = &[
    ("cf-aig-skip-cache", Some("cf-skip-cache"), "skipCache"),
    ("cf-aig-cache-ttl", Some("cf-cache-ttl"), "cacheTtl"),
    ("cf-aig-cache-key", None, "cacheKey"),
    ("cf-aig-metadata", None, "metadata"),
    ("cf-aig-collect-log", None, "collectLog"),
    ("cf-aig-collect-log-payload", None, "collectLogPayload"),
    ("cf-aig-event-id", None, "eventId"),
    ("cf-aig-request-timeout", None, "requestTimeoutMs"),
    ("cf-aig-max-attempts", None, "retries.maxAttempts"),
    ("cf-aig-retry-delay", None, "retries.retryDelayMs"),
    ("cf-aig-backoff", None, "retries.backoff"),
    ("cf-aig-custom-cost", None, "customCost"),
];

/// The options the `cf-aig-*` headers give.
pub(crate) fn from_headers(headers: &HeaderMap) -> Result<RequestOptions, ApiError> {
    parse(|header| {
        let (name, old) = OPTIONS
            .iter()
            .find(|(name, ..)| *name == header)
            .map(|(name, old, _)| (*name, *old))?;
        let (field, value) = [Some(name), old]
            .into_iter()
            .flatten()
            .find_map(|name| Some((name, headers.get(name)?)))?;
        let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
        Some((field.to_string(), Value::String(text)))
    })
}

/// The gateway id and options of a binding request's `options.gateway`.
pub(crate) fn from_binding(gateway: &Value) -> Result<(String, RequestOptions), ApiError> {
    let Some(object) = gateway.as_object() else {
        return Err(invalid("options.gateway", "must be an object"));
    };
    let id = match object.get("id") {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        _ => return Err(invalid("options.gateway.id", "must be a gateway id")),
    };
    let options = parse(|header| {
        let key = OPTIONS.iter().find(|(name, ..)| *name == header)?.2;
        let value = key
            .split('.')
            .try_fold(gateway, |value, part| value.get(part))?;
        (!value.is_null()).then(|| (format!("options.gateway.{key}"), value.clone()))
    })?;
    Ok((id, options))
}

/// The options from `lookup(header)`, which gives the field to name in errors and the value.
fn parse(lookup: impl Fn(&str) -> Option<(String, Value)>) -> Result<RequestOptions, ApiError> {
    let get = |header: &str| lookup(header);
    let mut options = RequestOptions::default();
    if let Some((field, value)) = get("cf-aig-skip-cache") {
        options.skip_cache = boolean(&field, &value)?;
    }
    if let Some((field, value)) = get("cf-aig-cache-ttl") {
        let secs = number(&field, &value)?;
        options.cache_ttl_secs =
            Some(RequestOptions::check_cache_ttl(&field, secs).map_err(super::gateway_error)?);
    }
    if let Some((field, value)) = get("cf-aig-cache-key") {
        options.cache_key = Some(text(&field, &value)?);
    }
    if let Some((field, value)) = get("cf-aig-metadata") {
        options.metadata = Some(metadata(&field, &value)?);
    }
    if let Some((field, value)) = get("cf-aig-collect-log") {
        options.collect_log = Some(boolean(&field, &value)?);
    }
    if let Some((field, value)) = get("cf-aig-collect-log-payload") {
        options.collect_log_payload = Some(boolean(&field, &value)?);
    }
    if let Some((field, value)) = get("cf-aig-event-id") {
        options.event_id = Some(text(&field, &value)?);
    }
    if let Some((field, value)) = get("cf-aig-request-timeout") {
        options.request_timeout_ms = Some(number(&field, &value)?);
    }
    if let Some((field, value)) = get("cf-aig-max-attempts") {
        let attempts = number(&field, &value)?;
        options.retries.max_attempts =
            Some(Retries::check_attempts(&field, attempts).map_err(super::gateway_error)?);
    }
    if let Some((field, value)) = get("cf-aig-retry-delay") {
        let delay = number(&field, &value)?;
        options.retries.delay_ms =
            Some(Retries::check_delay(&field, delay).map_err(super::gateway_error)?);
    }
    if let Some((field, value)) = get("cf-aig-backoff") {
        options.retries.backoff =
            Some(Backoff::parse(&field, &text(&field, &value)?).map_err(super::gateway_error)?);
    }
    if let Some((field, value)) = get("cf-aig-custom-cost") {
        options.custom_cost = Some(custom_cost(&field, &value)?);
    }
    Ok(options)
}

/// A JSON value, or a header's text holding one.
fn json(field: &str, value: &Value) -> Result<Value, ApiError> {
    match value {
        Value::String(text) => serde_json::from_str(text)
            .map_err(|e| invalid(field, format!("must be a JSON object: {e}"))),
        other => Ok(other.clone()),
    }
}

fn boolean(field: &str, value: &Value) -> Result<bool, ApiError> {
    match value {
        Value::Bool(flag) => Ok(*flag),
        Value::String(text) if text == "true" => Ok(true),
        Value::String(text) if text == "false" => Ok(false),
        _ => Err(invalid(field, "must be true or false")),
    }
}

fn number(field: &str, value: &Value) -> Result<u64, ApiError> {
    let parsed = match value {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| invalid(field, "must be a whole number"))
}

fn text(field: &str, value: &Value) -> Result<String, ApiError> {
    match value {
        Value::String(text) if !text.is_empty() => Ok(text.clone()),
        _ => Err(invalid(field, "must be a non-empty string")),
    }
}

/// Metadata: a JSON object of at most five string, number, boolean (or null) entries, kept as
/// compact JSON.
pub(crate) fn metadata(field: &str, value: &Value) -> Result<String, ApiError> {
    let Value::Object(entries) = json(field, value)? else {
        return Err(invalid(field, "must be a JSON object"));
    };
    if entries.len() > MAX_METADATA_ENTRIES {
        return Err(invalid(
            field,
            format!(
                "has {} entries; at most {MAX_METADATA_ENTRIES} are allowed",
                entries.len()
            ),
        ));
    }
    if let Some((key, _)) = entries
        .iter()
        .find(|(_, v)| matches!(v, Value::Array(_) | Value::Object(_)))
    {
        return Err(invalid(
            field,
            format!("entry '{key}' must be a string, number or boolean"),
        ));
    }
    Ok(Value::Object(entries).to_string())
}

/// `{per_token_in, per_token_out}` or `{total_cost}`, in dollars.
fn custom_cost(field: &str, value: &Value) -> Result<CustomCost, ApiError> {
    let object: Map<String, Value> = match json(field, value)? {
        Value::Object(object) => object,
        _ => return Err(invalid(field, "must be a JSON object")),
    };
    let amount = |key: &str| {
        object
            .get(key)
            .and_then(Value::as_f64)
            .filter(|v| *v >= 0.0)
    };
    if let Some(total) = amount("total_cost") {
        return Ok(CustomCost::Total(total));
    }
    match (amount("per_token_in"), amount("per_token_out")) {
        (Some(input), Some(output)) => Ok(CustomCost::PerToken { input, output }),
        _ => Err(invalid(
            field,
            "must be {\"per_token_in\": n, \"per_token_out\": n} or {\"total_cost\": n}",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_core::InferError;
    use serde_json::json;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    fn refused_field(error: ApiError) -> String {
        match error {
            ApiError::Infer(InferError::InvalidInput { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn headers_and_binding_options_read_the_same() {
        let from_headers = from_headers(&headers(&[
            ("cf-aig-skip-cache", "true"),
            ("cf-cache-ttl", "600"),
            (
                "cf-aig-metadata",
                r#"{"team":"AI","user":12345,"test":true}"#,
            ),
            ("cf-aig-max-attempts", "3"),
            ("cf-aig-backoff", "linear"),
            ("cf-aig-custom-cost", r#"{"total_cost":0.25}"#),
        ]))
        .unwrap();
        let (id, from_binding) = from_binding(&json!({
            "id": "my-gw", "skipCache": true, "cacheTtl": 600,
            "metadata": {"team": "AI", "user": 12345, "test": true},
            "retries": {"maxAttempts": 3, "backoff": "linear"},
            "customCost": {"total_cost": 0.25},
        }))
        .unwrap();
        assert_eq!(id, "my-gw");
        assert_eq!(from_headers, from_binding);
        assert_eq!(from_headers.cache_ttl_secs, Some(600));
        assert_eq!(from_headers.retries.max_attempts, Some(3));
    }

    #[test]
    fn bad_values_name_their_header_or_field() {
        let cases = [
            ("cf-aig-metadata", "{not json"),
            (
                "cf-aig-metadata",
                r#"{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6}"#,
            ),
            ("cf-aig-metadata", r#"{"nested":{"a":1}}"#),
            ("cf-aig-cache-ttl", "59"),
            ("cf-aig-cache-ttl", "2592001"),
            ("cf-aig-cache-ttl", "soon"),
            ("cf-aig-skip-cache", "yes"),
            ("cf-aig-max-attempts", "6"),
            ("cf-aig-retry-delay", "5001"),
            ("cf-aig-backoff", "random"),
            ("cf-aig-custom-cost", r#"{"per_token_in":1}"#),
        ];
        for (name, value) in cases {
            let error = from_headers(&headers(&[(name, value)])).unwrap_err();
            assert_eq!(refused_field(error), name, "{value}");
        }
        let error = from_binding(&json!({"id": "g", "cacheTtl": 1})).unwrap_err();
        assert_eq!(refused_field(error), "options.gateway.cacheTtl");
        let error = from_binding(&json!({"cacheTtl": 60})).unwrap_err();
        assert_eq!(refused_field(error), "options.gateway.id");
        let error = from_binding(&json!("default")).unwrap_err();
        assert_eq!(refused_field(error), "options.gateway");
    }
}
