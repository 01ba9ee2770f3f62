//! Text generation on llama.cpp (through the `llama-cpp-2` crate): loads a GGUF, renders the chat
//! template and tokenizes on the caller's thread (images too, for a model with an image encoder:
//! `vision.rs`), and hands admitted requests to the model's scheduler (`scheduler.rs`), which runs
//! every sequence in one llama.cpp context.

mod constraint;
mod draft;
mod invariance;
pub mod lora;
mod output;
mod prefix_cache;
pub(crate) mod sampling;
mod scheduler;
mod template;
mod utf8;
mod vision;

use constraint::Grammars;
use ember_core::InferError;
use ember_core::admission::{Admission, AdmissionLimits, Ticket};
use ember_core::catalog::ModelSpec;
use ember_core::metrics::ModelMetrics;
use ember_core::runner::{STREAM_BUFFER, TextEvent, TextGenerator};
use ember_core::tasks::{ChatMessage, Completion, PromptInput, TextGenerationRequest};
use ember_core::tools::{ResponseFormat, ToolChoice};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::mtmd::MtmdInputChunks;
use llama_cpp_2::token::LlamaToken;
use output::OutputParser;
use scheduler::{Grammar, Job, Shaping, Trace};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use template::ChatTemplate;
use tokio::sync::{mpsc, oneshot};
use vision::Vision;

pub use invariance::use_batch_invariant_kernels;
pub use scheduler::{GenerationTiming, KvLayout, Speculation};

/// How a model's engine is sized.
#[derive(Debug, Clone)]
pub struct LlmSettings {
    /// Sequences generated at once (llama-server's `-np`); at most 128.
    pub max_sequences: u32,
    /// KV cache cells shared by all sequences and the prefix cache. Default: the model's
    /// context window, capped at an eighth of the available memory.
    pub kv_cells: Option<u32>,
    /// One pool for all sequences, or a stream of `kv_cells / max_sequences` per sequence.
    pub kv_layout: KvLayout,
    /// Tokens per forward pass: the next token of every decoding sequence plus prompt chunks.
    pub step_tokens: u32,
    /// Keep finished requests' cells for later prompts that start the same way. Off, every
    /// request starts on a cache holding only the running sequences.
    pub prefix_cache: bool,
    /// llama.cpp threads; default `EMBER_THREADS` or every core.
    pub threads: Option<i32>,
    /// Requests that may wait for a sequence slot, and for how long.
    pub max_waiting: usize,
    pub max_wait: Duration,
    /// Bit-identical logits for a sequence alone, batched or from the prefix cache, at some
    /// speed (see `invariance.rs`); implies the per-sequence layout. Needs
    /// `use_batch_invariant_kernels` first, and loads weights without llama.cpp's repacking.
    pub batch_invariant: bool,
    /// Speculative decoding by prompt lookup (off with batch invariance and on sliding-window
    /// models).
    pub speculation: Speculation,
    /// The seconds a decode step of 1, 2, 4, 8 and 16 rows takes, which drafts are sized by;
    /// `None` times them when the engine starts. Given, the choice of drafts no longer depends
    /// on how busy the machine was then (tests).
    pub step_seconds: Option<[f64; 5]>,
}

impl Default for LlmSettings {
    fn default() -> LlmSettings {
        LlmSettings {
            max_sequences: 32,
            kv_cells: None,
            kv_layout: KvLayout::Unified,
            step_tokens: 512,
            prefix_cache: true,
            threads: None,
            max_waiting: 256,
            max_wait: Duration::from_secs(30),
            batch_invariant: false,
            speculation: Speculation::PromptLookup,
            step_seconds: None,
        }
    }
}

/// llama.cpp's process-wide backend, initialised on first use.
fn backend() -> Result<&'static LlamaBackend, InferError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // A portable build's ggml CPU variants are modules: load the best one this CPU runs,
            // from the build's folder or the one holding the executable.
            #[cfg(feature = "portable")]
            #[allow(unsafe_code)]
            // SAFETY: no arguments; called once, before the backend is initialised.
            unsafe {
                llama_cpp_sys_2::ggml_backend_load_all()
            };
            let backend = LlamaBackend::init().map_err(|e| e.to_string())?;
            // llama.cpp, ggml and mtmd log through `tracing`, and only with EMBER_LLAMA_LOG set
            // (they would otherwise write every load's details to stderr).
            let enabled = std::env::var_os("EMBER_LLAMA_LOG").is_some();
            llama_cpp_2::send_logs_to_tracing(
                llama_cpp_2::LogOptions::default().with_logs_enabled(enabled),
            );
            Ok(backend)
        })
        .as_ref()
        .map_err(|e| InferError::Internal(format!("llama.cpp backend: {e}")))
}

/// A loaded model: the weights (shared with the scheduler thread), the prompt preparation, and
/// the queue into the scheduler.
pub struct LlmEngine {
    id: String,
    /// The GGUF file, which LoRA adapters are checked against.
    path: PathBuf,
    model: Arc<LlamaModel>,
    template: Option<ChatTemplate>,
    /// The image encoder, for a model with `mmproj.gguf` beside it.
    vision: Option<Arc<Vision>>,
    grammars: Grammars,
    /// Longest sequence (prompt and output) one request may have, and what sets it.
    sequence_limit: u32,
    limited_by: &'static str,
    admission: Admission,
    scheduler: scheduler::SchedulerHandle,
    memory_bytes: u64,
}

/// Loads `model.gguf` from the model's folder and starts its scheduler thread.
pub fn load(
    spec: &ModelSpec,
    dir: &Path,
    settings: &LlmSettings,
    metrics: ModelMetrics,
) -> Result<LlmEngine, InferError> {
    let failed = |reason: String| InferError::LoadFailed {
        model: spec.id.clone(),
        reason,
    };
    let backend = backend()?;
    let path = dir.join("model.gguf");
    if settings.batch_invariant
        && let Some(reason) = invariance::refusal()
    {
        return Err(failed(reason));
    }
    let file_bytes = ember_core::installed::files_bytes(spec, dir);
    let id = spec.id.clone();
    let mut logged = 0;
    let params = LlamaModelParams::default().with_progress_callback(move |progress| {
        let percent = (progress * 100.0) as u32;
        if percent >= logged + 25 || (percent == 100 && logged < 100) {
            logged = percent;
            tracing::info!(model = %id, percent, "loading weights");
        }
        true
    });
    let model = match settings.batch_invariant {
        true => invariance::load_without_repacking(backend, &path).map_err(failed)?,
        false => LlamaModel::load_from_file(backend, &path, &params)
            .map_err(|e| failed(format!("{}: {e}", path.display())))?,
    };
    // Older GGUF conversions (LLaVA 1.5's) carry no chat template: the catalog entry then gives
    // it.
    let source = model
        .meta_val_str("tokenizer.chat_template")
        .ok()
        .or_else(|| spec.chat_template.clone());
    let template = match source {
        Some(source) => {
            let vocab = model.vocab();
            let piece = |t: LlamaToken| {
                String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned()
            };
            Some(
                ChatTemplate::new(source, piece(vocab.bos()), piece(vocab.eos()))
                    .map_err(|e| failed(format!("chat template: {e}")))?,
            )
        }
        None => None,
    };

    let shape = ModelShape::read(&model);
    let context_window = spec.context_window.min(model.n_ctx_train()).max(1);
    let kv_cells = settings
        .kv_cells
        .unwrap_or_else(|| context_window.min(shape.cells_fitting(crate::available_memory() / 8)))
        .max(256);
    let max_sequences = settings.max_sequences.clamp(1, 128);
    let layout = if settings.batch_invariant {
        KvLayout::PerSequence
    } else {
        settings.kv_layout
    };
    // A sequence's cells: the pool, or its stream, which llama.cpp rounds up to 256 cells.
    let (kv_cells, sequence_cells) = match layout {
        KvLayout::Unified => (kv_cells, kv_cells),
        KvLayout::PerSequence => {
            let stream = (kv_cells / max_sequences).next_multiple_of(256).max(256);
            (stream * max_sequences, stream)
        }
    };
    let threads = settings
        .threads
        .unwrap_or_else(|| crate::cpu_threads().try_into().unwrap_or(i32::MAX));
    let vision = Vision::load(dir, &model, threads)
        .map_err(&failed)?
        .map(Arc::new);
    let model = Arc::new(model);
    let config = scheduler::Config {
        kv_cells,
        layout,
        batch_invariant: settings.batch_invariant,
        max_sequences,
        // Room for a prompt chunk beside every decode row. Batch invariance reads chunks of at
        // least 2 rows that leave at least 2: 4 rows, even in the quarter step that prompts get
        // while others decode.
        step_tokens: settings
            .step_tokens
            .max(max_sequences + if settings.batch_invariant { 16 } else { 1 }),
        prefix_cache: settings.prefix_cache,
        threads,
        sliding_window: shape.sliding_window,
        price: spec.price,
        speculation: settings.speculation,
        step_seconds: settings.step_seconds,
    };
    let scheduler = scheduler::start(
        &spec.id,
        backend,
        model.clone(),
        config,
        vision.clone(),
        max_sequences as usize,
        metrics.clone(),
    )
    .map_err(failed)?;
    // A request's prompt and output fit its sequence's cells: the whole pool, or its stream.
    let limited_by = match (sequence_cells < context_window, layout) {
        (false, _) => "the model's context window",
        (true, KvLayout::Unified) => "the KV cache's cells, --kv-cells",
        (true, KvLayout::PerSequence) => {
            "a sequence's stream of KV cells, --kv-cells / --max-sequences in the per-sequence layout"
        }
    };
    if sequence_cells < context_window {
        tracing::warn!(
            model = %spec.id,
            request_limit = sequence_cells,
            context_window,
            "requests are limited below the model's context window by {limited_by}"
        );
    }
    tracing::info!(
        model = %spec.id,
        kv_cells,
        kv_layout = layout.name(),
        batch_invariant = settings.batch_invariant,
        sequence_cells,
        max_sequences,
        threads,
        kv_mib = (shape.cell_bytes * u64::from(kv_cells)) >> 20,
        vision = vision.is_some(),
        "loaded on llama.cpp"
    );
    let admission = Admission::new(
        AdmissionLimits {
            slots: max_sequences as usize,
            max_waiting: settings.max_waiting,
            max_wait: settings.max_wait,
        },
        metrics,
    );
    Ok(LlmEngine {
        id: spec.id.clone(),
        path,
        grammars: Grammars::new(model.clone()),
        model,
        template,
        vision,
        sequence_limit: context_window.min(sequence_cells),
        limited_by,
        admission,
        scheduler,
        memory_bytes: file_bytes + shape.cell_bytes * u64::from(kv_cells),
    })
}

/// A request's prompt: one token id per position, and its chunks when it has images.
struct Prompt {
    tokens: Vec<i32>,
    images: Option<MtmdInputChunks>,
}

/// What the KV cache needs per token, and the sliding attention window if the model has one.
struct ModelShape {
    cell_bytes: u64,
    sliding_window: Option<u32>,
}

impl ModelShape {
    fn read(model: &LlamaModel) -> ModelShape {
        let arch = model
            .meta_val_str("general.architecture")
            .unwrap_or_default();
        let number = |key: &str| {
            model
                .meta_val_str(&format!("{arch}.{key}"))
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
        };
        let head_dim = u64::from(model.n_embd() as u32) / u64::from(model.n_head().max(1));
        let key = number("attention.key_length").unwrap_or(head_dim);
        let value = number("attention.value_length").unwrap_or(head_dim);
        // f16 keys and values for every layer's KV heads.
        let cell_bytes =
            u64::from(model.n_layer()) * u64::from(model.n_head_kv()) * (key + value) * 2;
        ModelShape {
            cell_bytes: cell_bytes.max(1),
            sliding_window: number("attention.sliding_window").map(|w| w as u32),
        }
    }

    fn cells_fitting(&self, bytes: u64) -> u32 {
        (bytes / self.cell_bytes).min(u64::from(u32::MAX)) as u32
    }
}

/// A request run to its end with the token ids and timings it produced.
#[derive(Debug)]
pub struct Traced {
    pub completion: Completion,
    pub tokens: Vec<i32>,
    /// For each sampled token, the best logit's lead over the second best.
    pub margins: Vec<f32>,
    pub timing: GenerationTiming,
    /// Draft tokens speculative decoding proposed, and those the model kept.
    pub drafted: u32,
    pub kept: u32,
}

impl LlmEngine {
    /// The exact text the model reads for this request: the chat template applied, with the
    /// tools it may call, and a call already opened when the tool choice forces one.
    fn prompt_text(&self, request: &TextGenerationRequest) -> Result<String, InferError> {
        let mut text = self.chat_text(&request.prompt, request)?;
        if forces_call(request) {
            text.push_str(output::CALL_OPEN);
            text.push('\n');
        }
        Ok(text)
    }

    fn chat_text(
        &self,
        prompt: &PromptInput,
        request: &TextGenerationRequest,
    ) -> Result<String, InferError> {
        let messages = match prompt {
            PromptInput::Prompt { text, raw: true } => return Ok(text.clone()),
            // A base model without a chat template reads the prompt as-is.
            PromptInput::Prompt { text, raw: false } if self.template.is_none() => {
                return Ok(text.clone());
            }
            PromptInput::Prompt { text, raw: false } => vec![ChatMessage::text("user", text)],
            PromptInput::Messages(messages) => vision::with_media_markers(messages),
        };
        let template = self.template.as_ref().ok_or_else(|| {
            InferError::invalid(
                "/messages",
                format!(
                    "{} has no chat template; send `prompt` with `raw: true`",
                    self.id
                ),
            )
        })?;
        template
            .render(&messages, request.offered_tools())
            .map_err(|e| {
                InferError::invalid(
                    "/messages",
                    format!("the model's chat template rejected them: {e}"),
                )
            })
    }

    /// The prompt tokens the model reads for a request (chat template applied).
    pub fn prompt_tokens(&self, request: &TextGenerationRequest) -> Result<Vec<i32>, InferError> {
        Ok(self.prompt(request)?.tokens)
    }

    /// What the model reads for a request: the chat template applied, then tokenized, the
    /// images cut into chunks of their own by the image encoder.
    fn prompt(&self, request: &TextGenerationRequest) -> Result<Prompt, InferError> {
        let text = self.prompt_text(request)?;
        let vocab = self.model.vocab();
        // Templates that write the BOS token themselves must not get a second one.
        let bos =
            String::from_utf8_lossy(&vocab.token_to_piece(vocab.bos(), true, None)).into_owned();
        let add_special = !(vocab.should_add_bos() && !bos.is_empty() && text.starts_with(&bos));
        let images = match &request.prompt {
            PromptInput::Messages(messages) => vision::images(messages),
            PromptInput::Prompt { .. } => Vec::new(),
        };
        let Some(first) = images.first() else {
            let tokens = vocab.tokenize(text.as_bytes(), add_special, true);
            return Ok(Prompt {
                tokens: tokens.iter().map(|t| t.0).collect(),
                images: None,
            });
        };
        let vision = self.vision.as_ref().ok_or_else(|| {
            InferError::invalid(&first.at, format!("{} does not take images", self.id))
        })?;
        let prompt = vision.prompt(&text, &images, add_special)?;
        Ok(Prompt {
            tokens: prompt.tokens,
            images: Some(prompt.chunks),
        })
    }

    /// Checks the prompt fits and queues the job with the scheduler.
    fn submit(
        &self,
        prompt: Prompt,
        request: &TextGenerationRequest,
        ignore_eos: bool,
        session: Option<String>,
        ticket: Ticket,
        trace: Option<oneshot::Sender<Trace>>,
    ) -> Result<mpsc::Receiver<TextEvent>, InferError> {
        let n_prompt = prompt.tokens.len();
        if n_prompt == 0 {
            return Err(InferError::invalid("/prompt", "tokenizes to nothing"));
        }
        let limit = self.sequence_limit as usize;
        if n_prompt >= limit {
            return Err(InferError::ModelInputRejected(format!(
                "AiError: Sequence too long: {n_prompt} > {} ({})",
                limit - 1,
                self.limited_by
            )));
        }
        let max_tokens = request.max_tokens.min((limit - n_prompt) as u32);
        let shaping = self.shaping(request)?;
        let adapter = match &request.lora {
            Some(lora) => Some(lora::converted(&lora.folder, &self.path)?),
            None => None,
        };
        let (events, receiver) = mpsc::channel(STREAM_BUFFER);
        let job = Job {
            prompt: prompt.tokens,
            images: prompt.images,
            max_tokens,
            sampling: request.sampling.clone(),
            shaping,
            ignore_eos,
            session,
            adapter,
            events,
            trace,
            _ticket: ticket,
            arrived: Instant::now(),
        };
        self.scheduler.submit(job)?;
        Ok(receiver)
    }

    /// The parser and grammar for a request's output. Grammars compile here, on the caller's
    /// thread, so a schema the compiler refuses is the caller's 400, not a scheduler stall.
    fn shaping(&self, request: &TextGenerationRequest) -> Result<Shaping, InferError> {
        let tools = request.offered_tools();
        let grammar = match (&request.response_format, tools.is_empty()) {
            (ResponseFormat::JsonObject, _) => Grammar::Json(
                self.grammars
                    .json(&serde_json::json!({ "type": "object" }))
                    .map_err(|e| InferError::invalid("/response_format", e))?,
            ),
            (ResponseFormat::JsonSchema(schema), _) => Grammar::Json(
                self.grammars
                    .json(schema)
                    .map_err(|e| InferError::invalid("/response_format/json_schema", e))?,
            ),
            (ResponseFormat::Text, true) => Grammar::None,
            (ResponseFormat::Text, false) => {
                let callable: Vec<_> = match &request.tool_choice {
                    ToolChoice::Function(name) => {
                        tools.iter().filter(|t| &t.name == name).collect()
                    }
                    _ => tools.iter().collect(),
                };
                Grammar::ToolCalls {
                    grammar: self
                        .grammars
                        .tool_call(&callable)
                        .map_err(|e| InferError::invalid("/tools", e))?,
                    end_after_first: matches!(request.tool_choice, ToolChoice::Function(_)),
                }
            }
        };
        Ok(Shaping {
            parser: OutputParser::new(
                tools.iter().map(|t| t.name.clone()).collect(),
                request.stop.clone(),
                forces_call(request),
            ),
            grammar,
            json: request.response_format != ResponseFormat::Text,
        })
    }

    /// Runs a request to its end next to whatever else is running, and reports its token ids
    /// and timings (for tests and benchmarks). `ignore_eos` generates exactly `max_tokens`.
    pub async fn run_traced(
        &self,
        request: &TextGenerationRequest,
        ignore_eos: bool,
    ) -> Result<Traced, InferError> {
        let prompt = self.prompt(request)?;
        self.run_prompt(prompt, request, ignore_eos).await
    }

    async fn run_prompt(
        &self,
        prompt: Prompt,
        request: &TextGenerationRequest,
        ignore_eos: bool,
    ) -> Result<Traced, InferError> {
        let ticket = self.admission.admit(false).await?;
        let (trace_tx, trace_rx) = oneshot::channel();
        let mut events = self.submit(prompt, request, ignore_eos, None, ticket, Some(trace_tx))?;
        let completion = loop {
            match events.recv().await {
                Some(
                    TextEvent::Text(_)
                    | TextEvent::ToolCallStart { .. }
                    | TextEvent::ToolCallArguments { .. },
                ) => {}
                Some(TextEvent::Done(completion)) => break completion,
                Some(TextEvent::Failed(error)) => return Err(error),
                None => return Err(InferError::Aborted),
            }
        };
        let trace = trace_rx.await.map_err(|_| InferError::Aborted)?;
        Ok(Traced {
            completion,
            tokens: trace.tokens,
            margins: trace.margins,
            timing: trace.timing,
            drafted: trace.drafted,
            kept: trace.kept,
        })
    }

    /// Reads `prompt` (token ids) and then generates exactly `max_tokens` tokens, alone on the
    /// engine, greedily; returns how long each phase took. For `ember bench llm`.
    pub fn timed_generation(
        &self,
        prompt: Vec<i32>,
        max_tokens: u32,
    ) -> Result<GenerationTiming, InferError> {
        let request = TextGenerationRequest::new(
            PromptInput::Prompt {
                text: String::new(),
                raw: true,
            },
            max_tokens,
            ember_core::tasks::Sampling::greedy(),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| InferError::Internal(e.to_string()))?;
        runtime
            .block_on(self.run_prompt(
                Prompt {
                    tokens: prompt,
                    images: None,
                },
                &request,
                true,
            ))
            .map(|traced| traced.timing)
    }
}

impl TextGenerator for LlmEngine {
    fn admission(&self) -> &Admission {
        &self.admission
    }

    fn start(
        &self,
        request: TextGenerationRequest,
        session: Option<String>,
        ticket: Ticket,
    ) -> Result<mpsc::Receiver<TextEvent>, InferError> {
        let prompt = self.prompt(&request)?;
        self.submit(prompt, &request, false, session, ticket, None)
    }

    fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }

    fn is_alive(&self) -> bool {
        self.scheduler.is_alive()
    }
}

/// Whether the tool choice makes the model call a tool (the prompt then opens the call).
fn forces_call(request: &TextGenerationRequest) -> bool {
    !request.offered_tools().is_empty()
        && matches!(
            request.tool_choice,
            ToolChoice::Required | ToolChoice::Function(_)
        )
}
