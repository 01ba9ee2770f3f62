//! `Ember`: the in-process `run(model, input)` API shared by the CLI and the HTTP server. It
//! resolves aliases, picks the model that serves (the model itself, or its stand-in while it is
//! not installed), loads it on first use within the memory budget (unloading idle models to make
//! room; a model whose thread died is loaded again), validates the input for the model's task,
//! admits it and returns the task's output or a text stream, priced at the requested model's price.

use crate::InferError;
use crate::catalog::{AnswerFormat, Catalog, Engine, ModelSpec, Task};
use crate::guard;
use crate::installed;
use crate::metrics::{Metrics, ModelMetrics};
use crate::runner::{LoadedModel, TextEvent};
use crate::standin;
use crate::tasks::image_to_text::{ImageToTextOutput, ImageToTextRequest};
use crate::tasks::{Completion, TaskInput, TaskOutput, TaskRequest, TextGenerationRequest, Usage};
use crate::tools::ResponseFormat;
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
    /// A whole-result task's output, priced.
    Task { output: TaskOutput, usage: Usage },
    /// A text generation that was not streamed.
    Completion(Completion),
    /// Streamed text generation: text pieces, then `Done` or `Failed`.
    Stream(mpsc::Receiver<TextEvent>),
}

/// A requested catalog model and the model that serves it (itself, or its stand-in).
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub requested: &'a ModelSpec,
    pub served: &'a ModelSpec,
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
    stand_in_memo: standin::Memo,
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
            stand_in_memo: standin::Memo::default(),
        })
    }

    /// The serving metrics of every model.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) fn stand_in_memo(&self) -> &standin::Memo {
        &self.stand_in_memo
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

    /// Whether `spec` can run here: its files are installed, or, for a stand-in, its base's are.
    pub fn is_installed(&self, spec: &ModelSpec) -> bool {
        installed::can_run(&self.catalog, &self.home, spec)
    }

    /// The catalog model `model` names (following an alias) and the model that serves it.
    pub fn target(&self, model: &str) -> Result<Target<'_>, InferError> {
        let requested = self.resolve(model)?;
        Ok(Target {
            requested,
            served: self.serving(requested)?,
        })
    }

    /// The model that serves requests for `spec`: itself when installed, else its stand-in. A
    /// stand-in whose base does the same task (a local voice for a hosted one) is that base.
    pub fn serving<'a>(&'a self, spec: &'a ModelSpec) -> Result<&'a ModelSpec, InferError> {
        let serving = if self.is_installed(spec) {
            spec
        } else {
            spec.stand_in
                .as_deref()
                .and_then(|id| self.catalog.get(id))
                .filter(|stand_in| self.is_installed(stand_in))
                .ok_or_else(|| InferError::not_installed(spec))?
        };
        let same_task_base = (serving.engine == Engine::StandIn)
            .then(|| serving.base.as_deref().and_then(|id| self.catalog.get(id)))
            .flatten()
            .filter(|base| base.task == serving.task);
        Ok(same_task_base.unwrap_or(serving))
    }

    /// The loaded model, loading it on first use. Concurrent first requests share one load.
    pub async fn model(&self, spec: &ModelSpec) -> Result<LoadedModel, InferError> {
        if !self.is_installed(spec) {
            return Err(InferError::not_installed(spec));
        }
        let cell = {
            let mut resident = self.lock_resident();
            let entry = resident.entry(spec.id.clone()).or_insert_with(|| Resident {
                model: Arc::default(),
                last_used: Instant::now(),
            });
            entry.last_used = Instant::now();
            if entry.model.get().is_some_and(|model| !model.is_alive()) {
                tracing::warn!(model = %spec.id, "the model's thread died; loading it again");
                self.metrics.model(&spec.id).restarted();
                entry.model = Arc::default();
            }
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
    /// is admitted. Its text arrives on the returned channel. `run` calls this with the request it
    /// parsed, the OpenAI routes with the one they build.
    pub async fn generate(
        &self,
        spec: &ModelSpec,
        mut request: TextGenerationRequest,
        options: &RunOptions,
    ) -> Result<mpsc::Receiver<TextEvent>, InferError> {
        // Llama Guard writes its verdict as text; a JSON answer is made from that, never decoded
        // under a JSON grammar.
        let verdict_as_json = spec.answer_format == AnswerFormat::LlamaGuard
            && request.response_format != ResponseFormat::Text;
        if verdict_as_json {
            request.response_format = ResponseFormat::Text;
        }
        let events = self.start_generation(spec, request, options).await?;
        match verdict_as_json {
            true => guard::verdict_as_json(events, options.timeout).await,
            false => Ok(events),
        }
    }

    /// `generate` on the model's own engine, or its stand-in.
    async fn start_generation(
        &self,
        spec: &ModelSpec,
        request: TextGenerationRequest,
        options: &RunOptions,
    ) -> Result<mpsc::Receiver<TextEvent>, InferError> {
        if spec.engine == Engine::StandIn {
            return standin::generate(self, spec, request, options).await;
        }
        let LoadedModel::TextGeneration(generator) = self.model(spec).await? else {
            return Err(InferError::Internal(format!(
                "{} is not a text generator",
                spec.id
            )));
        };
        let ticket = generator.admission().admit(options.reject_if_busy).await?;
        let session = options.session.clone();
        // Templating, tokenizing and compiling a grammar are CPU work: off the async workers.
        tokio::task::spawn_blocking(move || generator.start(request, session, ticket))
            .await
            .map_err(|e| InferError::Internal(format!("preparing the prompt panicked: {e}")))?
    }

    /// Runs a validated request of any task but text generation on `spec`'s serving model
    /// (loading it on first use), within `options.timeout`. The usage is priced at `spec`'s
    /// price, whichever model served.
    pub async fn run_task(
        &self,
        spec: &ModelSpec,
        request: TaskRequest,
        options: &RunOptions,
    ) -> Result<TaskRun, InferError> {
        self.run_task_on(spec, self.serving(spec)?, request, options)
            .await
    }

    /// `run_task` on `served`, the model `serving` picked for `spec`.
    async fn run_task_on(
        &self,
        spec: &ModelSpec,
        served: &ModelSpec,
        request: TaskRequest,
        options: &RunOptions,
    ) -> Result<TaskRun, InferError> {
        let output = match (served.engine, request) {
            (Engine::StandIn, request) => standin::run(self, served, request, options).await?,
            (Engine::LlamaCpp, TaskRequest::ImageToText(request)) => {
                self.describe(served, request, options).await?
            }
            (_, request) => self.run_on_worker(served, request, options).await?,
        };
        Ok(TaskRun {
            usage: output.usage().priced(&spec.price),
            output,
            served_by: served.id.clone(),
        })
    }

    /// Answers an image-to-text request on `spec`, a text-generation model that sees images.
    pub(crate) async fn describe(
        &self,
        spec: &ModelSpec,
        request: ImageToTextRequest,
        options: &RunOptions,
    ) -> Result<TaskOutput, InferError> {
        let events = self.generate(spec, request.chat(), options).await?;
        let completion = complete(events, options.timeout).await?;
        Ok(TaskOutput::ImageToText(ImageToTextOutput {
            description: completion.text.trim().to_string(),
            usage: Usage::new(
                completion.usage.prompt_tokens,
                completion.usage.completion_tokens,
            ),
        }))
    }

    /// Runs `request` on `spec`'s own worker thread (loading it on first use).
    pub(crate) async fn run_on_worker(
        &self,
        spec: &ModelSpec,
        request: TaskRequest,
        options: &RunOptions,
    ) -> Result<TaskOutput, InferError> {
        let LoadedModel::Worker(worker) = self.model(spec).await? else {
            return Err(InferError::Internal(format!(
                "{} runs on no worker thread",
                spec.id
            )));
        };
        with_timeout(options.timeout, worker.run(request)).await
    }

    /// Runs a task input on `target` (see `target`), the way `env.AI.run(model, input)` does;
    /// `input` was validated for `target.served`.
    pub async fn run(
        &self,
        target: Target<'_>,
        input: TaskInput,
        options: &RunOptions,
    ) -> Result<Run, InferError> {
        let Target {
            requested: spec,
            served,
        } = target;
        let (served_by, output) = match input {
            TaskInput::TextGeneration(request) => {
                let stream = request.stream;
                let events = self.generate(served, request, options).await?;
                let output = if stream {
                    RunOutput::Stream(events)
                } else {
                    RunOutput::Completion(complete(events, options.timeout).await?)
                };
                (served.id.clone(), output)
            }
            TaskInput::Task(request) => {
                let run = self.run_task_on(spec, served, request, options).await?;
                let output = RunOutput::Task {
                    output: run.output,
                    usage: run.usage,
                };
                (run.served_by, output)
            }
        };
        Ok(Run {
            served_by,
            task: spec.task,
            output,
        })
    }
}

/// What `run_task` produced, its priced usage, and the model that served it.
pub struct TaskRun {
    pub output: TaskOutput,
    pub usage: Usage,
    pub served_by: String,
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
