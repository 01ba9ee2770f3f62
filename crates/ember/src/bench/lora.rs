//! `ember bench lora`: aggregate decode throughput when concurrent requests use different LoRA
//! adapters and none. Two adapters with seeded random weights (rank 8 on every layer's query and
//! value projections, PEFT's files) are made for the model; Ember gets them as finetunes
//! (`ember finetunes create`), llama-server as GGUF adapters (`--lora`, converted by Ember's
//! converter, `--lora-init-without-apply`) chosen per request. Requests take turns over none,
//! the first and the second adapter. Three servers on the same GGUF, in ABBA order over the
//! rounds: Ember and llama-server with the mixed adapters, and Ember without any (what adapters
//! cost).

use super::load::{AdapterTurns, Api, Arrivals, Target};
use super::prompts;
use super::report::{Row, median, print_table, write_json};
use super::servers::{Server, ServerConfig};
use super::{gguf, installed_dir, llama};
use anyhow::{Context, Result, bail};
use clap::Args;
use ember_core::finetunes::{CONFIG_FILE, WEIGHTS_FILE};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ADAPTERS: usize = 2;
const RANK: usize = 8;
/// Tokens each request generates.
const MAX_TOKENS: u32 = 64;

#[derive(Args)]
pub struct LoraBench {
    /// Catalog id of the model (installed, on llama.cpp).
    #[arg(long, default_value = "@hf/qwen/qwen2.5-coder-0.5b-instruct")]
    model: String,
    /// CPU threads, on every server.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Concurrent streams (closed loop).
    #[arg(long, default_value_t = 8)]
    concurrency: u32,
    /// Seconds each timed run keeps starting requests.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Timed runs per server, in ABBA order; the median rate is reported.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Folder with llama-server (default: scripts/bench/build-llama-tools.sh builds it once into
    /// ~/.cache/ember).
    #[arg(long)]
    llama_bin: Option<PathBuf>,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "lora-results.json")]
    out: PathBuf,
}

/// A server of the comparison.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    EmberAdapters,
    LlamaAdapters,
    EmberBase,
}

const SIDES: [Side; 3] = [Side::EmberAdapters, Side::LlamaAdapters, Side::EmberBase];

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::EmberAdapters => "ember serve, adapters per request",
            Side::LlamaAdapters => "llama-server --lora x2, adapters per request",
            Side::EmberBase => "ember serve, no adapters",
        }
    }
}

impl LoraBench {
    pub fn run(&self, env: &super::Env) -> Result<()> {
        super::warn_if_debug_build();
        let spec = super::catalog_spec(env, &self.model)?;
        let gguf = installed_dir(env, spec)?.join("model.gguf");
        let chat_template = gguf::read(&gguf)?.chat_template;
        let bin = llama::tools_dir(self.llama_bin.clone())?;
        let work = std::env::temp_dir().join(format!("ember-bench-lora-{}", std::process::id()));
        std::fs::create_dir_all(&work)?;
        let shapes = ember_engines::llm::lora::attention_shapes(&gguf)?;
        if shapes.is_empty() {
            bail!("{} has no attn_q/attn_v tensors to adapt", self.model);
        }
        let mut adapters = Vec::new();
        for index in 0..ADAPTERS {
            let folder = work.join(format!("adapter-{index}"));
            write_peft_adapter(&folder, &shapes, index as u64 + 1)?;
            let converted = ember_engines::llm::lora::converted(&folder, &gguf)?;
            adapters.push((folder, converted));
        }
        let result =
            env.runtime
                .block_on(self.measure(env, &gguf, chat_template, &bin, &work, &adapters));
        std::fs::remove_dir_all(&work)?;
        result
    }

    async fn measure(
        &self,
        env: &super::Env<'_>,
        gguf: &Path,
        chat_template: bool,
        bin: &Path,
        work: &Path,
        adapters: &[(PathBuf, PathBuf)],
    ) -> Result<()> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()?;
        let config = ServerConfig {
            gguf,
            threads: self.threads,
            sequences: self.concurrency,
            ctx_per_sequence: super::CTX_PER_SEQUENCE,
            kv_layout: Default::default(),
            batch_invariant: false,
            speculative: None,
            work_dir: work,
        };
        let prompts = {
            let mut server = Server::llama(bin, &config)?;
            server.wait_ready(&client).await?;
            let mut rendered = Vec::new();
            for question in &prompts::QUESTIONS {
                rendered.push(prompts::render(&client, &server, chat_template, question).await?);
            }
            rendered
        };
        // Ember's finetunes live in its database (one per run of the bench) and model home.
        let db = work.join(format!("ember-{}.db", self.concurrency));
        for (index, (folder, _)) in adapters.iter().enumerate() {
            self.create_finetune(env, &db, index, folder)?;
        }

        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); SIDES.len()];
        for round in 0..self.rounds {
            let order: Vec<usize> = match round % 2 {
                0 => (0..SIDES.len()).collect(),
                _ => (0..SIDES.len()).rev().collect(),
            };
            for i in order {
                let side = SIDES[i];
                eprintln!("== round {round}: {}", side.name());
                let (mut server, api, turns) = match side {
                    Side::EmberAdapters | Side::EmberBase => {
                        let server =
                            Server::ember(&self.model, env.home, env.catalog_file, &config)?;
                        let turns = match side {
                            Side::EmberAdapters => AdapterTurns::new(ADAPTERS),
                            _ => AdapterTurns::default(),
                        };
                        (server, Api::Ember(self.model.clone()), turns)
                    }
                    Side::LlamaAdapters => {
                        let loras: Vec<&Path> = adapters.iter().map(|(_, g)| g.as_path()).collect();
                        let server = Server::llama_with_loras(bin, &config, &loras)?;
                        (server, Api::LlamaServer, AdapterTurns::new(ADAPTERS))
                    }
                };
                server.wait_ready(&client).await?;
                let target = Target {
                    client: client.clone(),
                    base: server.base.clone(),
                    api,
                    adapters: turns,
                };
                for prompt in prompts.iter().take(ADAPTERS + 1) {
                    target.warm_up(prompt).await?;
                }
                let load = target
                    .load(
                        &prompts,
                        MAX_TOKENS,
                        Arrivals::Clients(self.concurrency as usize),
                        Duration::from_secs(self.duration),
                        None,
                    )
                    .await?;
                eprintln!("   {:.1} tok/s", load.tokens_per_s);
                rates[i].push(load.tokens_per_s);
            }
        }
        for index in 0..adapters.len() {
            self.finetunes(env, &db, &["rm", &finetune_name(index)])?;
        }

        let rate = |side: Side| {
            let i = SIDES.iter().position(|s| *s == side).expect("a side");
            median(&rates[i])
        };
        let name = super::short_name(&self.model);
        let n = self.concurrency;
        let rows = vec![
            Row::new(
                name,
                format!("{n} streams, adapters A, B and none in turn, vs llama-server"),
                "tok/s",
                rate(Side::EmberAdapters),
                rate(Side::LlamaAdapters),
                ">= 1",
            ),
            Row::new(
                name,
                format!("{n} streams, adapters A, B and none in turn, vs no adapters"),
                "tok/s",
                rate(Side::EmberAdapters),
                rate(Side::EmberBase),
                "",
            ),
        ];
        print_table(&rows, "the other side");
        let sides: Vec<_> = SIDES
            .iter()
            .enumerate()
            .map(|(i, side)| json!({"server": side.name(), "tok_s": rates[i]}))
            .collect();
        write_json(
            &self.out,
            &json!({
                "model": self.model,
                "threads": self.threads,
                "concurrency": n,
                "rounds": self.rounds,
                "seconds_per_run": self.duration,
                "max_tokens": MAX_TOKENS,
                "adapters": {"count": ADAPTERS, "rank": RANK, "targets": ["q_proj", "v_proj"]},
                "load_average": super::load_average(),
                "sides": sides,
                "rows": rows,
            }),
        )
    }

    fn create_finetune(
        &self,
        env: &super::Env,
        db: &Path,
        index: usize,
        folder: &Path,
    ) -> Result<()> {
        let folder = folder.to_string_lossy();
        let name = finetune_name(index);
        self.finetunes(env, db, &["create", &self.model, &name, &folder])
    }

    /// This executable's `finetunes` command on `db`.
    fn finetunes(&self, env: &super::Env, db: &Path, args: &[&str]) -> Result<()> {
        let mut command = Command::new(std::env::current_exe()?);
        command.arg("--home").arg(env.home).arg("--db").arg(db);
        if let Some(catalog) = env.catalog_file {
            command.arg("--catalog").arg(catalog);
        }
        let output = command.arg("finetunes").args(args).output()?;
        if !output.status.success() {
            bail!(
                "ember finetunes {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

/// The finetune name of adapter `index` (what `AdapterTurns` sends to Ember).
pub fn finetune_name(index: usize) -> String {
    format!("bench-lora-{index}")
}

/// Writes a PEFT adapter (rank `RANK` on every layer's query and value projections, f32,
/// weights from a seeded generator) for a model of `shapes` into `folder`.
fn write_peft_adapter(folder: &Path, shapes: &[[Vec<usize>; 2]], seed: u64) -> Result<()> {
    std::fs::create_dir_all(folder)?;
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    // xorshift64*: uniform in [-0.05, 0.05), enough to move the logits without breaking the text.
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let bits = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        (bits as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
    };
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (layer, projections) in shapes.iter().enumerate() {
        for (projection, shape) in ["q_proj", "v_proj"].iter().zip(projections) {
            let [out, inner] = shape[..] else {
                bail!("layer {layer} {projection} is not a matrix: {shape:?}");
            };
            let name = format!("base_model.model.model.layers.{layer}.self_attn.{projection}");
            let a: Vec<f32> = (0..RANK * inner).map(|_| next()).collect();
            let b: Vec<f32> = (0..out * RANK).map(|_| next()).collect();
            tensors.push((format!("{name}.lora_A.weight"), vec![RANK, inner], a));
            tensors.push((format!("{name}.lora_B.weight"), vec![out, RANK], b));
        }
    }
    // safetensors: a little-endian u64 header length, the JSON header, then the raw data.
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, shape, values) in &tensors {
        let end = offset + 4 * values.len();
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut header = serde_json::Value::Object(header).to_string().into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    for (_, _, values) in &tensors {
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }
    std::fs::write(folder.join(WEIGHTS_FILE), bytes)?;
    let config = json!({
        "peft_type": "LORA", "r": RANK, "lora_alpha": 2 * RANK, "target_modules": ["q_proj", "v_proj"],
    });
    std::fs::write(folder.join(CONFIG_FILE), config.to_string())
        .with_context(|| format!("writing into {}", folder.display()))
}
