//! Anthropic's Messages API, `POST /v1/messages` (and under Workers AI's `.../ai/v1/`): text,
//! streamed events, tools (`tool_use` and `tool_result` blocks), system prompts and stop
//! sequences. A request is read as the chat it amounts to and runs on the chat path; answers,
//! events and errors take Anthropic's shapes.

use crate::error::ApiError;
use crate::openai::{self, GenerationReply, invalid};
use crate::run::{self, Call};
use crate::sse::StreamFormat;
use crate::wire::binary;
use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::Response;
use ember_core::InferError;
use ember_core::tasks::{Completion, FinishReason};
use serde_json::{Map, Value, json};
use std::sync::Mutex;

pub(crate) async fn create(mut call: Call, headers: HeaderMap, body: Body) -> Response {
    let body = match run::read_request(&mut call, body).await {
        Ok(body) => body,
        Err(error) => return call.fail(error),
    };
    let chat = match read(&body) {
        Ok(chat) => chat,
        Err(error) => return call.fail(error),
    };
    let reply = MessageReply {
        id: format!("msg_{}", call.id.replace('-', "")),
        model: call.model.clone(),
        blocks: Mutex::default(),
    };
    openai::answer_as_chat(call, &headers, &chat, locate, reply).await
}

/// `error` about the chat, naming the Messages request's field instead.
fn locate(error: ApiError) -> ApiError {
    let ApiError::Infer(InferError::InvalidInput { field, problem }) = error else {
        return error;
    };
    let field = match field.as_str() {
        "/stop" => "/stop_sequences".to_string(),
        field if field.starts_with("/tool_choice") => "/tool_choice".to_string(),
        _ => field,
    };
    ApiError::Infer(InferError::InvalidInput { field, problem })
}

/// The chat a Messages request amounts to.
fn read(body: &Value) -> Result<Value, ApiError> {
    let object = openai::as_object(body)?;
    if object.get("max_tokens").is_none_or(Value::is_null) {
        return Err(invalid("/max_tokens", "is required"));
    }
    let mut messages = Vec::new();
    match object.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => messages.push(json!({ "role": "system", "content": text })),
        Some(Value::Array(blocks)) => {
            let text = text_of(blocks, "/system")?;
            messages.push(json!({ "role": "system", "content": text }));
        }
        Some(_) => return Err(invalid("/system", "expected a string or text blocks")),
    }
    let Some(Value::Array(turns)) = object.get("messages") else {
        return Err(invalid("/messages", "is required, an array of messages"));
    };
    for (i, turn) in turns.iter().enumerate() {
        messages.extend(chat_messages(turn, &format!("/messages/{i}"))?);
    }
    let mut chat = Map::new();
    for field in [
        "model",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stream",
    ] {
        if let Some(value) = object.get(field) {
            chat.insert(field.into(), value.clone());
        }
    }
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(stops) = object.get("stop_sequences") {
        chat.insert("stop".into(), stops.clone());
    }
    if let Some(Value::Array(tools)) = object.get("tools") {
        let tools = tools
            .iter()
            .map(|tool| {
                json!({
                    "name": tool.get("name").cloned().unwrap_or(Value::Null),
                    "description": tool.get("description").cloned().unwrap_or(Value::Null),
                    "parameters": tool.get("input_schema").cloned().unwrap_or(Value::Null),
                })
            })
            .collect();
        chat.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = object.get("tool_choice").filter(|c| !c.is_null()) {
        let choice = match choice.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                json!({ "type": "function", "function": { "name": choice.get("name") } })
            }
            _ => {
                return Err(invalid(
                    "/tool_choice/type",
                    "must be one of auto, any, tool, none",
                ));
            }
        };
        chat.insert("tool_choice".into(), choice);
    }
    Ok(Value::Object(chat))
}

/// The text of text blocks.
fn text_of(blocks: &[Value], at: &str) -> Result<String, ApiError> {
    blocks
        .iter()
        .enumerate()
        .map(
            |(j, block)| match (block.get("type").and_then(Value::as_str), block.get("text")) {
                (Some("text"), Some(Value::String(text))) => Ok(text.as_str()),
                _ => Err(invalid(&format!("{at}/{j}"), "expected a text block")),
            },
        )
        .collect()
}

/// The chat messages of one Messages turn: a user turn's `tool_result` blocks become `tool`
/// messages (before its other content), an assistant turn's `tool_use` blocks its tool calls.
fn chat_messages(turn: &Value, at: &str) -> Result<Vec<Value>, ApiError> {
    let role = match turn.get("role").and_then(Value::as_str) {
        Some(role @ ("user" | "assistant")) => role,
        _ => return Err(invalid(&format!("{at}/role"), "must be user or assistant")),
    };
    let blocks = match turn.get("content") {
        Some(Value::String(text)) => return Ok(vec![json!({ "role": role, "content": text })]),
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(invalid(
                &format!("{at}/content"),
                "expected a string or content blocks",
            ));
        }
    };
    let mut results = Vec::new();
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let block_at = format!("{at}/content/{j}");
        match block.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(json!({ "type": "text", "text": block.get("text") })),
            Some("image") => parts.push(image_part(block, &block_at)?),
            Some("tool_use") if role == "assistant" => calls.push(json!({
                "id": block.get("id"),
                "type": "function",
                "function": { "name": block.get("name"), "arguments": block.get("input").cloned().unwrap_or(json!({})) },
            })),
            Some("tool_result") if role == "user" => {
                let content = match block.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(text)) => text.clone(),
                    Some(Value::Array(blocks)) => text_of(blocks, &format!("{block_at}/content"))?,
                    Some(_) => {
                        return Err(invalid(&format!("{block_at}/content"), "expected a string or text blocks"));
                    }
                };
                results.push(json!({ "role": "tool", "tool_call_id": block.get("tool_use_id"), "content": content }));
            }
            // A model's thinking, sent back by clients; these models have none to read.
            Some("thinking" | "redacted_thinking") => {}
            _ => return Err(invalid(&format!("{block_at}/type"), "unsupported content block")),
        }
    }
    let mut messages = results;
    if !parts.is_empty() || !calls.is_empty() {
        let mut message = json!({ "role": role, "content": parts });
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls);
        }
        messages.push(message);
    }
    Ok(messages)
}

/// An `image` block (`source: {type: "base64", media_type, data}`) as a chat image part.
fn image_part(block: &Value, at: &str) -> Result<Value, ApiError> {
    let source = block.get("source").unwrap_or(&Value::Null);
    match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media_type = source
                .get("media_type")
                .and_then(Value::as_str)
                .unwrap_or("image/png");
            let data = source
                .get("data")
                .and_then(Value::as_str)
                .unwrap_or_default();
            // Checked here so that the error names the block.
            binary::bytes(&json!(data), &format!("{at}/source/data")).map_err(ApiError::Infer)?;
            Ok(
                json!({ "type": "image_url", "image_url": { "url": format!("data:{media_type};base64,{data}") } }),
            )
        }
        _ => Err(invalid(
            &format!("{at}/source/type"),
            "images are sent as base64 (Ember fetches no URLs)",
        )),
    }
}

/// A Messages answer, whole or as its stream of events.
struct MessageReply {
    id: String,
    model: String,
    /// Content blocks opened while streaming: the text block's index, if open, and how many.
    blocks: Mutex<(Option<usize>, usize)>,
}

impl MessageReply {
    fn stop_reason(&self, completion: &Completion) -> (&'static str, Value) {
        match completion.finish_reason {
            FinishReason::ToolCalls => ("tool_use", Value::Null),
            FinishReason::Length => ("max_tokens", Value::Null),
            // The engine does not say whether a stop sequence or the end of the turn stopped it.
            _ => ("end_turn", Value::Null),
        }
    }

    fn event(kind: &str, data: Value) -> String {
        format!("event: {kind}\ndata: {data}\n\n")
    }

    fn open_block(&self, text: bool) -> usize {
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        let index = blocks.1;
        blocks.1 += 1;
        if text {
            blocks.0 = Some(index);
        }
        index
    }

    /// Closes the open text block, if any.
    fn close_text(&self) -> String {
        let open = self
            .blocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .take();
        open.map_or_else(String::new, |index| {
            Self::event(
                "content_block_stop",
                json!({ "type": "content_block_stop", "index": index }),
            )
        })
    }
}

impl GenerationReply for MessageReply {
    fn whole(&self, completion: &Completion) -> Value {
        let mut content = Vec::new();
        if !completion.text.is_empty() || completion.tool_calls.is_empty() {
            content.push(json!({ "type": "text", "text": completion.text }));
        }
        for call in &completion.tool_calls {
            content.push(json!({ "type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments }));
        }
        let (stop_reason, stop_sequence) = self.stop_reason(completion);
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {
                "input_tokens": completion.usage.prompt_tokens,
                "output_tokens": completion.usage.completion_tokens,
            },
        })
    }
}

impl StreamFormat for MessageReply {
    fn start(&self) -> String {
        let message = json!({
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": { "input_tokens": 0, "output_tokens": 0 },
        });
        Self::event(
            "message_start",
            json!({ "type": "message_start", "message": message }),
        ) + &Self::event("ping", json!({ "type": "ping" }))
    }

    fn text(&self, text: &str) -> String {
        let open = self.blocks.lock().unwrap_or_else(|e| e.into_inner()).0;
        let mut events = String::new();
        let index = match open {
            Some(index) => index,
            None => {
                let index = self.open_block(true);
                events += &Self::event(
                    "content_block_start",
                    json!({ "type": "content_block_start", "index": index, "content_block": { "type": "text", "text": "" } }),
                );
                index
            }
        };
        events
            + &Self::event(
                "content_block_delta",
                json!({ "type": "content_block_delta", "index": index, "delta": { "type": "text_delta", "text": text } }),
            )
    }

    fn tool_call_start(&self, _: usize, id: &str, name: &str) -> String {
        let closed = self.close_text();
        let index = self.open_block(false);
        closed
            + &Self::event(
                "content_block_start",
                json!({
                    "type": "content_block_start", "index": index,
                    "content_block": { "type": "tool_use", "id": id, "name": name, "input": {} },
                }),
            )
    }

    fn tool_call_arguments(&self, _: usize, fragment: &str) -> String {
        // The tool block is the last one opened.
        let index = self
            .blocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .saturating_sub(1);
        Self::event(
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": index, "delta": { "type": "input_json_delta", "partial_json": fragment } }),
        )
    }

    fn done(&self, completion: &Completion) -> String {
        let mut events = self.close_text();
        let opened = self.blocks.lock().unwrap_or_else(|e| e.into_inner()).1;
        // Tool blocks close at the end, their arguments complete.
        let tools = opened.saturating_sub(completion.tool_calls.len());
        for index in tools..opened {
            events += &Self::event(
                "content_block_stop",
                json!({ "type": "content_block_stop", "index": index }),
            );
        }
        let (stop_reason, stop_sequence) = self.stop_reason(completion);
        events
            + &Self::event(
                "message_delta",
                json!({
                    "type": "message_delta",
                    "delta": { "stop_reason": stop_reason, "stop_sequence": stop_sequence },
                    "usage": {
                        "input_tokens": completion.usage.prompt_tokens,
                        "output_tokens": completion.usage.completion_tokens,
                    },
                }),
            )
            + &Self::event("message_stop", json!({ "type": "message_stop" }))
    }

    fn error(&self, error: &ApiError) -> String {
        Self::event("error", error.anthropic_body())
    }

    fn end(&self) -> &'static str {
        ""
    }
}
