//! `ember bench`: Ember against the runtimes its users would otherwise pick, in one run per
//! family; `ember bench speech` is `speech.rs`, `ember bench image` is `image.rs`, `ember bench
//! speculative` is `speculative.rs`, `ember bench lora` is `lora.rs`, `ember bench embed` is
//! `embed.rs`. `ember bench llm`: Ember against llama.cpp's own
//! tools on the same GGUF files. Kernel rows: prefill and decode rates of the engine in-process against `llama-bench`, one side
//! at a time. Serving rows: aggregate generated tokens per second (median of timed runs that
//! alternate between the two servers) and its share of llama.cpp's own batched decode rate
//! (`llama-batched-bench`, the ceiling), time to first token and inter-token latency of
//! `ember serve` against `llama-server -np N` with the same context per sequence, a mixed run
//! where long prompts arrive during short streams, and each server's peak RSS. Prints one table
//! and writes the rows as JSON. Never part of `cargo test`.

mod batch;
mod diffusion;
mod driver;
mod embed;
mod gateway;
mod gguf;
mod image;
mod kernel;
mod llama;
mod load;
mod lora;
mod prompts;
mod report;
mod servers;
mod speculative;
mod speech;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use ember_core::catalog::Engine;
use ember_core::metrics::Metrics;
use ember_core::runner::{LoadedModel, ModelWorker};
use ember_core::tasks::{TaskOutput, TaskRequest};
use ember_core::{Catalog, InferError, ModelSpec, installed};
use ember_engines::llm::KvLayout;
use kernel::{DECODE_DEPTHS, DECODE_TOKENS, EmberKernels, KernelSamples, PREFILL_TOKENS};
use load::{Api, Arrivals, LoadResult, LongLoad, Target};
use prompts::Prompts;
use report::{Row, median, percentile};
use servers::{Server, ServerConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

const DEFAULT_MODELS: [&str; 3] = [
    "@hf/qwen/qwen2.5-coder-0.5b-instruct",
    "@hf/huggingfacetb/smollm2-135m-instruct",
    "@hf/google/gemma-3-270m",
];
/// KV cells per sequence on both servers (room for a long prompt and its output).
const CTX_PER_SEQUENCE: u32 = 4608;
const SHORT_MAX_TOKENS: u32 = 128;
const LONG_PROMPT_TOKENS: usize = 4000;
const LONG_MAX_TOKENS: u32 = 16;
/// Pause between one long prompt finishing and the next being sent, in the mixed run.
const LONG_INTERVAL: Duration = Duration::from_secs(5);
/// The concurrency at which the mixed run follows the timed runs; its calibration runs this many
/// clients, one of them the long-prompt client.
const MIXED_CONCURRENCY: u32 = 8;
/// The mixed run's short requests arrive at this share of the slower server's short-request rate
/// in the calibration, so that both servers have room to spare on average and only the long
/// prompts make requests wait.
const MIXED_LOAD: f64 = 0.5;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Text generation: Ember against llama-bench and llama-server (llama.cpp from the
    /// llama-cpp-python 0.3.36 sdist) on the same GGUF.
    Llm(LlmBench),
    /// Speech recognition: Ember's Whisper against faster-whisper on the same weights.
    Speech(speech::SpeechBench),
    /// Images: Ember's classifier against ONNX Runtime on the same EfficientNet-Lite0 weights, and
    /// its Stable Diffusion against diffusers on the same folder.
    Image(image::ImageBench),
    /// AI Gateway: cached requests through Ember's gateway against LiteLLM's proxy with its
    /// cache, in front of the same upstream.
    Gateway(gateway::GatewayBench),
    /// Async batches: interactive streams' time to first token beside a queued batch, against
    /// the same streams alone.
    Batch(batch::BatchBench),
    /// Speculative decoding: one stream's decode rate on code edits and chat, Ember with and
    /// without prompt lookup against llama-server with and without its n-gram drafts.
    Speculative(speculative::SpeculativeBench),
    /// Embeddings: Ember's all-MiniLM-L6-v2 against ONNX Runtime on the same weights (and on the
    /// int8 export), single texts, batches, long texts and concurrent requests.
    Embed(embed::EmbedBench),
    /// LoRA: concurrent streams applying different adapters and none, against llama-server with
    /// the same adapters chosen per request.
    Lora(lora::LoraBench),
}

/// A part of `ember bench llm`, each reported on its own rows.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
enum Part {
    /// Prefill and decode rates in-process against llama-bench.
    Kernels,
    /// The timed serving runs at each concurrency, and llama-batched-bench's ceiling.
    Throughput,
    /// Long prompts arriving during short streams, at the mixed run's concurrency.
    Mixed,
}

#[derive(Args)]
pub struct LlmBench {
    /// Catalog ids of the models (pulled first if missing).
    #[arg(long, value_delimiter = ',', default_values = DEFAULT_MODELS)]
    models: Vec<String>,
    /// The parts to run (each takes under 15 minutes per model on 2 cores at the defaults).
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["kernels", "throughput", "mixed"])]
    parts: Vec<Part>,
    /// CPU threads, on both sides.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Rounds of the kernel tests, alternating between llama-bench and Ember, after one warm-up
    /// each; the median is reported.
    #[arg(long, default_value_t = 5)]
    repetitions: u32,
    /// Concurrent streams of the serving runs.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 8, 32])]
    concurrency: Vec<u32>,
    /// Seconds each timed serving run keeps starting requests (the mixed run: twice as long to
    /// calibrate, then `rounds` times as long).
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Timed serving runs per server and concurrency, alternating between the two servers; the
    /// median rate is reported.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Ember's KV cache layout in the serving runs (`--kv-layout` of `ember serve`).
    #[arg(long, default_value = "unified")]
    kv_layout: KvLayout,
    /// Ember's serving runs with `--batch-invariant` (implies the per-sequence layout).
    #[arg(long)]
    batch_invariant: bool,
    /// Folder with llama-bench and llama-server (default: scripts/bench/build-llama-tools.sh
    /// builds them once into ~/.cache/ember).
    #[arg(long)]
    llama_bin: Option<PathBuf>,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "results.json")]
    out: PathBuf,
}

/// What the bench needs from the CLI around it.
pub struct Env<'a> {
    pub catalog: &'a Catalog,
    pub catalog_file: Option<&'a Path>,
    pub home: &'a Path,
    pub runtime: &'a tokio::runtime::Runtime,
}

pub fn run(command: BenchCommand, env: &Env) -> Result<()> {
    match command {
        BenchCommand::Llm(bench) => bench.run(env),
        BenchCommand::Speech(bench) => bench.run(env),
        BenchCommand::Image(bench) => bench.run(env),
        BenchCommand::Gateway(bench) => bench.run(env),
        BenchCommand::Batch(bench) => bench.run(env),
        BenchCommand::Speculative(bench) => bench.run(env),
        BenchCommand::Lora(bench) => bench.run(env),
        BenchCommand::Embed(bench) => bench.run(env),
    }
}

/// The catalog entry of `id`.
fn catalog_spec<'a>(env: &Env<'a>, id: &str) -> Result<&'a ModelSpec> {
    env.catalog
        .get(id)
        .with_context(|| format!("{id} is not in the catalog"))
}

/// The model's folder, pulled first if it is not installed.
/// A catalog id's last part (`qwen2.5-coder-0.5b-instruct`), to name a model in the report.
fn short_name(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

fn installed_dir(env: &Env, spec: &ModelSpec) -> Result<PathBuf> {
    let dir = installed::model_dir(env.home, spec);
    if !installed::is_installed(spec, &dir) {
        crate::pull_models(
            env.catalog,
            env.home,
            std::slice::from_ref(&spec.id),
            false,
            None,
        )?;
    }
    Ok(dir)
}

/// A model's serving worker, loaded as `ember serve` loads it, for benches that time its requests.
fn serving_worker(env: &Env, spec: &ModelSpec, dir: &Path) -> Result<ModelWorker> {
    let metrics = Metrics::new().model(&spec.id);
    let _guard = env.runtime.enter();
    match ember_engines::load(spec, dir, &Default::default(), metrics)? {
        LoadedModel::Worker(worker) => Ok(worker),
        _ => bail!("{} does not run on a worker thread", spec.id),
    }
}

/// Sends every request to `worker` at once; their answers, in order.
async fn all_at_once(
    worker: &ModelWorker,
    requests: Vec<TaskRequest>,
) -> Result<Vec<Result<TaskOutput, InferError>>> {
    let answers: Vec<_> = requests
        .into_iter()
        .map(|request| {
            let worker = worker.clone();
            tokio::spawn(async move { worker.run(request).await })
        })
        .collect();
    let mut outputs = Vec::new();
    for answer in answers {
        outputs.push(answer.await?);
    }
    Ok(outputs)
}

fn warn_if_debug_build() {
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build of ember; build with --release for real numbers");
    }
}

/// Runs a setup script of `scripts/bench/` (it installs what it needs once, outside the clone) and
/// returns the path its last line of output names.
fn setup_script(name: &str) -> Result<PathBuf> {
    let lines = setup_script_lines(name)?;
    lines
        .last()
        .cloned()
        .with_context(|| format!("{name} printed nothing"))
}

/// Runs `scripts/bench/<name>` (which installs what a bench's anchor needs once) and returns the
/// paths it prints, one per line.
fn setup_script_lines(name: &str) -> Result<Vec<PathBuf>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts/bench")
        .join(name);
    if !script.exists() {
        bail!(
            "{} is missing (the bench runs from a clone)",
            script.display()
        );
    }
    eprintln!("setup: {}", script.display());
    let output = std::process::Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!("{} failed ({})", script.display(), output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(stdout
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| PathBuf::from(line.trim()))
        .collect())
}

/// `/proc/loadavg`, with a warning when the machine was busy: other work skews every number.
fn load_average() -> String {
    let load_average = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let busy = load_average
        .split(' ')
        .next()
        .and_then(|l| l.parse::<f64>().ok());
    if let Some(load) = busy.filter(|l| *l > 0.5) {
        eprintln!("warning: load average {load}: other work on the machine skews the numbers");
    }
    load_average.trim().to_string()
}

/// One server's serving results at one concurrency.
#[derive(Default)]
struct Serving {
    /// The timed runs, in order.
    rounds: Vec<LoadResult>,
    /// Short requests per second with the long-prompt client, closed loop (the calibration).
    mixed_capacity: Option<f64>,
    /// The open-loop mixed run, and its short requests' arrival rate.
    mixed: Option<(f64, LoadResult)>,
    peak_rss: u64,
}

impl Serving {
    /// Median over the rounds of the generated tokens per second.
    fn tokens_per_s(&self) -> Option<f64> {
        let rates: Vec<f64> = self.rounds.iter().map(|r| r.tokens_per_s).collect();
        median(&rates)
    }

    fn mixed_run(&self) -> Option<&LoadResult> {
        self.mixed.as_ref().map(|(_, load)| load)
    }

    /// Every round's measurements of one kind, pooled.
    fn pooled(&self, values: impl Fn(&LoadResult) -> &[f64]) -> Vec<f64> {
        self.rounds
            .iter()
            .flat_map(|r| values(r).iter().copied())
            .collect()
    }
}

impl LlmBench {
    fn run(&self, env: &Env) -> Result<()> {
        warn_if_debug_build();
        let mut specs = Vec::new();
        for id in &self.models {
            let spec = catalog_spec(env, id)?;
            if spec.engine != Engine::LlamaCpp {
                bail!("{id} does not run on llama.cpp");
            }
            specs.push(spec);
        }
        let missing: Vec<String> = specs
            .iter()
            .filter(|s| !installed::is_installed(s, &installed::model_dir(env.home, s)))
            .map(|s| s.id.clone())
            .collect();
        if !missing.is_empty() {
            crate::pull_models(env.catalog, env.home, &missing, false, None)?;
        }
        let bin = llama::tools_dir(self.llama_bin.clone())?;
        let work = std::env::temp_dir().join(format!("ember-bench-{}", std::process::id()));
        std::fs::create_dir_all(&work)?;

        let load_average = load_average();
        let mut rows = Vec::new();
        let mut errors = Vec::new();
        for spec in specs {
            self.model(env, spec, &bin, &work, &mut rows, &mut errors)
                .with_context(|| format!("{} (logs in {})", spec.id, work.display()))?;
        }
        println!();
        report::print_table(&rows, "llama.cpp");
        for error in &errors {
            println!("failed: {error}");
        }
        let json = serde_json::json!({
            "settings": {
                "threads": self.threads,
                "repetitions": self.repetitions,
                "parts": self.parts,
                "concurrency": self.concurrency,
                "serving_seconds": self.duration,
                "serving_rounds": self.rounds,
                "ctx_per_sequence": CTX_PER_SEQUENCE,
                "ember_kv_layout": self.ember_layout().name(),
                "ember_batch_invariant": self.batch_invariant,
                "short_max_tokens": SHORT_MAX_TOKENS,
                "long_prompt_tokens": LONG_PROMPT_TOKENS,
                "long_max_tokens": LONG_MAX_TOKENS,
                "mixed": format!(
                    "1 long-prompt client; short requests in an open loop at {MIXED_LOAD} of the \
                     slower server's rate in a calibration with {} closed-loop short clients",
                    MIXED_CONCURRENCY - 1
                ),
                "llama_cpp": "llama-cpp-python 0.3.36 sdist (vendor/llama.cpp)",
                "ember": env!("CARGO_PKG_VERSION"),
                "optimized_build": !cfg!(debug_assertions),
                "load_average_at_start": load_average,
            },
            "rows": rows,
            "errors": errors,
        });
        report::write_json(&self.out, &json)?;
        std::fs::remove_dir_all(&work)?;
        Ok(())
    }

    fn model(
        &self,
        env: &Env,
        spec: &ModelSpec,
        bin: &Path,
        work: &Path,
        rows: &mut Vec<Row>,
        errors: &mut Vec<String>,
    ) -> Result<()> {
        let name = short_name(&spec.id);
        let dir = installed::model_dir(env.home, spec);
        let gguf = dir.join("model.gguf");
        let info = gguf::read(&gguf)?;

        if self.parts.contains(&Part::Kernels) {
            let samples = self.kernels(spec, &dir, &gguf, info.n_vocab, bin, errors);
            kernel_rows(name, samples, rows);
        }
        let throughput = self.parts.contains(&Part::Throughput);
        let mixed = self.parts.contains(&Part::Mixed);
        let concurrency = match (throughput, mixed) {
            (true, _) => self.concurrency.clone(),
            (false, true) => vec![MIXED_CONCURRENCY],
            (false, false) => return Ok(()),
        };
        let config = |sequences| ServerConfig {
            gguf: &gguf,
            threads: self.threads,
            sequences,
            ctx_per_sequence: CTX_PER_SEQUENCE,
            kv_layout: self.ember_layout(),
            batch_invariant: self.batch_invariant,
            speculative: None,
            work_dir: work,
        };
        // A new connection per request: llama-server's HTTP library closes kept-alive connections
        // that reqwest would otherwise reuse; loopback connections cost both sides next to nothing.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()?;
        eprintln!("== {}: prompts", spec.id);
        let [calibration, measured] = self.mixed_durations();
        let long_count = match mixed {
            true => long_prompts_for(calibration) + long_prompts_for(measured),
            false => 0,
        };
        let prompts = env.runtime.block_on(async {
            let mut server = Server::llama(bin, &config(1))?;
            server.wait_ready(&client).await?;
            prompts::build(
                &client,
                &server,
                info.chat_template,
                LONG_PROMPT_TOKENS,
                long_count,
            )
            .await
        })?;
        for n in concurrency {
            eprintln!("== {}: llama-server and ember serve, N={n}", spec.id);
            let sides = [
                (
                    format!("{name}: llama-server with {n} streams"),
                    Server::llama(bin, &config(n)),
                    Api::LlamaServer,
                ),
                (
                    format!("{name}: ember serve with {n} streams"),
                    Server::ember(&spec.id, env.home, env.catalog_file, &config(n)),
                    Api::Ember(spec.id.clone()),
                ),
            ];
            let [llama, ember] = env
                .runtime
                .block_on(self.serving(sides, &client, &prompts, n, errors));
            if throughput {
                let ceiling = llama::batched_decode(
                    bin,
                    &gguf,
                    self.threads,
                    n,
                    CTX_PER_SEQUENCE,
                    prompts.short_tokens,
                    SHORT_MAX_TOKENS,
                );
                let what = format!("{name}: llama-batched-bench with {n} sequences");
                let ceiling = keep(errors, what.clone(), ceiling);
                if let Some(rate) = ceiling {
                    eprintln!("   {what}: {rate:.1} tok/s");
                }
                throughput_rows(rows, name, n, ember.as_ref(), llama.as_ref(), ceiling);
            }
            serving_rows(rows, name, n, ember.as_ref(), llama.as_ref());
        }
        Ok(())
    }

    /// The kernel rows' samples, llama-bench's and Ember's: `repetitions` rounds that alternate
    /// between the two (in ABBA order, as the serving runs do), so that the drift of a shared
    /// machine's speed falls on both alike. A side that fails is recorded in `errors` and keeps
    /// no samples.
    fn kernels(
        &self,
        spec: &ModelSpec,
        dir: &Path,
        gguf: &Path,
        n_vocab: u32,
        bin: &Path,
        errors: &mut Vec<String>,
    ) -> [Option<KernelSamples>; 2] {
        let name = short_name(&spec.id);
        eprintln!("== {}: kernels, llama-bench and Ember", spec.id);
        let mut ember = keep(
            errors,
            format!("{name}: Ember kernels"),
            EmberKernels::load(spec, dir, n_vocab, self.threads),
        );
        let mut samples = [
            Some(KernelSamples::default()),
            ember.as_ref().map(|_| KernelSamples::default()),
        ];
        for round in 0..self.repetitions {
            for side in turns(round) {
                let Some(side_samples) = samples[side].as_mut() else {
                    continue;
                };
                let (what, result) = if side == 0 {
                    (
                        "llama-bench",
                        llama::kernel(bin, gguf, self.threads, side_samples),
                    )
                } else {
                    let kernels = ember
                        .as_mut()
                        .expect("Ember's samples exist only with its engine");
                    ("Ember kernels", kernels.sample(side_samples))
                };
                if keep(errors, format!("{name}: {what}"), result).is_some() {
                    eprintln!("   round {}, {what}: {}", round + 1, side_samples.latest());
                } else {
                    samples[side] = None;
                }
            }
        }
        samples
    }

    /// Measures both servers at `n` streams. They run side by side, idle but for the one being
    /// measured: after a warm-up request each, `rounds` timed runs alternate between them (in
    /// ABBA order), so that the drift of a shared machine's speed falls on both alike and later
    /// rounds see each server's caches filled. Then (at the mixed concurrency) the mixed run on
    /// each, and each server's peak RSS. A run that fails is recorded in `errors`; its server is
    /// measured no further, but its earlier runs count.
    async fn serving(
        &self,
        servers: [(String, Result<Server>, Api); 2],
        client: &reqwest::Client,
        prompts: &Prompts,
        n: u32,
        errors: &mut Vec<String>,
    ) -> [Option<Serving>; 2] {
        let mut sides: [Option<Side>; 2] = [None, None];
        for (slot, (what, server, api)) in sides.iter_mut().zip(servers) {
            let ready = async {
                let mut server = server?;
                server.wait_ready(client).await?;
                anyhow::Ok(server)
            };
            let Some(server) = keep(errors, what.clone(), ready.await) else {
                continue;
            };
            let target = Target {
                client: client.clone(),
                base: server.base.clone(),
                api,
                adapters: Default::default(),
            };
            let mut side = Side {
                what,
                server,
                target,
                serving: Serving::default(),
                broken: false,
            };
            let warmed = side.target.warm_up(&prompts.short[0]).await;
            side.record(errors, warmed);
            *slot = Some(side);
        }
        let duration = Duration::from_secs(self.duration);
        let rounds = match self.parts.contains(&Part::Throughput) {
            true => self.rounds,
            false => 0,
        };
        for round in 0..rounds {
            for i in turns(round) {
                let Some(side) = sides[i].as_mut().filter(|side| !side.broken) else {
                    continue;
                };
                let run = side
                    .target
                    .load(
                        &prompts.short,
                        SHORT_MAX_TOKENS,
                        Arrivals::Clients(n as usize),
                        duration,
                        None,
                    )
                    .await;
                if let Some(load) = side.record(errors, run) {
                    let (round, rate) = (round + 1, load.tokens_per_s);
                    eprintln!("   round {round}: {}: {rate:.1} tok/s", side.what);
                    side.serving.rounds.push(load);
                }
            }
        }
        if n == MIXED_CONCURRENCY && self.parts.contains(&Part::Mixed) {
            self.mixed(&mut sides, prompts, n, errors).await;
        }
        sides.map(|side| {
            let mut side = side?;
            match side.server.peak_rss() {
                Ok(peak_rss) => side.serving.peak_rss = peak_rss,
                Err(error) => errors.push(format!("{}: peak RSS: {error:#}", side.what)),
            }
            Some(side.serving)
        })
    }

    /// The KV layout Ember serves with: batch invariance implies per-sequence streams.
    fn ember_layout(&self) -> KvLayout {
        if self.batch_invariant {
            KvLayout::PerSequence
        } else {
            self.kv_layout
        }
    }

    /// How long the mixed run's calibration and measured run last: twice a timed run, and as
    /// long as all timed runs together (so that several long prompts arrive).
    fn mixed_durations(&self) -> [Duration; 2] {
        let duration = Duration::from_secs(self.duration);
        [duration * 2, duration * self.rounds.max(1)]
    }

    /// The mixed run, where ~4,000-token prompts arrive during short streams. First a calibration
    /// on each server (closed loop: `n - 1` short clients and the long-prompt client, twice the
    /// timed run's length) finds the short-request rate it sustains beside the long prompts. Then
    /// the measured run (open loop, as long as all timed runs together so that several long
    /// prompts arrive): short requests arrive at `MIXED_LOAD` of the slower server's rate on
    /// both, whatever the server is doing, beside a long-prompt client with new prompts. In a
    /// closed loop a server that stalls every stream on a long prompt meets no new request while
    /// it stalls, and its p99 time to first token would hide the stall.
    async fn mixed(
        &self,
        sides: &mut [Option<Side>; 2],
        prompts: &Prompts,
        n: u32,
        errors: &mut Vec<String>,
    ) {
        let [calibration, measured] = self.mixed_durations();
        // Each run its own long prompts, so that none comes from a cache the other filled.
        let (calibration_long, measured_long) =
            prompts.long.split_at(long_prompts_for(calibration));
        let long = |prompts: &[String]| LongLoad {
            prompts: prompts.to_vec(),
            max_tokens: LONG_MAX_TOKENS,
            interval: LONG_INTERVAL,
        };
        let mut capacities = Vec::new();
        for side in sides.iter_mut().flatten().filter(|side| !side.broken) {
            let clients = Arrivals::Clients(n as usize - 1);
            let run = side
                .target
                .load(
                    &prompts.short,
                    SHORT_MAX_TOKENS,
                    clients,
                    calibration,
                    Some(long(calibration_long)),
                )
                .await;
            if let Some(load) = side.record(errors, run) {
                eprintln!(
                    "   mixed calibration: {}: {:.2} short requests/s",
                    side.what, load.requests_per_s
                );
                side.serving.mixed_capacity = Some(load.requests_per_s);
                capacities.push(load.requests_per_s);
            }
        }
        let Some(slowest) = capacities.into_iter().reduce(f64::min) else {
            return;
        };
        if slowest <= 0.0 {
            errors.push("mixed run: a server finished no short request in the calibration".into());
            return;
        }
        let rate = MIXED_LOAD * slowest;
        for side in sides.iter_mut().flatten().filter(|side| !side.broken) {
            let run = side
                .target
                .load(
                    &prompts.short,
                    SHORT_MAX_TOKENS,
                    Arrivals::PerSecond(rate),
                    measured,
                    Some(long(measured_long)),
                )
                .await;
            side.serving.mixed = side.record(errors, run).map(|load| (rate, load));
        }
    }
}

/// A server under measurement, and what it measured so far.
struct Side {
    /// Names the server and concurrency in errors and progress lines.
    what: String,
    server: Server,
    target: Target,
    serving: Serving,
    /// A run failed: the side is measured no further, but what it measured before is kept.
    broken: bool,
}

impl Side {
    /// A run's result; a failure is recorded in `errors` with the server's log, and stops the
    /// side.
    fn record<T>(&mut self, errors: &mut Vec<String>, result: Result<T>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                let log = self.server.log_tail();
                errors.push(format!("{}: {error:#}\nserver log:\n{log}", self.what));
                self.broken = true;
                None
            }
        }
    }
}

/// Pushes a row of `metric` with Ember's and llama-server's values.
/// The kernel rows: prefill and decode rates, Ember's against llama-bench's (`kernels`' samples).
fn kernel_rows(name: &str, [llama, ember]: [Option<KernelSamples>; 2], rows: &mut Vec<Row>) {
    let rate = |side: &Option<KernelSamples>, prefill: bool, n: u32| {
        side.as_ref().and_then(|samples| samples.median(prefill, n))
    };
    let prefill = PREFILL_TOKENS.map(|n| (format!("prefill {n} tokens"), true, n));
    let decode = DECODE_DEPTHS.map(|depth| {
        (
            format!("decode {DECODE_TOKENS} after {depth}"),
            false,
            depth,
        )
    });
    for (metric, prefill, n) in prefill.into_iter().chain(decode) {
        let (ember, llama) = (rate(&ember, prefill, n), rate(&llama, prefill, n));
        rows.push(Row::new(name, metric, "tok/s", ember, llama, ">= 0.95"));
    }
}

fn serving_row(
    rows: &mut Vec<Row>,
    name: &str,
    [ember, llama]: [Option<&Serving>; 2],
    metric: String,
    unit: &'static str,
    goal: &'static str,
    value: &dyn Fn(&Serving) -> Option<f64>,
) {
    let (ember, llama) = (ember.and_then(value), llama.and_then(value));
    rows.push(Row::new(name, metric, unit, ember, llama, goal));
}

/// Milliseconds at percentile `p` of `values` (seconds).
fn ms(values: &[f64], p: f64) -> Option<f64> {
    percentile(values, p).map(|s| s * 1000.0)
}

/// The throughput part's rows at `n` streams; `ceiling` is llama.cpp's batched decode rate.
fn throughput_rows(
    rows: &mut Vec<Row>,
    name: &str,
    n: u32,
    ember: Option<&Serving>,
    llama: Option<&Serving>,
    ceiling: Option<f64>,
) {
    // What the kernels allow: no server generates faster than llama.cpp decodes in lockstep.
    rows.push(Row::new(
        name,
        format!("llama.cpp batched decode, N={n}"),
        "tok/s",
        None,
        ceiling,
        "",
    ));
    let mut push = |metric: String, unit, goal, value: &dyn Fn(&Serving) -> Option<f64>| {
        serving_row(rows, name, [ember, llama], metric, unit, goal, value);
    };
    let throughput_goal = if n >= 8 { ">= 1.2" } else { "" };
    push(
        format!("generated, N={n}"),
        "tok/s",
        throughput_goal,
        &|s| s.tokens_per_s(),
    );
    push(
        format!("generated, share of batched decode, N={n}"),
        "%",
        "",
        &|s| Some(100.0 * s.tokens_per_s()? / ceiling?),
    );
    // Percentiles over few requests are coarse (p99 of 20 is the maximum): say how many.
    push(format!("requests, N={n}"), "count", "", &|s| {
        Some(s.pooled(|r| &r.ttft).len() as f64)
    });
    for p in [50.0, 99.0] {
        push(format!("TTFT p{p}, N={n}"), "ms", "", &|s| {
            ms(&s.pooled(|r| &r.ttft), p)
        });
    }
    for p in [50.0, 99.0] {
        push(format!("ITL p{p}, N={n}"), "ms", "", &|s| {
            ms(&s.pooled(|r| &r.gaps), p)
        });
    }
}

/// The mixed part's rows at `n` streams (when it ran), and each server's peak RSS.
fn serving_rows(
    rows: &mut Vec<Row>,
    name: &str,
    n: u32,
    ember: Option<&Serving>,
    llama: Option<&Serving>,
) {
    let mut push = |metric: String, unit, goal, value: &dyn Fn(&Serving) -> Option<f64>| {
        serving_row(rows, name, [ember, llama], metric, unit, goal, value);
    };
    if ember.or(llama).is_some_and(|s| s.mixed_capacity.is_some()) {
        let mixed = format!("mixed N={n}");
        push(
            format!("{mixed}: short requests, closed loop"),
            "req/s",
            "",
            &|s| s.mixed_capacity,
        );
        push(
            format!("{mixed}: short arrivals, open loop"),
            "req/s",
            "",
            &|s| s.mixed.as_ref().map(|(rate, _)| *rate),
        );
        push(format!("{mixed}: short requests"), "count", "", &|s| {
            Some(s.mixed_run()?.ttft.len() as f64)
        });
        push(format!("{mixed}: long requests"), "count", "", &|s| {
            Some(s.mixed_run()?.long_ttft.len() as f64)
        });
        for (p, goal) in [(50.0, ""), (99.0, "<= 0.5")] {
            push(format!("{mixed}: short TTFT p{p}"), "ms", goal, &|s| {
                ms(&s.mixed_run()?.ttft, p)
            });
        }
        push(format!("{mixed}: short ITL p99"), "ms", "", &|s| {
            ms(&s.mixed_run()?.gaps, 99.0)
        });
        push(format!("{mixed}: long TTFT p50"), "ms", "", &|s| {
            median(&s.mixed_run()?.long_ttft).map(|v| v * 1000.0)
        });
    }
    push(format!("peak RSS, N={n}"), "MiB", "<= 1.1", &|s| {
        Some(s.peak_rss as f64 / (1024.0 * 1024.0))
    });
}

fn long_prompts_for(duration: Duration) -> usize {
    (duration.as_secs() / LONG_INTERVAL.as_secs()) as usize + 1
}

/// The order in which the two sides run in a round: swapped every round, so that over the rounds
/// the runs go A B B A A B…, and a steady drift of the machine's speed falls on both alike.
fn turns(round: u32) -> [usize; 2] {
    if round.is_multiple_of(2) {
        [0, 1]
    } else {
        [1, 0]
    }
}

/// The value of one side's measurement, or `None` with the failure recorded.
fn keep<T>(errors: &mut Vec<String>, what: String, result: Result<T>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            eprintln!("{what} failed: {error:#}");
            errors.push(format!("{what}: {error:#}"));
            None
        }
    }
}
