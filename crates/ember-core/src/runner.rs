//! What engines implement: a `TextGenerator` (an engine with its own scheduler thread, fed
//! admitted requests) and a `Runner` (any other task's engine, run on the model's worker thread),
//! plus the worker thread that owns such a model.
//!
//! Invariant: a worker model lives on exactly one named OS thread, fed by a bounded queue of jobs
//! that carry their own reply channel. Async code never touches the model; a job whose caller has
//! gone (reply channel closed) is skipped. A panic inside the engine is caught on that thread: the
//! caller gets an internal error, the thread ends and the handle reports the model dead, so the
//! next request loads it afresh (`Ember::model`).

use crate::InferError;
use crate::admission::{Admission, Ticket};
use crate::tasks::{Completion, TaskOutput, TaskRequest, TextGenerationRequest};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use tokio::sync::{mpsc, oneshot};

/// Jobs waiting for a worker model beyond the one it is running; more are refused with
/// `Overloaded`.
pub const QUEUE_DEPTH: usize = 64;
/// Streamed events buffered per request; a client that falls this far behind pauses its own
/// sequence (never the others).
pub const STREAM_BUFFER: usize = 64;

/// A text generation engine: schedules many sequences on one loaded model.
pub trait TextGenerator: Send + Sync {
    /// The engine's sequence slots; a request holds a ticket from here before `start`.
    fn admission(&self) -> &Admission;

    /// Prepares the prompt (template, tokens, grammar: CPU work, so callers run it off the async
    /// runtime) and hands the request to the engine. Its text arrives on the returned channel,
    /// ending with `Done` or `Failed`; dropping the receiver cancels it within one step.
    /// `session` (`x-session-affinity`) keeps the conversation's prefix cache entries longest.
    fn start(
        &self,
        request: TextGenerationRequest,
        session: Option<String>,
        ticket: Ticket,
    ) -> Result<mpsc::Receiver<TextEvent>, InferError>;

    /// Bytes the loaded model holds (weights and caches), for the memory budget.
    fn memory_bytes(&self) -> u64;

    /// False once the engine's thread has ended (it panicked); the model must be loaded again.
    fn is_alive(&self) -> bool;
}

/// A loaded model, ready to serve its task.
#[derive(Clone)]
pub enum LoadedModel {
    TextGeneration(Arc<dyn TextGenerator>),
    Worker(ModelWorker),
}

impl LoadedModel {
    /// True while requests are running or waiting on the model.
    pub fn is_busy(&self) -> bool {
        match self {
            LoadedModel::TextGeneration(generator) => generator.admission().in_flight() > 0,
            LoadedModel::Worker(worker) => worker.is_busy(),
        }
    }

    pub fn memory_bytes(&self) -> u64 {
        match self {
            LoadedModel::TextGeneration(generator) => generator.memory_bytes(),
            LoadedModel::Worker(worker) => worker.memory_bytes,
        }
    }

    /// False once the model's thread has died; it takes no more work.
    pub fn is_alive(&self) -> bool {
        match self {
            LoadedModel::TextGeneration(generator) => generator.is_alive(),
            LoadedModel::Worker(worker) => worker.alive.load(Ordering::SeqCst),
        }
    }
}

/// An engine for every task but text generation, on the model's thread: one request at a time, or
/// (`run_together`) the requests that waited while it ran, at once.
pub trait Runner {
    /// Runs a validated request of the model's task. A request of another task is a bug of the
    /// caller (`InferError::Internal`).
    fn run(&mut self, request: TaskRequest) -> Result<TaskOutput, InferError>;

    /// `run`, for engines whose runs are long enough (image generation) to stop part-way once
    /// the caller has gone (a closed client, a timeout): they check `caller_gone` between steps.
    fn run_until(
        &mut self,
        request: TaskRequest,
        caller_gone: &dyn Fn() -> bool,
    ) -> Result<TaskOutput, InferError> {
        let _ = caller_gone;
        self.run(request)
    }

    /// How many waiting requests `run_together` takes at once; 1 runs each alone.
    fn batch_size(&self) -> usize {
        1
    }

    /// Runs requests that were waiting together (at most `batch_size`), in one pass where the
    /// engine can, and answers each, in order.
    fn run_together(&mut self, requests: Vec<TaskRequest>) -> Vec<Result<TaskOutput, InferError>> {
        requests
            .into_iter()
            .map(|request| self.run(request))
            .collect()
    }
}

/// One event of a streamed generation.
#[derive(Debug, Clone, PartialEq)]
pub enum TextEvent {
    Text(String),
    /// The model began a tool call: its name is known, its arguments follow in fragments.
    ToolCallStart {
        index: usize,
        id: String,
        name: String,
    },
    /// The next piece of a call's arguments (the pieces together are the arguments' JSON).
    ToolCallArguments {
        index: usize,
        fragment: String,
    },
    Done(Completion),
    Failed(InferError),
}

impl TextEvent {
    /// The events of a generation that is over already: its whole text, then `Done`.
    pub fn finished(completion: Completion) -> mpsc::Receiver<TextEvent> {
        let (sender, receiver) = mpsc::channel(2);
        let _ = sender.try_send(TextEvent::Text(completion.text.clone()));
        let _ = sender.try_send(TextEvent::Done(completion));
        receiver
    }
}

struct Job {
    request: TaskRequest,
    reply: oneshot::Sender<Result<TaskOutput, InferError>>,
}

/// A handle to a worker model's thread. Cheap to clone; the thread ends when the last handle
/// drops, or when the engine panics.
#[derive(Clone)]
pub struct ModelWorker {
    jobs: std_mpsc::SyncSender<Job>,
    /// Jobs queued or running.
    pending: Arc<AtomicUsize>,
    alive: Arc<AtomicBool>,
    memory_bytes: u64,
}

impl ModelWorker {
    /// Starts a thread that builds a runner with `build` and then serves jobs. Returns once the
    /// model has loaded, or with the load error. `memory_bytes` is what the model holds, for the
    /// memory budget.
    pub fn start<F, R>(name: &str, memory_bytes: u64, build: F) -> Result<ModelWorker, InferError>
    where
        F: FnOnce() -> Result<R, InferError> + Send + 'static,
        R: Runner + 'static,
    {
        let (jobs, queue) = std_mpsc::sync_channel::<Job>(QUEUE_DEPTH);
        let (ready_tx, ready_rx) = std_mpsc::sync_channel::<Result<(), InferError>>(1);
        let pending = Arc::new(AtomicUsize::new(0));
        let alive = Arc::new(AtomicBool::new(true));
        let (pending_in_thread, alive_in_thread) = (pending.clone(), alive.clone());
        let thread_name = format!("model {name}");
        std::thread::Builder::new()
            .name(thread_name.clone())
            .spawn(move || {
                let built = catch_unwind(AssertUnwindSafe(build))
                    .unwrap_or_else(|panic| Err(panicked(&thread_name, &*panic)));
                let mut runner = match built {
                    Ok(runner) => {
                        let _ = ready_tx.send(Ok(()));
                        runner
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                while let Ok(job) = queue.recv() {
                    // The jobs that queued while the last ran go together, as the runner allows;
                    // those whose caller left are dropped.
                    let mut jobs = vec![job];
                    while jobs.len() < runner.batch_size() {
                        match queue.try_recv() {
                            Ok(job) => jobs.push(job),
                            Err(_) => break,
                        }
                    }
                    let count = jobs.len();
                    let (requests, replies): (Vec<_>, Vec<_>) = jobs
                        .into_iter()
                        .filter(|job| !job.reply.is_closed())
                        .map(|job| (job.request, job.reply))
                        .unzip();
                    let results = catch_unwind(AssertUnwindSafe(|| {
                        run_jobs(&mut runner, requests, &replies)
                    }));
                    let failed = results.is_err();
                    match results {
                        Ok(results) => {
                            for (reply, result) in replies.into_iter().zip(results) {
                                let _ = reply.send(result);
                            }
                        }
                        Err(panic) => {
                            // The runner's state is unknown after a panic: stop serving it.
                            alive_in_thread.store(false, Ordering::SeqCst);
                            let error = panicked(&thread_name, &*panic);
                            for reply in replies {
                                let _ = reply.send(Err(error.clone()));
                            }
                        }
                    }
                    pending_in_thread.fetch_sub(count, Ordering::SeqCst);
                    if failed {
                        return;
                    }
                }
            })
            .map_err(|e| InferError::Internal(format!("cannot start model thread: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| InferError::Internal("model thread died while loading".into()))??;
        Ok(ModelWorker {
            jobs,
            pending,
            alive,
            memory_bytes,
        })
    }

    fn is_busy(&self) -> bool {
        self.pending.load(Ordering::SeqCst) > 0
    }

    /// Queues a job and waits for its result.
    pub async fn run(&self, request: TaskRequest) -> Result<TaskOutput, InferError> {
        let (reply, result) = oneshot::channel();
        self.pending.fetch_add(1, Ordering::SeqCst);
        if let Err(error) = self.jobs.try_send(Job { request, reply }) {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            return Err(match error {
                std_mpsc::TrySendError::Full(_) => InferError::Overloaded,
                std_mpsc::TrySendError::Disconnected(_) => {
                    InferError::Internal("model thread stopped".into())
                }
            });
        }
        result
            .await
            .map_err(|_| InferError::Internal("model thread stopped".into()))?
    }
}

/// Runs the requests of the jobs `replies` answer: one alone, stopped if its caller leaves, or
/// several together.
fn run_jobs<R: Runner>(
    runner: &mut R,
    mut requests: Vec<TaskRequest>,
    replies: &[oneshot::Sender<Result<TaskOutput, InferError>>],
) -> Vec<Result<TaskOutput, InferError>> {
    if requests.len() > 1 {
        return runner.run_together(requests);
    }
    let caller_gone = || replies.iter().all(|reply| reply.is_closed());
    requests
        .pop()
        .map(|request| runner.run_until(request, &caller_gone))
        .into_iter()
        .collect()
}

/// The error a caller gets for a panic on a model's thread; the panic's message goes to the log.
fn panicked(thread: &str, panic: &(dyn std::any::Any + Send)) -> InferError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(
        thread,
        message,
        "engine panicked; the model will be loaded again"
    );
    InferError::Internal(format!("{thread} panicked: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::{EmbeddingsOutput, EmbeddingsRequest, Pooling};
    use std::sync::Mutex;

    /// Echoes each text's length; a text "slow" holds the thread for a while. Records how many
    /// requests each pass took.
    struct Echo {
        passes: Arc<Mutex<Vec<usize>>>,
    }

    fn texts(request: TaskRequest) -> Vec<String> {
        match request {
            TaskRequest::TextEmbeddings(request) => request.texts,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn answer(texts: Vec<String>) -> Result<TaskOutput, InferError> {
        if texts.iter().any(|t| t == "slow") {
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        Ok(TaskOutput::TextEmbeddings(EmbeddingsOutput {
            vectors: texts.iter().map(|t| vec![t.len() as f32]).collect(),
            token_counts: vec![1; texts.len()],
            pooling: Pooling::Mean,
        }))
    }

    impl Runner for Echo {
        fn run(&mut self, request: TaskRequest) -> Result<TaskOutput, InferError> {
            self.passes.lock().unwrap().push(1);
            answer(texts(request))
        }

        fn batch_size(&self) -> usize {
            4
        }

        fn run_together(
            &mut self,
            requests: Vec<TaskRequest>,
        ) -> Vec<Result<TaskOutput, InferError>> {
            self.passes.lock().unwrap().push(requests.len());
            requests.into_iter().map(|r| answer(texts(r))).collect()
        }
    }

    fn request(text: &str) -> TaskRequest {
        TaskRequest::TextEmbeddings(EmbeddingsRequest {
            texts: vec![text.into()],
            pooling: Pooling::Mean,
        })
    }

    #[tokio::test]
    async fn requests_that_wait_together_run_together_up_to_the_batch_size() {
        let passes = Arc::new(Mutex::new(Vec::new()));
        let recorded = passes.clone();
        let worker = ModelWorker::start("echo", 0, move || Ok(Echo { passes })).unwrap();
        let slow = tokio::spawn({
            let worker = worker.clone();
            async move { worker.run(request("slow")).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        // Six arrive while the slow one runs: four go in the next pass, two in the one after.
        let waiting: Vec<_> = ["a", "bb", "ccc", "dddd", "eeeee", "ffffff"]
            .into_iter()
            .map(|text| {
                let worker = worker.clone();
                tokio::spawn(async move { worker.run(request(text)).await })
            })
            .collect();
        assert!(slow.await.unwrap().is_ok());
        for (i, answer) in waiting.into_iter().enumerate() {
            let Ok(TaskOutput::TextEmbeddings(output)) = answer.await.unwrap() else {
                panic!("request {i} failed");
            };
            assert_eq!(
                output.vectors,
                vec![vec![(i + 1) as f32]],
                "request {i}'s own answer"
            );
        }
        assert_eq!(*recorded.lock().unwrap(), vec![1, 4, 2]);
        assert!(!worker.is_busy());
    }
}
