//! Server-sent events for streamed text generation. Each piece is written as soon as the model
//! produces it, in the stream's `StreamFormat`: Workers AI's native one
//! (`data: {"response": "..."}` per piece, a last event with `usage`) or OpenAI's chunks; then
//! `data: [DONE]` where the format has it. An error after the headers went out becomes one `event: error` and the stream
//! ends.

use crate::aborted;
use crate::error::{ApiError, stream_error_event};
use crate::wire::tools::native_call;
use axum::body::{Body, Bytes};
use ember_core::InferError;
use ember_core::runner::TextEvent;
use ember_core::tasks::{Completion, Usage};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use std::convert::Infallible;
use tokio::sync::{mpsc, watch};

/// How a stream ended, for the request log: usage when it finished, the error otherwise.
pub type StreamOutcome = Result<Usage, ApiError>;

/// How a stream's events are written.
pub trait StreamFormat: Send + 'static {
    /// Events written before the first one of the generation.
    fn start(&self) -> String;
    /// The event for one piece of text.
    fn text(&self, text: &str) -> String;
    /// The event announcing a tool call (its id and name).
    fn tool_call_start(&self, index: usize, id: &str, name: &str) -> String;
    /// The event for a piece of a tool call's arguments.
    fn tool_call_arguments(&self, index: usize, fragment: &str) -> String;
    /// The events that end a finished generation, before `data: [DONE]`.
    fn done(&self, completion: &Completion) -> String;
    /// The event that ends a failed generation.
    fn error(&self, error: &ApiError) -> String;
    /// What follows `done`'s events: `data: [DONE]` for Workers AI and OpenAI's chat; formats
    /// whose last event says it all (Responses, Anthropic) send nothing.
    fn end(&self) -> &'static str {
        "data: [DONE]\n\n"
    }
}

/// Workers AI's native events.
pub struct Native;

impl StreamFormat for Native {
    fn start(&self) -> String {
        String::new()
    }

    fn text(&self, text: &str) -> String {
        data(&json!({ "response": text }))
    }

    // Native streams carry whole calls, in one event at the end.
    fn tool_call_start(&self, _: usize, _: &str, _: &str) -> String {
        String::new()
    }

    fn tool_call_arguments(&self, _: usize, _: &str) -> String {
        String::new()
    }

    fn done(&self, completion: &Completion) -> String {
        let mut events = String::new();
        if !completion.tool_calls.is_empty() {
            let calls: Vec<Value> = completion.tool_calls.iter().map(native_call).collect();
            events.push_str(&data(&json!({ "response": "", "tool_calls": calls })));
        }
        events + &data(&json!({ "response": "", "usage": completion.usage }))
    }

    fn error(&self, error: &ApiError) -> String {
        stream_error_event(error)
    }
}

/// What runs when a stream ends (the request's settlement).
pub type EndFuture = BoxFuture<'static, ()>;

/// Runs its callback exactly once: awaited when the stream ends, before the last bytes go out,
/// or, if the client left, spawned with `Aborted`.
struct OnEnd<F: FnOnce(StreamOutcome) -> EndFuture>(Option<F>);

impl<F: FnOnce(StreamOutcome) -> EndFuture> OnEnd<F> {
    async fn fire(&mut self, outcome: StreamOutcome) {
        if let Some(callback) = self.0.take() {
            callback(outcome).await;
        }
    }
}

impl<F: FnOnce(StreamOutcome) -> EndFuture> Drop for OnEnd<F> {
    fn drop(&mut self) {
        if let Some(callback) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(callback(Err(ApiError::Infer(InferError::Aborted))));
        }
    }
}

struct Streaming<S: StreamFormat, F: FnOnce(StreamOutcome) -> EndFuture> {
    first: Option<TextEvent>,
    events: mpsc::Receiver<TextEvent>,
    abort: watch::Receiver<bool>,
    format: S,
    on_end: OnEnd<F>,
}

/// The SSE body for a generation whose first event (`first`) has already arrived.
pub fn text_stream<S, F>(
    first: TextEvent,
    events: mpsc::Receiver<TextEvent>,
    abort: watch::Receiver<bool>,
    format: S,
    on_end: F,
) -> Body
where
    S: StreamFormat,
    F: FnOnce(StreamOutcome) -> EndFuture + Send + 'static,
{
    let state = Some(Streaming {
        first: Some(first),
        events,
        abort,
        format,
        on_end: OnEnd(Some(on_end)),
    });
    let stream = futures::stream::unfold(state, |state| async move {
        let mut s = state?;
        let (start, event) = match s.first.take() {
            Some(event) => (s.format.start(), Some(event)),
            None => (
                String::new(),
                tokio::select! {
                    event = s.events.recv() => event,
                    _ = aborted(s.abort.clone()) => None,
                },
            ),
        };
        let (bytes, next) = match event {
            Some(TextEvent::Text(text)) => (s.format.text(&text), Some(s)),
            Some(TextEvent::ToolCallStart { index, id, name }) => {
                (s.format.tool_call_start(index, &id, &name), Some(s))
            }
            Some(TextEvent::ToolCallArguments { index, fragment }) => {
                (s.format.tool_call_arguments(index, &fragment), Some(s))
            }
            Some(TextEvent::Done(completion)) => {
                let last = s.format.done(&completion);
                s.on_end.fire(Ok(completion.usage)).await;
                (last + s.format.end(), None)
            }
            Some(TextEvent::Failed(error)) => {
                let error = ApiError::Infer(error);
                let bytes = s.format.error(&error);
                s.on_end.fire(Err(error)).await;
                (bytes, None)
            }
            None => {
                let error = ApiError::Infer(InferError::Aborted);
                let bytes = s.format.error(&error);
                s.on_end.fire(Err(error)).await;
                (bytes, None)
            }
        };
        Some((Ok::<_, Infallible>(Bytes::from(start + &bytes)), next))
    });
    Body::from_stream(stream)
}

/// One `data:` event.
pub fn data(value: &Value) -> String {
    format!("data: {value}\n\n")
}
