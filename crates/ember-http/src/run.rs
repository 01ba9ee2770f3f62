//! The run routes: `POST .../ai/run/{model}` (REST envelope), the binding's `POST /run?version=3`
//! (bare results, binding errors) and wrangler's `POST .../ai/run/proxy`, which forwards binding
//! requests with the original URL in `X-Forwarded`. All of them end in `execute`. `Call` carries
//! a request from its admission (rate limit, allocation) to its settlement in the ledger; it and
//! the helpers that read bodies and answer streams serve the OpenAI routes too.

use crate::error::ApiError;
use crate::wire::{self, Answer, binary, binary::BinaryBody};
use crate::{AppState, RequestId, RunReport, aborted, ai_gateway, batch, catalog, openai, sse};
use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use ember_access::{Access, AccessError, Admission, Caller};
use ember_core::catalog::ModelSpec;
use ember_core::runner::TextEvent;
use ember_core::tasks::{self, TaskOutput, TaskRequest, Usage};
use ember_core::{InferError, RunOptions, RunOutput};
use ember_store::{DAY_MS, RequestRecord};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;
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
    /// Anthropic's Messages objects and `{type: "error", error}` errors.
    Anthropic,
}

impl Form {
    /// The form of the answers on `path`, for errors answered before a route runs.
    pub(crate) fn of_path(path: &str) -> Form {
        if path.ends_with("/v1/messages") {
            return Form::Anthropic;
        }
        if let Some((.., provider, rest)) = ai_gateway::provider_url(path) {
            // `workers-ai/{model}` is the REST run; the rest are OpenAI's routes.
            return match provider == "workers-ai" && !rest.starts_with("v1/") {
                true => Form::Rest,
                false => Form::OpenAi,
            };
        }
        if path.starts_with("/ai-gateway/gateways/") || ai_gateway::universal_url(path).is_some() {
            // The binding's gateway helpers read the REST envelope.
            Form::Rest
        } else if openai::is_openai_path(path) {
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
            Form::Anthropic => error.anthropic_response(),
        }
    }

    fn route(self) -> &'static str {
        match self {
            Form::Rest => "rest",
            Form::Binding => "binding",
            Form::OpenAi => "openai",
            Form::Anthropic => "anthropic",
        }
    }
}

/// A refusal of the caller's access (rate limit, allocation) as the API answers it.
pub(crate) fn refusal(access: &Access, caller: &Caller, error: AccessError) -> ApiError {
    match error {
        AccessError::RateLimited { retry_after_secs } => ApiError::RateLimited { retry_after_secs },
        AccessError::AllocationUsed => ApiError::AllocationUsed {
            daily_free_neurons: caller.account.daily_free_neurons,
            retry_after_secs: seconds_to_midnight(access.now_ms()),
        },
        other => ApiError::Infer(InferError::Internal(other.to_string())),
    }
}

/// One request on a run route, from its start to its row in the request log and the ledger.
pub(crate) struct Call {
    pub(crate) state: AppState,
    pub(crate) id: String,
    pub(crate) form: Form,
    pub(crate) caller: Caller,
    /// The model as the client named it (empty until known).
    pub(crate) model: String,
    /// The catalog model it resolved to (after aliases), logged for a failed request; one that
    /// succeeds logs the model that served it.
    pub(crate) served_by: Option<String>,
    started: Instant,
    admission: Option<Admission>,
    /// Where a successful run's usage is reported (for the AI Gateway's log).
    report: RunReport,
    /// Counts the request as interactive from its admission to its end, so batches give way to
    /// it (a batch's submission or poll runs nothing and does not count).
    _interactive: Option<batch::Interactive>,
}

impl Call {
    pub(crate) fn new(state: AppState, request: RequestId, form: Form, caller: Caller) -> Call {
        Call {
            _interactive: None,
            state,
            id: request.id,
            report: request.report,
            form,
            caller,
            model: String::new(),
            served_by: None,
            started: Instant::now(),
            admission: None,
        }
    }

    /// Holds the request to the caller's rate limit and daily allocation, reserving what it
    /// can cost at most (`estimate`).
    pub(crate) async fn admit(
        &mut self,
        spec: &ModelSpec,
        estimate: &Usage,
    ) -> Result<(), ApiError> {
        let access = &self.state.access;
        let admission = access
            .admit(&self.caller, spec, estimate.neurons)
            .await
            .map_err(|error| refusal(access, &self.caller, error))?;
        self.admission = Some(admission);
        self._interactive = Some(self.state.batches.interactive());
        Ok(())
    }

    /// Logs the failed request and answers its error in the route's form.
    pub(crate) async fn fail(self, error: ApiError) -> Response {
        if let ApiError::Infer(
            InferError::Internal(detail) | InferError::LoadFailed { reason: detail, .. },
        ) = &error
        {
            tracing::error!(request = %self.id, model = self.model, detail, "run failed");
        }
        let status = error.kind().status.as_u16();
        let form = self.form;
        let served_by = self.served_by.clone();
        self.finish(served_by.as_deref(), status, Err(error.clone()))
            .await;
        form.error(&error)
    }

    /// Settles the request's cost and writes its log row; returns once both are committed, so
    /// the client never holds a cost the ledger lacks.
    pub(crate) async fn finish(
        self,
        served_by: Option<&str>,
        http_status: u16,
        outcome: Result<Usage, ApiError>,
    ) {
        let (usage, error_code) = match &outcome {
            Ok(usage) => {
                let _ = self.report.set(*usage);
                (*usage, None)
            }
            Err(error) => (Usage::default(), Some(error.kind().code)),
        };
        let access = self.state.access.clone();
        let record = RequestRecord {
            id: self.id,
            created_at_ms: access.now_ms(),
            account_id: Some(self.caller.account.id),
            route: self.form.route().to_string(),
            model: self.model,
            served_by: served_by.map(str::to_string),
            http_status,
            error_code,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            neurons: usage.neurons,
            billable_neurons: 0.0,
            duration_ms: self.started.elapsed().as_millis() as u64,
            batch_item: None,
        };
        settle(access, self.admission, record).await;
    }
}

/// Writes a finished request to the request log and the ledger, settling its admission; in its
/// own task, so that it completes even if the request's future is dropped.
pub(crate) async fn settle(
    access: Arc<Access>,
    admission: Option<Admission>,
    record: RequestRecord,
) {
    let written = tokio::spawn(async move { access.settle(admission, record).await }).await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::error!(%error, "could not write the request log"),
        Err(error) => tracing::error!(%error, "the request log writer failed"),
    }
}

/// A REST envelope around a successful result.
pub(crate) fn rest_result(result: Value) -> Response {
    axum::Json(json!({ "result": result, "success": true, "errors": [], "messages": [] }))
        .into_response()
}

/// Seconds until the next 00:00 UTC, when daily allocations reset.
fn seconds_to_midnight(now_ms: i64) -> u64 {
    let left_ms = DAY_MS - now_ms.rem_euclid(DAY_MS);
    (left_ms as u64).div_ceil(1000)
}

pub async fn rest_run(
    State(state): State<AppState>,
    Extension(request): Extension<RequestId>,
    Extension(caller): Extension<Caller>,
    Path((_account_id, model)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if model == "proxy" {
        return proxy(state, request, caller, &Method::POST, headers, body).await;
    }
    run_model(state, request, caller, model, query, headers, body).await
}

/// AI Gateway's provider URL for a Workers AI model, `/v1/{account}/{gateway}/workers-ai/{model}`:
/// the REST run (the gateway layer has done its part).
pub async fn gateway_run(
    State(state): State<AppState>,
    Extension(request): Extension<RequestId>,
    Extension(caller): Extension<Caller>,
    Path((_account_id, _gateway_id, model)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run_model(state, request, caller, model, query, headers, body).await
}

async fn run_model(
    state: AppState,
    request: RequestId,
    caller: Caller,
    model: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut call = Call::new(state, request, Form::Rest, caller);
    call.model = model;
    // Raw audio or image bytes are the model's one binary input, with no other inputs.
    let read = match read_body(&headers, body, call.state.config.max_body_bytes).await {
        Ok(RunBody::Json(input)) => Ok((input, None)),
        Ok(RunBody::Binary(body)) => Ok((json!({}), Some(body))),
        Err(error) => Err(error),
    };
    match read {
        Ok((input, None)) if batch::is_queued(query.as_deref(), input.get("options")) => {
            let input_bytes = input.to_string().len();
            batch::submit_or_poll(call, input, input_bytes).await
        }
        Ok((input, body)) => {
            let mut options = run_options(&call.state, &headers, input.get("options"));
            options.reject_if_busy |= query_flag(query.as_deref(), "rejectIfBusy");
            execute(call, input, body, options).await
        }
        Err(error) => call.fail(error).await,
    }
}

/// `GET` and `PATCH .../ai/run/proxy`: wrangler's proxied catalog search and gateway helpers;
/// no other run takes these methods.
pub async fn rest_run_other(
    State(state): State<AppState>,
    Extension(request): Extension<RequestId>,
    Extension(caller): Extension<Caller>,
    Path((_account_id, model)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match model.as_str() {
        "proxy" => proxy(state, request, caller, &method, headers, body).await,
        _ => ApiError::NoRoute.rest_response(),
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
    Extension(request): Extension<RequestId>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    binding(state, request, caller, &headers, query.as_deref(), body).await
}

async fn binding(
    state: AppState,
    request: RequestId,
    caller: Caller,
    headers: &HeaderMap,
    query: Option<&str>,
    body: Body,
) -> Response {
    let mut call = Call::new(state, request, Form::Binding, caller);
    let Some(model) = binding_model(headers) else {
        let error = ApiError::Incomplete("cf-consn-model-id header".into());
        return call.fail(error).await;
    };
    call.model = model;
    let read = match read_body(headers, body, call.state.config.max_body_bytes).await {
        Ok(RunBody::Json(envelope)) => match binding_envelope(envelope) {
            Ok((inputs, options)) if batch::is_queued(None, options.as_ref()) => {
                let input_bytes = inputs.to_string().len();
                return batch::submit_or_poll(call, inputs, input_bytes).await;
            }
            parsed => parsed.map(|(inputs, options)| {
                let options = run_options(&call.state, headers, options.as_ref());
                (inputs, None, options)
            }),
        },
        Ok(RunBody::Binary(body)) => binding_stream_inputs(query).map(|(inputs, options)| {
            let options = run_options(&call.state, headers, Some(&options));
            (inputs, Some(body), options)
        }),
        Err(error) => Err(error),
    };
    match read {
        Ok((inputs, body, options)) => execute(call, inputs, body, options).await,
        Err(error) => call.fail(error).await,
    }
}

/// The `{inputs, options}` of a binding request with a JSON body.
fn binding_envelope(mut envelope: Value) -> Result<(Value, Option<Value>), ApiError> {
    let options = envelope.get_mut("options").map(Value::take);
    match envelope.get_mut("inputs") {
        Some(inputs) => Ok((inputs.take(), options)),
        None => Err(ApiError::Infer(InferError::invalid(
            "/",
            "the binding body must be {\"inputs\": ..., \"options\": ...}",
        ))),
    }
}

/// The inputs and options of a binding request whose one stream input is the body: the other
/// inputs are JSON in the `userInputs` query parameter, each run option a parameter of its own.
fn binding_stream_inputs(query: Option<&str>) -> Result<(Value, Value), ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or_default())
        .map_err(|e| ApiError::Infer(InferError::invalid("userInputs", e.to_string())))?;
    let mut inputs = json!({});
    let mut options = serde_json::Map::new();
    for (key, value) in pairs {
        match key.as_str() {
            "userInputs" => {
                inputs = serde_json::from_str(&value).map_err(|e| {
                    ApiError::Infer(InferError::invalid("userInputs", format!("not JSON: {e}")))
                })?;
            }
            "version" => {}
            _ => {
                options.insert(key, Value::String(value));
            }
        }
    }
    Ok((inputs, Value::Object(options)))
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
async fn proxy(
    state: AppState,
    request: RequestId,
    caller: Caller,
    method: &Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let forwarded = headers
        .get("x-forwarded")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Ok(url) = forwarded.parse::<axum::http::Uri>() else {
        return ApiError::Incomplete("X-Forwarded header with the binding URL".into())
            .binding_response();
    };
    match url.path() {
        "/run" | "/ai-gateway/run" => {
            binding(state, request, caller, &headers, url.query(), body).await
        }
        "/ai-api/models/search" => {
            catalog::binding_search_query(&state, url.query().unwrap_or_default())
        }
        path if path.starts_with("/ai-gateway/gateways/") => {
            ai_gateway::binding_helper(state, caller, method, path, &headers, body).await
        }
        _ => ApiError::NoRoute.binding_response(),
    }
}

/// A run route's body: JSON, or the bytes of a binary input (any content type but JSON's).
enum RunBody {
    Json(Value),
    Binary(BinaryBody),
}

async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<RunBody, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok());
    if binary::is_json(content_type) {
        return read_json(body, limit).await.map(RunBody::Json);
    }
    let bytes = read_bytes(body, limit).await?;
    if bytes.is_empty() {
        return Err(ApiError::Incomplete("a body".into()));
    }
    Ok(RunBody::Binary(BinaryBody {
        bytes: bytes.to_vec(),
        content_type: content_type.unwrap_or_default().to_string(),
    }))
}

/// Reads a JSON route's body (within the server's limit) and names its `model` in the call, for
/// the request log.
pub(crate) async fn read_request(call: &mut Call, body: Body) -> Result<Value, ApiError> {
    let body = read_json(body, call.state.config.max_body_bytes).await?;
    call.model = openai::requested_model(&body);
    Ok(body)
}

/// Reads the body (at most `limit` bytes, chunked or not) and parses it as JSON.
pub(crate) async fn read_json(body: Body, limit: usize) -> Result<Value, ApiError> {
    let bytes = read_bytes(body, limit).await?;
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

/// Reads the body: at most `limit` bytes, chunked or not.
async fn read_bytes(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        let too_large = std::error::Error::source(&error)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::Infer(InferError::TooLarge)
        } else {
            ApiError::Incomplete(format!("body could not be read: {error}"))
        }
    })
}

/// Reads `input` for the model, admits the run, runs it and writes the result, stream or error in
/// the route's form.
async fn execute(
    mut call: Call,
    input: Value,
    body: Option<BinaryBody>,
    options: RunOptions,
) -> Response {
    let state = call.state.clone();
    let input_bytes = input.to_string().len() + body.as_ref().map_or(0, |b| b.bytes.len());
    let parsed = state.ember.target(&call.model).and_then(|target| {
        let input = wire::parse(wire::Incoming::new(target, &input, body))?;
        Ok((target, input))
    });
    let (target, task_input) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => return call.fail(error.into()).await,
    };
    let spec = target.requested;
    call.served_by = Some(spec.id.clone());
    let estimate = tasks::estimate_usage(spec, &task_input, input_bytes);
    if let Err(error) = call.admit(spec, &estimate).await {
        return call.fail(error).await;
    }
    let run = tokio::select! {
        run = state.ember.run(target, task_input, &options) => run,
        _ = aborted(state.abort.clone()) => Err(InferError::Aborted),
    };
    let run = match run {
        Ok(run) => run,
        Err(error) => return call.fail(error.into()).await,
    };
    let served_by = run.served_by.clone();
    let form = call.form;
    let generation = openai::RunGeneration::new(spec, &call.id, &call.model);
    let (answer, usage) = match run.output {
        RunOutput::Task { output, usage } => (wire::result(&output), usage),
        RunOutput::Completion(completion) => (
            Answer::Json(generation.result(&completion)),
            completion.usage,
        ),
        RunOutput::Stream(events) => {
            let mut response = stream_response(call, &served_by, events, generation).await;
            served_by_header(&mut response, &served_by);
            return response;
        }
    };
    call.finish(Some(&served_by), 200, Ok(usage)).await;
    let mut response = match (answer, form) {
        (Answer::Json(result), Form::Rest) => rest_result(result),
        (Answer::Json(result), _) => axum::Json(result).into_response(),
        // Audio and images go out as they are, on every route: no envelope.
        (
            Answer::Binary {
                bytes,
                content_type,
            },
            _,
        ) => {
            let mut response = bytes.into_response();
            if let Ok(value) = HeaderValue::from_str(&content_type) {
                response.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            response
        }
    };
    served_by_header(&mut response, &served_by);
    response
}

/// A route with its own JSON shape around one whole-result task (OpenAI's embeddings,
/// `/v1/rerank`): reads the JSON body, `parse`s it into the model, the task request and what the
/// answer needs besides the output, and runs it with `run_task_route`.
pub(crate) async fn task_route<E>(
    mut call: Call,
    headers: &HeaderMap,
    body: Body,
    parse: impl FnOnce(&Value) -> Result<(ModelSpec, TaskRequest, E), ApiError>,
    answer: impl FnOnce(&str, TaskOutput, Usage, E) -> Option<Value>,
) -> Response {
    let body = match read_request(&mut call, body).await {
        Ok(body) => body,
        Err(error) => return call.fail(error).await,
    };
    let (spec, request, extra) = match parse(&body) {
        Ok(parsed) => parsed,
        Err(error) => return call.fail(error).await,
    };
    let options = run_options(&call.state, headers, body.get("options"));
    let input_bytes = body.to_string().len();
    run_task_route(
        call,
        &spec,
        request,
        input_bytes,
        options,
        |model, output, usage| {
            answer(model, output, usage, extra).map(|result| axum::Json(result).into_response())
        },
    )
    .await
}

/// Admits and runs a parsed request of a route with its own wire shape, and answers
/// `answer(requested model, output, usage)`, or the error in the route's form. `answer` gives
/// `None` for another task's output.
pub(crate) async fn run_task_route(
    mut call: Call,
    spec: &ModelSpec,
    request: TaskRequest,
    input_bytes: usize,
    options: RunOptions,
    answer: impl FnOnce(&str, TaskOutput, Usage) -> Option<Response>,
) -> Response {
    call.served_by = Some(spec.id.clone());
    let estimate = tasks::estimate_task(spec, &request, input_bytes);
    if let Err(error) = call.admit(spec, &estimate).await {
        return call.fail(error).await;
    }
    let state = call.state.clone();
    let run = tokio::select! {
        run = state.ember.run_task(spec, request, &options) => run,
        _ = aborted(state.abort.clone()) => Err(InferError::Aborted),
    };
    let run = match run {
        Ok(run) => run,
        Err(error) => return call.fail(error.into()).await,
    };
    let Some(mut response) = answer(&call.model, run.output, run.usage) else {
        let error = InferError::Internal(format!("{} answered another task's output", spec.id));
        return call.fail(error.into()).await;
    };
    call.finish(Some(&run.served_by), 200, Ok(run.usage)).await;
    served_by_header(&mut response, &run.served_by);
    response
}

/// Names the catalog model that served in `x-ember-model`.
pub(crate) fn served_by_header(response: &mut Response, served_by: &str) {
    if let Ok(value) = HeaderValue::from_str(served_by) {
        response.headers_mut().insert(SERVED_BY_HEADER, value);
    }
}

/// Answers a started generation as SSE in `format`; the request settles when the stream ends,
/// before its last event goes out.
pub(crate) async fn stream_response(
    call: Call,
    served_by: &str,
    events: mpsc::Receiver<TextEvent>,
    format: impl sse::StreamFormat,
) -> Response {
    stream_response_keeping(call, served_by, events, format, || Box::pin(async {})).await
}

/// `stream_response`, awaiting `keep` when the generation finishes, after the format's `done`
/// and before the last events go out (the Responses API stores the response there, so a
/// client that read the whole stream can continue from it at once).
pub(crate) async fn stream_response_keeping(
    call: Call,
    served_by: &str,
    mut events: mpsc::Receiver<TextEvent>,
    format: impl sse::StreamFormat,
    keep: impl FnOnce() -> sse::EndFuture + Send + 'static,
) -> Response {
    // Wait for the first event so a run that fails at once gets a proper error status.
    let first = tokio::select! {
        first = events.recv() => first,
        _ = aborted(call.state.abort.clone()) => None,
    };
    let first = match first {
        Some(TextEvent::Failed(error)) => return call.fail(ApiError::Infer(error)).await,
        None => return call.fail(ApiError::Infer(InferError::Aborted)).await,
        Some(first) => first,
    };
    let abort = call.state.abort.clone();
    let served_by = served_by.to_string();
    let body = sse::text_stream(first, events, abort, format, move |outcome| {
        // The 200 went out with the headers; a failure shows in the error code.
        Box::pin(async move {
            if outcome.is_ok() {
                keep().await;
            }
            call.finish(Some(&served_by), 200, outcome).await
        })
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
