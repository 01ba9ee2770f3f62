//! `Ember`: the in-process `run(model, input)` API shared by the CLI and the HTTP server. It
//! resolves aliases, checks the model is installed, loads it on first use within the memory
//! budget (unloading idle models to make room), validates the input for the model's task, admits
//! it and returns a JSON result or a text stream.

use crate::InferError;
use crate::catalog::{Catalog, ModelSpec, Task};
use crate::installed;
use crate::metrics::{Metrics, ModelMetrics};
use crate::runner::{LoadedModel, TextEvent};
use crate::tasks::{
    self, Completion, EmbeddingsOutput, EmbeddingsRequest, TextGenerationRequest, Usage,
};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OnceCell, mpsc};

/// Loads a model's files into a running engine. Implemented by the engines crate.
pub type ModelLoader =
    dyn Fn(&ModelSpec, &Path, ModelMetrics) -> Result<LoadedModel, InferError> + Send + Sync;

/// Per-request settings that are not part of the model input.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Longest a non-streamed run may take before it fails with `Timeout`.
    pub timeout: Option<Duration>,
    /// `options.rejectIfBusy`: fail with 3040 at once instead of waiting for a free slot.
    pub reject_if_busy: bool,
    /// `x-session-affinity`: keeps this conversation's prefix cache entries longest.
    pub session: Option<String>,
}

/// How much may be loaded at once.
#[derive(Debug, Clone, Copy)]
pub struct MemoryLimits {
    /// Bytes all loaded models together may hold; idle models are unloaded to make room.
    pub budget: u64,
}

/// A model that is loading or loaded.
struct Resident {
    model: Arc<OnceCell<LoadedModel>>,
    last_used: Instant,
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
    metrics: Arc<Metrics>,
    memory: MemoryLimits,
    resident: Mutex<HashMap<String, Resident>>,
}

impl Ember {
    /// `aliases` map a requested id to the catalog id that serves it; both must be valid and the
    /// target must be in the catalog.
    pub fn new(
        catalog: Catalog,
        aliases: HashMap<String, String>,
        home: PathBuf,
        loader: Arc<ModelLoader>,
        memory: MemoryLimits,
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
            metrics: Metrics::new(),
            memory,
            resident: Mutex::new(HashMap::new()),
        })
    }

    /// The serving metrics of every model.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
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

    /// The loaded model, loading it on first use. Concurrent first requests share one load.
    pub async fn model(&self, spec: &ModelSpec) -> Result<LoadedModel, InferError> {
        if !self.is_installed(spec) {
            return Err(InferError::NotInstalled(spec.id.clone()));
        }
        let cell = {
            let mut resident = self.lock_resident();
            let entry = resident.entry(spec.id.clone()).or_insert_with(|| Resident {
                model: Arc::default(),
                last_used: Instant::now(),
            });
            entry.last_used = Instant::now();
            entry.model.clone()
        };
        let loaded = cell
            .get_or_try_init(|| async {
                self.make_room(spec)?;
                let dir = installed::model_dir(&self.home, spec);
                tracing::info!(model = %spec.id, dir = %dir.display(), "loading model");
                let started = Instant::now();
                let metrics = self.metrics.model(&spec.id);
                let (loader, spec_owned) = (self.loader.clone(), spec.clone());
                let model = tokio::task::spawn_blocking(move || loader(&spec_owned, &dir, metrics))
                    .await
                    .map_err(|e| InferError::Internal(format!("model loading panicked: {e}")))??;
                self.metrics.model(&spec.id).set_loaded(true);
                tracing::info!(
                    model = %spec.id,
                    seconds = started.elapsed().as_secs_f32(),
                    mib = model.memory_bytes() >> 20,
                    "model ready"
                );
                Ok(model)
            })
            .await;
        if loaded.is_err() {
            // Let the next request try again rather than keep a failed slot.
            self.lock_resident().remove(&spec.id);
        }
        loaded.cloned()
    }

    /// Unloads idle models until `spec` fits the memory budget next to the busy ones.
    fn make_room(&self, spec: &ModelSpec) -> Result<(), InferError> {
        let needed = installed::files_bytes(spec, &installed::model_dir(&self.home, spec));
        let mut resident = self.lock_resident();
        loop {
            let loaded: Vec<(&String, &Resident, &LoadedModel)> = resident
                .iter()
                .filter_map(|(id, r)| r.model.get().map(|m| (id, r, m)))
                .collect();
            let used: u64 = loaded.iter().map(|(_, _, m)| m.memory_bytes()).sum();
            if used + needed <= self.memory.budget {
                return Ok(());
            }
            let idle = loaded
                .iter()
                .filter(|(_, _, m)| !m.is_busy())
                .min_by_key(|(_, r, _)| r.last_used)
                .map(|(id, _, _)| (*id).clone());
            let Some(victim) = idle else {
                return Err(InferError::LoadFailed {
                    model: spec.id.clone(),
                    reason: format!(
                        "it needs about {} MiB and the busy models already hold {} of the {} MiB memory budget",
                        needed >> 20,
                        used >> 20,
                        self.memory.budget >> 20
                    ),
                });
            };
            tracing::info!(model = %victim, "unloading to make room for {}", spec.id);
            resident.remove(&victim);
            self.metrics.model(&victim).set_loaded(false);
        }
    }

    /// Unloads every model that has served nothing for `idle` and has nothing in flight.
    pub fn unload_idle(&self, idle: Duration) {
        let mut resident = self.lock_resident();
        resident.retain(|id, r| {
            let unload = r.last_used.elapsed() >= idle && r.model.get().is_some_and(|m| !m.is_busy());
            if unload {
                tracing::info!(model = %id, idle_s = r.last_used.elapsed().as_secs(), "unloading idle model");
                self.metrics.model(id).set_loaded(false);
            }
            !unload
        });
    }

    /// Ids of the models in memory.
    pub fn loaded_models(&self) -> Vec<String> {
        let resident = self.lock_resident();
        let mut ids: Vec<String> = resident
            .iter()
            .filter(|(_, r)| r.model.get().is_some())
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    fn lock_resident(&self) -> std::sync::MutexGuard<'_, HashMap<String, Resident>> {
        self.resident.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a validated text generation on `spec`'s model (loading it on first use) once it
    /// is admitted. Its text arrives on the returned channel. `run` calls this (and `embed`) with
    /// the request it parsed, the OpenAI routes with the one they build.
    pub async fn generate(
        &self,
        spec: &ModelSpec,
        request: TextGenerationRequest,
        options: &RunOptions,
    ) -> Result<mpsc::Receiver<TextEvent>, InferError> {
        let LoadedModel::TextGeneration(generator) = self.model(spec).await? else {
            return Err(InferError::Internal(format!(
                "{} is not a text generator",
                spec.id
            )));
        };
        let ticket = generator.admission().admit(options.reject_if_busy).await?;
        generator.start(request, options.session.clone(), ticket)
    }

    /// Embeds validated texts on `spec`'s model (loading it on first use), within
    /// `options.timeout`.
    pub async fn embed(
        &self,
        spec: &ModelSpec,
        request: EmbeddingsRequest,
        options: &RunOptions,
    ) -> Result<EmbeddingsOutput, InferError> {
        let LoadedModel::Embeddings(worker) = self.model(spec).await? else {
            return Err(InferError::Internal(format!(
                "{} is not an embeddings model",
                spec.id
            )));
        };
        with_timeout(
            options.timeout,
            worker.embed(request.texts, request.pooling),
        )
        .await
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
                let events = self.generate(spec, request, options).await?;
                if stream {
                    RunOutput::Stream(events)
                } else {
                    let completion = complete(events, options.timeout).await?;
                    RunOutput::Json {
                        result: completion.to_json(),
                        usage: completion.usage,
                    }
                }
            }
            Task::TextEmbeddings => {
                let request = tasks::parse_embeddings(input)?;
                let pooling = request.pooling;
                let embedded = self.embed(spec, request, options).await?;
                RunOutput::Json {
                    result: embedded.to_json(pooling),
                    usage: Usage::new(embedded.input_tokens(), 0).priced(&spec.price),
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

/// Waits for a generation to finish, at most `timeout`. Dropping the receiver (on timeout) stops
/// the model.
pub async fn complete(
    events: mpsc::Receiver<TextEvent>,
    timeout: Option<Duration>,
) -> Result<Completion, InferError> {
    with_timeout(timeout, collect(events)).await
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

/// The completion that ends a generation's events.
async fn collect(mut events: mpsc::Receiver<TextEvent>) -> Result<Completion, InferError> {
    while let Some(event) = events.recv().await {
        match event {
            TextEvent::Text(_)
            | TextEvent::ToolCallStart { .. }
            | TextEvent::ToolCallArguments { .. } => {}
            TextEvent::Done(completion) => return Ok(completion),
            TextEvent::Failed(error) => return Err(error),
        }
    }
    Err(InferError::Aborted)
}
