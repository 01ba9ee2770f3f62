//! What engines implement: a `TextGenerator` (an engine with its own scheduler thread, fed
//! admitted requests) and an `EmbeddingsRunner` (run on the model's worker thread), plus the
//! worker thread that owns an embeddings model.
//!
//! Invariant: an embeddings model lives on exactly one named OS thread, fed by a bounded queue of
//! jobs that carry their own reply channel. Async code never touches the model; a job whose caller
//! has gone (reply channel closed) is skipped.

use crate::InferError;
use crate::admission::{Admission, Ticket};
use crate::tasks::{Completion, EmbeddingsOutput, Pooling, TextGenerationRequest};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use tokio::sync::{mpsc, oneshot};

/// Embeddings jobs waiting for a model beyond the one it is running; more are refused with
/// `Overloaded`.
pub const QUEUE_DEPTH: usize = 64;
/// Streamed events buffered per request; a client that falls this far behind pauses its own
/// sequence (never the others).
pub const STREAM_BUFFER: usize = 64;

/// A text generation engine: schedules many sequences on one loaded model.
pub trait TextGenerator: Send + Sync {
    /// The engine's sequence slots; a request holds a ticket from here before `start`.
    fn admission(&self) -> &Admission;

    /// Prepares the prompt and hands the request to the engine. Its text arrives on the returned
    /// channel, ending with `Done` or `Failed`; dropping the receiver cancels it within one step.
    /// `session` (`x-session-affinity`) keeps the conversation's prefix cache entries longest.
    fn start(
        &self,
        request: TextGenerationRequest,
        session: Option<String>,
        ticket: Ticket,
    ) -> Result<mpsc::Receiver<TextEvent>, InferError>;

    /// Bytes the loaded model holds (weights and caches), for the memory budget.
    fn memory_bytes(&self) -> u64;
}

/// A loaded model, ready to serve its task.
#[derive(Clone)]
pub enum LoadedModel {
    TextGeneration(Arc<dyn TextGenerator>),
    Embeddings(ModelWorker),
}

impl LoadedModel {
    /// True while requests are running or waiting on the model.
    pub fn is_busy(&self) -> bool {
        match self {
            LoadedModel::TextGeneration(generator) => generator.admission().in_flight() > 0,
            LoadedModel::Embeddings(worker) => worker.is_busy(),
        }
    }

    pub fn memory_bytes(&self) -> u64 {
        match self {
            LoadedModel::TextGeneration(generator) => generator.memory_bytes(),
            LoadedModel::Embeddings(worker) => worker.memory_bytes,
        }
    }
}

/// A text embeddings engine. Runs on the model's thread.
pub trait EmbeddingsRunner {
    /// Embeds every text (truncated to the model's input limit) with the given pooling.
    fn embed(&mut self, texts: &[String], pooling: Pooling)
    -> Result<EmbeddingsOutput, InferError>;
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

struct EmbedJob {
    texts: Vec<String>,
    pooling: Pooling,
    reply: oneshot::Sender<Result<EmbeddingsOutput, InferError>>,
}

/// A handle to an embeddings model's worker thread. Cheap to clone; the thread ends when the last handle drops.
#[derive(Clone)]
pub struct ModelWorker {
    jobs: std_mpsc::SyncSender<EmbedJob>,
    /// Jobs queued or running.
    pending: Arc<AtomicUsize>,
    memory_bytes: u64,
}

impl ModelWorker {
    /// Starts a thread that builds an embeddings runner with `build` and then serves jobs.
    /// Returns once the model has loaded, or with the load error. `memory_bytes` is what the
    /// model holds, for the memory budget.
    pub fn embeddings<F, R>(
        name: &str,
        memory_bytes: u64,
        build: F,
    ) -> Result<ModelWorker, InferError>
    where
        F: FnOnce() -> Result<R, InferError> + Send + 'static,
        R: EmbeddingsRunner + 'static,
    {
        let (jobs, queue) = std_mpsc::sync_channel::<EmbedJob>(QUEUE_DEPTH);
        let (ready_tx, ready_rx) = std_mpsc::sync_channel::<Result<(), InferError>>(1);
        let pending = Arc::new(AtomicUsize::new(0));
        let pending_in_thread = pending.clone();
        std::thread::Builder::new()
            .name(format!("model {name}"))
            .spawn(move || {
                let mut runner = match build() {
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
                    if !job.reply.is_closed() {
                        let _ = job.reply.send(runner.embed(&job.texts, job.pooling));
                    }
                    pending_in_thread.fetch_sub(1, Ordering::SeqCst);
                }
            })
            .map_err(|e| InferError::Internal(format!("cannot start model thread: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| InferError::Internal("model thread died while loading".into()))??;
        Ok(ModelWorker {
            jobs,
            pending,
            memory_bytes,
        })
    }

    fn is_busy(&self) -> bool {
        self.pending.load(Ordering::SeqCst) > 0
    }

    /// Queues an embeddings job and waits for its result.
    pub async fn embed(
        &self,
        texts: Vec<String>,
        pooling: Pooling,
    ) -> Result<EmbeddingsOutput, InferError> {
        let (reply, result) = oneshot::channel();
        self.pending.fetch_add(1, Ordering::SeqCst);
        let job = EmbedJob {
            texts,
            pooling,
            reply,
        };
        if let Err(error) = self.jobs.try_send(job) {
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
