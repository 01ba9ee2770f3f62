//! Settings for `ember serve` and friends: built-in defaults, then an optional TOML config file,
//! then environment variables and flags (clap merges those two; a flag beats its variable).

use ember_core::MemoryLimits;
use ember_core::catalog::Task;
use ember_engines::llm::{KvLayout, LlmSettings, Speculation};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";

/// The config file's shape. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub db: Option<PathBuf>,
    /// Require API tokens even in the open dev mode (no accounts, loopback).
    pub require_auth: Option<bool>,
    /// Whether per-task rate limits apply (default true).
    pub rate_limits: Option<bool>,
    /// `[task_rate_limits]`: requests per minute by task (`text-generation = 600`).
    #[serde(default)]
    pub task_rate_limits: HashMap<Task, u32>,
    pub catalog: Option<PathBuf>,
    pub request_timeout_secs: Option<u64>,
    pub shutdown_grace_secs: Option<u64>,
    /// Requested model id → catalog model id that serves it.
    #[serde(default)]
    pub aliases: HashMap<String, String>,
    /// `[engine]`: how models are sized and kept in memory.
    #[serde(default)]
    pub engine: EngineOptions,
}

/// Engine sizing, from flags (or their variables) and the config file's `[engine]` table.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct EngineOptions {
    /// Sequences a text generation model runs at once (continuous batching).
    #[arg(long, env = "EMBER_MAX_SEQUENCES")]
    pub max_sequences: Option<u32>,
    /// KV cache cells per text generation model, shared by its sequences and prefix cache
    /// [default: the model's context window, at most an eighth of the available memory].
    #[arg(long, env = "EMBER_KV_CELLS")]
    pub kv_cells: Option<u32>,
    /// `unified`: one KV pool for every sequence, so one request may use all of it.
    /// `per-sequence`: a stream of `kv-cells / max-sequences` cells per sequence (llama-server's
    /// `-np` layout): each request is limited to its stream, and attention reads only its own
    /// cells, which is faster with many streams on a CPU [default: unified].
    #[arg(long, env = "EMBER_KV_LAYOUT")]
    pub kv_layout: Option<KvLayout>,
    /// Bit-identical output for a request alone, beside others or from the prefix cache, at
    /// some speed: per-sequence streams, no flash attention, kernels that do not change with
    /// the batch (weights loaded without llama.cpp's repacking) [default: false].
    #[arg(long, env = "EMBER_BATCH_INVARIANT", num_args = 0..=1, default_missing_value = "true")]
    pub batch_invariant: Option<bool>,
    /// Speculative decoding: `prompt-lookup` drafts a sequence's next tokens from where its
    /// last tokens appeared before (its prompt or output) and checks them in one pass, the
    /// output unchanged; `off` decodes one token at a time [default: prompt-lookup].
    #[arg(long, env = "EMBER_SPECULATION")]
    pub speculation: Option<Speculation>,
    /// Tokens per forward pass (decode tokens plus prompt chunks).
    #[arg(long, env = "EMBER_STEP_TOKENS")]
    pub step_tokens: Option<u32>,
    /// Requests that may wait for a free sequence; more get 429 / 3040 at once.
    #[arg(long, env = "EMBER_MAX_WAITING")]
    pub max_waiting: Option<usize>,
    /// Seconds a request waits for a free sequence before it gets 429 / 3040.
    #[arg(long, env = "EMBER_MAX_WAIT_SECS")]
    pub max_wait_secs: Option<u64>,
    /// MiB all loaded models may hold together; idle models are unloaded to make room
    /// [default: 80% of the memory available at start].
    #[arg(long, env = "EMBER_MEMORY_BUDGET_MB")]
    pub memory_budget_mb: Option<u64>,
    /// Seconds without requests after which a model is unloaded (0: never).
    #[arg(long, env = "EMBER_IDLE_UNLOAD_SECS")]
    pub idle_unload_secs: Option<u64>,
}

/// Engine sizing with every default filled in.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub llm: LlmSettings,
    pub memory: MemoryLimits,
    pub idle_unload: Option<Duration>,
}

impl EngineOptions {
    /// These options, with the file's where these leave a value unset.
    pub fn or(self, file: &EngineOptions) -> EngineOptions {
        EngineOptions {
            max_sequences: self.max_sequences.or(file.max_sequences),
            kv_cells: self.kv_cells.or(file.kv_cells),
            kv_layout: self.kv_layout.or(file.kv_layout),
            batch_invariant: self.batch_invariant.or(file.batch_invariant),
            speculation: self.speculation.or(file.speculation),
            step_tokens: self.step_tokens.or(file.step_tokens),
            max_waiting: self.max_waiting.or(file.max_waiting),
            max_wait_secs: self.max_wait_secs.or(file.max_wait_secs),
            memory_budget_mb: self.memory_budget_mb.or(file.memory_budget_mb),
            idle_unload_secs: self.idle_unload_secs.or(file.idle_unload_secs),
        }
    }

    pub fn resolve(&self) -> EngineConfig {
        let defaults = LlmSettings::default();
        EngineConfig {
            llm: LlmSettings {
                max_sequences: self.max_sequences.unwrap_or(defaults.max_sequences),
                kv_cells: self.kv_cells,
                kv_layout: self.kv_layout.unwrap_or(defaults.kv_layout),
                step_tokens: self.step_tokens.unwrap_or(defaults.step_tokens),
                prefix_cache: defaults.prefix_cache,
                threads: None,
                max_waiting: self.max_waiting.unwrap_or(defaults.max_waiting),
                max_wait: self
                    .max_wait_secs
                    .map_or(defaults.max_wait, Duration::from_secs),
                batch_invariant: self.batch_invariant.unwrap_or(defaults.batch_invariant),
                speculation: self.speculation.unwrap_or(defaults.speculation),
                step_seconds: None,
            },
            memory: MemoryLimits {
                budget: self
                    .memory_budget_mb
                    .map_or_else(|| ember_engines::available_memory() / 5 * 4, |mb| mb << 20),
            },
            idle_unload: match self.idle_unload_secs.unwrap_or(600) {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
        }
    }
}

impl FileConfig {
    pub fn load(path: Option<&Path>) -> anyhow::Result<FileConfig> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }
}

/// Parses `FROM=TO` alias arguments.
pub fn parse_alias(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((from, to)) if !from.trim().is_empty() && !to.trim().is_empty() => {
            Ok((from.trim().to_string(), to.trim().to_string()))
        }
        _ => Err(format!(
            "alias '{text}' must look like FROM=TO, e.g. @cf/meta/llama-3.1-8b-instruct=@hf/qwen/qwen2.5-coder-0.5b-instruct"
        )),
    }
}

/// Parses `NAME=URL` provider arguments: an OpenAI-compatible upstream AI Gateway forwards to
/// under `/v1/{account}/{gateway}/NAME/...`. Its key is read from `EMBER_PROVIDER_<NAME>_KEY`.
pub fn parse_provider(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, url))
            if !name.trim().is_empty()
                && (url.starts_with("http://") || url.starts_with("https://")) =>
        {
            Ok((name.trim().to_string(), url.trim().to_string()))
        }
        _ => Err(format!(
            "provider '{text}' must look like NAME=URL, e.g. openai=https://api.openai.com/v1"
        )),
    }
}

/// The environment variable holding a provider's API key: `EMBER_PROVIDER_<NAME>_KEY`, the name
/// in capitals with `_` for anything but letters and digits.
pub fn provider_key_variable(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("EMBER_PROVIDER_{name}_KEY")
}

/// Parses `TASK=RPM` rate limit arguments, e.g. `text-generation=600`.
pub fn parse_task_limit(text: &str) -> Result<(Task, u32), String> {
    let problem = || {
        format!(
            "rate limit '{text}' must look like TASK=RPM, e.g. text-generation=600 or text-embeddings=3000"
        )
    };
    let (task, per_minute) = text.split_once('=').ok_or_else(problem)?;
    let task: Task = serde_json::from_value(serde_json::Value::String(task.trim().into()))
        .map_err(|_| problem())?;
    let per_minute = per_minute.trim().parse().map_err(|_| problem())?;
    Ok((task, per_minute))
}

/// `~/.local/share/ember/ember.db`.
pub fn default_db() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local")
        .join("share")
        .join("ember")
        .join("ember.db")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_parse() {
        assert_eq!(
            parse_alias("@cf/a/b=@hf/c/d"),
            Ok(("@cf/a/b".into(), "@hf/c/d".into()))
        );
        assert!(parse_alias("@cf/a/b").is_err());
        assert!(parse_alias("=x").is_err());
    }

    #[test]
    fn task_limits_parse() {
        assert_eq!(
            parse_task_limit("text-generation=600"),
            Ok((Task::TextGeneration, 600))
        );
        assert!(parse_task_limit("speech=1").is_err());
        assert!(parse_task_limit("text-embeddings=lots").is_err());
    }

    #[test]
    fn config_file_keys() {
        let config: FileConfig = toml::from_str(
            "listen = \"0.0.0.0:9000\"\nrequire_auth = true\n[task_rate_limits]\ntext-embeddings = 10\n[engine]\nmax_sequences = 8\nkv_layout = \"per-sequence\"\nbatch_invariant = true\n[aliases]\n\"@cf/meta/llama-3.1-8b-instruct\" = \"@hf/qwen/qwen2.5-coder-0.5b-instruct\"\n",
        )
        .unwrap();
        assert_eq!(config.listen.unwrap().port(), 9000);
        assert_eq!(config.aliases.len(), 1);
        assert_eq!(config.require_auth, Some(true));
        assert_eq!(config.task_rate_limits[&Task::TextEmbeddings], 10);
        let engine = EngineOptions::default().or(&config.engine).resolve();
        assert_eq!(engine.llm.max_sequences, 8);
        assert_eq!(engine.llm.kv_layout, KvLayout::PerSequence);
        assert!(engine.llm.batch_invariant);
        let bad_layout = toml::from_str::<FileConfig>("[engine]\nkv_layout = \"streams\"");
        assert!(bad_layout.unwrap_err().to_string().contains("kv_layout"));
        assert_eq!("unified".parse(), Ok(KvLayout::Unified));
        assert!("streams".parse::<KvLayout>().is_err());
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err());
    }
}
