//! The async batch API (`queueRequest`): a run asked with `?queueRequest=true` (REST) or
//! `{queueRequest: true}` (binding options) either submits `{requests: [...]}`, kept in the
//! store's `BatchQueue` and answered `{status: "queued", request_id, model}` at once, or polls
//! `{request_id}`, answered with the batch's status until its `{responses, usage}` are ready. The
//! processor (`processor::process`) runs the queued requests in the background.
//!
//! Invariants: interactive requests come first (while any is in flight, batch requests wait and
//! those running give way, except one every `BatchSettings::max_pause`; otherwise up to
//! `BatchSettings::concurrency` run); a request of a batch is stored with its result and its
//! charge in one transaction, once (see `ember_store::BatchQueue`); a run that did not end
//! (shutdown, gave way, no free slot) stores nothing and runs again.

mod processor;

pub use processor::process;

use crate::error::ApiError;
use crate::run::{Call, Form, rest_result};
use crate::wire;
use axum::response::{IntoResponse, Response};
use ember_core::InferError;
use ember_core::catalog::Task;
use ember_store::{BatchStatus, NewBatch, NewBatchRequest};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// How the batch queue runs.
#[derive(Debug, Clone)]
pub struct BatchSettings {
    /// Batch requests run at once while no interactive request is in flight.
    pub concurrency: usize,
    /// While interactive requests keep coming, batches wait; but never longer than this between
    /// two batch requests, so that a busy server still finishes its batches.
    pub max_pause: Duration,
    /// Requests the queue holds not yet run, all batches together; a batch that would pass it
    /// is refused with 429.
    pub max_pending: u64,
    /// How long a finished batch's results can be fetched.
    pub keep_results: Duration,
}

impl Default for BatchSettings {
    fn default() -> BatchSettings {
        BatchSettings {
            concurrency: 8,
            max_pause: Duration::from_secs(60),
            max_pending: 100_000,
            keep_results: Duration::from_secs(24 * 3_600),
        }
    }
}

/// The server's side of the queue: its settings, the count of interactive requests in flight
/// and the processor's wake-up.
#[derive(Default)]
pub struct Batches {
    pub settings: BatchSettings,
    interactive: AtomicUsize,
    wake: Notify,
    /// False while the processor has nothing to run and found the queue empty: interactive
    /// requests then start and end without waking it (its own timer still looks now and then).
    active: AtomicBool,
}

impl Batches {
    pub fn new(settings: BatchSettings) -> Batches {
        Batches {
            settings,
            ..Batches::default()
        }
    }

    /// Counts an interactive request as in flight until the guard drops.
    pub(crate) fn interactive(self: &Arc<Batches>) -> Interactive {
        if self.interactive.fetch_add(1, Ordering::SeqCst) == 0 {
            // The first one: the processor makes room for it.
            self.wake_if_active();
        }
        Interactive(self.clone())
    }

    /// Wakes the processor: the queue has new work.
    fn wake(&self) {
        self.set_active(true);
        self.wake.notify_one();
    }

    /// Whether the processor has work (runs, or a queue that may hold some), so that interactive
    /// requests must wake it.
    fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::SeqCst);
    }

    fn wake_if_active(&self) {
        if self.active.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    fn is_busy(&self) -> bool {
        self.interactive.load(Ordering::SeqCst) > 0
    }
}

/// An interactive request in flight (see `Batches::interactive`).
pub(crate) struct Interactive(Arc<Batches>);

impl Drop for Interactive {
    fn drop(&mut self) {
        if self.0.interactive.fetch_sub(1, Ordering::SeqCst) == 1 {
            // The last one ended: the processor may start more.
            self.0.wake_if_active();
        }
    }
}

/// Whether the run's options queue it: `queueRequest` set to true (JSON or query text).
pub(crate) fn is_queued(query: Option<&str>, options: Option<&Value>) -> bool {
    let in_query = query.is_some_and(|q| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(q).is_ok_and(|pairs| {
            pairs
                .iter()
                .any(|(k, v)| k == "queueRequest" && v == "true")
        })
    });
    let in_options = options
        .and_then(|o| o.get("queueRequest"))
        .is_some_and(|v| v == &Value::Bool(true) || v == "true");
    in_query || in_options
}

/// Answers a queued run: submits `{requests}` or polls `{request_id}` on `call.model`.
pub(crate) async fn submit_or_poll(call: Call, input: Value, input_bytes: usize) -> Response {
    let outcome = if input.get("request_id").is_some() {
        poll(&call, &input).await
    } else {
        submit(&call, input, input_bytes).await
    };
    match outcome {
        Ok(result) => {
            // The batch's requests are charged as they run.
            call.ran_nothing();
            match call.form {
                Form::Rest => rest_result(result),
                _ => axum::Json(result).into_response(),
            }
        }
        Err(error) => call.fail(error),
    }
}

async fn submit(call: &Call, input: Value, input_bytes: usize) -> Result<Value, ApiError> {
    let state = &call.state;
    // Workers AI takes batches under 10 MB, whatever the server's own body limit.
    if input_bytes >= crate::MAX_BODY_BYTES {
        return Err(InferError::TooLarge.into());
    }
    let target = state.ember.target(&call.model)?;
    if matches!(target.served.task, Task::TextToImage | Task::TextToSpeech) {
        return Err(InferError::invalid(
            "/requests",
            format!(
                "{} answers binary data, which async batches do not carry",
                call.model
            ),
        )
        .into());
    }
    let Some(Value::Array(items)) = input.get("requests") else {
        return Err(InferError::invalid(
            "/requests",
            "a queued run takes {\"requests\": [...]} to submit, or {\"request_id\"} to poll",
        )
        .into());
    };
    if items.is_empty() {
        return Err(InferError::invalid("/requests", "the batch has no requests").into());
    }
    let mut requests = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        // Checked now, so a malformed request fails its submission, not its run.
        wire::parse(wire::Incoming::new(target, item, None)).map_err(|error| match error {
            InferError::InvalidInput { field, problem } => {
                let field = format!("/requests/{index}{}", field.trim_end_matches('/'));
                InferError::InvalidInput { field, problem }
            }
            other => other,
        })?;
        let external_reference = match item.get("external_reference") {
            None | Some(Value::Null) => None,
            Some(Value::String(reference)) => Some(reference.clone()),
            Some(other) => Some(other.to_string()),
        };
        requests.push(NewBatchRequest {
            input: item.to_string(),
            external_reference,
        });
    }
    let batch = NewBatch {
        id: uuid::Uuid::new_v4().to_string(),
        account_id: call.caller.account.id.clone(),
        model: call.model.clone(),
        created_at_ms: state.access.now_ms(),
        requests,
    };
    let queue = &state.access.stores().batches;
    let max_pending = state.batches.settings.max_pending;
    if !queue.enqueue(&batch, max_pending).await.map_err(internal)? {
        return Err(InferError::Overloaded.into());
    }
    state.batches.wake();
    Ok(json!({ "status": "queued", "request_id": batch.id, "model": call.model }))
}

async fn poll(call: &Call, input: &Value) -> Result<Value, ApiError> {
    let Some(id) = input.get("request_id").and_then(Value::as_str) else {
        return Err(InferError::invalid("/request_id", "expected a string").into());
    };
    let queue = &call.state.access.stores().batches;
    // Another account's batch is as unknown as one that never was.
    let batch = queue
        .batch(id)
        .await
        .map_err(internal)?
        .filter(|batch| batch.account_id == call.caller.account.id && batch.model == call.model)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "request_id {id:?}: no batch of {} has this id (results are kept {} hours)",
                call.model,
                call.state.batches.settings.keep_results.as_secs() / 3_600
            ))
        })?;
    if batch.status != BatchStatus::Done {
        return Ok(json!({
            "status": batch.status.as_str(),
            "request_id": batch.id,
            "model": batch.model,
        }));
    }
    let items = queue.items(&batch.id).await.map_err(internal)?;
    let responses: Vec<Value> = items
        .into_iter()
        .filter_map(|item| {
            let outcome = item.outcome?;
            let result: Value = serde_json::from_str(&outcome.result).unwrap_or(Value::Null);
            Some(json!({
                "id": item.index,
                "result": result,
                "success": outcome.success,
                "external_reference": item.external_reference,
            }))
        })
        .collect();
    Ok(json!({
        "responses": responses,
        "usage": {
            "prompt_tokens": batch.prompt_tokens,
            "completion_tokens": batch.completion_tokens,
            "total_tokens": batch.prompt_tokens + batch.completion_tokens,
        },
    }))
}

fn internal(error: ember_store::StoreError) -> ApiError {
    ApiError::Infer(InferError::Internal(error.to_string()))
}
