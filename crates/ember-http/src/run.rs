//! The run routes: `POST .../ai/run/{model}` (REST envelope), the binding's `POST /run?version=3`
//! (bare results, binding errors) and wrangler's `POST .../ai/run/proxy`, which forwards binding
//! requests with the original URL in `X-Forwarded`. All of them end in `execute`. The helpers that
//! read bodies, answer streams, fail and write the request log serve the OpenAI routes too.

use crate::error::ApiError;
use crate::{AppState, RequestId, aborted, catalog, openai, sse};
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use ember_core::runner::TextEvent;
use ember_core::tasks::Usage;
use ember_core::{InferError, RunOptions, RunOutput};
use ember_store::RequestRecord;
use serde_json::{Value, json};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Header naming the catalog model that actually served a request (after aliasing).
pub const SERVED_BY_HEADER: &str = "x-ember-model";

/// The ways results and errors are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// `{result, success, errors, messages}`.
    Rest,
    /// Bare result objects and `{internalCode, message, name, description}` errors.
    Binding,
    /// OpenAI's objects and `{"error": {message, type, param, code}}` errors.
    OpenAi,
}

impl Form {
    /// The form of the answers on `path`, for errors answered before a route runs.
    pub(crate) fn of_path(path: &str) -> Form {
        if openai::is_openai_path(path) {
            Form::OpenAi
        } else if path == "/run"
            || path.starts_with("/ai-gateway/")
            || path.starts_with("/ai-api/")
            || path.ends_with("/ai/run/proxy")
        {
            Form::Binding
        } else {
            Form::Rest
        }
    }

    pub(crate) fn error(self, error: &ApiError) -> Response {
        match self {
            Form::Rest => error.rest_response(),
            Form::Binding => error.binding_response(),
            Form::OpenAi => error.openai_response(),
        }
    }

    fn route(self) -> &'static str {
        match self {
            Form::Rest => "rest",
            Form::Binding => "binding",
            Form::OpenAi => "openai",
        }
    }
}

pub async fn rest_run(
    State(state): State<AppState>,
    axum::Extension(RequestId(id)): axum::Extension<RequestId>,
    Path((_account_id, model)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if model == "proxy" {
        return proxy(state, id, headers, body).await;
    }
    if method != Method::POST {
        return ApiError::NoRoute.rest_response();
    }
    let started = Instant::now();
    match read_json(body, state.config.max_body_bytes).await {
        Ok(input) => {
            let mut options = run_options(&state, &headers, input.get("options"));
            options.reject_if_busy |= query_flag(query.as_deref(), "rejectIfBusy");
            execute(&state, id, Form::Rest, &model, input, options, started).await
        }
        Err(error) => fail(&state, id, Form::Rest, &model, error, started),
    }
}

/// Settings outside the model input: `options.rejectIfBusy` (in the REST or OpenAI body or the
/// binding envelope) and the `x-session-affinity` header (the binding's `extraHeaders` arrive as
/// headers).
pub(crate) fn run_options(
    state: &AppState,
    headers: &HeaderMap,
    options: Option<&Value>,
) -> RunOptions {
    let reject_if_busy = options
        .and_then(|o| o.get("rejectIfBusy"))
        .is_some_and(|v| v == &Value::Bool(true) || v == "true");
    let session = headers
        .get("x-session-affinity")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    RunOptions {
        timeout: Some(state.config.request_timeout),
        reject_if_busy,
        session,
    }
}

/// Whether the query string sets `name=true` (workers-ai-provider sends run options this way).
fn query_flag(query: Option<&str>, name: &str) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .filter_map(|pair| pair.split_once('='))
            .any(|(key, value)| key == name && value == "true")
    })
}

pub async fn binding_run(
    State(state): State<AppState>,
    axum::Extension(RequestId(id)): axum::Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    binding(state, id, &headers, body).await
}

async fn binding(state: AppState, id: String, headers: &HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let Some(model) = binding_model(headers) else {
        let error = ApiError::Incomplete("cf-consn-model-id header".into());
        return fail(&state, id, Form::Binding, "", error, started);
    };
    let envelope = match read_json(body, state.config.max_body_bytes).await {
        Ok(envelope) => envelope,
        Err(error) => return fail(&state, id, Form::Binding, &model, error, started),
    };
    let options = run_options(&state, headers, envelope.get("options"));
    let Some(inputs) = envelope.get("inputs").cloned() else {
        let error = ApiError::Infer(InferError::invalid(
            "/",
            "the binding body must be {\"inputs\": ..., \"options\": ...}",
        ));
        return fail(&state, id, Form::Binding, &model, error, started);
    };
    execute(&state, id, Form::Binding, &model, inputs, options, started).await
}

/// The model a binding request names: `cf-consn-model-id`, minus an `options.prefix` (`<prefix>:@cf/...`).
fn binding_model(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("cf-consn-model-id")?.to_str().ok()?.trim();
    let model = match value.find(":@") {
        Some(colon) => &value[colon + 1..],
        None => value,
    };
    (!model.is_empty()).then(|| model.to_string())
}

/// wrangler (≤ 4.44) local mode: the binding's request, with its real URL in `X-Forwarded`.
async fn proxy(state: AppState, id: String, headers: HeaderMap, body: Body) -> Response {
    let forwarded = headers
        .get("x-forwarded")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Ok(url) = forwarded.parse::<axum::http::Uri>() else {
        return ApiError::Incomplete("X-Forwarded header with the binding URL".into())
            .binding_response();
    };
    match url.path() {
        "/run" | "/ai-gateway/run" => binding(state, id, &headers, body).await,
        "/ai-api/models/search" => {
            catalog::binding_search_query(&state, url.query().unwrap_or_default())
        }
        _ => ApiError::NoRoute.binding_response(),
    }
}

/// Reads the body (at most `limit` bytes, chunked or not) and parses it as JSON.
pub(crate) async fn read_json(body: Body, limit: usize) -> Result<Value, ApiError> {
    let bytes: Bytes = axum::body::to_bytes(body, limit).await.map_err(|error| {
        let too_large = std::error::Error::source(&error)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::Infer(InferError::TooLarge)
        } else {
            ApiError::Incomplete(format!("body could not be read: {error}"))
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::Incomplete("a JSON body".into()));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::Infer(InferError::invalid(
            "/",
            format!("the body is not valid JSON: {e}"),
        ))
    })
}

/// Runs the model and writes the result, stream or error in the route's form.
#[allow(clippy::too_many_arguments)]
async fn execute(
    state: &AppState,
    id: String,
    form: Form,
    model: &str,
    input: Value,
    options: RunOptions,
    started: Instant,
) -> Response {
    let run = tokio::select! {
        run = state.ember.run(model, &input, &options) => run,
        _ = aborted(state.abort.clone()) => Err(InferError::Aborted),
    };
    let run = match run {
        Ok(run) => run,
        Err(error) => return fail(state, id, form, model, ApiError::Infer(error), started),
    };
    let served_by = run.served_by.clone();
    let mut response = match run.output {
        RunOutput::Json { result, usage } => {
            log(
                state,
                &id,
                form,
                model,
                Some(&served_by),
                200,
                Ok(usage),
                started,
            );
            match form {
                Form::Rest => axum::Json(
                    json!({ "result": result, "success": true, "errors": [], "messages": [] }),
                )
                .into_response(),
                Form::Binding | Form::OpenAi => axum::Json(result).into_response(),
            }
        }
        RunOutput::Stream(events) => {
            stream_response(
                state,
                id,
                form,
                model,
                &served_by,
                events,
                sse::Native,
                started,
            )
            .await
        }
    };
    served_by_header(&mut response, &served_by);
    response
}

/// Names the catalog model that served in `x-ember-model`.
pub(crate) fn served_by_header(response: &mut Response, served_by: &str) {
    if let Ok(value) = HeaderValue::from_str(served_by) {
        response.headers_mut().insert(SERVED_BY_HEADER, value);
    }
}

/// Answers a started generation as SSE in `format`, logging the run when the stream ends.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn stream_response(
    state: &AppState,
    id: String,
    form: Form,
    model: &str,
    served_by: &str,
    mut events: mpsc::Receiver<TextEvent>,
    format: impl sse::StreamFormat,
    started: Instant,
) -> Response {
    // Wait for the first event so a run that fails at once gets a proper error status.
    let first = tokio::select! {
        first = events.recv() => first,
        _ = aborted(state.abort.clone()) => None,
    };
    let first = match first {
        Some(TextEvent::Failed(error)) => {
            return fail(state, id, form, model, ApiError::Infer(error), started);
        }
        None => {
            return fail(
                state,
                id,
                form,
                model,
                ApiError::Infer(InferError::Aborted),
                started,
            );
        }
        Some(first) => first,
    };
    let (state2, model2, served2) = (state.clone(), model.to_string(), served_by.to_string());
    let body = sse::text_stream(first, events, state.abort.clone(), format, move |outcome| {
        // The 200 went out with the headers; a failure shows in the error code.
        log(
            &state2,
            &id,
            form,
            &model2,
            Some(&served2),
            200,
            outcome,
            started,
        );
    });
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Logs a failed run and answers its error in the route's form.
pub(crate) fn fail(
    state: &AppState,
    id: String,
    form: Form,
    model: &str,
    error: ApiError,
    started: Instant,
) -> Response {
    if let ApiError::Infer(
        InferError::Internal(detail) | InferError::LoadFailed { reason: detail, .. },
    ) = &error
    {
        tracing::error!(request = %id, model, detail, "run failed");
    }
    let served_by = state.ember.resolve(model).ok().map(|spec| spec.id.clone());
    let status = error.kind().status.as_u16();
    log(
        state,
        &id,
        form,
        model,
        served_by.as_deref(),
        status,
        Err(error.clone()),
        started,
    );
    form.error(&error)
}

/// Writes the request log row off the async threads.
#[allow(clippy::too_many_arguments)]
pub(crate) fn log(
    state: &AppState,
    id: &str,
    form: Form,
    model: &str,
    served_by: Option<&str>,
    http_status: u16,
    outcome: Result<Usage, ApiError>,
    started: Instant,
) {
    let (usage, error_code) = match &outcome {
        Ok(usage) => (*usage, None),
        Err(error) => (Usage::default(), Some(error.kind().code)),
    };
    let record = RequestRecord {
        id: id.to_string(),
        created_at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        route: form.route().to_string(),
        model: model.to_string(),
        served_by: served_by.map(str::to_string),
        http_status,
        error_code,
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(error) = store.record_request(&record) {
            tracing::error!(%error, "could not write the request log");
        }
    });
}
