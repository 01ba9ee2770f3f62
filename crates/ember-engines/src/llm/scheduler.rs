//! The scheduler: one thread per model that owns its llama.cpp context (one KV cache, unified
//! or a stream per sequence; one sequence id per running request) and builds every
//! `llama_decode` batch.
//!
//! Each step: drop sequences whose client left, deliver held-back events, admit waiting jobs
//! while sequence ids and KV cells allow (copying cached prompt prefixes), then decode one
//! batch holding the next token of every decoding sequence plus prompt chunks of the others
//! (shortest remaining prompt first), up to `step_tokens`; sample each sequence that produced
//! logits. A client that reads slowly pauses only its own sequence. Finished sequences hand their
//! cells to the prefix cache.
//!
//! A prompt with images is evaluated whole when its sequence is admitted (by llama.cpp's
//! multimodal helper, which runs the image encoder and decodes the image's embeddings, one
//! sequence per batch); its sequence then decodes in the shared batches like any other, and
//! stays out of the prefix cache.
//!
//! With speculation on (`Speculation::PromptLookup`, the default), a decoding sequence whose
//! last tokens appeared before may carry a draft (`draft.rs`): its next token and the draft are
//! decoded in one go, each row sampled as plain decoding would, and the draft's tokens kept up
//! to the first the model would not have picked; the rejected drafts' cells are removed. Drafts
//! are sized by what steps of so many rows cost here, measured when the thread starts; never for
//! constrained output, sliding-window models or batch invariance.
//!
//! KV accounting is by reservation: a sequence reserves its uncached prompt plus `max_tokens`
//! cells when admitted (on a unified cache; a stream always holds a whole sequence), so a decode
//! never runs out of cells midway.

use super::constraint::Constraint;
use super::draft::{self, Drafting, MEASURED_ROWS, MatchRecords, Offer, StepCosts};
use super::lora::Adapters;
use super::output::{OutputEvent, OutputParser};
use super::prefix_cache::PrefixCache;
use super::sampling::Sampler;
use super::utf8::Utf8Stream;
use super::vision::Vision;
use ember_core::InferError;
use ember_core::admission::Ticket;
use ember_core::catalog::Price;
use ember_core::metrics::ModelMetrics;
use ember_core::runner::TextEvent;
use ember_core::tasks::{Completion, FinishReason, Sampling, Usage};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::session::{LlamaStateSeqFlags, SeqState};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::mtmd::MtmdInputChunks;
use llama_cpp_2::token::LlamaToken;
use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc as std_mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Prefix cache entries: each under its own sequence id next to the running sequences on a
/// unified cache, each a snapshot in host memory with per-sequence streams.
const PREFIX_ENTRIES: u32 = 64;

/// With per-sequence streams, snapshots hold at most this share of the KV pool's cells (or one
/// stream's, if more), so the host memory they take stays a fraction of the cache's.
const SNAPSHOT_SHARE: u32 = 8;

/// llama.cpp's attention visits every cell of the unified cache for every query of every step
/// (other sequences' cells are masked, not skipped), so cached prefixes slow every running
/// stream: that cost grows with running sequences × cached cells / average sequence length. On
/// SmolLM2 at N=8 on 2 cores, a full cache (64 entries, about 11,000 cells) cost 12–27% of
/// throughput, which trimming to the floor below recovered. Before a sequence joins, the cache is
/// trimmed to `PREFIX_TAX - running` average sequences' cells (11 alone, 4 at N=8, none from 12
/// on)...
const PREFIX_TAX: usize = 12;
/// ...but never below this many cells, so a few conversations or a long system prompt stay.
const PREFIX_CAP_FLOOR: usize = 1024;

/// While sequences decode, prompt chunks take at most `step_tokens / PREFILL_SHARE_WHILE_DECODING`.
const PREFILL_SHARE_WHILE_DECODING: usize = 4;

/// Whether decoding sequences propose drafts of their next tokens (see the module comment).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Speculation {
    Off,
    /// Drafts from the sequence's own earlier tokens (`draft.rs`).
    #[default]
    PromptLookup,
}

impl Speculation {
    /// The name flags and config files use.
    pub fn name(self) -> &'static str {
        match self {
            Speculation::Off => "off",
            Speculation::PromptLookup => "prompt-lookup",
        }
    }
}

impl std::str::FromStr for Speculation {
    type Err = String;

    fn from_str(text: &str) -> Result<Speculation, String> {
        [Speculation::Off, Speculation::PromptLookup]
            .into_iter()
            .find(|speculation| speculation.name() == text)
            .ok_or_else(|| format!("`{text}`: expected off or prompt-lookup"))
    }
}

/// How the KV cache's cells are shared between sequences.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KvLayout {
    /// One pool for every sequence and the prefix cache: a request may use any number of cells,
    /// and a cached prefix is shared without a copy. llama.cpp's attention then visits every
    /// cell in use for every query, other sequences' masked.
    #[default]
    Unified,
    /// One stream of `kv_cells / max_sequences` cells per sequence (llama-server's `-np`
    /// layout): attention visits only a sequence's own cells, a request is limited to its
    /// stream, and finished requests' cells are kept as snapshots in host memory, from which a
    /// cached prefix is restored.
    PerSequence,
}

impl KvLayout {
    /// The name flags and config files use.
    pub fn name(self) -> &'static str {
        match self {
            KvLayout::Unified => "unified",
            KvLayout::PerSequence => "per-sequence",
        }
    }
}

impl std::str::FromStr for KvLayout {
    type Err = String;

    fn from_str(text: &str) -> Result<KvLayout, String> {
        [KvLayout::Unified, KvLayout::PerSequence]
            .into_iter()
            .find(|layout| layout.name() == text)
            .ok_or_else(|| format!("`{text}`: expected unified or per-sequence"))
    }
}

pub(crate) struct Config {
    pub kv_cells: u32,
    pub layout: KvLayout,
    /// Per-sequence streams, and steps shaped so that no kernel's choice depends on the batch
    /// (see `invariance.rs`).
    pub batch_invariant: bool,
    pub max_sequences: u32,
    pub step_tokens: u32,
    pub prefix_cache: bool,
    pub threads: i32,
    /// The model's sliding attention window, if some layers use one.
    pub sliding_window: Option<u32>,
    /// The model's price, for each completion's `usage.neurons`.
    pub price: Price,
    pub speculation: Speculation,
    /// Given decode step costs (`LlmSettings::step_seconds`), else timed at start.
    pub step_seconds: Option<[f64; 5]>,
}

impl Config {
    /// Prefix cache entries. On a unified cache each is a sequence id, and llama.cpp sizes its
    /// sliding-window layers for a full window per sequence id (`n_swa * n_seq_max + n_ubatch`
    /// cells), so on a sliding-window model every id costs a window of cells whether used or
    /// not: there the cache gets one entry per running sequence, which keeps those layers at
    /// about what llama-server's per-slot caches hold.
    fn prefix_entries(&self) -> u32 {
        match self.sliding_window {
            _ if !self.prefix_cache => 0,
            Some(_) if self.layout == KvLayout::Unified => self.max_sequences,
            _ => PREFIX_ENTRIES,
        }
    }

    /// Sequence ids beyond the running sequences': the prefix cache's on a unified cache; with
    /// per-sequence streams none, since entries are snapshots in host memory.
    fn entry_seq_ids(&self) -> u32 {
        match self.layout {
            KvLayout::Unified => self.prefix_entries(),
            KvLayout::PerSequence => 0,
        }
    }
}

/// The grammar a job's output follows, if any.
pub(crate) enum Grammar {
    None,
    /// JSON mode: every token.
    Json(Constraint),
    /// Inside each `<tool_call>`, until the call's JSON is complete.
    ToolCalls {
        grammar: Constraint,
        /// A named `tool_choice`: the generation ends with the first call.
        end_after_first: bool,
    },
}

/// How a job's output is shaped: parsed for tool calls and stop sequences, and constrained.
pub(crate) struct Shaping {
    pub parser: OutputParser,
    pub grammar: Grammar,
    /// JSON mode: the text is returned parsed.
    pub json: bool,
}

impl Shaping {
    /// The grammar that constrains the next token, if one does now.
    fn active_grammar(&mut self) -> Option<&mut Constraint> {
        match &mut self.grammar {
            Grammar::None => None,
            Grammar::Json(grammar) => Some(grammar),
            Grammar::ToolCalls { grammar, .. } => {
                self.parser.call_needs_grammar().then_some(grammar)
            }
        }
    }

    /// After a constrained token: a call whose JSON is complete frees the model (to close the
    /// call or start another); a named tool choice ends the generation there.
    fn after_constrained_token(&mut self) -> Result<Option<FinishReason>, String> {
        if let Grammar::ToolCalls {
            grammar,
            end_after_first,
        } = &mut self.grammar
            && grammar.complete()
        {
            self.parser.call_grammar_done();
            grammar.reset()?;
            if *end_after_first {
                return Ok(Some(FinishReason::ToolCalls));
            }
        }
        Ok(None)
    }
}

/// An admitted request, tokenized, on its way to the scheduler.
pub(crate) struct Job {
    /// One id per prompt position (`IMAGE_POSITION` where an image's embeddings go).
    pub prompt: Vec<i32>,
    /// The prompt's text and image chunks, when it has images.
    pub images: Option<MtmdInputChunks>,
    /// Already capped so that prompt and output fit the sequence limit.
    pub max_tokens: u32,
    pub sampling: Sampling,
    pub shaping: Shaping,
    pub ignore_eos: bool,
    pub session: Option<String>,
    /// A LoRA adapter for this request: its GGUF file (`lora.rs`).
    pub adapter: Option<PathBuf>,
    pub events: mpsc::Sender<TextEvent>,
    pub trace: Option<oneshot::Sender<Trace>>,
    /// The admission slot, held (never read) until the sequence has delivered its last event.
    pub _ticket: Ticket,
    pub arrived: Instant,
}

/// Generated token ids and timings of a finished job, for tests and benchmarks.
pub(crate) struct Trace {
    pub tokens: Vec<i32>,
    /// For each sampled token, the best logit's lead over the second best.
    pub margins: Vec<f32>,
    pub timing: GenerationTiming,
    /// Draft tokens proposed for the sequence, and those the model kept.
    pub drafted: u32,
    pub kept: u32,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct GenerationTiming {
    /// From admission by the scheduler to the first sampled token.
    pub prefill: Duration,
    /// From the first to the last sampled token.
    pub decode: Duration,
    pub generated: u32,
}

self_cell::self_cell!(
    /// The model and the one context that borrows it, kept together on the scheduler thread.
    struct ModelContext {
        owner: Arc<LlamaModel>,
        #[covariant]
        dependent: LlamaContext,
    }
);

/// The queue into a running scheduler thread. Dropping it stops the thread within one step
/// (sequences still running end without a result) and waits for it: llama.cpp must not be
/// computing when the process exits, or its static destructors crash under it.
pub(crate) struct SchedulerHandle {
    jobs: Option<std_mpsc::SyncSender<Job>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SchedulerHandle {
    /// Queues a job; `Overloaded` when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), InferError> {
        let jobs = self.jobs.as_ref().expect("set until dropped");
        jobs.try_send(job).map_err(|e| match e {
            std_mpsc::TrySendError::Full(_) => InferError::Overloaded,
            std_mpsc::TrySendError::Disconnected(_) => {
                InferError::Internal("the model's scheduler stopped".into())
            }
        })
    }

    /// False once the scheduler thread has ended (a panic): the running requests' channels
    /// closed with it, and the model must be loaded again.
    pub fn is_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for SchedulerHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the thread if it waits for a job.
        self.jobs = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the scheduler thread panicked");
        }
    }
}

/// Creates the context and starts the scheduler thread, with a queue of `queue_slots` jobs.
pub(crate) fn start(
    name: &str,
    backend: &LlamaBackend,
    model: Arc<LlamaModel>,
    config: Config,
    vision: Option<Arc<Vision>>,
    queue_slots: usize,
    metrics: ModelMetrics,
) -> Result<SchedulerHandle, String> {
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(config.kv_cells))
        .with_n_batch(config.step_tokens)
        .with_n_ubatch(config.step_tokens)
        // Running sequences, then the prefix cache entries.
        .with_n_seq_max(config.max_sequences + config.entry_seq_ids())
        .with_kv_unified(config.layout == KvLayout::Unified)
        // Sliding-window layers keep only their window (llama.cpp's default keeps every cell).
        .with_swa_full(false)
        .with_n_threads(config.threads)
        .with_n_threads_batch(config.threads);
    let params = if config.batch_invariant {
        params.with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED)
    } else {
        params
    };
    let context = ModelContext::try_new(model, |model| model.new_context(backend, params))
        .map_err(|e| format!("context of {} cells: {e}", config.kv_cells))?;
    let (jobs, queue) = std_mpsc::sync_channel(queue_slots);
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::Builder::new()
        .name(format!("engine {name}"))
        .spawn(move || {
            let mut context = context;
            context.with_dependent_mut(|model, ctx| {
                Scheduler::new(model, ctx, &config, vision, metrics).run(&queue, &stopped);
            });
        })
        .map_err(|e| format!("cannot start the scheduler thread: {e}"))?;
    Ok(SchedulerHandle {
        jobs: Some(jobs),
        stop,
        thread: Some(thread),
    })
}

struct Sequence {
    job: Job,
    /// The sequence id in the KV cache; `None` once its cells are released.
    seq_id: Option<i32>,
    /// Prompt, then every sampled token.
    tokens: Vec<i32>,
    n_prompt: usize,
    /// Tokens whose KV cells are in the cache.
    n_past: usize,
    /// Prompt tokens copied from the prefix cache.
    cached: usize,
    /// The prefix cache entry copied from, pinned while this sequence runs.
    source: Option<i32>,
    reserved: u32,
    generated: u32,
    sampler: Sampler,
    /// Top-2 logit margins, recorded only for traced jobs.
    margins: Vec<f32>,
    utf8: Utf8Stream,
    /// Events the client's channel had no room for; the sequence waits until they are taken.
    held: VecDeque<TextEvent>,
    admitted: Instant,
    first_token: Option<Instant>,
    last_token: Instant,
    finished: bool,
    client_gone: bool,
    /// The prompt has images: its cells are never kept in the prefix cache.
    sees_images: bool,
    /// The LoRA adapter it runs with (an index into the scheduler's `Adapters`): its cells are
    /// the adapted model's, so they are neither taken from nor kept in the prefix cache.
    adapter: Option<usize>,
    drafting: Drafting,
    /// Draft tokens proposed and kept so far (for the trace).
    drafted: u32,
    kept: u32,
}

impl Sequence {
    fn decoding(&self) -> bool {
        self.seq_id.is_some() && !self.finished && self.n_past >= self.n_prompt
    }

    fn prefilling(&self) -> bool {
        self.seq_id.is_some() && !self.finished && self.n_past < self.n_prompt
    }

    /// Sends what the output parser made of new text; says whether a stop sequence ends the
    /// generation.
    fn deliver(&mut self, events: Vec<OutputEvent>) -> bool {
        let mut ends = false;
        for event in events {
            match event {
                OutputEvent::Text(text) => self.send(TextEvent::Text(text)),
                OutputEvent::CallStart { index, id, name } => {
                    self.send(TextEvent::ToolCallStart { index, id, name })
                }
                OutputEvent::CallArguments { index, fragment } => {
                    self.send(TextEvent::ToolCallArguments { index, fragment })
                }
                // The completion carries the parsed calls.
                OutputEvent::CallEnd(_) => {}
                OutputEvent::Stopped => ends = true,
            }
        }
        ends
    }

    /// Sends an event to the client, holding it back if the channel is full.
    fn send(&mut self, event: TextEvent) {
        if !self.held.is_empty() {
            self.held.push_back(event);
            return;
        }
        match self.job.events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => self.held.push_back(event),
            Err(mpsc::error::TrySendError::Closed(_)) => self.client_gone = true,
        }
    }

    /// Delivers held events while the channel takes them.
    fn flush(&mut self) {
        while let Some(event) = self.held.pop_front() {
            match self.job.events.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(event)) => {
                    self.held.push_front(event);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.client_gone = true;
                    self.held.clear();
                }
            }
        }
    }
}

/// A sequence's tokens in this step.
struct Planned {
    sequence: usize,
    tokens: usize,
    /// The next token of a decoding sequence (otherwise a prompt chunk).
    decode: bool,
    /// Batch index of the logits to sample from, when this entry ends with one (a draft's
    /// entry: of its first row; every row has logits).
    logits: Option<i32>,
    /// A decoding sequence's draft: its tokens follow the next one in the entry.
    draft: Vec<i32>,
    /// The length of the run of last tokens that found the draft.
    matched: usize,
}

/// llama.cpp's CPU flash attention takes its tiled path for a batch of this many rows or more
/// (`GGML_FA_TILE_Q`), and its one-query path below. The tiled path skips a block of 64 cells
/// only when every row of a 64-row tile masks all of it. A prompt chunk's rows are one sequence,
/// whose cells lie together, so the tiled path skips everyone else's; decode rows are as many
/// sequences, whose cells lie everywhere in the unified cache, so in a tile they attend densely
/// to every cell. Measured on SmolLM2 at N=32 with 5,300 cells in use (2 threads): 32 decode
/// tokens and a 50-token prompt took 943 ms in one batch and 536 ms in two; a 64-token prompt
/// alone 252 ms and a 63-token one 339 ms.
const TILED_ATTENTION_ROWS: usize = 64;

/// Whether a step is split into passes that keep decode rows on the one-query path (on a unified
/// cache; with per-sequence streams each sequence's rows attend to its own stream only).
/// llama.cpp's CUDA kernels choose differently, and there one pass is one launch sequence
/// instead of two.
const SPLIT_PASSES: bool = !cfg!(feature = "cuda");

/// The `llama_decode` calls of a step, as ranges of its plan (decode entries first, then prompt
/// chunks). Split: decode tokens go in batches under `TILED_ATTENTION_ROWS`, and prompt chunks
/// join the last of them only while the batch stays under it; otherwise they get their own.
fn passes(planned: &[Planned], split: bool) -> Vec<std::ops::Range<usize>> {
    if !split {
        return std::iter::once(0..planned.len()).collect();
    }
    let decodes = planned.iter().take_while(|p| p.decode).count();
    let mut passes = Vec::new();
    let mut start = 0;
    while decodes - start >= TILED_ATTENTION_ROWS {
        passes.push(start..start + TILED_ATTENTION_ROWS - 1);
        start += TILED_ATTENTION_ROWS - 1;
    }
    let prompt_rows: usize = planned[decodes..].iter().map(|p| p.tokens).sum();
    if start == decodes || decodes - start + prompt_rows < TILED_ATTENTION_ROWS {
        passes.push(start..planned.len());
    } else {
        passes.push(start..decodes);
        if prompt_rows > 0 {
            passes.push(decodes..planned.len());
        }
    }
    passes
}

/// Batch invariance: the decode rows (planned first) in one pass, then each prompt chunk in its
/// own, so llama.cpp does not cut a chunk to the length of the rows beside it.
fn invariant_passes(planned: &[Planned]) -> Vec<std::ops::Range<usize>> {
    let decodes = planned.iter().take_while(|p| p.decode).count();
    let prompts = (decodes..planned.len()).map(|i| i..i + 1);
    (decodes > 0)
        .then_some(0..decodes)
        .into_iter()
        .chain(prompts)
        .collect()
}

/// The KV cache: the context, the prefix cache index and its cells, and the free sequence ids.
struct Kv<'m, 'c> {
    ctx: &'c mut LlamaContext<'m>,
    layout: KvLayout,
    prefix: PrefixCache,
    /// Ids no sequence or entry holds (with per-sequence streams: empty streams).
    free_ids: Vec<i32>,
    sliding_window: Option<u32>,
    /// Per-sequence streams: the prefix cache entries' cells, by entry id.
    snapshots: Vec<Option<Snapshot>>,
    /// Per-sequence streams: the most cells the snapshots hold together.
    snapshot_cells: u32,
}

/// A finished sequence's cells copied out of its stream into host memory. llama.cpp copies
/// between streams only whole streams (a hit would copy every cell of one), and an entry kept in
/// a stream would take that stream from running sequences.
struct Snapshot {
    state: SeqState,
    /// The first position its cells start at (later than 0 where sliding-window layers dropped
    /// cells out of their window).
    first_pos: i32,
}

impl Kv<'_, '_> {
    /// Gives a sequence's cells back, keeping them in the prefix cache when `keep` (a finished
    /// request). Safe to call twice.
    fn release(&mut self, sequence: &mut Sequence, keep: bool) {
        let Some(seq_id) = sequence.seq_id.take() else {
            return;
        };
        if let Some(source) = sequence.source.take() {
            self.prefix.unpin(source);
        }
        sequence.reserved = 0;
        if keep && sequence.n_past > 0 && !sequence.sees_images && sequence.adapter.is_none() {
            // A draft's rejected tokens may lie beyond the tokens kept.
            self.cut(seq_id, sequence.n_past);
            let tokens = sequence.tokens[..sequence.n_past].to_vec();
            let insertion = self.prefix.insert(tokens, sequence.job.session.clone());
            for dropped in insertion.dropped {
                self.drop_entry(dropped);
            }
            if let Some(entry) = insertion.seq_id {
                self.keep_cells(seq_id, entry);
            }
        }
        self.forget(seq_id);
        self.free_ids.push(seq_id);
    }

    /// Copies a finished sequence's cells to a new prefix cache entry: shared cells under the
    /// entry's sequence id on a unified cache, a snapshot with per-sequence streams (then the
    /// least recently used snapshots go while they hold more than `snapshot_cells`).
    fn keep_cells(&mut self, seq_id: i32, entry: i32) {
        match self.layout {
            KvLayout::Unified => {
                let _ = self.ctx.kv_cache_seq_cp(seq_id, entry, None, None);
            }
            KvLayout::PerSequence => {
                match self.ctx.state_seq_get(seq_id, LlamaStateSeqFlags::empty()) {
                    Ok(state) => {
                        let mut first_pos = self.ctx.kv_cache_seq_pos_min(seq_id);
                        // A snapshot leaves out the cells its sliding window no longer reaches.
                        if let Some(window) = self.sliding_window {
                            let last = self.ctx.kv_cache_seq_pos_max(seq_id);
                            first_pos = first_pos.max(last - window as i32 + 1);
                        }
                        self.snapshots[entry as usize] = Some(Snapshot { state, first_pos });
                    }
                    // Without a snapshot the entry is never reused, and goes by LRU.
                    Err(error) => tracing::warn!("cannot keep a prefix: {error}"),
                }
                while self.prefix.cells() > self.snapshot_cells && self.evict_one() {}
            }
        }
    }

    /// Removes a prefix cache entry's cells (its id is the prefix cache's again).
    fn drop_entry(&mut self, entry: i32) {
        match self.layout {
            KvLayout::Unified => self.forget(entry),
            KvLayout::PerSequence => self.snapshots[entry as usize] = None,
        }
    }

    /// Evicts the least recently used unpinned prefix cache entry and frees its cells; false
    /// when every entry is pinned or none is left.
    fn evict_one(&mut self) -> bool {
        let Some(evicted) = self.prefix.evict() else {
            return false;
        };
        self.drop_entry(evicted);
        true
    }

    /// Removes a sequence's cells from position `from` on.
    fn cut(&mut self, seq_id: i32, from: usize) {
        let _ = self
            .ctx
            .clear_kv_cache_seq(Some(seq_id as u32), Some(from as u32), None);
    }

    /// Removes every cell of a sequence id from the KV cache.
    fn forget(&mut self, seq_id: i32) {
        let _ = self.ctx.clear_kv_cache_seq(Some(seq_id as u32), None, None);
    }

    /// Per-sequence streams: the stream a new sequence runs in and how many prompt tokens it
    /// holds already. llama.cpp puts only sequences with consecutive ids in one ubatch, so the
    /// sequence takes the lowest empty stream; a reused entry (`reuse`: entry and shared length)
    /// is restored there from its snapshot and cut after the shared prefix. `None` when every
    /// stream runs a sequence.
    fn stream_for(&mut self, reuse: Option<(i32, usize)>) -> Option<(i32, usize)> {
        let lowest = (0..self.free_ids.len()).min_by_key(|&i| self.free_ids[i])?;
        let stream = self.free_ids.swap_remove(lowest);
        let Some((entry, shared)) = reuse else {
            return Some((stream, 0));
        };
        let snapshot = self.snapshots[entry as usize].as_ref().expect("reusable");
        if let Err(error) = self.ctx.state_seq_set(&snapshot.state, stream) {
            tracing::warn!("cannot restore a cached prefix: {error}");
            self.forget(stream);
            return Some((stream, 0));
        }
        self.prefix.touch(entry);
        let _ = self
            .ctx
            .clear_kv_cache_seq(Some(stream as u32), Some(shared as u32), None);
        Some((stream, shared))
    }

    /// Whether `shared` tokens of a prefix cache entry can be reused: with a sliding window,
    /// the entry must still hold the window's cells before that point.
    fn reusable(&self, entry: i32, shared: usize) -> bool {
        let first = match self.layout {
            KvLayout::Unified => self.ctx.kv_cache_seq_pos_min(entry),
            KvLayout::PerSequence => match &self.snapshots[entry as usize] {
                Some(snapshot) => snapshot.first_pos,
                None => return false,
            },
        };
        match self.sliding_window {
            None => true,
            Some(window) => first <= 0 || i64::from(first) <= shared as i64 - i64::from(window),
        }
    }
}

struct Scheduler<'m, 'c> {
    model: &'m LlamaModel,
    kv: Kv<'m, 'c>,
    adapters: Adapters,
    /// The adapter the context computes with now (llama.cpp applies one set to a whole batch).
    active_adapter: Option<usize>,
    vision: Option<Arc<Vision>>,
    metrics: ModelMetrics,
    step_tokens: usize,
    batch_invariant: bool,
    /// Decoding sequences may carry drafts (never with batch invariance, whose steps must keep
    /// their shapes, nor with a sliding window, whose layers may already have dropped the
    /// cells a rejected draft's position needs). Measured when the thread starts.
    speculate: bool,
    step_costs: Option<StepCosts>,
    match_records: MatchRecords,
    pool: u32,
    waiting: VecDeque<Job>,
    running: Vec<Sequence>,
    batch: LlamaBatch<'static>,
    planned: Vec<Planned>,
    piece: Vec<u8>,
    /// Logits with a grammar's mask applied, for constrained sequences.
    masked: Vec<f32>,
    price: Price,
}

impl<'m, 'c> Scheduler<'m, 'c> {
    fn new(
        model: &'m LlamaModel,
        ctx: &'c mut LlamaContext<'m>,
        config: &Config,
        vision: Option<Arc<Vision>>,
        metrics: ModelMetrics,
    ) -> Scheduler<'m, 'c> {
        let slots = config.max_sequences as i32;
        let pool = ctx.n_ctx();
        let entries = config.prefix_entries() as i32;
        let (prefix, snapshots) = match config.layout {
            KvLayout::Unified => (PrefixCache::new(slots..slots + entries), Vec::new()),
            KvLayout::PerSequence => (
                PrefixCache::new(0..entries),
                (0..entries).map(|_| None).collect(),
            ),
        };
        Scheduler {
            model,
            adapters: Adapters::default(),
            active_adapter: None,
            kv: Kv {
                ctx,
                layout: config.layout,
                prefix,
                free_ids: (0..slots).rev().collect(),
                sliding_window: config.sliding_window,
                snapshots,
                snapshot_cells: (pool / SNAPSHOT_SHARE).max(pool / config.max_sequences),
            },
            vision,
            metrics,
            step_tokens: config.step_tokens as usize,
            batch_invariant: config.batch_invariant,
            speculate: config.speculation == Speculation::PromptLookup
                && !config.batch_invariant
                && config.sliding_window.is_none(),
            step_costs: config
                .step_seconds
                .map(|seconds| StepCosts::new(seconds.to_vec())),
            match_records: MatchRecords::default(),
            pool,
            waiting: VecDeque::new(),
            running: Vec::new(),
            batch: LlamaBatch::new(config.step_tokens as usize, 1),
            planned: Vec::new(),
            piece: Vec::with_capacity(64),
            masked: Vec::new(),
            price: config.price,
        }
    }

    /// Steps until `stop` is set or the queue's sender is gone with no work left.
    fn run(&mut self, queue: &std_mpsc::Receiver<Job>, stop: &AtomicBool) {
        if self.speculate && self.step_costs.is_none() {
            self.step_costs = Some(self.measure_step_costs());
        }
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if self.running.is_empty() && self.waiting.is_empty() {
                self.report();
                match queue.recv() {
                    Ok(job) => self.waiting.push_back(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = queue.try_recv() {
                self.waiting.push_back(job);
            }
            self.drop_gone();
            self.admit();
            if !self.decode_step() && !self.running.is_empty() {
                // Every sequence waits on its client (or on cells): nothing to compute yet.
                std::thread::sleep(Duration::from_millis(1));
            }
            self.report();
        }
    }

    /// Times a decode step of each of `MEASURED_ROWS` rows (all with logits, as a draft's) on
    /// an empty sequence, before any job runs. Three rounds: the first sets up llama.cpp's graph
    /// for each shape, and each count keeps its fastest later time, which other work on the
    /// machine delays least.
    fn measure_step_costs(&mut self) -> StepCosts {
        let seq_id = *self.kv.free_ids.last().expect("no sequence runs yet");
        let mut seconds = [f64::MAX; MEASURED_ROWS.len()];
        for round in 0..3 {
            for (i, &rows) in MEASURED_ROWS.iter().enumerate() {
                self.batch.clear();
                for pos in 0..rows {
                    let _ = self
                        .batch
                        .add(LlamaToken(pos as i32), pos as i32, &[seq_id], true);
                }
                let started = Instant::now();
                let decoded = self.kv.ctx.decode(&mut self.batch);
                let elapsed = started.elapsed().as_secs_f64();
                self.kv.forget(seq_id);
                if decoded.is_ok() && round > 0 {
                    seconds[i] = seconds[i].min(elapsed);
                }
            }
        }
        let costs = StepCosts::new(seconds.to_vec());
        tracing::info!(?costs, "decode step costs by rows, for speculative drafts");
        costs
    }

    fn report(&self) {
        let used: u32 = self.running.iter().map(|s| s.reserved).sum();
        self.metrics.set_running(self.running.len());
        self.metrics
            .set_kv_cells(used, self.kv.prefix.cells(), self.free_cells());
    }

    /// Cells of the KV cache that neither running sequences nor prefix cache entries hold.
    fn free_cells(&self) -> u32 {
        let used: u32 = self.running.iter().map(|s| s.reserved).sum();
        let cached = match self.kv.layout {
            KvLayout::Unified => self.kv.prefix.cells(),
            KvLayout::PerSequence => 0,
        };
        self.pool.saturating_sub(used + cached)
    }

    /// Ends sequences whose client went away and those that delivered their last event, and
    /// forgets waiting jobs whose client left.
    fn drop_gone(&mut self) {
        self.waiting.retain(|job| !job.events.is_closed());
        for i in (0..self.running.len()).rev() {
            let sequence = &mut self.running[i];
            sequence.flush();
            if sequence.job.events.is_closed() {
                sequence.client_gone = true;
            }
            let done = sequence.finished && sequence.held.is_empty();
            if sequence.client_gone || done {
                let mut sequence = self.running.swap_remove(i);
                self.kv.release(&mut sequence, false);
            }
        }
    }

    /// Starts waiting jobs, oldest first, while sequence ids and KV cells allow.
    fn admit(&mut self) {
        while let Some(job) = self.waiting.front() {
            let adapter = match &job.adapter {
                Some(path) => match self.adapters.index(self.model, path) {
                    Ok(index) => Some(index),
                    Err(problem) => {
                        let job = self.waiting.pop_front().expect("peeked");
                        let error = InferError::invalid("/lora", problem);
                        let _ = job.events.try_send(TextEvent::Failed(error));
                        continue;
                    }
                },
                None => None,
            };
            // A prompt with images matches no cached prefix: its image positions hold no ids;
            // nor does an adapted one, whose cells differ from the base model's.
            let matches = match (&job.images, adapter) {
                (Some(_), _) | (_, Some(_)) => Vec::new(),
                (None, None) => self.kv.prefix.matches(
                    &job.prompt,
                    job.prompt.len().saturating_sub(self.min_prompt_rows()),
                    job.session.as_deref(),
                ),
            };
            let reuse = matches
                .into_iter()
                .find(|&(entry, shared)| self.kv.reusable(entry, shared));
            let (prompt, max_tokens) = (job.prompt.len(), job.max_tokens);
            let placed = match self.kv.layout {
                KvLayout::Unified => self.place_in_unified_cache(reuse, prompt, max_tokens),
                KvLayout::PerSequence => self.kv.stream_for(reuse),
            };
            let Some((seq_id, cached)) = placed else {
                return;
            };
            let needed = (prompt - cached) as u32 + max_tokens;
            // Only an entry sharing cells with a running sequence is pinned.
            let source = reuse
                .filter(|_| self.kv.layout == KvLayout::Unified)
                .map(|(entry, _)| entry);
            let mut job = self.waiting.pop_front().expect("peeked");
            let images = job.images.take();
            let sampler = Sampler::new(&job.sampling, &job.prompt);
            self.metrics.prompt(job.prompt.len() as u32, cached as u32);
            let now = Instant::now();
            self.running.push(Sequence {
                seq_id: Some(seq_id),
                n_prompt: job.prompt.len(),
                tokens: std::mem::take(&mut job.prompt),
                n_past: cached,
                cached,
                source,
                reserved: needed,
                generated: 0,
                sampler,
                margins: Vec::new(),
                utf8: Utf8Stream::default(),
                held: VecDeque::new(),
                admitted: now,
                first_token: None,
                last_token: now,
                finished: false,
                client_gone: false,
                sees_images: images.is_some(),
                adapter,
                drafting: Drafting::default(),
                drafted: 0,
                kept: 0,
                job,
            });
            if let Some(chunks) = images {
                self.prefill_with_images(self.running.len() - 1, &chunks);
            }
        }
    }

    /// Evaluates a just admitted sequence's prompt of text and image chunks, then samples its
    /// first token.
    fn prefill_with_images(&mut self, i: usize, chunks: &MtmdInputChunks) {
        let seq_id = self.running[i].seq_id.expect("admitted");
        if let Err(error) = self.use_adapter(self.running[i].adapter) {
            return self.fail(i, error);
        }
        let vision = self
            .vision
            .clone()
            .expect("only a model with vision takes images");
        let n_batch = self.step_tokens as i32;
        match vision.evaluate(chunks, self.kv.ctx, seq_id, n_batch) {
            Ok(()) => {
                let sequence = &mut self.running[i];
                sequence.n_past = sequence.n_prompt;
                // The last logits llama.cpp computed: the prompt's last position's.
                self.sample(i, -1);
            }
            Err(error) => self.fail(i, error),
        }
    }

    /// Unified cache: a sequence id for a job of `prompt` tokens and up to `max_tokens`, and how
    /// many prompt tokens it holds already: the cached prefix (`reuse`) copied in (cells shared,
    /// the entry pinned). `None` when no id is free or evicting prefix cache entries leaves too
    /// few cells.
    fn place_in_unified_cache(
        &mut self,
        reuse: Option<(i32, usize)>,
        prompt: usize,
        max_tokens: u32,
    ) -> Option<(i32, usize)> {
        if self.kv.free_ids.is_empty() {
            return None;
        }
        if let Some((entry, _)) = reuse {
            self.kv.prefix.pin(entry);
        }
        self.trim_prefix_cache(prompt + max_tokens as usize);
        let cached = reuse.map_or(0, |(_, shared)| shared);
        let needed = (prompt - cached) as u32 + max_tokens;
        while self.free_cells() < needed && self.kv.evict_one() {}
        if self.free_cells() < needed {
            if let Some((entry, _)) = reuse {
                self.kv.prefix.unpin(entry);
            }
            return None;
        }
        let seq_id = self.kv.free_ids.pop().expect("checked");
        if let Some((entry, shared)) = reuse {
            let _ = self
                .kv
                .ctx
                .kv_cache_seq_cp(entry, seq_id, Some(0), Some(shared as u32));
        }
        Some((seq_id, cached))
    }

    /// Evicts least recently used prefix cache entries before a sequence of `joining` cells
    /// (prompt and output) joins, down to `PREFIX_TAX - running` average sequences' cells (at
    /// least `PREFIX_CAP_FLOOR`).
    fn trim_prefix_cache(&mut self, joining: usize) {
        let running = self.running.len() + 1;
        let live: usize = self
            .running
            .iter()
            .map(|s| s.n_prompt + s.job.max_tokens as usize)
            .sum::<usize>()
            + joining;
        let cap = (PREFIX_TAX.saturating_sub(running) * live / running).max(PREFIX_CAP_FLOOR);
        while self.kv.prefix.cells() as usize > cap && self.kv.evict_one() {}
    }

    /// Prompt rows computed in one pass at least (unless the prompt is shorter): the last one,
    /// whose logits give the first token, and with batch invariance two, because llama.cpp
    /// computes one row's attention with another kernel than several rows'.
    fn min_prompt_rows(&self) -> usize {
        if self.batch_invariant { 2 } else { 1 }
    }

    /// Plans one step, decodes it in one or more passes, and samples after each. Returns false
    /// when there was nothing to do.
    fn decode_step(&mut self) -> bool {
        self.plan();
        if self.planned.is_empty() {
            return false;
        }
        let mut planned = std::mem::take(&mut self.planned);
        // llama.cpp applies one adapter set to a whole batch: sequences with the same adapter
        // (or none) decode together, the base model's first.
        let running = &self.running;
        planned.sort_by_key(|plan| running[plan.sequence].adapter.map_or(0, |a| a + 1));
        let split = SPLIT_PASSES && self.kv.layout == KvLayout::Unified;
        let mut start = 0;
        while start < planned.len() {
            let adapter = self.running[planned[start].sequence].adapter;
            let len = planned[start..]
                .iter()
                .take_while(|plan| self.running[plan.sequence].adapter == adapter)
                .count();
            let group = &mut planned[start..start + len];
            start += len;
            if let Err(error) = self.use_adapter(adapter) {
                for plan in group.iter() {
                    self.fail(plan.sequence, error.clone());
                }
                continue;
            }
            let passes = if self.batch_invariant {
                invariant_passes(group)
            } else {
                passes(group, split)
            };
            for pass in passes {
                self.decode_pass(&mut group[pass]);
            }
        }
        self.planned = planned;
        true
    }

    /// Makes the context compute with `adapter` (or the base model alone).
    fn use_adapter(&mut self, adapter: Option<usize>) -> Result<(), String> {
        if self.active_adapter == adapter {
            return Ok(());
        }
        let set = match adapter {
            Some(index) => self
                .kv
                .ctx
                .lora_adapter_set(self.adapters.get(index), 1.0)
                .map_err(|e| e.to_string()),
            None => match self.active_adapter {
                Some(active) => self
                    .kv
                    .ctx
                    .lora_adapter_remove(self.adapters.get(active))
                    .map_err(|e| e.to_string()),
                None => Ok(()),
            },
        };
        set.map_err(|e| format!("applying the LoRA adapter: {e}"))?;
        self.active_adapter = adapter;
        Ok(())
    }

    /// Plans the step's tokens: the next token of every decoding sequence whose client keeps up,
    /// then prompt chunks.
    fn plan(&mut self) {
        self.planned.clear();
        let mut budget = self.step_tokens;
        for (i, sequence) in self.running.iter().enumerate() {
            if budget == 0 {
                break;
            }
            if !sequence.decoding() || !sequence.held.is_empty() {
                continue;
            }
            budget -= 1;
            self.planned.push(Planned {
                sequence: i,
                tokens: 1,
                decode: true,
                logits: None,
                draft: Vec::new(),
                matched: 0,
            });
        }
        if self.speculate {
            self.draft(&mut budget);
        }
        // Prompt chunks with what is left. While streams decode, prompts get at most a quarter
        // of the step: a step's duration is every stream's inter-token gap, and on a CPU a
        // 512-token chunk costs seconds while 128-token chunks prefill as fast per token.
        let share = (self.step_tokens / PREFILL_SHARE_WHILE_DECODING).max(1);
        if !self.planned.is_empty() {
            budget = budget.min(share);
        }
        // Shortest remaining prompt first: a short prompt is never stuck behind the dozens of
        // chunks of a long one, which loses only a few tokens of a step.
        let mut prefilling: Vec<usize> = (0..self.running.len())
            .filter(|&i| self.running[i].prefilling())
            .collect();
        prefilling.sort_by_key(|&i| self.running[i].n_prompt - self.running[i].n_past);
        for i in prefilling {
            if budget == 0 {
                break;
            }
            let sequence = &self.running[i];
            let remaining = sequence.n_prompt - sequence.n_past;
            let mut take = budget.min(remaining);
            // A prompt that needs further steps reads a quarter step at most while other
            // requests run: a step's duration is also what a request arriving during it waits
            // before its prompt starts.
            if take < remaining && self.running.len() > 1 {
                take = take.min(share);
            }
            let rows = self.min_prompt_rows();
            if take < remaining && rows > 1 {
                // Leave no row to be computed alone later, and compute none alone now.
                take = take.min(remaining - rows);
                if take < rows {
                    continue;
                }
            }
            budget -= take;
            self.planned.push(Planned {
                sequence: i,
                tokens: take,
                decode: false,
                logits: None,
                draft: Vec::new(),
                matched: 0,
            });
        }
        // llama.cpp splits a batch over per-sequence streams into ubatches of sequences with
        // consecutive ids, taken in batch order: in id order, running sequences share one.
        // Batch invariance decodes prompt chunks in passes of their own, after the decode rows.
        if self.kv.layout == KvLayout::PerSequence {
            let (running, invariant) = (&self.running, self.batch_invariant);
            self.planned
                .sort_by_key(|plan| (invariant && !plan.decode, running[plan.sequence].seq_id));
        }
    }

    /// Gives the planned decode entries drafts, sized by `draft::draft_lengths` within the
    /// step's `budget`. A draft never reaches past the sequence's `max_tokens`, so its cells stay
    /// within the sequence's reservation (or stream).
    fn draft(&mut self, budget: &mut usize) {
        let Some(costs) = &self.step_costs else {
            return;
        };
        // As many decode rows as the most measured leave no room for a draft: no lookups.
        if self.planned.len() >= MEASURED_ROWS[MEASURED_ROWS.len() - 1] || *budget == 0 {
            return;
        }
        self.match_records.fade();
        let mut proposals = Vec::with_capacity(self.planned.len());
        let mut offers = Vec::with_capacity(self.planned.len());
        for plan in &self.planned {
            let sequence = &mut self.running[plan.sequence];
            sequence.drafting.fade();
            let left = (sequence.job.max_tokens - sequence.generated) as usize;
            let limit = draft::MAX_DRAFT.min(left.saturating_sub(1));
            let lookup = match sequence.job.shaping.active_grammar() {
                Some(_) => draft::Lookup {
                    draft: &[],
                    matched: 0,
                },
                None => draft::prompt_lookup(&sequence.tokens, limit),
            };
            let prior = self.match_records.acceptance(lookup.matched);
            offers.push(Offer {
                available: lookup.draft.len(),
                acceptance: sequence.drafting.acceptance(prior),
            });
            proposals.push((lookup.draft.to_vec(), lookup.matched));
        }
        let lengths = draft::draft_lengths(&offers, *budget, costs);
        for ((plan, (mut proposal, matched)), length) in
            self.planned.iter_mut().zip(proposals).zip(lengths)
        {
            proposal.truncate(length);
            plan.draft = proposal;
            plan.matched = matched;
            plan.tokens += length;
            *budget -= length;
        }
    }

    /// Decodes one `llama_decode` batch of planned entries, then samples each sequence whose
    /// entry ends with logits: its next token, or the first after its prompt; a draft's entry
    /// is verified row by row.
    fn decode_pass(&mut self, pass: &mut [Planned]) {
        self.batch.clear();
        for plan in pass.iter_mut() {
            let sequence = &self.running[plan.sequence];
            let seq_id = sequence.seq_id.expect("planned sequences run");
            if !plan.draft.is_empty() {
                // The next token, then the draft, each row with logits.
                plan.logits = Some(self.batch.n_tokens());
                let next = sequence.tokens[sequence.n_past];
                for (offset, &token) in std::iter::once(&next).chain(&plan.draft).enumerate() {
                    let pos = (sequence.n_past + offset) as i32;
                    let _ = self.batch.add(LlamaToken(token), pos, &[seq_id], true);
                }
                continue;
            }
            let end = sequence.n_past + plan.tokens;
            for pos in sequence.n_past..end {
                let logits = pos + 1 == end && end >= sequence.n_prompt;
                if logits {
                    plan.logits = Some(self.batch.n_tokens());
                }
                let token = LlamaToken(sequence.tokens[pos]);
                // The batch holds `step_tokens` and a step plans no more.
                let _ = self.batch.add(token, pos as i32, &[seq_id], logits);
            }
        }
        if let Err(error) = self.kv.ctx.decode(&mut self.batch) {
            for plan in pass.iter() {
                self.fail(plan.sequence, format!("decode: {error}"));
            }
            return;
        }
        for plan in pass.iter() {
            if !plan.draft.is_empty() {
                self.verify(plan, plan.logits.expect("set above"));
                continue;
            }
            self.running[plan.sequence].n_past += plan.tokens;
            if let Some(index) = plan.logits {
                self.sample(plan.sequence, index);
            }
        }
    }

    /// Samples a draft entry's rows in order, as plain decoding would sample each token: a
    /// draft token is kept while the draw from the row before it equals it. So the output is
    /// the same as without the draft (with the same draws from a seeded sampler), and with
    /// sampling the kept tokens follow the model's distribution exactly (a draft is one fixed
    /// token, and keeping it when the draw picks it is the speculative acceptance rule for it).
    /// The cells of the rejected draft tokens are removed.
    fn verify(&mut self, plan: &Planned, first_row: i32) {
        let (i, draft) = (plan.sequence, &plan.draft);
        // The position of the next token, whose cell this step wrote first.
        let start = self.running[i].n_past;
        let mut kept = 0;
        loop {
            // The cells through `start + kept` hold tokens the model chose.
            self.running[i].n_past = start + kept + 1;
            let Some(token) = self.choose(i, first_row + kept as i32) else {
                break;
            };
            if self.take(i, token) {
                // Finishing released the cells, cut at `n_past`.
                break;
            }
            if draft.get(kept) == Some(&token) {
                kept += 1;
                continue;
            }
            let sequence = &self.running[i];
            let seq_id = sequence.seq_id.expect("a running sequence holds its cells");
            self.kv.cut(seq_id, sequence.n_past);
            break;
        }
        let sequence = &mut self.running[i];
        sequence.drafting.verified(draft.len(), kept);
        self.match_records.verified(plan.matched, draft.len(), kept);
        sequence.drafted += draft.len() as u32;
        sequence.kept += kept as u32;
    }

    /// Samples a sequence's next token from the logits at batch index `index` and takes it.
    fn sample(&mut self, i: usize, index: i32) {
        if let Some(token) = self.choose(i, index) {
            self.take(i, token);
        }
    }

    /// Draws a sequence's next token from the logits at batch index `index` (through its
    /// grammar, if one constrains it now); `None` when the grammar failed the sequence.
    fn choose(&mut self, i: usize, index: i32) -> Option<i32> {
        let logits = self.kv.ctx.get_logits_ith(index);
        let sequence = &mut self.running[i];
        let token = match sequence.job.shaping.active_grammar() {
            Some(grammar) => match grammar.mask(logits, &mut self.masked) {
                Ok(()) => sequence.sampler.sample(&self.masked),
                Err(error) => {
                    self.fail(i, format!("grammar: {error}"));
                    return None;
                }
            },
            None => sequence.sampler.sample(logits),
        };
        if sequence.job.trace.is_some() {
            sequence.margins.push(super::sampling::margin(logits));
        }
        Some(token)
    }

    /// Takes a sequence's sampled token: its timing, the end of generation (end of text, a
    /// stop sequence, the grammar, `max_tokens`) or its text for the client. Says whether the
    /// sequence ended.
    fn take(&mut self, i: usize, token: i32) -> bool {
        let sequence = &mut self.running[i];
        let was_constrained = sequence.job.shaping.active_grammar().is_some();
        let now = Instant::now();
        match sequence.first_token {
            None => {
                sequence.first_token = Some(now);
                self.metrics
                    .time_to_first_token((now - sequence.job.arrived).as_secs_f64());
            }
            Some(_) => self
                .metrics
                .inter_token_latency((now - sequence.last_token).as_secs_f64()),
        }
        sequence.last_token = now;
        let vocab = self.model.vocab();
        if !sequence.job.ignore_eos && vocab.is_eog(LlamaToken(token)) {
            self.finish(i, FinishReason::Stop);
            return true;
        }
        sequence.generated += 1;
        sequence.tokens.push(token);
        sequence.sampler.accept(token);
        self.metrics.generated_token();
        let mut ending = None;
        if was_constrained {
            let accepted = match sequence.job.shaping.active_grammar() {
                Some(grammar) => grammar.accept(token),
                None => Ok(()),
            };
            match accepted.and_then(|()| sequence.job.shaping.after_constrained_token()) {
                Ok(reason) => ending = reason,
                Err(error) => {
                    self.fail(i, format!("grammar: {error}"));
                    return true;
                }
            }
        }
        self.piece.clear();
        vocab.token_to_piece_into(LlamaToken(token), &mut self.piece, false, None);
        let text = sequence.utf8.push(&self.piece);
        if !text.is_empty() {
            let events = sequence.job.shaping.parser.push(&text);
            if sequence.deliver(events) {
                ending = Some(FinishReason::Stop);
            }
        }
        if ending.is_none() && sequence.generated >= sequence.job.max_tokens {
            ending = Some(FinishReason::Length);
        }
        if let Some(reason) = ending {
            self.finish(i, reason);
            return true;
        }
        false
    }

    /// Ends a sequence with an error; its cells are freed.
    fn fail(&mut self, i: usize, error: String) {
        let sequence = &mut self.running[i];
        tracing::error!(%error, "failing a sequence");
        sequence.held.clear();
        sequence.send(TextEvent::Failed(InferError::Internal(error)));
        sequence.finished = true;
        self.kv.release(sequence, false);
    }

    /// Completes a sequence: the last text, `Done`, the trace; its cells go to the prefix cache.
    fn finish(&mut self, i: usize, reason: FinishReason) {
        let price = self.price;
        let sequence = &mut self.running[i];
        sequence.finished = true;
        let rest = sequence.utf8.finish();
        let mut events = sequence.job.shaping.parser.push(&rest);
        events.extend(sequence.job.shaping.parser.finish());
        sequence.deliver(events);
        let usage = Usage::new(sequence.n_prompt as u32, sequence.generated)
            .with_cached_tokens(sequence.cached as u32)
            .priced(&price);
        let parser = &sequence.job.shaping.parser;
        let finish_reason = match reason {
            FinishReason::Stop if !parser.calls().is_empty() => FinishReason::ToolCalls,
            reason => reason,
        };
        let completion = Completion {
            text: parser.content().to_owned(),
            tool_calls: parser.calls().to_vec(),
            json: sequence.job.shaping.json,
            usage,
            finish_reason,
        };
        sequence.send(TextEvent::Done(completion));
        if let Some(trace) = sequence.job.trace.take() {
            let first = sequence.first_token.unwrap_or(sequence.last_token);
            let _ = trace.send(Trace {
                tokens: sequence.tokens[sequence.n_prompt..].to_vec(),
                margins: std::mem::take(&mut sequence.margins),
                timing: GenerationTiming {
                    prefill: first - sequence.admitted,
                    decode: sequence.last_token - first,
                    generated: sequence.generated,
                },
                drafted: sequence.drafted,
                kept: sequence.kept,
            });
        }
        self.kv.release(sequence, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plan of `decodes` decode tokens, then prompt chunks of these lengths.
    fn plan(decodes: usize, chunks: &[usize]) -> Vec<Planned> {
        let entry = |sequence, tokens, decode| Planned {
            sequence,
            tokens,
            decode,
            logits: None,
            draft: Vec::new(),
            matched: 0,
        };
        let decoding = (0..decodes).map(|i| entry(i, 1, true));
        let prompts = chunks.iter().enumerate();
        decoding
            .chain(prompts.map(|(i, &tokens)| entry(decodes + i, tokens, false)))
            .collect()
    }

    fn pairs(passes: Vec<std::ops::Range<usize>>) -> Vec<(usize, usize)> {
        passes.into_iter().map(|p| (p.start, p.end)).collect()
    }

    /// The passes of such a plan, as (start, end) pairs.
    fn batches(decodes: usize, chunks: &[usize], split: bool) -> Vec<(usize, usize)> {
        pairs(passes(&plan(decodes, chunks), split))
    }

    #[test]
    fn decode_rows_stay_under_the_tiled_attention_path() {
        // Under the tile size together: one batch.
        assert_eq!(batches(8, &[40], true), [(0, 9)]);
        assert_eq!(batches(32, &[], true), [(0, 32)]);
        assert_eq!(batches(0, &[512], true), [(0, 1)]);
        assert_eq!(batches(0, &[20, 30], true), [(0, 2)]);
        // Reaching it: prompt chunks get their own batch.
        assert_eq!(batches(32, &[50], true), [(0, 32), (32, 33)]);
        assert_eq!(batches(8, &[40, 16], true), [(0, 8), (8, 10)]);
        // Decode rows in batches of 63.
        assert_eq!(batches(63, &[], true), [(0, 63)]);
        assert_eq!(batches(64, &[], true), [(0, 63), (63, 64)]);
        assert_eq!(batches(126, &[128], true), [(0, 63), (63, 126), (126, 127)]);
        assert_eq!(batches(70, &[10], true), [(0, 63), (63, 71)]);
        // Not split (GPU): everything in one batch.
        assert_eq!(batches(70, &[128], false), [(0, 71)]);
    }

    #[test]
    fn batch_invariance_gives_each_prompt_chunk_a_pass() {
        let passes = |decodes, chunks: &[usize]| pairs(invariant_passes(&plan(decodes, chunks)));
        assert_eq!(passes(8, &[40, 16]), [(0, 8), (8, 9), (9, 10)]);
        assert_eq!(passes(0, &[20, 30]), [(0, 1), (1, 2)]);
        assert_eq!(passes(32, &[]), [(0, 32)]);
    }
}
