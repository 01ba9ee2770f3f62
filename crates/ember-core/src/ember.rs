//! `Ember`: the in-process `run(model, input)` API shared by the CLI and the HTTP server. It
//! resolves aliases, checks the model is installed, loads it on first use (one worker thread per
//! model), validates the input for the model's task and returns a JSON result or a text stream.

use crate::InferError;
use crate::catalog::{Catalog, ModelSpec, Task};
use crate::installed;
use crate::runner::{ModelWorker, TextEvent};
use crate::tasks::{self, Completion, Usage};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OnceCell, mpsc};

/// Loads a model's files onto a worker thread. Implemented by the engines crate.
pub type ModelLoader = dyn Fn(&ModelSpec, &Path) -> Result<ModelWorker, InferError> + Send + Sync;

/// Per-request settings that are not part of the model input.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Longest a non-streamed run may take before it fails with `Timeout`.
    pub timeout: Option<Duration>,
}

/// What a run produced.
pub enum RunOutput {
    /// A JSON result object (the `result` of the REST envelope).
    Json { result: Value, usage: Usage },
    /// Streamed text generation: text pieces, then `Done` or `Failed`.
    Stream(mpsc::Receiver<TextEvent>),
}

/// The result of `run`, with the model that actually served it (after aliasing).
pub struct Run {
    pub served_by: String,
    pub task: Task,
    pub output: RunOutput,
}

pub struct Ember {
    catalog: Catalog,
    aliases: HashMap<String, String>,
    home: PathBuf,
    loader: Arc<ModelLoader>,
    loaded: Mutex<HashMap<String, Arc<OnceCell<ModelWorker>>>>,
}

impl Ember {
    /// `aliases` map a requested id to the catalog id that serves it; both must be valid and the
    /// target must be in the catalog.
    pub fn new(
        catalog: Catalog,
        aliases: HashMap<String, String>,
        home: PathBuf,
        loader: Arc<ModelLoader>,
    ) -> Result<Ember, String> {
        for (from, to) in &aliases {
            if catalog.get(to).is_none() {
                return Err(format!("alias {from}={to}: {to} is not in the catalog"));
            }
        }
        Ok(Ember {
            catalog,
            aliases,
            home,
            loader,
            loaded: Mutex::new(HashMap::new()),
        })
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The catalog entry that serves `model`, following an alias.
    pub fn resolve(&self, model: &str) -> Result<&ModelSpec, InferError> {
        let id = self.aliases.get(model).map_or(model, String::as_str);
        self.catalog
            .get(id)
            .ok_or_else(|| InferError::NoSuchModel(model.to_string()))
    }

    pub fn is_installed(&self, spec: &ModelSpec) -> bool {
        installed::is_installed(spec, &installed::model_dir(&self.home, spec))
    }

    /// The worker for a model, loading it on first use. Concurrent first requests share one load.
    pub async fn worker(&self, spec: &ModelSpec) -> Result<ModelWorker, InferError> {
        if !self.is_installed(spec) {
            return Err(InferError::NotInstalled(spec.id.clone()));
        }
        let cell = {
            let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            loaded.entry(spec.id.clone()).or_default().clone()
        };
        cell.get_or_try_init(|| async {
            let dir = installed::model_dir(&self.home, spec);
            tracing::info!(model = %spec.id, dir = %dir.display(), "loading model");
            let started = std::time::Instant::now();
            let (loader, spec_owned) = (self.loader.clone(), spec.clone());
            let worker = tokio::task::spawn_blocking(move || loader(&spec_owned, &dir))
                .await
                .map_err(|e| InferError::Internal(format!("model loading panicked: {e}")))??;
            tracing::info!(model = %spec.id, seconds = started.elapsed().as_secs_f32(), "model ready");
            Ok(worker)
        })
        .await
        .cloned()
    }

    /// Runs `model` on a task input, the way `env.AI.run(model, input)` does.
    pub async fn run(
        &self,
        model: &str,
        input: &Value,
        options: &RunOptions,
    ) -> Result<Run, InferError> {
        let spec = self.resolve(model)?;
        let output = match spec.task {
            Task::TextGeneration => {
                let request = tasks::parse_text_generation(input, spec)?;
                let stream = request.stream;
                let events = self.worker(spec).await?.generate(request)?;
                if stream {
                    RunOutput::Stream(events)
                } else {
                    let completion = with_timeout(options.timeout, collect(events)).await?;
                    RunOutput::Json {
                        result: completion.to_json(),
                        usage: completion.usage,
                    }
                }
            }
            Task::TextEmbeddings => {
                let request = tasks::parse_embeddings(input)?;
                let worker = self.worker(spec).await?;
                let embedded = with_timeout(
                    options.timeout,
                    worker.embed(request.texts, request.pooling),
                )
                .await?;
                RunOutput::Json {
                    result: embedded.to_json(request.pooling),
                    usage: Usage::new(embedded.input_tokens(), 0),
                }
            }
        };
        Ok(Run {
            served_by: spec.id.clone(),
            task: spec.task,
            output,
        })
    }
}

async fn with_timeout<T>(
    timeout: Option<Duration>,
    work: impl Future<Output = Result<T, InferError>>,
) -> Result<T, InferError> {
    match timeout {
        Some(limit) => tokio::time::timeout(limit, work)
            .await
            .map_err(|_| InferError::Timeout)?,
        None => work.await,
    }
}

/// Waits for a generation to finish. Dropping the receiver (on timeout) stops the model.
async fn collect(mut events: mpsc::Receiver<TextEvent>) -> Result<Completion, InferError> {
    while let Some(event) = events.recv().await {
        match event {
            TextEvent::Text(_) => {}
            TextEvent::Done(completion) => return Ok(completion),
            TextEvent::Failed(error) => return Err(error),
        }
    }
    Err(InferError::Aborted)
}
