//! The batch processor: claims queued requests while no interactive request is in flight (and
//! one every `BatchSettings::max_pause` while they keep coming), stops those it started when
//! interactive requests arrive, runs them and settles each with its result. Embedding requests of one batch run together,
//! many texts to one forward pass (what the engines batch best); every other request runs alone.

use crate::error::ApiError;
use crate::openai::RunGeneration;
use crate::{AppState, aborted, finetunes, wire};
use ember_access::{Admission, Caller};
use ember_core::catalog::{ModelSpec, Task};
use ember_core::tasks::{
    self, EmbeddingsOutput, EmbeddingsRequest, MAX_EMBEDDING_TEXTS, TaskInput, TaskOutput,
    TaskRequest, Usage,
};
use ember_core::{InferError, RunOptions, RunOutput};
use ember_store::{BatchItemResult, ClaimedItem, ItemOutcome, RequestRecord};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::task::{AbortHandle, JoinSet};

/// Embedding requests of one batch claimed to run together: many texts to one forward pass, in
/// a pass short enough that an interactive request arriving during one (it cannot be stopped)
/// waits little (32 per pass cost the streams of `ember bench batch` 1.7x their TTFT p99).
const EMBEDDING_GROUP: u32 = 8;

/// Runs the queued requests until shutdown: claims what may run now, runs each claim as its own
/// task, makes those give way when interactive requests arrive, and removes expired results now
/// and then.
pub async fn process(state: AppState) {
    let queue = state.access.stores().batches.clone();
    if let Err(error) = queue.release_stale_claims().await {
        tracing::error!(%error, "could not take back the batch requests of the last run");
    }
    let batches = state.batches.clone();
    let settings = &batches.settings;
    let mut runs = Runs::default();
    let mut last_start = Instant::now();
    let mut next_expiry = Instant::now();
    loop {
        let busy = batches.is_busy();
        if busy {
            runs.give_way(queue.as_ref()).await;
        }
        // Idle: as many as the settings allow. Busy: none, but one now and then.
        let allowed = match busy {
            false => settings.concurrency.max(1),
            true if last_start.elapsed() >= settings.max_pause => 1,
            true => 0,
        };
        let free = allowed.saturating_sub(runs.claims.len());
        if free > 0 {
            let now_ms = state.access.now_ms();
            // A claim outlives any run (its timeout), so only a dead server's claims lapse.
            let until_ms = now_ms + 2 * state.config.request_timeout.as_millis() as i64;
            // One run at a time, the load checked again before each: an interactive request
            // that arrives meanwhile finds as little as possible started.
            match queue.claim(1, None, now_ms, until_ms).await {
                Ok(items) if !items.is_empty() => {
                    let item = items.into_iter().next().expect("one item");
                    batches.set_active(true);
                    last_start = Instant::now();
                    let batch_id = item.batch_id.clone();
                    if is_embedding(&state, &item) {
                        let batch = Some(batch_id.as_str());
                        let more = queue
                            .claim(EMBEDDING_GROUP - 1, batch, now_ms, until_ms)
                            .await;
                        let mut group = vec![item];
                        group.extend(more.unwrap_or_default());
                        let indexes = group.iter().map(|item| item.index).collect();
                        runs.start(
                            &batch_id,
                            indexes,
                            !busy,
                            run_embeddings(state.clone(), group),
                        );
                    } else {
                        let indexes = vec![item.index];
                        runs.start(&batch_id, indexes, !busy, run_one(state.clone(), item));
                    }
                    if free > 1 {
                        continue;
                    }
                }
                // Nothing queued: no need to hear of interactive requests until there is.
                Ok(_) if runs.claims.is_empty() => batches.set_active(false),
                Ok(_) => {}
                Err(error) => tracing::error!(%error, "could not claim batch requests"),
            }
        }
        if Instant::now() >= next_expiry {
            let keep = settings.keep_results.as_millis() as i64;
            if let Err(error) = queue.expire(state.access.now_ms() - keep).await {
                tracing::error!(%error, "could not remove expired batches");
            }
            next_expiry = Instant::now() + Duration::from_secs(60);
        }
        tokio::select! {
            Some(ended) = runs.tasks.join_next_with_id(), if !runs.tasks.is_empty() => {
                if let Ok((id, ())) = ended {
                    runs.claims.remove(&id);
                }
            }
            _ = batches.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = aborted(state.abort.clone()) => break,
        }
    }
    // Requests cut off here have stored nothing; the next start runs them again.
    runs.tasks.shutdown().await;
}

/// The batch requests being run: one task per claim.
#[derive(Default)]
struct Runs {
    tasks: JoinSet<()>,
    claims: HashMap<tokio::task::Id, Claim>,
}

/// What one task runs: requests of one batch, and whether it gives way to interactive requests
/// (those started while none was in flight; one started while they were, to keep batches
/// moving, runs to its end).
struct Claim {
    batch_id: String,
    indexes: Vec<u32>,
    gives_way: bool,
    task: AbortHandle,
}

impl Runs {
    fn start(
        &mut self,
        batch_id: &str,
        indexes: Vec<u32>,
        gives_way: bool,
        run: impl Future<Output = ()> + Send + 'static,
    ) {
        let task = self.tasks.spawn(run);
        let claim = Claim {
            batch_id: batch_id.to_string(),
            indexes,
            gives_way,
            task,
        };
        self.claims.insert(claim.task.id(), claim);
    }

    /// Stops the runs that give way and hands their requests back to the queue. A stopped run
    /// has stored nothing (or all of a request's result and charge, which a later run then does
    /// not store again); a generation stops at its next step.
    async fn give_way(&mut self, queue: &dyn ember_store::BatchQueue) {
        let stopped: Vec<tokio::task::Id> = self
            .claims
            .iter()
            .filter(|(_, claim)| claim.gives_way)
            .map(|(id, _)| *id)
            .collect();
        for id in stopped {
            let Some(claim) = self.claims.remove(&id) else {
                continue;
            };
            claim.task.abort();
            if let Err(error) = queue.unclaim(&claim.batch_id, &claim.indexes).await {
                tracing::error!(%error, "could not hand batch requests back to the queue");
            }
        }
    }
}

fn is_embedding(state: &AppState, item: &ClaimedItem) -> bool {
    let target = state.ember.target(&item.model);
    target.is_ok_and(|target| target.served.task == Task::TextEmbeddings)
}

/// Runs one request of a batch and settles it.
async fn run_one(state: AppState, item: ClaimedItem) {
    let started = Instant::now();
    let Some(caller) = caller(&state, &item.account_id).await else {
        return;
    };
    let mut admission = None;
    let mut served_by = None;
    let outcome = run(&state, &caller, &item, &mut admission, &mut served_by).await;
    settle(&state, &item, admission, served_by, started, outcome).await;
}

/// Runs a batch request's input on its model: its result JSON and usage.
async fn run(
    state: &AppState,
    caller: &Caller,
    item: &ClaimedItem,
    admission: &mut Option<Admission>,
    served_by: &mut Option<String>,
) -> Result<(Value, Usage), ApiError> {
    let target = state.ember.target(&item.model)?;
    let input = input(item)?;
    let mut task_input = wire::parse(wire::Incoming::new(target, &input, None))?;
    let account = &caller.account.id;
    finetunes::apply_lora(state, account, &item.model, target, &input, &mut task_input).await?;
    if let TaskInput::TextGeneration(request) = &mut task_input {
        // A batch keeps whole results.
        request.stream = false;
    }
    *served_by = Some(target.requested.id.clone());
    let estimate = tasks::estimate_usage(target.requested, &task_input, item.input.len());
    *admission = Some(reserve(state, caller, estimate.neurons).await?);
    let options = options(state);
    let run = tokio::select! {
        run = state.ember.run(target, task_input, &options) => run?,
        _ = aborted(state.abort.clone()) => return Err(InferError::Aborted.into()),
    };
    *served_by = Some(run.served_by);
    match run.output {
        RunOutput::Task { output, usage } => Ok((json_result(&output)?, usage)),
        RunOutput::Completion(completion) => {
            let generation = RunGeneration::new(
                target.requested,
                &format!("{}-{}", item.batch_id, item.index),
                &item.model,
            );
            Ok((generation.result(&completion), completion.usage))
        }
        RunOutput::Stream(_) => Err(InferError::Internal("a batch request streamed".into()).into()),
    }
}

/// An embedding request of a group, admitted and waiting for its turn.
struct Admitted {
    item: ClaimedItem,
    admission: Admission,
    request: EmbeddingsRequest,
}

/// Runs a batch's embedding requests together: their texts in runs of at most
/// `MAX_EMBEDDING_TEXTS` with one pooling, each run's vectors handed back to their requests.
async fn run_embeddings(state: AppState, items: Vec<ClaimedItem>) {
    let started = Instant::now();
    let Some(caller) = caller(&state, &items[0].account_id).await else {
        return;
    };
    let mut waiting: Vec<Admitted> = Vec::new();
    for item in items {
        let mut admission = None;
        match admit_embedding(&state, &caller, &item, &mut admission).await {
            Ok(request) => waiting.push(Admitted {
                item,
                admission: admission.expect("admitted"),
                request,
            }),
            Err(error) => settle(&state, &item, admission, None, started, Err(error)).await,
        }
    }
    while !waiting.is_empty() {
        let pooling = waiting[0].request.pooling;
        let mut texts = 0;
        let size = waiting
            .iter()
            .take_while(|a| {
                texts += a.request.texts.len();
                a.request.pooling == pooling && texts <= MAX_EMBEDDING_TEXTS
            })
            .count()
            .max(1);
        let run: Vec<Admitted> = waiting.drain(..size).collect();
        run_embedding_group(&state, run, started).await;
    }
}

async fn admit_embedding(
    state: &AppState,
    caller: &Caller,
    item: &ClaimedItem,
    admission: &mut Option<Admission>,
) -> Result<EmbeddingsRequest, ApiError> {
    let target = state.ember.target(&item.model)?;
    let TaskInput::Task(TaskRequest::TextEmbeddings(request)) =
        wire::parse(wire::Incoming::new(target, &input(item)?, None))?
    else {
        return Err(InferError::Internal("an embedding model took another input".into()).into());
    };
    let estimate = tasks::estimate_usage(
        target.requested,
        &TaskInput::Task(TaskRequest::TextEmbeddings(request.clone())),
        item.input.len(),
    );
    *admission = Some(reserve(state, caller, estimate.neurons).await?);
    Ok(request)
}

/// One forward pass for the texts of `group`, then each request settled with its vectors.
async fn run_embedding_group(state: &AppState, group: Vec<Admitted>, started: Instant) {
    let request = EmbeddingsRequest {
        texts: group.iter().flat_map(|a| a.request.texts.clone()).collect(),
        pooling: group[0].request.pooling,
    };
    let (spec, output, served_by) = match embed(state, &group[0].item.model, request).await {
        Ok(ran) => ran,
        Err(error) => {
            for Admitted {
                item, admission, ..
            } in group
            {
                let error = Err(error.clone());
                settle(state, &item, Some(admission), None, started, error).await;
            }
            return;
        }
    };
    let (mut vectors, mut token_counts) =
        (output.vectors.into_iter(), output.token_counts.into_iter());
    for admitted in group {
        let n = admitted.request.texts.len();
        let part = EmbeddingsOutput {
            vectors: vectors.by_ref().take(n).collect(),
            token_counts: token_counts.by_ref().take(n).collect(),
            pooling: output.pooling,
        };
        let outcome = match part.vectors.len() == n {
            true => {
                let part = TaskOutput::TextEmbeddings(part);
                let usage = part.usage().priced(&spec.price);
                json_result(&part).map(|result| (result, usage))
            }
            false => Err(InferError::Internal(
                "the engine answered fewer vectors than texts".into(),
            )
            .into()),
        };
        let served_by = Some(served_by.clone());
        settle(
            state,
            &admitted.item,
            Some(admitted.admission),
            served_by,
            started,
            outcome,
        )
        .await;
    }
}

/// Runs one embeddings request on `model`: the model it was priced at, its output and the model
/// that served it.
async fn embed<'a>(
    state: &'a AppState,
    model: &str,
    request: EmbeddingsRequest,
) -> Result<(&'a ModelSpec, EmbeddingsOutput, String), ApiError> {
    let spec = state.ember.target(model)?.requested;
    let (request, options) = (TaskRequest::TextEmbeddings(request), options(state));
    let run = tokio::select! {
        run = state.ember.run_task(spec, request, &options) => run?,
        _ = aborted(state.abort.clone()) => return Err(InferError::Aborted.into()),
    };
    match run.output {
        TaskOutput::TextEmbeddings(output) => Ok((spec, output, run.served_by)),
        _ => Err(InferError::Internal(format!("{model} answered no embeddings")).into()),
    }
}

fn input(item: &ClaimedItem) -> Result<Value, ApiError> {
    serde_json::from_str(&item.input).map_err(|e| {
        InferError::Internal(format!("a stored batch request is not JSON: {e}")).into()
    })
}

fn options(state: &AppState) -> RunOptions {
    RunOptions {
        timeout: Some(state.config.request_timeout),
        ..RunOptions::default()
    }
}

fn json_result(output: &TaskOutput) -> Result<Value, ApiError> {
    match wire::result(output) {
        wire::Answer::Json(result) => Ok(result),
        wire::Answer::Binary { .. } => {
            Err(InferError::Internal("a batch request answered binary data".into()).into())
        }
    }
}

/// Holds the request's cost of the caller's allocation (a batch's requests are not rate
/// limited: its submission was).
async fn reserve(state: &AppState, caller: &Caller, neurons: f64) -> Result<Admission, ApiError> {
    state
        .access
        .reserve(caller, neurons)
        .await
        .map_err(|error| crate::metering::refusal(&state.access, caller, error))
}

/// The account a batch was submitted under, as it is now.
async fn caller(state: &AppState, account_id: &str) -> Option<Caller> {
    if state.access.is_open().await.unwrap_or(false) {
        return state.access.authenticate(None, None).await.ok();
    }
    match state.access.stores().accounts.account(account_id).await {
        Ok(Some(account)) => Some(Caller { account }),
        Ok(None) => {
            tracing::warn!(account_id, "a batch's account is gone; its requests wait");
            None
        }
        Err(error) => {
            tracing::error!(%error, "could not read a batch's account");
            None
        }
    }
}

/// Stores a request's result with its charge, unless the run did not end (shutdown, no free
/// slot): then nothing is written and it runs again (its claim lapses, or a restart takes it
/// back).
async fn settle(
    state: &AppState,
    item: &ClaimedItem,
    admission: Option<Admission>,
    served_by: Option<String>,
    started: Instant,
    outcome: Result<(Value, Usage), ApiError>,
) {
    let transient = matches!(
        outcome,
        Err(ApiError::Infer(
            InferError::Aborted | InferError::Overloaded
        ))
    );
    if transient {
        return;
    }
    let (usage, http_status, error_code, outcome) = match outcome {
        Ok((result, usage)) => {
            let result = result.to_string();
            (
                usage,
                200,
                None,
                ItemOutcome {
                    success: true,
                    result,
                },
            )
        }
        Err(error) => {
            let kind = error.kind();
            let errors = json!({ "errors": [{ "code": kind.code, "message": error.message() }] });
            let result = errors.to_string();
            let outcome = ItemOutcome {
                success: false,
                result,
            };
            (
                Usage::default(),
                kind.status.as_u16(),
                Some(kind.code),
                outcome,
            )
        }
    };
    let record = RequestRecord {
        id: format!("{}:{}", item.batch_id, item.index),
        created_at_ms: state.access.now_ms(),
        account_id: Some(item.account_id.clone()),
        route: "batch".into(),
        model: item.model.clone(),
        served_by,
        http_status,
        error_code,
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        neurons: usage.neurons,
        billable_neurons: 0.0,
        duration_ms: started.elapsed().as_millis() as u64,
        batch_item: Some(BatchItemResult {
            batch_id: item.batch_id.clone(),
            index: item.index,
            outcome,
        }),
    };
    // In its own task: a run that gives way while settling still settles whole (the ledger row,
    // the result and the allocation's count of it together).
    crate::metering::settle(state.access.clone(), admission, record).await;
}
