//! The run routes: `POST .../ai/run/{model}` (REST envelope), the binding's `POST /run?version=3`
//! (bare results, binding errors) and wrangler's `POST .../ai/run/proxy`, which forwards binding
//! requests with the original URL in `X-Forwarded`. All of them end in `execute`. `Call` is a run
//! route's view of its request and of its meter (`metering`); it and the helpers that read
//! bodies and answer streams serve the OpenAI routes too.

use crate::error::ApiError;
use crate::metering::Meter;
use crate::wire::{self, Answer, binary, binary::BinaryBody};
use crate::{AppState, aborted, ai_gateway, batch, catalog, finetunes, openai, sse};
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, RawQuery};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use ember_access::Caller;
use ember_core::catalog::ModelSpec;
use ember_core::runner::TextEvent;
use ember_core::tasks::{self, TaskOutput, TaskRequest, Usage};
use ember_core::{InferError, RunOptions, RunOutput};
use serde_json::{Value, json};
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

    pub(crate) fn route(self) -> &'static str {
        match self {
            Form::Rest => "rest",
            Form::Binding => "binding",
            Form::OpenAi => "openai",
            Form::Anthropic => "anthropic",
        }
    }
}

/// A request on a run route, as its handler sees it: the server, the request's id, form and
/// caller, and its meter, through which the run is admitted and reports its outcome (the
/// metering layer settles it).
pub(crate) struct Call {
    pub(crate) state: AppState,
    pub(crate) id: String,
    pub(crate) form: Form,
    pub(crate) caller: Caller,
    /// The model as the client named it (empty until known).
    pub(crate) model: String,
    meter: Meter,
}

impl FromRequestParts<AppState> for Call {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Call, Response> {
        let Some(meter) = parts.extensions.get::<Meter>().cloned() else {
            let error = ApiError::Infer(InferError::Internal("no meter".into()));
            return Err(Form::of_path(parts.uri.path()).error(&error));
        };
        Ok(Call {
            state: state.clone(),
            id: meter.id(),
            form: meter.form(),
            caller: meter.caller(),
            model: String::new(),
            meter,
        })
    }
}

impl Call {
    /// Takes the request as a run of `model` (as the client named it), to be settled.
    pub(crate) fn name_model(&mut self, model: String) {
        self.meter.open(&model);
        self.model = model;
    }

    /// Holds the run of `spec` to the caller's rate limit and daily allocation.
    pub(crate) async fn admit(&self, spec: &ModelSpec, estimate: &Usage) -> Result<(), ApiError> {
        self.meter.admit(spec, estimate).await
    }

    /// The run's error, answered in the route's form (and logged).
    pub(crate) fn fail(&self, error: ApiError) -> Response {
        self.meter.failed(error)
    }

    /// The run succeeded: `served_by` used `usage`.
    pub(crate) fn succeed(&self, served_by: &str, usage: Usage) {
        self.meter.succeeded(Some(served_by), usage);
    }

    /// The request ran nothing (a batch's submission or poll).
    pub(crate) fn ran_nothing(&self) {
        self.meter.ran_nothing();
    }
}

/// A REST envelope around a successful result.
pub(crate) fn rest_result(result: Value) -> Response {
    axum::Json(json!({ "result": result, "success": true, "errors": [], "messages": [] }))
        .into_response()
}

pub async fn rest_run(
    call: Call,
    Path((_account_id, model)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if model == "proxy" {
        return proxy(call, &Method::POST, headers, body).await;
    }
    run_model(call, model, query, headers, body).await
}

/// AI Gateway's provider URL for a Workers AI model, `/v1/{account}/{gateway}/workers-ai/{model}`:
/// the REST run (the gateway layer has done its part).
pub async fn gateway_run(
    call: Call,
    Path((_account_id, _gateway_id, model)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run_model(call, model, query, headers, body).await
}

async fn run_model(
    mut call: Call,
    model: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    call.name_model(model);
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
        Err(error) => call.fail(error),
    }
}

/// `GET` and `PATCH .../ai/run/proxy`: wrangler's proxied catalog search and gateway helpers;
/// no other run takes these methods.
pub async fn rest_run_other(
    call: Call,
    Path((_account_id, model)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match model.as_str() {
        "proxy" => proxy(call, &method, headers, body).await,
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
    call: Call,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    binding(call, &headers, query.as_deref(), body).await
}

async fn binding(mut call: Call, headers: &HeaderMap, query: Option<&str>, body: Body) -> Response {
    let Some(model) = binding_model(headers) else {
        return call.fail(ApiError::Incomplete("cf-consn-model-id header".into()));
    };
    call.name_model(model);
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
        Err(error) => call.fail(error),
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
async fn proxy(call: Call, method: &Method, headers: HeaderMap, body: Body) -> Response {
    let forwarded = headers
        .get("x-forwarded")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Ok(url) = forwarded.parse::<axum::http::Uri>() else {
        return ApiError::Incomplete("X-Forwarded header with the binding URL".into())
            .binding_response();
    };
    match url.path() {
        "/run" | "/ai-gateway/run" => binding(call, &headers, url.query(), body).await,
        "/ai-api/models/search" => {
            catalog::binding_search_query(&call.state, url.query().unwrap_or_default())
        }
        path if path.starts_with("/ai-gateway/gateways/") => {
            ai_gateway::binding_helper(call.state, call.caller, method, path, &headers, body).await
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
    call.name_model(openai::requested_model(&body));
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
    call: Call,
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
    let (target, mut task_input) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => return call.fail(error.into()),
    };
    let account = call.caller.account.id.clone();
    let applied = finetunes::apply_lora(
        &state,
        &account,
        &call.model,
        target,
        &input,
        &mut task_input,
    );
    if let Err(error) = applied.await {
        return call.fail(error);
    }
    let spec = target.requested;
    let estimate = tasks::estimate_usage(spec, &task_input, input_bytes);
    if let Err(error) = call.admit(spec, &estimate).await {
        return call.fail(error);
    }
    let run = tokio::select! {
        run = state.ember.run(target, task_input, &options) => run,
        _ = aborted(state.abort.clone()) => Err(InferError::Aborted),
    };
    let run = match run {
        Ok(run) => run,
        Err(error) => return call.fail(error.into()),
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
    call.succeed(&served_by, usage);
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
        Err(error) => return call.fail(error),
    };
    let (spec, request, extra) = match parse(&body) {
        Ok(parsed) => parsed,
        Err(error) => return call.fail(error),
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
    call: Call,
    spec: &ModelSpec,
    request: TaskRequest,
    input_bytes: usize,
    options: RunOptions,
    answer: impl FnOnce(&str, TaskOutput, Usage) -> Option<Response>,
) -> Response {
    let estimate = tasks::estimate_task(spec, &request, input_bytes);
    if let Err(error) = call.admit(spec, &estimate).await {
        return call.fail(error);
    }
    let state = call.state.clone();
    let run = tokio::select! {
        run = state.ember.run_task(spec, request, &options) => run,
        _ = aborted(state.abort.clone()) => Err(InferError::Aborted),
    };
    let run = match run {
        Ok(run) => run,
        Err(error) => return call.fail(error.into()),
    };
    let Some(mut response) = answer(&call.model, run.output, run.usage) else {
        let error = InferError::Internal(format!("{} answered another task's output", spec.id));
        return call.fail(error.into());
    };
    call.succeed(&run.served_by, run.usage);
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
        Some(TextEvent::Failed(error)) => return call.fail(ApiError::Infer(error)),
        None => return call.fail(ApiError::Infer(InferError::Aborted)),
        Some(first) => first,
    };
    let abort = call.state.abort.clone();
    call.meter.streaming(served_by);
    let meter = call.meter;
    let body = sse::text_stream(first, events, abort, format, move |outcome| {
        // The 200 went out with the headers; a failure shows in the error code.
        Box::pin(async move {
            if outcome.is_ok() {
                keep().await;
            }
            meter.settle_stream(outcome).await
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
