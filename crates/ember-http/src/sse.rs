//! Server-sent events for streamed text generation, in Workers AI's native format:
//! `data: {"response": "..."}` per piece, a last event with `usage`, then `data: [DONE]`.
//! Each piece is written as soon as the model produces it. An error after the headers went out
//! becomes one `event: error` and the stream ends.

use crate::aborted;
use crate::error::{ApiError, stream_error_event};
use axum::body::{Body, Bytes};
use ember_core::InferError;
use ember_core::runner::TextEvent;
use ember_core::tasks::Usage;
use serde_json::json;
use std::convert::Infallible;
use tokio::sync::{mpsc, watch};

/// How a stream ended, for the request log: usage when it finished, the error otherwise.
pub type StreamOutcome = Result<Usage, ApiError>;

/// Calls its callback exactly once: when the stream ends, or with `Aborted` if the client left.
struct OnEnd<F: FnOnce(StreamOutcome)>(Option<F>);

impl<F: FnOnce(StreamOutcome)> OnEnd<F> {
    fn fire(&mut self, outcome: StreamOutcome) {
        if let Some(callback) = self.0.take() {
            callback(outcome);
        }
    }
}

impl<F: FnOnce(StreamOutcome)> Drop for OnEnd<F> {
    fn drop(&mut self) {
        self.fire(Err(ApiError::Infer(InferError::Aborted)));
    }
}

struct Streaming<F: FnOnce(StreamOutcome)> {
    first: Option<TextEvent>,
    events: mpsc::Receiver<TextEvent>,
    abort: watch::Receiver<bool>,
    on_end: OnEnd<F>,
}

/// The SSE body for a generation whose first event (`first`) has already arrived.
pub fn text_stream<F>(
    first: TextEvent,
    events: mpsc::Receiver<TextEvent>,
    abort: watch::Receiver<bool>,
    on_end: F,
) -> Body
where
    F: FnOnce(StreamOutcome) + Send + 'static,
{
    let state = Some(Streaming {
        first: Some(first),
        events,
        abort,
        on_end: OnEnd(Some(on_end)),
    });
    let stream = futures::stream::unfold(state, |state| async move {
        let mut s = state?;
        let event = match s.first.take() {
            Some(event) => Some(event),
            None => tokio::select! {
                event = s.events.recv() => event,
                _ = aborted(s.abort.clone()) => None,
            },
        };
        let (bytes, next) = match event {
            Some(TextEvent::Text(text)) => (data(&json!({ "response": text })), Some(s)),
            Some(TextEvent::Done(completion)) => {
                let last = data(&json!({ "response": "", "usage": completion.usage }));
                s.on_end.fire(Ok(completion.usage));
                (format!("{last}data: [DONE]\n\n"), None)
            }
            Some(TextEvent::Failed(error)) => {
                let error = ApiError::Infer(error);
                let bytes = stream_error_event(&error);
                s.on_end.fire(Err(error));
                (bytes, None)
            }
            None => {
                let error = ApiError::Infer(InferError::Aborted);
                let bytes = stream_error_event(&error);
                s.on_end.fire(Err(error));
                (bytes, None)
            }
        };
        Some((Ok::<_, Infallible>(Bytes::from(bytes)), next))
    });
    Body::from_stream(stream)
}

fn data(value: &serde_json::Value) -> String {
    format!("data: {value}\n\n")
}
