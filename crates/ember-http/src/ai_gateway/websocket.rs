//! AI Gateway's non-realtime WebSockets API: a WebSocket opened on the universal endpoint
//! (`/v1/{account}/{gateway}`) takes `{"type": "universal.create", "request": {eventId, provider,
//! endpoint, headers, query}}` messages. Each is run as a universal request of that one step,
//! through the same gateway as an HTTP one (cache, logs, guardrails, retries), one after another.
//! A whole answer comes back as `{"type": "universal.created", "metadata": {...}, "response":
//! ...}`, as Cloudflare documents; a streamed one as a `universal.stream` message per event (its
//! `response` the event's JSON) and a closing `universal.done`, both with the same `metadata`.
//! A message that is not a `universal.create` gets `{"type": "error", "error": {code, message}}`
//! (Ember's: Cloudflare documents no error message).

use super::handle_boxed;
use crate::RequestId;
use crate::error::ApiError;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::extract::ws::{Message, WebSocket};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::response::Response;
use ember_core::InferError;
use futures::StreamExt;
use serde_json::{Value, json};
use std::convert::Infallible;
use tower::Service;

/// Whether a request asks to open a WebSocket.
pub(super) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Answers a connection's messages until the client closes it. `parts` is the opening request's
/// (its path, caller and headers), which every message's request copies.
pub(super) async fn serve<S>(mut socket: WebSocket, state: crate::AppState, routes: S, parts: Parts)
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    while let Some(Ok(message)) = socket.recv().await {
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => break,
            _ => continue,
        };
        let sent = match request_of(&parts, text.as_str()) {
            Ok((event_id, request)) => {
                let response = handle_boxed(state.clone(), routes.clone(), request).await;
                relay(&mut socket, response, event_id).await
            }
            Err(error) => send(&mut socket, error_message(&error)).await,
        };
        if sent.is_err() {
            return;
        }
    }
}

async fn send(socket: &mut WebSocket, message: Value) -> Result<(), axum::Error> {
    socket.send(Message::Text(message.to_string().into())).await
}

/// The universal request a `universal.create` message makes, with its `eventId`.
fn request_of(opening: &Parts, text: &str) -> Result<(Option<Value>, Request), ApiError> {
    let invalid = |field: &str, message: &str| ApiError::Infer(InferError::invalid(field, message));
    let message: Value =
        serde_json::from_str(text).map_err(|_| invalid("/", "the message must be JSON"))?;
    if message.get("type").and_then(Value::as_str) != Some("universal.create") {
        return Err(invalid("/type", "must be \"universal.create\""));
    }
    let Some(step) = message.get("request").filter(|r| r.is_object()) else {
        return Err(invalid("/request", "must be a universal request step"));
    };
    let event_id = step.get("eventId").cloned();
    let mut parts = opening.clone();
    parts.method = Method::POST;
    for name in [
        "connection",
        "upgrade",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
    ] {
        parts.headers.remove(name);
    }
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if let Some(id) = event_id.as_ref().and_then(Value::as_str)
        && let Ok(value) = header::HeaderValue::from_str(id)
    {
        parts.headers.insert("cf-aig-event-id", value);
    }
    // Each message is a request of its own in the request log.
    parts.extensions.insert(RequestId {
        id: uuid::Uuid::new_v4().to_string(),
        report: Default::default(),
    });
    let body = Bytes::from(json!([step]).to_string());
    Ok((event_id, Request::from_parts(parts, Body::from(body))))
}

/// Sends a response on: one `universal.created`, or a stream's events as they come and then
/// `universal.done`.
async fn relay(
    socket: &mut WebSocket,
    response: Response,
    event_id: Option<Value>,
) -> Result<(), axum::Error> {
    let headers = response.headers();
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let content_type = text(header::CONTENT_TYPE.as_str()).unwrap_or_default();
    let streamed = content_type.starts_with("text/event-stream");
    let metadata = json!({
        "cacheStatus": text("cf-aig-cache-status").unwrap_or("MISS"),
        "eventId": event_id,
        "logId": text("cf-aig-log-id"),
        "step": text("cf-aig-step").unwrap_or("0"),
        "contentType": content_type,
    });
    let body = response.into_body();
    if !streamed {
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        let response = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        let created =
            json!({"type": "universal.created", "metadata": metadata, "response": response});
        return send(socket, created).await;
    }
    let mut pending = String::new();
    let mut chunks = body.into_data_stream();
    while let Some(Ok(chunk)) = chunks.next().await {
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let data: Vec<&str> = event
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(str::trim)
                .collect();
            if let Ok(response) = serde_json::from_str::<Value>(&data.join("\n")) {
                let event =
                    json!({"type": "universal.stream", "metadata": metadata, "response": response});
                send(socket, event).await?;
            }
        }
    }
    send(
        socket,
        json!({"type": "universal.done", "metadata": metadata}),
    )
    .await
}

fn error_message(error: &ApiError) -> Value {
    json!({"type": "error", "error": {"code": error.kind().code, "message": error.message()}})
}
