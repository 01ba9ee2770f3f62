//! `ember bench speculative`: one stream's decode rate with speculative decoding. Two sets of
//! requests: code edits (a function and a small change to make; the answer copies most of the
//! prompt, where drafts from the prompt pay) and the chat questions of `ember bench llm` (which
//! copy little: there speculation must cost nothing). Four servers on the same GGUF, one at a
//! time, in ABBA order over the rounds: Ember with prompt lookup (its default) and with
//! `--speculation off`, and llama-server with its own prompt lookup (`--spec-type ngram-simple`)
//! and without. A request's decode rate is its generated tokens after the first over the time
//! from its first text to its last; a set's is their sum over their sum.

use super::load::{Api, Target};
use super::prompts::{self, QUESTIONS};
use super::report::{Row, print_table, write_json};
use super::servers::{Server, ServerConfig};
use super::{gguf, installed_dir, llama};
use anyhow::Result;
use clap::Args;
use serde_json::json;
use std::path::{Path, PathBuf};

/// The code edits: a function, and the change to make to it.
const EDITS: [(&str, &str); 6] = [
    (
        "Rename the variable `total` to `running_sum`.",
        "def average_of_positive(values):\n    \"\"\"Returns the mean of the positive numbers in values, or 0.0 when there are none.\"\"\"\n    total = 0.0\n    count = 0\n    for value in values:\n        if value > 0:\n            total += value\n            count += 1\n    if count == 0:\n        return 0.0\n    return total / count\n",
    ),
    (
        "Make the function return `None` instead of raising when the key is missing.",
        "def read_setting(settings, key, default_type=str):\n    \"\"\"Reads a setting and converts it to default_type.\"\"\"\n    if key not in settings:\n        raise KeyError(f\"missing setting: {key}\")\n    raw = settings[key]\n    if isinstance(raw, default_type):\n        return raw\n    try:\n        return default_type(raw)\n    except (TypeError, ValueError) as error:\n        raise ValueError(f\"setting {key} is not a {default_type.__name__}\") from error\n",
    ),
    (
        "Change the function so that it also skips empty lines.",
        "fn count_words(text: &str) -> std::collections::HashMap<String, usize> {\n    let mut counts = std::collections::HashMap::new();\n    for line in text.lines() {\n        if line.starts_with('#') {\n            continue;\n        }\n        for word in line.split_whitespace() {\n            let word = word.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase();\n            *counts.entry(word).or_insert(0) += 1;\n        }\n    }\n    counts\n}\n",
    ),
    (
        "Add a `timeoutMs` parameter (default 5000) and pass it to the fetch call as a signal.",
        "async function fetchJson(url, headers = {}) {\n  const response = await fetch(url, {\n    method: \"GET\",\n    headers: { Accept: \"application/json\", ...headers },\n  });\n  if (!response.ok) {\n    const body = await response.text();\n    throw new Error(`GET ${url} failed with ${response.status}: ${body}`);\n  }\n  return response.json();\n}\n",
    ),
    (
        "Rename the function to `SumOfSquares` and its parameter to `values`.",
        "func sumSquares(numbers []int) int {\n\ttotal := 0\n\tfor _, n := range numbers {\n\t\tif n < 0 {\n\t\t\tcontinue\n\t\t}\n\t\ttotal += n * n\n\t}\n\treturn total\n}\n",
    ),
    (
        "Change the comparison so that the list is sorted in descending order.",
        "def insertion_sort(items):\n    \"\"\"Sorts items in place and returns them.\"\"\"\n    for i in range(1, len(items)):\n        current = items[i]\n        j = i - 1\n        while j >= 0 and items[j] > current:\n            items[j + 1] = items[j]\n            j -= 1\n        items[j + 1] = current\n    return items\n",
    ),
];
const EDIT_MAX_TOKENS: u32 = 400;
/// The chat questions asked (the first of `ember bench llm`'s).
const CHATS: usize = 8;
const CHAT_MAX_TOKENS: u32 = 128;

#[derive(Args)]
pub struct SpeculativeBench {
    /// Catalog id of the model (installed).
    #[arg(long, default_value = "@hf/qwen/qwen2.5-coder-0.5b-instruct")]
    model: String,
    /// CPU threads, on every server.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Rounds over the four servers (in ABBA order); each round asks every request once.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Folder with llama-server (default: scripts/bench/build-llama-tools.sh builds it once into
    /// ~/.cache/ember).
    #[arg(long)]
    llama_bin: Option<PathBuf>,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "speculative-results.json")]
    out: PathBuf,
}

/// A server of the comparison.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Ember { speculative: bool },
    Llama { speculative: bool },
}

const SIDES: [Side; 4] = [
    Side::Ember { speculative: true },
    Side::Ember { speculative: false },
    Side::Llama { speculative: true },
    Side::Llama { speculative: false },
];

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Ember { speculative: true } => "ember serve (prompt lookup)",
            Side::Ember { speculative: false } => "ember serve --speculation off",
            Side::Llama { speculative: true } => "llama-server --spec-type ngram-simple",
            Side::Llama { speculative: false } => "llama-server",
        }
    }
}

/// Generated tokens after each request's first, and the seconds they took, summed over a set.
#[derive(Default, Clone, Copy)]
struct Decoded {
    tokens: f64,
    seconds: f64,
}

impl Decoded {
    fn rate(self) -> Option<f64> {
        (self.seconds > 0.0).then(|| self.tokens / self.seconds)
    }
}

impl SpeculativeBench {
    pub fn run(&self, env: &super::Env) -> Result<()> {
        super::warn_if_debug_build();
        let spec = super::catalog_spec(env, &self.model)?;
        let gguf = installed_dir(env, spec)?.join("model.gguf");
        let chat_template = gguf::read(&gguf)?.chat_template;
        let bin = llama::tools_dir(self.llama_bin.clone())?;
        let work = std::env::temp_dir().join(format!("ember-bench-spec-{}", std::process::id()));
        std::fs::create_dir_all(&work)?;
        env.runtime
            .block_on(self.measure(env, &gguf, chat_template, &bin, &work))
    }

    async fn measure(
        &self,
        env: &super::Env<'_>,
        gguf: &Path,
        chat_template: bool,
        bin: &Path,
        work: &Path,
    ) -> Result<()> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()?;
        let config = |speculative| ServerConfig {
            gguf,
            threads: self.threads,
            sequences: 1,
            ctx_per_sequence: 8192,
            kv_layout: Default::default(),
            batch_invariant: false,
            speculative: Some(speculative),
            work_dir: work,
        };
        // The prompts, through the model's chat template.
        let (mut edits, mut chats) = (Vec::new(), Vec::new());
        {
            let mut server = Server::llama(bin, &config(false))?;
            server.wait_ready(&client).await?;
            for (change, code) in EDITS {
                let text = format!(
                    "{change} Answer with the whole changed code and nothing else.\n\n```\n{code}```"
                );
                edits.push(prompts::render(&client, &server, chat_template, &text).await?);
            }
            for question in &QUESTIONS[..CHATS] {
                chats.push(prompts::render(&client, &server, chat_template, question).await?);
            }
        }

        let mut decoded = [[Decoded::default(); 2]; SIDES.len()];
        for round in 0..self.rounds {
            let order: Vec<usize> = match round % 2 {
                0 => (0..SIDES.len()).collect(),
                _ => (0..SIDES.len()).rev().collect(),
            };
            for i in order {
                let side = SIDES[i];
                eprintln!("== round {round}: {}", side.name());
                let (mut server, api) = match side {
                    Side::Ember { speculative } => (
                        Server::ember(
                            &self.model,
                            env.home,
                            env.catalog_file,
                            &config(speculative),
                        )?,
                        Api::Ember(self.model.clone()),
                    ),
                    Side::Llama { speculative } => {
                        (Server::llama(bin, &config(speculative))?, Api::LlamaServer)
                    }
                };
                server.wait_ready(&client).await?;
                let target = Target {
                    client: client.clone(),
                    base: server.base.clone(),
                    api,
                    adapters: Default::default(),
                };
                target.warm_up(&chats[0]).await?;
                for (set, (prompts, max_tokens)) in
                    [(&edits, EDIT_MAX_TOKENS), (&chats, CHAT_MAX_TOKENS)]
                        .into_iter()
                        .enumerate()
                {
                    for prompt in prompts {
                        let stream = target.stream(prompt, max_tokens).await?;
                        decoded[i][set].tokens += stream.tokens.saturating_sub(1) as f64;
                        decoded[i][set].seconds += stream.gaps.iter().sum::<f64>();
                    }
                    let rate = decoded[i][set].rate().unwrap_or_default();
                    eprintln!("   {}: {rate:.1} tok/s so far", ["code edits", "chat"][set]);
                }
            }
        }

        let rate = |side: Side, set: usize| {
            let i = SIDES.iter().position(|s| *s == side).expect("a side");
            decoded[i][set].rate()
        };
        let name = super::short_name(&self.model);
        let ember = Side::Ember { speculative: true };
        let rows = vec![
            Row::new(
                name,
                "decode, 1 stream, code edits, vs Ember without speculation".into(),
                "tok/s",
                rate(ember, 0),
                rate(Side::Ember { speculative: false }, 0),
                ">= 2",
            ),
            Row::new(
                name,
                "decode, 1 stream, code edits, vs llama-server ngram-simple".into(),
                "tok/s",
                rate(ember, 0),
                rate(Side::Llama { speculative: true }, 0),
                ">= 1",
            ),
            Row::new(
                name,
                "decode, 1 stream, chat, vs Ember without speculation".into(),
                "tok/s",
                rate(ember, 1),
                rate(Side::Ember { speculative: false }, 1),
                ">= 0.97",
            ),
            Row::new(
                name,
                "decode, 1 stream, chat, vs llama-server ngram-simple".into(),
                "tok/s",
                rate(ember, 1),
                rate(Side::Llama { speculative: true }, 1),
                ">= 1",
            ),
        ];
        print_table(&rows, "the other side");
        let sides: Vec<_> = SIDES
            .iter()
            .map(|&side| {
                json!({
                    "server": side.name(),
                    "code_edits_tok_s": rate(side, 0),
                    "chat_tok_s": rate(side, 1),
                })
            })
            .collect();
        write_json(
            &self.out,
            &json!({
                "model": self.model,
                "threads": self.threads,
                "rounds": self.rounds,
                "load_average": super::load_average(),
                "sides": sides,
                "rows": rows,
            }),
        )
    }
}
