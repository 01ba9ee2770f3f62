//! Sending a gateway request on to the routes: its steps (one, or a universal request's array)
//! tried in order until one answers, each again on a 5xx, a 429 or a timeout as its retries
//! allow (`cf-aig-max-attempts`, `-retry-delay`, `-backoff`, or a step's own `config`).

use super::invalid;
use super::{LOCAL_PROVIDER, Provider, send};
use crate::error::ApiError;
use crate::run::Form;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use ember_ai_gateway::{Backoff, RequestOptions, Retries};
use ember_core::InferError;
use serde_json::Value;
use std::convert::Infallible;
use std::time::Duration;
use tower::Service;

/// One request to send to the routes, with how to retry it.
pub(super) struct Step {
    pub(super) parts: Parts,
    pub(super) body: Bytes,
    pub(super) retries: Retries,
    pub(super) timeout: Option<Duration>,
    pub(super) provider: String,
    pub(super) model: String,
}

impl Step {
    /// The request itself, as the one step of a request that is not universal, retried as
    /// `retries` says (the request's settings over its gateway's).
    pub(super) fn whole(
        parts: Parts,
        body: Bytes,
        options: &RequestOptions,
        retries: Retries,
    ) -> Step {
        Step {
            parts,
            body,
            retries,
            timeout: options.request_timeout_ms.map(Duration::from_millis),
            provider: LOCAL_PROVIDER.to_string(),
            model: String::new(),
        }
    }
}

/// What answered: the response, its step, how many attempts were made in all, and what served.
pub(super) struct Served {
    pub(super) response: Response,
    pub(super) step: usize,
    pub(super) attempts: u32,
    pub(super) provider: String,
    pub(super) model: String,
}

/// Failures worth another attempt or the next step: the provider's trouble (a 5xx, a 429, a
/// timeout), not the request's.
pub(super) fn failed(response: &Response) -> bool {
    let status = response.status();
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

/// Runs the steps in order; the first answer that is not worth retrying is served, or else the
/// last step's last failure.
pub(super) async fn run<S>(routes: S, steps: Vec<Step>, form: Form) -> Served
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut attempts = 0;
    let mut last = None;
    for (index, step) in steps.into_iter().enumerate() {
        for attempt in 0..u32::from(step.retries.max_attempts.max(1)) {
            if attempt > 0 {
                let wait = step.retries.delay_before(attempt);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            attempts += 1;
            let request = Request::from_parts(step.parts.clone(), Body::from(step.body.clone()));
            let sent = send(routes.clone(), request);
            let response = match step.timeout {
                Some(limit) => tokio::time::timeout(limit, sent).await.ok(),
                None => Some(sent.await),
            };
            let response =
                response.unwrap_or_else(|| form.error(&ApiError::Infer(InferError::Timeout)));
            let failed = failed(&response);
            let served = Served {
                response,
                step: index,
                attempts,
                provider: step.provider.clone(),
                model: step.model.clone(),
            };
            if !failed {
                return Served { attempts, ..served };
            }
            last = Some(served);
        }
    }
    let last = last.unwrap_or_else(|| Served {
        response: form.error(&ApiError::Infer(InferError::Internal(
            "a gateway request with no steps".into(),
        ))),
        step: 0,
        attempts,
        provider: LOCAL_PROVIDER.into(),
        model: String::new(),
    });
    Served { attempts, ..last }
}

/// A universal request's steps: `[{provider, endpoint, headers, query, config}]` (or one such
/// object alone), each sent to its provider URL under the same gateway, with its headers over
/// the request's and its `config` over the request's retry and timeout options.
pub(super) fn universal(
    parts: &Parts,
    account: &str,
    gateway: &str,
    body: Option<&Value>,
    options: &RequestOptions,
    retries: Retries,
    providers: &[std::sync::Arc<dyn Provider>],
) -> Result<Vec<Step>, ApiError> {
    // Each step's fields are named from the body's root: `/1/query` in an array, `/query` alone.
    let steps: Vec<(String, &Value)> = match body {
        Some(Value::Array(steps)) if !steps.is_empty() => steps
            .iter()
            .enumerate()
            .map(|(index, step)| (format!("/{index}"), step))
            .collect(),
        Some(Value::Array(_)) => return Err(invalid("/", "the array of steps is empty")),
        Some(step @ Value::Object(_)) => vec![(String::new(), step)],
        _ => {
            return Err(invalid(
                "/",
                "a universal request is a {provider, endpoint, headers, query} object or an array of them",
            ));
        }
    };
    // What a step's `config` changes: the request's retries and timeout.
    let whole = Step::whole(parts.clone(), Bytes::new(), options, retries);
    steps
        .into_iter()
        .map(|(at, step)| universal_step(&whole, account, gateway, &at, step, providers))
        .collect()
}

fn universal_step(
    whole: &Step,
    account: &str,
    gateway: &str,
    at: &str,
    step: &Value,
    providers: &[std::sync::Arc<dyn Provider>],
) -> Result<Step, ApiError> {
    let field = |name: &str| format!("{at}/{name}");
    let text = |name: &str| match step.get(name) {
        Some(Value::String(text)) if !text.is_empty() => Ok(text.as_str()),
        _ => Err(invalid(&field(name), "must be a non-empty string")),
    };
    if !step.is_object() {
        return Err(invalid(at, "a step must be an object"));
    }
    let provider = text("provider")?;
    let known = provider == LOCAL_PROVIDER || providers.iter().any(|p| p.name() == provider);
    if !known {
        let names: Vec<&str> = std::iter::once(LOCAL_PROVIDER)
            .chain(providers.iter().map(|p| p.name()))
            .collect();
        return Err(invalid(
            &field("provider"),
            format!(
                "unknown provider '{provider}'; this server has {}",
                names.join(", ")
            ),
        ));
    }
    let endpoint = text("endpoint")?.trim_start_matches('/');
    // Workers AI's endpoint is the model, also written `run/{model}` (as @cloudflare/tanstack-ai
    // sends it).
    let endpoint = match provider {
        LOCAL_PROVIDER => endpoint.strip_prefix("run/").unwrap_or(endpoint),
        _ => endpoint,
    };
    let query = step.get("query").cloned().unwrap_or(Value::Null);
    if !query.is_object() {
        return Err(invalid(
            &field("query"),
            "must be the request's JSON object",
        ));
    }
    let mut parts = whole.parts.clone();
    let uri = format!("/v1/{account}/{gateway}/{provider}/{endpoint}");
    parts.uri = uri
        .parse()
        .map_err(|_| invalid(&field("endpoint"), "is not a path"))?;
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(headers) = step.get("headers") {
        let Some(headers) = headers.as_object() else {
            return Err(invalid(&field("headers"), "must be an object"));
        };
        for (name, value) in headers {
            let parsed = (
                HeaderName::try_from(name.as_str()),
                value.as_str().map(HeaderValue::from_str),
            );
            let (Ok(name), Some(Ok(value))) = parsed else {
                return Err(invalid(
                    &field(&format!("headers/{name}")),
                    "is not a header",
                ));
            };
            parts.headers.insert(name, value);
        }
    }
    let mut retries = whole.retries;
    let mut timeout = whole.timeout;
    if let Some(config) = step.get("config") {
        let number = |name: &str| -> Result<Option<u64>, ApiError> {
            match config.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(value) => value.as_u64().map(Some).ok_or_else(|| {
                    invalid(&field(&format!("config/{name}")), "must be a whole number")
                }),
            }
        };
        if let Some(attempts) = number("maxAttempts")? {
            let name = field("config/maxAttempts");
            retries.max_attempts =
                Retries::check_attempts(&name, attempts).map_err(super::gateway_error)?;
        }
        if let Some(delay) = number("retryDelay")? {
            let name = field("config/retryDelay");
            retries.delay_ms = Retries::check_delay(&name, delay).map_err(super::gateway_error)?;
        }
        if let Some(backoff) = config.get("backoff").and_then(Value::as_str) {
            retries.backoff =
                Backoff::parse(&field("config/backoff"), backoff).map_err(super::gateway_error)?;
        }
        timeout = number("requestTimeout")?
            .map(Duration::from_millis)
            .or(timeout);
    }
    let model = match (provider, query.get("model").and_then(Value::as_str)) {
        (LOCAL_PROVIDER, _) if !endpoint.starts_with("v1/") => endpoint.to_string(),
        (_, Some(model)) => model.to_string(),
        _ => String::new(),
    };
    Ok(Step {
        parts,
        body: Bytes::from(query.to_string()),
        retries,
        timeout,
        provider: provider.to_string(),
        model,
    })
}
