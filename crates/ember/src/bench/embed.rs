//! `ember bench embed`: sentence embeddings with all-MiniLM-L6-v2, Ember's candle engine (through
//! its serving worker, as `ember serve` runs it) against ONNX Runtime (PyPI) on the same weights
//! as an fp32 graph, and on the int8 export model-sources.md lists
//! (`scripts/bench/onnxruntime_embed_driver.py`), every core on both sides, interleaved in one run. Rows are
//! texts per second for: one short text per request, one request at a time; 32 short texts per
//! request; 32 long texts (cut at the model's 256 tokens) per request; and 32 requests of one
//! short text sent at once (Ember's worker runs the ones that waited together; ONNX Runtime, as a
//! plain session serves them, one after another).

use super::driver::Driver;
use super::report::{self, Row, median};
use anyhow::{Result, bail};
use clap::Args;
use ember_core::ModelSpec;
use ember_core::runner::ModelWorker;
use ember_core::tasks::{EmbeddingsRequest, Pooling, TaskOutput, TaskRequest};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

const MODEL: &str = "@hf/sentence-transformers/all-minilm-l6-v2";
/// Sentences the short texts are drawn from (10 to 20 tokens each).
const SENTENCES: [&str; 8] = [
    "A man is eating a piece of bread at the kitchen table.",
    "The stock market fell sharply after the announcement this morning.",
    "Children were playing football in the park until it started to rain.",
    "How do I reset my password if I no longer have access to my email?",
    "The new library opens on Monday with a reading for young families.",
    "Rust's ownership rules prevent data races at compile time.",
    "She planted tomatoes, basil and peppers along the sunny side of the garden.",
    "Our flight was delayed by three hours because of a storm over the Alps.",
];

#[derive(Args)]
pub struct EmbedBench {
    /// Timed rounds per side and workload, alternating in ABBA order after one warm-up each; the
    /// median is reported.
    #[arg(long, default_value_t = 3)]
    repetitions: u32,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "embed.json")]
    out: PathBuf,
}

/// One timed workload: `requests` of `texts` each, sent `at_once` at a time.
struct Workload {
    name: &'static str,
    requests: Vec<Vec<String>>,
    at_once: bool,
}

impl Workload {
    fn texts(&self) -> usize {
        self.requests.iter().map(Vec::len).sum()
    }
}

impl EmbedBench {
    pub fn run(&self, env: &super::Env) -> Result<()> {
        super::warn_if_debug_build();
        let spec = super::catalog_spec(env, MODEL)?;
        let dir = super::installed_dir(env, spec)?;
        let max_tokens = spec.max_input_tokens.unwrap_or(256);
        // Every core on both sides: candle's kernels use rayon's pool, which has one thread each.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let load_average = super::load_average();
        // onnxruntime and tokenizers in ~/.cache/ember/bench-venv, and the int8 export.
        let paths = super::setup_script_lines("onnxruntime-embed.sh")?;
        let [python, onnx] = &paths[..] else {
            bail!("onnxruntime-embed.sh printed {paths:?}");
        };
        let mut ort = OnnxRuntime::start(python, &dir, onnx, max_tokens, threads)?;
        let ember = Ember::load(env, spec, &dir)?;

        let short = |count: usize| -> Vec<String> {
            (0..count)
                .map(|i| format!("{} ({i})", SENTENCES[i % SENTENCES.len()]))
                .collect()
        };
        let long: Vec<String> = (0..32)
            .map(|i| {
                let mut text = String::new();
                while text.len() < 4000 {
                    text.push_str(SENTENCES[(i + text.len()) % SENTENCES.len()]);
                    text.push(' ');
                }
                text
            })
            .collect();
        let workloads = [
            Workload {
                name: "1 short text per request, one request at a time",
                requests: short(64).into_iter().map(|t| vec![t]).collect(),
                at_once: false,
            },
            Workload {
                name: "32 short texts per request",
                requests: vec![short(32); 8],
                at_once: false,
            },
            Workload {
                name: "32 long texts (256 tokens) per request",
                requests: vec![long; 2],
                at_once: false,
            },
            Workload {
                name: "32 requests of 1 short text at once",
                requests: short(32).into_iter().map(|t| vec![t]).collect(),
                at_once: true,
            },
        ];
        let mut rows = Vec::new();
        let mut details = Vec::new();
        for workload in &workloads {
            eprintln!("== {}: warm-up", workload.name);
            ember.embed(env, workload)?;
            ort.embed("fp32", workload)?;
            ort.embed("int8", workload)?;
            let mut seconds: [Vec<f64>; 3] = Default::default();
            let mut first: [Vec<f32>; 3] = Default::default();
            for round in 0..self.repetitions {
                let mut order = [0, 1, 2];
                if round % 2 == 1 {
                    order.reverse();
                }
                for side in order {
                    let (time, vector) = match side {
                        0 => ember.embed(env, workload)?,
                        1 => ort.embed("fp32", workload)?,
                        _ => ort.embed("int8", workload)?,
                    };
                    eprintln!("   {}: {time:.3} s", SIDES[side]);
                    seconds[side].push(time);
                    first[side] = vector;
                }
            }
            let rate = |times: &[f64]| median(times).map(|s| workload.texts() as f64 / s);
            let ember_rate = rate(&seconds[0]);
            for (side, goal) in [(1, ">= 1.2"), (2, "")] {
                rows.push(Row::new(
                    super::short_name(MODEL),
                    format!("{}, vs {} (texts/s)", workload.name, SIDES[side]),
                    "x",
                    ember_rate,
                    rate(&seconds[side]),
                    goal,
                ));
            }
            details.push(serde_json::json!({
                "workload": workload.name,
                "texts": workload.texts(),
                "seconds": {"ember": seconds[0], "onnxruntime_fp32": seconds[1], "onnxruntime_int8": seconds[2]},
                "cosine_distance_of_the_first_vector_to_ember": {
                    "onnxruntime_fp32": cosine_distance(&first[0], &first[1]),
                    "onnxruntime_int8": cosine_distance(&first[0], &first[2]),
                },
            }));
        }
        println!();
        report::print_table(&rows, "onnxruntime");
        report::write_json(
            &self.out,
            &serde_json::json!({
                "settings": {
                    "model": MODEL,
                    "threads": threads,
                    "repetitions": self.repetitions,
                    "onnxruntime": "1.28.0, default graph optimizations",
                    "ember": env!("CARGO_PKG_VERSION"),
                    "optimized_build": !cfg!(debug_assertions),
                    "load_average_at_start": load_average,
                },
                "rows": rows,
                "workloads": details,
            }),
        )
    }
}

const SIDES: [&str; 3] = [
    "Ember",
    "onnxruntime fp32 (same weights)",
    "onnxruntime int8 (the registry's export)",
];

fn cosine_distance(a: &[f32], b: &[f32]) -> Option<f64> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    Some(1.0 - dot / (norm(a) * norm(b)))
}

/// Ember's side: the model's serving worker, as `ember serve` starts it.
struct Ember {
    worker: ModelWorker,
}

impl Ember {
    fn load(env: &super::Env, spec: &ModelSpec, dir: &Path) -> Result<Ember> {
        let worker = super::serving_worker(env, spec, dir)?;
        Ok(Ember { worker })
    }

    /// Runs the workload; returns its seconds and the first text's vector.
    fn embed(&self, env: &super::Env, workload: &Workload) -> Result<(f64, Vec<f32>)> {
        let request = |texts: &Vec<String>| {
            TaskRequest::TextEmbeddings(EmbeddingsRequest {
                texts: texts.clone(),
                pooling: Pooling::Mean,
            })
        };
        let requests: Vec<TaskRequest> = workload.requests.iter().map(request).collect();
        let started = Instant::now();
        let outputs = env.runtime.block_on(async {
            match workload.at_once {
                true => super::all_at_once(&self.worker, requests).await,
                false => {
                    let mut outputs = Vec::new();
                    for request in requests {
                        outputs.push(self.worker.run(request).await);
                    }
                    Ok(outputs)
                }
            }
        })?;
        let seconds = started.elapsed().as_secs_f64();
        let mut first = None;
        for output in outputs {
            let TaskOutput::TextEmbeddings(output) = output? else {
                bail!("the embeddings model answered another task's output");
            };
            first.get_or_insert(output.vectors[0].clone());
        }
        Ok((seconds, first.unwrap_or_default()))
    }
}

/// ONNX Runtime's side: the driver process with both graphs loaded.
struct OnnxRuntime {
    driver: Driver,
}

#[derive(Deserialize)]
struct DriverAnswer {
    seconds: f64,
    first: Vec<f32>,
}

impl OnnxRuntime {
    fn start(
        python: &Path,
        dir: &Path,
        onnx: &Path,
        max_tokens: u32,
        threads: usize,
    ) -> Result<OnnxRuntime> {
        let (max_tokens, threads) = (max_tokens.to_string(), threads.to_string());
        let args = [
            "--model-dir".as_ref(),
            dir.as_os_str(),
            "--onnx".as_ref(),
            onnx.as_os_str(),
            "--max-tokens".as_ref(),
            max_tokens.as_ref(),
            "--threads".as_ref(),
            threads.as_ref(),
        ];
        let driver = Driver::start(python, "onnxruntime_embed_driver.py", &args)?;
        Ok(OnnxRuntime { driver })
    }

    /// The workload's requests one after another (`batch` = a request's texts).
    fn embed(&mut self, graph: &str, workload: &Workload) -> Result<(f64, Vec<f32>)> {
        let mut seconds = 0.0;
        let mut first = None;
        for texts in &workload.requests {
            let answer: DriverAnswer = self.driver.ask(&serde_json::json!({
                "graph": graph, "texts": texts, "batch": texts.len(),
            }))?;
            seconds += answer.seconds;
            first.get_or_insert(answer.first);
        }
        Ok((seconds, first.unwrap_or_default()))
    }
}
