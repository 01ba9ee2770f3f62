//! OpenAI's Responses API under the OpenAI prefixes: `POST /responses` (text, streamed events,
//! function tools, structured output, `previous_response_id`), `GET` and `DELETE
//! /responses/{id}`. A request is read as the chat it amounts to (instructions, the stored
//! conversation it continues, its input items) and runs on the chat path; with `store` (the
//! default) the answer and its conversation are kept in `StoredResponses` before the client
//! reads the end of it.

use crate::AppState;
use crate::error::{ApiError, openai_stream_error_event};
use crate::openai::{self, GenerationReply, invalid};
use crate::run::{self, Call};
use crate::sse::{EndFuture, StreamFormat};
use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use ember_access::Caller;
use ember_core::InferError;
use ember_core::tasks::{Completion, FinishReason};
use ember_store::StoredResponse;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub(crate) async fn create(mut call: Call, headers: HeaderMap, body: Body) -> Response {
    let state = call.state.clone();
    let body = match run::read_request(&mut call, body).await {
        Ok(body) => body,
        Err(error) => return call.fail(error),
    };
    let (chat, conversation, echo) = match read(&call, &body).await {
        Ok(read) => read,
        Err(error) => return call.fail(error),
    };
    let store = body.get("store") != Some(&Value::Bool(false));
    let reply = ResponseReply {
        id: format!("resp_{}", call.id.replace('-', "")),
        created_at: state.access.now_ms() / 1000,
        model: call.model.clone(),
        echo,
        progress: Arc::default(),
        keep: store.then(|| Keep {
            state: state.clone(),
            account_id: call.caller.account.id.clone(),
            conversation,
        }),
    };
    let locate = |error| chat.locate(error);
    openai::answer_as_chat(call, &headers, &chat.body, locate, reply).await
}

pub(crate) async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
) -> Response {
    let id = params.get("response_id").map_or("", String::as_str);
    let responses = &state.access.stores().responses;
    match responses.response(&caller.account.id, id).await {
        Ok(Some(stored)) => {
            let object: Value = serde_json::from_str(&stored.response).unwrap_or(Value::Null);
            axum::Json(object).into_response()
        }
        Ok(None) => not_found(id).openai_response(),
        Err(error) => internal(error).openai_response(),
    }
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
) -> Response {
    let id = params.get("response_id").map_or("", String::as_str);
    let responses = &state.access.stores().responses;
    match responses.forget_response(&caller.account.id, id).await {
        Ok(true) => {
            axum::Json(json!({ "id": id, "object": "response", "deleted": true })).into_response()
        }
        Ok(false) => not_found(id).openai_response(),
        Err(error) => internal(error).openai_response(),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("Response with id '{id}' not found."))
}

fn internal(error: ember_store::StoreError) -> ApiError {
    ApiError::Infer(InferError::Internal(error.to_string()))
}

/// The chat a Responses request amounts to, and where each of its messages came from.
struct Chat {
    body: Value,
    /// The request field each chat message was read from (`/input/2`, `/instructions`, ...).
    sources: Vec<String>,
}

impl Chat {
    /// `error` about the chat, naming the Responses request's field instead.
    fn locate(&self, error: ApiError) -> ApiError {
        let ApiError::Infer(InferError::InvalidInput { field, problem }) = error else {
            return error;
        };
        let field = match field.strip_prefix("/messages/") {
            Some(rest) => {
                let (index, tail) = rest.split_once('/').unwrap_or((rest, ""));
                let source = index
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| self.sources.get(i));
                match source {
                    Some(source) if tail.is_empty() => source.clone(),
                    Some(source) => format!("{source}/{tail}"),
                    None => field,
                }
            }
            None if field == "/messages" => "/input".into(),
            None if field == "/max_tokens" => "/max_output_tokens".into(),
            None if field.starts_with("/response_format") => "/text/format".into(),
            None => field,
        };
        ApiError::Infer(InferError::InvalidInput { field, problem })
    }
}

/// Reads a Responses request: the chat to run, the conversation to store with its answer
/// (without the instructions, which OpenAI does not carry over), and the request fields the
/// response object repeats.
async fn read(
    call: &Call,
    body: &Value,
) -> Result<(Chat, Vec<Value>, Map<String, Value>), ApiError> {
    let object = openai::as_object(body)?;
    if object.get("background") == Some(&Value::Bool(true)) {
        return Err(invalid(
            "/background",
            "background responses are not supported",
        ));
    }
    let mut messages = Vec::new();
    let mut sources = Vec::new();
    match object.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => {
            messages.push(json!({ "role": "system", "content": text }));
            sources.push("/instructions".to_string());
        }
        Some(_) => return Err(invalid("/instructions", "expected a string")),
    }
    let mut conversation = match object.get("previous_response_id") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(id)) => {
            let responses = &call.state.access.stores().responses;
            let stored = responses
                .response(&call.caller.account.id, id)
                .await
                .map_err(internal)?
                .ok_or_else(|| {
                    ApiError::NotFound(format!("Previous response with id '{id}' not found."))
                })?;
            serde_json::from_str(&stored.conversation)
                .map_err(|e| InferError::Internal(format!("a stored conversation: {e}")))?
        }
        Some(_) => return Err(invalid("/previous_response_id", "expected a string")),
    };
    sources.extend(
        conversation
            .iter()
            .map(|_| "/previous_response_id".to_string()),
    );
    let input = match object.get("input") {
        Some(Value::String(text)) => vec![(
            json!({ "role": "user", "content": text }),
            "/input".to_string(),
        )],
        Some(Value::Array(items)) => input_messages(items)?,
        None | Some(Value::Null) => return Err(invalid("/input", "is required")),
        Some(_) => return Err(invalid("/input", "expected a string or an array of items")),
    };
    for (message, source) in input {
        conversation.push(message);
        sources.push(source);
    }
    messages.extend(conversation.iter().cloned());

    let mut chat = Map::new();
    chat.insert(
        "model".into(),
        object.get("model").cloned().unwrap_or(Value::Null),
    );
    chat.insert("messages".into(), Value::Array(messages));
    for (from, to) in [
        ("max_output_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("stream", "stream"),
    ] {
        if let Some(value) = object.get(from) {
            chat.insert(to.into(), value.clone());
        }
    }
    if let Some(tools) = object.get("tools").filter(|t| !t.is_null()) {
        chat.insert("tools".into(), function_tools(tools)?);
    }
    if let Some(choice) = object.get("tool_choice").filter(|c| !c.is_null()) {
        chat.insert("tool_choice".into(), tool_choice(choice)?);
    }
    if let Some(format) = object.get("text").and_then(|t| t.get("format")) {
        chat.insert("response_format".into(), response_format(format)?);
    }
    let echoed = [
        "instructions",
        "max_output_tokens",
        "metadata",
        "parallel_tool_calls",
        "previous_response_id",
        "temperature",
        "text",
        "tool_choice",
        "tools",
        "top_p",
        "user",
    ];
    let mut echo: Map<String, Value> = echoed
        .iter()
        .map(|field| {
            (
                field.to_string(),
                object.get(*field).cloned().unwrap_or(Value::Null),
            )
        })
        .collect();
    echo.insert(
        "store".into(),
        json!(object.get("store") != Some(&Value::Bool(false))),
    );
    let defaults = [
        ("metadata", json!({})),
        ("parallel_tool_calls", json!(true)),
        ("text", json!({ "format": { "type": "text" } })),
        ("tool_choice", json!("auto")),
        ("tools", json!([])),
    ];
    for (field, default) in defaults {
        if echo[field].is_null() {
            echo.insert(field.into(), default);
        }
    }
    Ok((
        Chat {
            body: Value::Object(chat),
            sources,
        },
        conversation,
        echo,
    ))
}

/// The chat messages of the input items, each with the field it came from. Consecutive
/// `function_call` items are one assistant turn, as a chat carries them.
fn input_messages(items: &[Value]) -> Result<Vec<(Value, String)>, ApiError> {
    let mut messages: Vec<(Value, String)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("/input/{i}");
        match item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message")
        {
            "message" => {
                let role = match item.get("role").and_then(Value::as_str) {
                    Some("developer") => "system",
                    Some(role) => role,
                    None => return Err(invalid(&format!("{at}/role"), "is required")),
                };
                let content = match item.get("content") {
                    Some(Value::Array(parts)) => content_parts(parts, &format!("{at}/content"))?,
                    Some(content) => content.clone(),
                    None => return Err(invalid(&format!("{at}/content"), "is required")),
                };
                messages.push((json!({ "role": role, "content": content }), at));
            }
            "function_call" => {
                let call = json!({
                    "id": item.get("call_id").cloned().unwrap_or(Value::Null),
                    "type": "function",
                    "function": {
                        "name": item.get("name").cloned().unwrap_or(Value::Null),
                        "arguments": item.get("arguments").cloned().unwrap_or(Value::Null),
                    },
                });
                let follows_a_call = messages
                    .last()
                    .is_some_and(|(m, _)| m.get("tool_calls").is_some() && m["content"] == "");
                match messages.last_mut() {
                    Some((message, _)) if follows_a_call => {
                        message["tool_calls"].as_array_mut().unwrap().push(call);
                    }
                    _ => messages.push((
                        json!({ "role": "assistant", "content": "", "tool_calls": [call] }),
                        at,
                    )),
                }
            }
            "function_call_output" => {
                let output = match item.get("output") {
                    Some(Value::String(text)) => text.clone(),
                    Some(other) => other.to_string(),
                    None => return Err(invalid(&format!("{at}/output"), "is required")),
                };
                let message = json!({
                    "role": "tool",
                    "tool_call_id": item.get("call_id").cloned().unwrap_or(Value::Null),
                    "content": output,
                });
                messages.push((message, at));
            }
            // A reasoning model's notes, sent back by clients; these models have none to read.
            "reasoning" => {}
            other => {
                return Err(invalid(
                    &format!("{at}/type"),
                    format!("input items of type '{other}' are not supported"),
                ));
            }
        }
    }
    Ok(messages)
}

/// A message's content parts as chat content parts.
fn content_parts(parts: &[Value], at: &str) -> Result<Value, ApiError> {
    parts
        .iter()
        .enumerate()
        .map(|(j, part)| match part.get("type").and_then(Value::as_str) {
            Some("input_text" | "output_text" | "text") => Ok(
                json!({ "type": "text", "text": part.get("text").cloned().unwrap_or(Value::Null) }),
            ),
            Some("input_image") => Ok(json!({
                "type": "image_url",
                "image_url": { "url": part.get("image_url").cloned().unwrap_or(Value::Null) },
            })),
            _ => Err(invalid(
                &format!("{at}/{j}/type"),
                "expected input_text, output_text or input_image",
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

/// `tools`: function tools only (`{type: "function", name, description, parameters}`), which
/// the chat reads as they are.
fn function_tools(tools: &Value) -> Result<Value, ApiError> {
    let Value::Array(items) = tools else {
        return Err(invalid("/tools", "must be an array"));
    };
    for (i, tool) in items.iter().enumerate() {
        match tool.get("type").and_then(Value::as_str) {
            Some("function") => {}
            other => {
                return Err(invalid(
                    &format!("/tools/{i}/type"),
                    format!(
                        "only function tools are supported, got {}",
                        other.unwrap_or("none")
                    ),
                ));
            }
        }
    }
    Ok(tools.clone())
}

/// `tool_choice`: a mode, or `{type: "function", name}`.
fn tool_choice(choice: &Value) -> Result<Value, ApiError> {
    match choice {
        Value::String(_) => Ok(choice.clone()),
        Value::Object(object) if object.get("type").and_then(Value::as_str) == Some("function") => {
            Ok(
                json!({ "type": "function", "function": { "name": object.get("name").cloned().unwrap_or(Value::Null) } }),
            )
        }
        _ => Err(invalid(
            "/tool_choice",
            "expected auto, none, required or a function",
        )),
    }
}

/// `text.format` as a chat's `response_format`.
fn response_format(format: &Value) -> Result<Value, ApiError> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") | Some("json_object") => Ok(format.clone()),
        Some("json_schema") => Ok(json!({
            "type": "json_schema",
            "json_schema": {
                "name": format.get("name").cloned().unwrap_or(json!("response")),
                "schema": format.get("schema").cloned().unwrap_or(Value::Null),
            },
        })),
        _ => Err(invalid(
            "/text/format/type",
            "must be one of text, json_object, json_schema",
        )),
    }
}

/// Where a stored response goes, with the conversation it answered.
struct Keep {
    state: AppState,
    account_id: String,
    conversation: Vec<Value>,
}

/// What a streamed response has sent so far, and its final object once done.
#[derive(Default)]
struct Progress {
    sequence: u64,
    /// Output items opened so far.
    items: usize,
    /// The output index of the message item while it is open.
    message: Option<usize>,
    text: String,
    /// Function calls opened: call id → output index, arguments so far.
    calls: Vec<(String, usize, String)>,
    /// The finished response and the assistant's chat message, for `Keep`.
    finished: Option<(Value, Value)>,
}

/// A Responses answer: the response object, whole or as its stream of events.
struct ResponseReply {
    id: String,
    created_at: i64,
    model: String,
    /// The request fields the object repeats.
    echo: Map<String, Value>,
    progress: Arc<Mutex<Progress>>,
    keep: Option<Keep>,
}

impl ResponseReply {
    fn message_id(&self) -> String {
        format!("msg_{}", &self.id["resp_".len()..])
    }

    fn object(&self, status: &str, output: Vec<Value>, completion: Option<&Completion>) -> Value {
        let mut object = json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": null,
            "incomplete_details": null,
            "model": self.model,
            "output": output,
            "truncation": "disabled",
            "usage": null,
        });
        let fields = object.as_object_mut().unwrap();
        fields.extend(self.echo.clone());
        if let Some(completion) = completion {
            let usage = completion.usage;
            fields.insert(
                "usage".into(),
                json!({
                    "input_tokens": usage.prompt_tokens,
                    "input_tokens_details": { "cached_tokens": 0 },
                    "output_tokens": usage.completion_tokens,
                    "output_tokens_details": { "reasoning_tokens": 0 },
                    "total_tokens": usage.prompt_tokens + usage.completion_tokens,
                }),
            );
            if completion.finish_reason == FinishReason::Length {
                fields.insert(
                    "incomplete_details".into(),
                    json!({ "reason": "max_output_tokens" }),
                );
            }
        }
        object
    }

    fn message_item(&self, text: &str, status: &str) -> Value {
        let content = match status {
            "in_progress" => json!([]),
            _ => {
                json!([{ "type": "output_text", "text": text, "annotations": [], "logprobs": [] }])
            }
        };
        json!({
            "type": "message",
            "id": self.message_id(),
            "status": status,
            "role": "assistant",
            "content": content,
        })
    }

    fn call_item(call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
        json!({
            "type": "function_call",
            "id": format!("fc_{call_id}"),
            "call_id": call_id,
            "name": name,
            "arguments": arguments,
            "status": status,
        })
    }

    /// The finished response, which `whole` answers and the stream's last event carries; kept
    /// for `Keep` with the assistant's chat message.
    fn finish(&self, completion: &Completion) -> Value {
        let mut output = Vec::new();
        if !completion.text.is_empty() || completion.tool_calls.is_empty() {
            output.push(self.message_item(&completion.text, "completed"));
        }
        for call in &completion.tool_calls {
            let arguments = call.arguments.to_string();
            output.push(Self::call_item(
                &call.id,
                &call.name,
                &arguments,
                "completed",
            ));
        }
        let status = match completion.finish_reason {
            FinishReason::Length => "incomplete",
            _ => "completed",
        };
        let object = self.object(status, output, Some(completion));
        let calls: Vec<Value> = completion
            .tool_calls
            .iter()
            .map(crate::wire::tools::openai_call)
            .collect();
        let mut message = json!({ "role": "assistant", "content": completion.text });
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls);
        }
        self.lock().finished = Some((object.clone(), message));
        object
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One event of the stream, numbered.
    fn event(&self, kind: &str, fields: Value) -> String {
        let mut progress = self.lock();
        let mut data = json!({ "type": kind, "sequence_number": progress.sequence });
        progress.sequence += 1;
        data.as_object_mut()
            .unwrap()
            .extend(fields.as_object().cloned().unwrap_or_default());
        format!("event: {kind}\ndata: {data}\n\n")
    }

    /// The events that close the message item, if it is open.
    fn close_message(&self) -> String {
        let (index, text) = {
            let mut progress = self.lock();
            match progress.message.take() {
                Some(index) => (index, std::mem::take(&mut progress.text)),
                None => return String::new(),
            }
        };
        let item_id = self.message_id();
        let part =
            json!({ "type": "output_text", "text": text, "annotations": [], "logprobs": [] });
        let at = json!({ "item_id": item_id, "output_index": index, "content_index": 0 });
        let with = |extra: Value| {
            let mut fields = at.clone();
            fields
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().cloned().unwrap_or_default());
            fields
        };
        self.event(
            "response.output_text.done",
            with(json!({ "text": text, "logprobs": [] })),
        ) + &self.event("response.content_part.done", with(json!({ "part": part })))
            + &self.event(
                "response.output_item.done",
                json!({ "output_index": index, "item": self.message_item(&text, "completed") }),
            )
    }
}

impl GenerationReply for ResponseReply {
    fn whole(&self, completion: &Completion) -> Value {
        self.finish(completion)
    }

    fn keeper(&self) -> Option<Box<dyn FnOnce() -> EndFuture + Send>> {
        let keep = self.keep.as_ref()?;
        let (state, account_id) = (keep.state.clone(), keep.account_id.clone());
        let mut conversation = keep.conversation.clone();
        let (progress, id) = (self.progress.clone(), self.id.clone());
        Some(Box::new(move || {
            Box::pin(async move {
                let finished = progress
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .finished
                    .take();
                let Some((object, message)) = finished else {
                    return;
                };
                conversation.push(message);
                let stored = StoredResponse {
                    id,
                    account_id,
                    created_at_ms: state.access.now_ms(),
                    response: object.to_string(),
                    conversation: Value::Array(conversation).to_string(),
                };
                if let Err(error) = state.access.stores().responses.keep_response(&stored).await {
                    tracing::error!(%error, "could not store a response");
                }
            })
        }))
    }
}

impl StreamFormat for ResponseReply {
    fn start(&self) -> String {
        let response = self.object("in_progress", Vec::new(), None);
        self.event("response.created", json!({ "response": response }))
            + &self.event("response.in_progress", json!({ "response": response }))
    }

    fn text(&self, text: &str) -> String {
        let mut events = String::new();
        let opened = {
            let mut progress = self.lock();
            if progress.message.is_none() {
                progress.message = Some(progress.items);
                progress.items += 1;
                true
            } else {
                false
            }
        };
        let index = self.lock().message.unwrap_or_default();
        let item_id = self.message_id();
        if opened {
            events += &self.event(
                "response.output_item.added",
                json!({ "output_index": index, "item": self.message_item("", "in_progress") }),
            );
            events += &self.event(
                "response.content_part.added",
                json!({
                    "item_id": item_id, "output_index": index, "content_index": 0,
                    "part": { "type": "output_text", "text": "", "annotations": [], "logprobs": [] },
                }),
            );
        }
        self.lock().text.push_str(text);
        events
            + &self.event(
                "response.output_text.delta",
                json!({
                    "item_id": item_id, "output_index": index, "content_index": 0,
                    "delta": text, "logprobs": [],
                }),
            )
    }

    fn tool_call_start(&self, _: usize, id: &str, name: &str) -> String {
        let closed = self.close_message();
        let index = {
            let mut progress = self.lock();
            let index = progress.items;
            progress.items += 1;
            progress.calls.push((id.to_string(), index, String::new()));
            index
        };
        closed
            + &self.event(
                "response.output_item.added",
                json!({ "output_index": index, "item": Self::call_item(id, name, "", "in_progress") }),
            )
    }

    fn tool_call_arguments(&self, index: usize, fragment: &str) -> String {
        let (call_id, output_index) = {
            let mut progress = self.lock();
            let Some(call) = progress.calls.get_mut(index) else {
                return String::new();
            };
            call.2.push_str(fragment);
            (call.0.clone(), call.1)
        };
        self.event(
            "response.function_call_arguments.delta",
            json!({ "item_id": format!("fc_{call_id}"), "output_index": output_index, "delta": fragment }),
        )
    }

    fn done(&self, completion: &Completion) -> String {
        let mut events = self.close_message();
        let opened = std::mem::take(&mut self.lock().calls);
        for (call_id, output_index, _) in opened {
            let Some(call) = completion.tool_calls.iter().find(|c| c.id == call_id) else {
                continue;
            };
            let arguments = call.arguments.to_string();
            events += &self.event(
                "response.function_call_arguments.done",
                json!({ "item_id": format!("fc_{call_id}"), "output_index": output_index, "arguments": arguments }),
            );
            events += &self.event(
                "response.output_item.done",
                json!({
                    "output_index": output_index,
                    "item": Self::call_item(&call.id, &call.name, &arguments, "completed"),
                }),
            );
        }
        let response = self.finish(completion);
        let kind = match response["status"].as_str() {
            Some("incomplete") => "response.incomplete",
            _ => "response.completed",
        };
        events + &self.event(kind, json!({ "response": response }))
    }

    fn error(&self, error: &ApiError) -> String {
        openai_stream_error_event(error)
    }

    fn end(&self) -> &'static str {
        ""
    }
}
