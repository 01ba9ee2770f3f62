//! The runner traits that engines implement, and the worker thread that owns a loaded model.
//!
//! Invariant: a model lives on exactly one named OS thread, fed by a bounded queue of jobs that
//! carry their own reply channel. Async code never touches the model; a job whose caller has gone
//! (reply channel closed) is skipped or stopped at the next token.

use crate::InferError;
use crate::tasks::{Completion, EmbeddingsOutput, Pooling, TextGenerationRequest};
use std::sync::mpsc as std_mpsc;
use tokio::sync::{mpsc, oneshot};

/// Jobs waiting for a model beyond the one it is running; more are refused with `Overloaded`.
pub const QUEUE_DEPTH: usize = 64;
/// Streamed text pieces buffered per request before the model thread waits for the client.
pub const STREAM_BUFFER: usize = 64;

/// A text generation engine. Runs on the model's thread.
pub trait TextGenerationRunner {
    /// Generates a completion, calling `on_text` with each new piece of text (always whole UTF-8
    /// characters). Stops early when `on_text` returns false (the client went away).
    fn generate(
        &mut self,
        request: &TextGenerationRequest,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Completion, InferError>;
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
    Done(Completion),
    Failed(InferError),
}

enum Job {
    Generate {
        request: TextGenerationRequest,
        events: mpsc::Sender<TextEvent>,
    },
    Embed {
        texts: Vec<String>,
        pooling: Pooling,
        reply: oneshot::Sender<Result<EmbeddingsOutput, InferError>>,
    },
}

/// A handle to a model's worker thread. Cheap to clone; the thread ends when the last handle drops.
#[derive(Clone)]
pub struct ModelWorker {
    jobs: std_mpsc::SyncSender<Job>,
}

impl ModelWorker {
    /// Starts a thread that builds a text generation runner with `build` and then serves jobs.
    /// Returns once the model has loaded, or with the load error.
    pub fn text_generation<F, R>(name: &str, build: F) -> Result<ModelWorker, InferError>
    where
        F: FnOnce() -> Result<R, InferError> + Send + 'static,
        R: TextGenerationRunner + 'static,
    {
        Self::spawn(name, build, |runner: &mut R, job| match job {
            Job::Generate { request, events } => {
                let mut on_text = |text: &str| {
                    events
                        .blocking_send(TextEvent::Text(text.to_string()))
                        .is_ok()
                };
                let last = match runner.generate(&request, &mut on_text) {
                    Ok(completion) => TextEvent::Done(completion),
                    Err(error) => TextEvent::Failed(error),
                };
                let _ = events.blocking_send(last);
            }
            Job::Embed { reply, .. } => {
                let _ = reply.send(Err(InferError::Internal("not an embeddings model".into())));
            }
        })
    }

    /// Starts a thread that builds an embeddings runner with `build` and then serves jobs.
    pub fn embeddings<F, R>(name: &str, build: F) -> Result<ModelWorker, InferError>
    where
        F: FnOnce() -> Result<R, InferError> + Send + 'static,
        R: EmbeddingsRunner + 'static,
    {
        Self::spawn(name, build, |runner: &mut R, job| match job {
            Job::Embed {
                texts,
                pooling,
                reply,
            } => {
                if !reply.is_closed() {
                    let _ = reply.send(runner.embed(&texts, pooling));
                }
            }
            Job::Generate { events, .. } => {
                let _ = events.blocking_send(TextEvent::Failed(InferError::Internal(
                    "not a text generation model".into(),
                )));
            }
        })
    }

    fn spawn<F, R, S>(name: &str, build: F, serve: S) -> Result<ModelWorker, InferError>
    where
        F: FnOnce() -> Result<R, InferError> + Send + 'static,
        R: 'static,
        S: Fn(&mut R, Job) + Send + 'static,
    {
        let (jobs, queue) = std_mpsc::sync_channel::<Job>(QUEUE_DEPTH);
        let (ready_tx, ready_rx) = std_mpsc::sync_channel::<Result<(), InferError>>(1);
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
                    serve(&mut runner, job);
                }
            })
            .map_err(|e| InferError::Internal(format!("cannot start model thread: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| InferError::Internal("model thread died while loading".into()))??;
        Ok(ModelWorker { jobs })
    }

    /// Queues a generation; its text arrives on the returned channel, ending with `Done` or `Failed`.
    pub fn generate(
        &self,
        request: TextGenerationRequest,
    ) -> Result<mpsc::Receiver<TextEvent>, InferError> {
        let (events, receiver) = mpsc::channel(STREAM_BUFFER);
        self.submit(Job::Generate { request, events })?;
        Ok(receiver)
    }

    /// Queues an embeddings job and waits for its result.
    pub async fn embed(
        &self,
        texts: Vec<String>,
        pooling: Pooling,
    ) -> Result<EmbeddingsOutput, InferError> {
        let (reply, result) = oneshot::channel();
        self.submit(Job::Embed {
            texts,
            pooling,
            reply,
        })?;
        result
            .await
            .map_err(|_| InferError::Internal("model thread stopped".into()))?
    }

    fn submit(&self, job: Job) -> Result<(), InferError> {
        self.jobs.try_send(job).map_err(|e| match e {
            std_mpsc::TrySendError::Full(_) => InferError::Overloaded,
            std_mpsc::TrySendError::Disconnected(_) => {
                InferError::Internal("model thread stopped".into())
            }
        })
    }
}
