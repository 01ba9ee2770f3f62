//! The OpenAI-compatible API, under Cloudflare's `.../ai/v1/` and under `/v1/` for clients that
//! assume OpenAI's root: chat completions, completions (raw prompts), embeddings, the model list,
//! and the routes of their own modules (`audio`, `images`, `rerank`, `responses`, and Anthropic's
//! `messages`, which clients reach at the same roots). Requests become core's typed task requests, read by the same field readers as `/ai/run`'s,
//! and run on the same engine path; answers, streams and errors take OpenAI's shapes.

use crate::error::{ApiError, openai_stream_error_event};
use crate::run::{self, Call};
use crate::sse::{self, StreamFormat};
use crate::wire::{self, text_generation};
use crate::{AppState, aborted, audio, images, messages, rerank, responses};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use base64::Engine as _;
use ember_core::InferError;
use ember_core::catalog::{AnswerFormat, ModelSpec, Task};
use ember_core::ember::complete;
use ember_core::installed;
use ember_core::tasks::{
    self, Completion, FinishReason, PromptInput, TaskOutput, TaskRequest, TextGenerationRequest,
    Usage,
};
use serde_json::{Map, Value, json};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where the routes live: Cloudflare's base URL, and the root OpenAI clients assume.
/// Where the OpenAI routes answer: Workers AI's REST path, the bare `/v1`, and AI Gateway's
/// provider URLs (`workers-ai/v1`, and the older `compat` with `workers-ai/<model>` names).
const PREFIXES: [&str; 4] = [
    "/client/v4/accounts/{account_id}/ai/v1",
    "/v1",
    "/v1/{account_id}/{gateway_id}/workers-ai/v1",
    "/v1/{account_id}/{gateway_id}/compat",
];

/// Adds the OpenAI routes under both prefixes.
pub fn routes(router: Router<AppState>) -> Router<AppState> {
    PREFIXES.iter().fold(router, |router, prefix| {
        ENDPOINTS.iter().fold(router, |router, (path, handler)| {
            router.route(&format!("{prefix}{path}"), handler())
        })
    })
}

/// The OpenAI endpoints, under each prefix.
type Route = (&'static str, fn() -> MethodRouter<AppState>);
const ENDPOINTS: [Route; 12] = [
    ("/chat/completions", || post(chat_completions)),
    ("/responses", || post(responses::create)),
    ("/responses/{response_id}", || {
        get(responses::get).delete(responses::delete)
    }),
    ("/messages", || post(messages::create)),
    ("/completions", || post(completions)),
    ("/embeddings", || post(embeddings)),
    ("/rerank", || post(rerank::rerank)),
    ("/audio/transcriptions", || post(audio::transcriptions)),
    ("/audio/translations", || post(audio::translations)),
    ("/audio/speech", || post(audio::speech)),
    ("/images/generations", || post(images::generations)),
    ("/models", || get(models)),
];

/// Whether `path` (after `/v1`) is one of the OpenAI endpoints or the generated images'.
pub(crate) fn is_route_under_v1(path: &str) -> bool {
    let matches = |endpoint: &str| {
        let (mut want, mut have) = (endpoint.split('/'), path.split('/'));
        loop {
            match (want.next(), have.next()) {
                (None, None) => return true,
                (Some(w), Some(h)) if w == h || (w.starts_with('{') && !h.is_empty()) => {}
                _ => return false,
            }
        }
    };
    ENDPOINTS.iter().any(|(endpoint, _)| matches(endpoint))
        || path.starts_with("/images/generated/")
}

/// Whether `path` lies under one of the prefixes, so that its errors take OpenAI's shape.
pub fn is_openai_path(path: &str) -> bool {
    let under = |path: &str, root: &str| {
        path.strip_prefix(root)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    match path
        .strip_prefix("/client/v4/accounts/")
        .and_then(|rest| rest.split_once('/'))
    {
        Some((_account, rest)) => under(rest, "ai/v1"),
        None => under(path, "/v1"),
    }
}

// ------------------------------------------------------------------ text generation

/// The two text generation endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    /// `/chat/completions`: messages, rendered through the model's chat template.
    Chat,
    /// `/completions`: one prompt, sent to the model as it is.
    Completion,
}

async fn chat_completions(call: Call, headers: HeaderMap, body: Body) -> Response {
    generate(call, &headers, body, Endpoint::Chat).await
}

async fn completions(call: Call, headers: HeaderMap, body: Body) -> Response {
    generate(call, &headers, body, Endpoint::Completion).await
}

/// A text generation request, translated.
struct Generation<'a> {
    spec: &'a ModelSpec,
    request: TextGenerationRequest,
    /// What it can cost at most, held against the caller's allocation while it runs.
    estimate: Usage,
    /// `stream_options.include_usage`: a last chunk carries the usage.
    include_usage: bool,
}

async fn generate(mut call: Call, headers: &HeaderMap, body: Body, endpoint: Endpoint) -> Response {
    let state = call.state.clone();
    let body = match run::read_request(&mut call, body).await {
        Ok(body) => body,
        Err(error) => return call.fail(error),
    };
    let Generation {
        spec,
        request,
        estimate,
        include_usage,
    } = match parse_generation(&state, &body, endpoint) {
        Ok(generation) => generation,
        Err(error) => return call.fail(error),
    };
    let answer = Answer {
        endpoint,
        // The request id, so that a completion can be found in the request log.
        id: match endpoint {
            Endpoint::Chat => format!("chatcmpl-{}", call.id),
            Endpoint::Completion => format!("cmpl-{}", call.id),
        },
        created: unix_seconds(),
        model: call.model.clone(),
        include_usage,
    };
    let options = run::run_options(&state, headers, body.get("options"));
    answer_generation(call, spec, request, &estimate, &options, answer).await
}

/// Answers a request of another chat API (Responses, Messages) as the OpenAI chat `chat` it
/// amounts to: read by the chat route's own readers (`locate` turns an error about the chat into
/// one about the caller's field), answered by `reply`.
pub(crate) async fn answer_as_chat(
    call: Call,
    headers: &HeaderMap,
    chat: &Value,
    locate: impl FnOnce(ApiError) -> ApiError,
    reply: impl GenerationReply,
) -> Response {
    let state = call.state.clone();
    let Generation {
        spec,
        request,
        estimate,
        ..
    } = match parse_generation(&state, chat, Endpoint::Chat) {
        Ok(generation) => generation,
        Err(error) => return call.fail(locate(error)),
    };
    let options = run::run_options(&state, headers, None);
    answer_generation(call, spec, request, &estimate, &options, reply).await
}

/// How a generation route answers: its stream format, and its whole answer.
pub(crate) trait GenerationReply: StreamFormat {
    /// The answer of a finished generation that was not streamed.
    fn whole(&self, completion: &Completion) -> Value;

    /// What to await once the generation finished, before the client reads its end (after
    /// `whole` or `done`): none unless the route keeps its answers.
    fn keeper(&self) -> Option<Box<dyn FnOnce() -> sse::EndFuture + Send>> {
        None
    }
}

/// Admits a parsed text generation, runs it and answers with `reply`: streamed in its format
/// when the request asked for a stream, else whole; or the error in the call's form.
pub(crate) async fn answer_generation(
    call: Call,
    spec: &ModelSpec,
    request: TextGenerationRequest,
    estimate: &Usage,
    options: &ember_core::RunOptions,
    reply: impl GenerationReply,
) -> Response {
    let state = call.state.clone();
    if let Err(error) = call.admit(spec, estimate).await {
        return call.fail(error);
    }
    let stream = request.stream;
    let events = tokio::select! {
        events = state.ember.generate(spec, request, options) => events,
        _ = aborted(state.abort.clone()) => Err(InferError::Aborted),
    };
    let events = match events {
        Ok(events) => events,
        Err(error) => return call.fail(error.into()),
    };
    let keeper = reply.keeper();
    let mut response = if stream {
        let keep = move || keeper.map_or_else(|| Box::pin(async {}) as sse::EndFuture, |k| k());
        run::stream_response_keeping(call, &spec.id, events, reply, keep).await
    } else {
        let completion = tokio::select! {
            completion = complete(events, options.timeout) => completion,
            _ = aborted(state.abort.clone()) => Err(InferError::Aborted),
        };
        match completion {
            Ok(completion) => {
                let whole = reply.whole(&completion);
                if let Some(keep) = keeper {
                    keep().await;
                }
                call.succeed(&spec.id, completion.usage);
                axum::Json(whole).into_response()
            }
            Err(error) => call.fail(error.into()),
        }
    };
    run::served_by_header(&mut response, &spec.id);
    response
}

/// Reads the request into a text generation; the fields OpenAI and Workers AI share are read by
/// the same code as `/ai/run`'s, so errors name the client's field.
fn parse_generation<'a>(
    state: &'a AppState,
    body: &Value,
    endpoint: Endpoint,
) -> Result<Generation<'a>, ApiError> {
    let object = as_object(body)?;
    // The model that serves it: the named one, or its stand-in until it is pulled (as on /ai/run).
    let spec = state
        .ember
        .serving(resolve_model(state, object, Task::TextGeneration)?)?;
    refuse_unsupported(object)?;
    let prompt = match endpoint {
        Endpoint::Chat => {
            let messages = object
                .get("messages")
                .ok_or_else(|| invalid("/messages", "is required"))?;
            PromptInput::Messages(text_generation::parse_messages(messages)?)
        }
        Endpoint::Completion => {
            let prompt = match object.get("prompt") {
                None | Some(Value::Null) => return Err(invalid("/prompt", "is required")),
                Some(Value::Array(prompts)) if prompts.len() == 1 => &prompts[0],
                Some(Value::Array(_)) => {
                    return Err(invalid("/prompt", "must be one prompt"));
                }
                Some(prompt) => prompt,
            };
            // A completion continues the text itself: no chat template.
            PromptInput::Prompt {
                text: wire::bounded_string(prompt, "/prompt")?,
                raw: true,
            }
        }
    };
    let max_tokens = text_generation::chat_max_tokens(object, spec)?;
    let request = text_generation::request(object, spec, prompt, max_tokens)?;
    let include_usage = match object.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(options)) => match options.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(include)) => *include,
            Some(_) => {
                return Err(invalid("/stream_options/include_usage", "expected boolean"));
            }
        },
        Some(_) => return Err(invalid("/stream_options", "expected object")),
    };
    Ok(Generation {
        spec,
        estimate: tasks::estimate_generation(spec, &request, body.to_string().len()),
        request,
        include_usage,
    })
}

/// Refuses the fields Ember does not implement rather than answer as if they were not sent:
/// several choices, log probabilities, echo/suffix and the deprecated `functions`.
fn refuse_unsupported(object: &Map<String, Value>) -> Result<(), ApiError> {
    for field in ["n", "best_of"] {
        if let Some(value) = object.get(field).filter(|v| !v.is_null() && **v != 1) {
            return Err(invalid(
                &format!("/{field}"),
                format!("only 1 is supported, got {value}"),
            ));
        }
    }
    for field in ["logprobs", "top_logprobs", "echo", "suffix"] {
        if object.get(field).is_some_and(asks_for_something) {
            return Err(invalid(&format!("/{field}"), "is not supported"));
        }
    }
    // OpenAI's deprecated function calling; `tools` replaces it.
    for field in ["functions", "function_call"] {
        if object.get(field).is_some_and(asks_for_something) {
            return Err(invalid(&format!("/{field}"), "is not supported; use tools"));
        }
    }
    Ok(())
}

/// Whether an optional field asks for something: not null, false, 0, "" or [].
fn asks_for_something(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => false,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        _ => true,
    }
}

/// How `/ai/run` and the binding answer a text generation: in Workers AI's native shapes, or for
/// the chat-completions family in OpenAI's chat shapes, as Workers AI writes them there (chunks,
/// a usage chunk, then a native usage event before `[DONE]`).
pub(crate) enum RunGeneration {
    Native,
    ChatCompletions(Answer),
}

impl RunGeneration {
    /// The answer for request `request_id` of `spec`, which the client named `model`.
    pub(crate) fn new(spec: &ModelSpec, request_id: &str, model: &str) -> RunGeneration {
        match spec.answer_format {
            AnswerFormat::Native | AnswerFormat::LlamaGuard => RunGeneration::Native,
            AnswerFormat::ChatCompletions => RunGeneration::ChatCompletions(Answer {
                endpoint: Endpoint::Chat,
                id: format!("chatcmpl-{request_id}"),
                created: unix_seconds(),
                model: model.to_string(),
                include_usage: true,
            }),
        }
    }

    /// The result object of a generation that was not streamed.
    pub(crate) fn result(&self, completion: &Completion) -> Value {
        match self {
            RunGeneration::Native => text_generation::result(completion),
            RunGeneration::ChatCompletions(answer) => answer.answer(completion),
        }
    }
}

impl RunGeneration {
    /// The stream format its events are written in.
    fn format(&self) -> &dyn StreamFormat {
        match self {
            RunGeneration::Native => &sse::Native,
            RunGeneration::ChatCompletions(answer) => answer,
        }
    }
}

impl StreamFormat for RunGeneration {
    fn start(&self) -> String {
        self.format().start()
    }

    fn text(&self, text: &str) -> String {
        self.format().text(text)
    }

    fn tool_call_start(&self, index: usize, id: &str, name: &str) -> String {
        self.format().tool_call_start(index, id, name)
    }

    fn tool_call_arguments(&self, index: usize, fragment: &str) -> String {
        self.format().tool_call_arguments(index, fragment)
    }

    /// The chat-completions family's stream ends as Workers AI's native one does too: with a
    /// `{"response": "", "usage"}` event after OpenAI's usage chunk.
    fn done(&self, completion: &Completion) -> String {
        let events = self.format().done(completion);
        match self {
            RunGeneration::Native => events,
            RunGeneration::ChatCompletions(_) => {
                let usage = json!({ "response": "", "usage": completion.usage });
                events + &sse::data(&usage)
            }
        }
    }

    // Errors on /ai/run are Workers AI's, whatever the family.
    fn error(&self, error: &ApiError) -> String {
        sse::Native.error(error)
    }
}

/// Everything the objects of one answer share, and how they are written, whole or streamed.
pub(crate) struct Answer {
    endpoint: Endpoint,
    id: String,
    created: u64,
    /// The model as the client named it.
    model: String,
    include_usage: bool,
}

impl Answer {
    fn object(&self, choices: Value, chunk: bool) -> Value {
        let object = match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completion, _) => "text_completion",
        };
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    /// The non-streamed answer.
    fn answer(&self, completion: &Completion) -> Value {
        let finish_reason = finish_reason(completion.finish_reason);
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let mut message =
                    json!({ "role": "assistant", "content": completion.text, "refusal": null });
                if !completion.tool_calls.is_empty() {
                    let calls = completion.tool_calls.iter().map(wire::tools::openai_call);
                    message["tool_calls"] = calls.collect();
                    if completion.text.is_empty() {
                        message["content"] = Value::Null;
                    }
                }
                json!({
                    "index": 0,
                    "message": message,
                    "logprobs": null,
                    "finish_reason": finish_reason,
                })
            }
            Endpoint::Completion => json!({
                "index": 0,
                "text": completion.text,
                "logprobs": null,
                "finish_reason": finish_reason,
            }),
        };
        let mut object = self.object(json!([choice]), false);
        object["usage"] = json!(completion.usage);
        object
    }

    /// A chunk with a piece of text (none on the last chunk) and, on the last, why it ended.
    fn chunk(&self, text: Option<&str>, finish_reason: Option<&str>) -> String {
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "delta": text.map_or_else(|| json!({}), |text| json!({ "content": text })),
                "logprobs": null,
                "finish_reason": finish_reason,
            }),
            Endpoint::Completion => json!({
                "index": 0,
                "text": text.unwrap_or_default(),
                "logprobs": null,
                "finish_reason": finish_reason,
            }),
        };
        self.event(json!([choice]))
    }

    /// A chat chunk whose delta is one tool call's piece (completions have no tool calls).
    fn tool_call_delta(&self, call: Value) -> String {
        match self.endpoint {
            Endpoint::Chat => self.event(json!([{
                "index": 0,
                "delta": { "tool_calls": [call] },
                "logprobs": null,
                "finish_reason": null,
            }])),
            Endpoint::Completion => String::new(),
        }
    }

    fn event(&self, choices: Value) -> String {
        let mut chunk = self.object(choices, true);
        if self.include_usage {
            // As OpenAI does: every chunk but the usage chunk has `usage: null`.
            chunk["usage"] = Value::Null;
        }
        sse::data(&chunk)
    }
}

impl GenerationReply for Answer {
    fn whole(&self, completion: &Completion) -> Value {
        self.answer(completion)
    }
}

impl StreamFormat for Answer {
    fn start(&self) -> String {
        match self.endpoint {
            Endpoint::Chat => self.event(json!([{
                "index": 0,
                "delta": { "role": "assistant", "content": "" },
                "logprobs": null,
                "finish_reason": null,
            }])),
            Endpoint::Completion => String::new(),
        }
    }

    fn text(&self, text: &str) -> String {
        self.chunk(Some(text), None)
    }

    fn tool_call_start(&self, index: usize, id: &str, name: &str) -> String {
        self.tool_call_delta(json!({
            "index": index,
            "id": id,
            "type": "function",
            "function": { "name": name, "arguments": "" },
        }))
    }

    fn tool_call_arguments(&self, index: usize, fragment: &str) -> String {
        self.tool_call_delta(json!({ "index": index, "function": { "arguments": fragment } }))
    }

    fn done(&self, completion: &Completion) -> String {
        let mut events = self.chunk(None, Some(finish_reason(completion.finish_reason)));
        if self.include_usage {
            let mut usage = self.object(json!([]), true);
            usage["usage"] = json!(completion.usage);
            events.push_str(&sse::data(&usage));
        }
        events
    }

    fn error(&self, error: &ApiError) -> String {
        openai_stream_error_event(error)
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        // Only a client that went away gets this, and it reads no more.
        FinishReason::Cancelled => "stop",
    }
}

// ------------------------------------------------------------------ embeddings

async fn embeddings(call: Call, headers: HeaderMap, body: Body) -> Response {
    let state = call.state.clone();
    let parse = |body: &Value| {
        let (spec, request, base64) = parse_embeddings(&state, body)?;
        Ok((spec.clone(), TaskRequest::TextEmbeddings(request), base64))
    };
    run::task_route(call, &headers, body, parse, |model, output, usage, base64| {
        let TaskOutput::TextEmbeddings(embedded) = output else {
            return None;
        };
        let data: Vec<Value> = embedded
            .vectors
            .iter()
            .enumerate()
            .map(|(index, vector)| {
                let embedding = if base64 {
                    // OpenAI's base64 form: the little-endian f32 bytes of the vector.
                    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    json!(vector)
                };
                json!({ "object": "embedding", "index": index, "embedding": embedding })
            })
            .collect();
        let tokens = usage.prompt_tokens;
        Some(json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": { "prompt_tokens": tokens, "total_tokens": tokens, "neurons": usage.neurons },
        }))
    })
    .await
}

/// The model, the texts as a Workers AI embeddings request, and whether vectors go out as base64.
fn parse_embeddings<'a>(
    state: &'a AppState,
    body: &Value,
) -> Result<(&'a ModelSpec, tasks::EmbeddingsRequest, bool), ApiError> {
    let object = as_object(body)?;
    let spec = resolve_model(state, object, Task::TextEmbeddings)?;
    let input = match object.get("input") {
        None | Some(Value::Null) => return Err(invalid("/input", "is required")),
        Some(Value::Array(items)) if items.iter().any(|item| !item.is_string()) => {
            return Err(invalid(
                "/input",
                "must be a string or an array of strings (token arrays are not supported)",
            ));
        }
        Some(input) => input.clone(),
    };
    let request = wire::embeddings::from_json(&json!({ "text": input }))
        .map_err(|error| renamed(error, "/text", "/input"))?;
    let base64 = match object.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(format) if format == "float" => false,
        Some(format) if format == "base64" => true,
        Some(_) => {
            return Err(invalid("/encoding_format", "must be 'float' or 'base64'"));
        }
    };
    if let Some(dimensions) = object.get("dimensions").filter(|d| !d.is_null())
        && spec
            .output_dimensions
            .is_none_or(|size| *dimensions != size)
    {
        return Err(invalid(
            "/dimensions",
            format!(
                "{} makes vectors of {} dimensions and cannot shorten them",
                spec.id,
                spec.output_dimensions.unwrap_or_default()
            ),
        ));
    }
    Ok((spec, request, base64))
}

// ------------------------------------------------------------------ models

/// The installed catalog models. `created` is when the model was installed.
async fn models(State(state): State<AppState>) -> Response {
    let data: Vec<Value> = state
        .ember
        .catalog()
        .models()
        .iter()
        .filter(|spec| state.ember.is_installed(spec))
        .map(|spec| {
            let manifest =
                installed::model_dir(state.ember.home(), spec).join(installed::MANIFEST_FILE);
            let created = std::fs::metadata(manifest)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            json!({ "id": spec.id, "object": "model", "created": created, "owned_by": spec.author() })
        })
        .collect();
    axum::Json(json!({ "object": "list", "data": data })).into_response()
}

// ------------------------------------------------------------------ helpers

pub(crate) fn invalid(field: &str, problem: impl Into<String>) -> ApiError {
    ApiError::Infer(InferError::invalid(field, problem))
}

pub(crate) fn as_object(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    body.as_object()
        .ok_or_else(|| invalid("/", "the body must be a JSON object"))
}

/// The model the client named, for the request log (empty when it named none).
pub(crate) fn requested_model(body: &Value) -> String {
    body.get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The catalog model `model` names (an id or an alias, as on `/ai/run`), if it serves `task`.
pub(crate) fn resolve_model<'a>(
    state: &'a AppState,
    object: &Map<String, Value>,
    task: Task,
) -> Result<&'a ModelSpec, ApiError> {
    let model = match object.get("model") {
        Some(Value::String(model)) if !model.is_empty() => model,
        None | Some(Value::Null) | Some(Value::String(_)) => {
            return Err(invalid("/model", "is required"));
        }
        Some(_) => return Err(invalid("/model", "expected string")),
    };
    resolve_for(state, model, task)
}

/// The catalog model `model` names, which must do `task`. OpenAI's own names for its speech
/// models name Ember's: `whisper-1` `@cf/openai/whisper`, `tts-1` and `tts-1-hd`
/// `@cf/myshell-ai/melotts`.
pub(crate) fn resolve_for<'a>(
    state: &'a AppState,
    model: &str,
    task: Task,
) -> Result<&'a ModelSpec, ApiError> {
    let id = match model {
        "whisper-1" => "@cf/openai/whisper",
        "tts-1" | "tts-1-hd" => "@cf/myshell-ai/melotts",
        model => model.strip_prefix("workers-ai/").unwrap_or(model),
    };
    let spec = state.ember.resolve(id)?;
    if spec.task != task {
        return Err(invalid(
            "/model",
            format!(
                "{model} is a {} model and cannot serve this endpoint",
                spec.task.display_name()
            ),
        ));
    }
    Ok(spec)
}

/// Renames the field of a validation error (a JSON pointer starting with `from`): the Workers AI
/// input a request became says `max_tokens` or `text` where the client said
/// `max_completion_tokens` or `input`.
pub(crate) fn renamed(error: InferError, from: &str, to: &str) -> ApiError {
    match error {
        InferError::InvalidInput { field, problem } => {
            let field = match field.strip_prefix(from) {
                Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("{to}{rest}"),
                _ => field,
            };
            ApiError::Infer(InferError::InvalidInput { field, problem })
        }
        other => ApiError::Infer(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_paths() {
        for path in [
            "/v1/chat/completions",
            "/v1/nothing",
            "/v1",
            "/client/v4/accounts/abc/ai/v1/models",
            "/client/v4/accounts/abc/ai/v1/x/y",
        ] {
            assert!(is_openai_path(path), "{path}");
        }
        for path in [
            "/v10/models",
            "/client/v4/accounts/abc/ai/run/@cf/x/v1",
            "/client/v4/accounts/abc/ai/v1x",
            "/run",
        ] {
            assert!(!is_openai_path(path), "{path}");
        }
    }

    #[test]
    fn unsupported_fields_are_refused_unless_unset() {
        let accepted = json!({"n": 1, "logprobs": false, "top_logprobs": 0, "stop": [],
            "response_format": {"type": "text"}, "tools": null, "user": "u"});
        assert!(refuse_unsupported(accepted.as_object().unwrap()).is_ok());
        for (body, field) in [
            (json!({"n": 2}), "/n"),
            (json!({"logprobs": true}), "/logprobs"),
            (json!({"top_logprobs": 2}), "/top_logprobs"),
            (json!({"functions": [{"name": "f"}]}), "/functions"),
            (json!({"function_call": "auto"}), "/function_call"),
        ] {
            match refuse_unsupported(body.as_object().unwrap()) {
                Err(ApiError::Infer(InferError::InvalidInput { field: f, .. })) => {
                    assert_eq!(f, field)
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn renamed_fields() {
        let error = InferError::invalid("/text/1", "must not be empty");
        assert_eq!(
            renamed(error, "/text", "/input"),
            ApiError::Infer(InferError::invalid("/input/1", "must not be empty"))
        );
        let other = InferError::invalid("/textual", "x");
        assert_eq!(
            renamed(other.clone(), "/text", "/input"),
            ApiError::Infer(other)
        );
    }
}
