//! `ember bench image`: Ember's image classifier against ONNX Runtime (PyPI) on the same
//! EfficientNet-Lite0 weights and cores, interleaved in one run. Row: images classified per
//! second, one request at a time, each from its encoded file (decoding and preprocessing
//! included on both sides). Ember runs through its serving worker (the one `ember serve` uses);
//! ONNX Runtime through `scripts/bench/onnxruntime_image_driver.py` (`driver.rs`), which builds the
//! model's ONNX graph from the same weights. Then the diffusion rows (`diffusion.rs`): Stable
//! Diffusion against diffusers. Never part of `cargo test`.

use super::diffusion::DiffusionSettings;
use super::driver::{Driver, repo_file};
use super::report::{self, Row, median};
use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use ember_core::catalog::Engine;
use ember_core::metrics::Metrics;
use ember_core::runner::LoadedModel;
use ember_core::tasks::image_classification::ImageClassificationRequest;
use ember_core::tasks::{TaskOutput, TaskRequest};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Instant;

/// The CC0 photos of the vision tests.
const IMAGES: [&str; 3] = ["cat.png", "espresso.png", "astronaut.png"];
const MODEL: &str = "@hf/google/efficientnet-lite0";

#[derive(Args)]
pub struct ImageBench {
    /// Timed rounds per side, alternating between the two after one warm-up each; the median is
    /// reported.
    #[arg(long, default_value_t = 5)]
    repetitions: u32,
    /// Images per round (the three test photos, in turn).
    #[arg(long, default_value_t = 60)]
    images: usize,
    /// Python with onnxruntime, onnx, numpy and Pillow, and torch, diffusers and transformers
    /// (default: scripts/bench/onnxruntime-image.sh and diffusers.sh install them once into
    /// ~/.cache/ember/bench-venv).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Denoising steps of the timed generations (each round also runs one step, to take out
    /// the prompt encoding and decoding).
    #[arg(long, default_value_t = 4)]
    diffusion_steps: u32,
    /// Side of the generated images, in pixels.
    #[arg(long, default_value_t = 512)]
    diffusion_size: u32,
    /// Timed diffusion rounds per side.
    #[arg(long, default_value_t = 3)]
    diffusion_repetitions: u32,
    /// Only the classification rows.
    #[arg(long)]
    skip_diffusion: bool,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "image.json")]
    out: PathBuf,
}

#[derive(Deserialize)]
struct DriverAnswer {
    seconds: f64,
    top1: Vec<usize>,
}

impl ImageBench {
    pub fn run(&self, env: &super::Env) -> Result<()> {
        super::warn_if_debug_build();
        let spec = env
            .catalog
            .get(MODEL)
            .context("the catalog has no EfficientNet-Lite0")?;
        ensure!(spec.engine == Engine::CandleImageClassifier);
        let dir = super::installed_dir(env, spec)?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let load_average = super::load_average();
        let images = (0..self.images)
            .map(|i| {
                repo_file(&format!(
                    "crates/ember-engines/tests/fixtures/vision/images/{}",
                    IMAGES[i % IMAGES.len()]
                ))
            })
            .collect::<Result<Vec<_>>>()?;

        let python = match &self.python {
            Some(python) => python.clone(),
            None => super::setup_script("onnxruntime-image.sh")?,
        };
        let weights = dir.join("efficientnet-lite0.pth");
        let threads_arg = threads.to_string();
        let args = [
            "--weights".as_ref(),
            weights.as_os_str(),
            "--threads".as_ref(),
            threads_arg.as_ref(),
        ];
        let mut onnxruntime = Driver::start(&python, "onnxruntime_image_driver.py", &args)?;
        let metrics = Metrics::new().model(&spec.id);
        let model = {
            let _guard = env.runtime.enter();
            ember_engines::load(spec, &dir, &Default::default(), metrics)?
        };
        let LoadedModel::Worker(worker) = &model else {
            bail!("the classifier runs on a worker thread");
        };
        let bytes = images
            .iter()
            .map(std::fs::read)
            .collect::<std::io::Result<Vec<_>>>()?;
        let ember_round = || -> Result<(f64, Vec<String>)> {
            let start = Instant::now();
            let mut top1 = Vec::new();
            for image in &bytes {
                let request = TaskRequest::ImageClassification(ImageClassificationRequest {
                    image: image.clone(),
                });
                let TaskOutput::ImageClassification(output) =
                    env.runtime.block_on(worker.run(request))?
                else {
                    bail!("the classifier answered with another task's output");
                };
                top1.push(output.labels[0].label.clone());
            }
            Ok((start.elapsed().as_secs_f64(), top1))
        };
        let request = serde_json::json!({ "images": images });

        eprintln!("== warm-up");
        let (_, ember_top1) = ember_round()?;
        let anchor: DriverAnswer = onnxruntime.ask(&request)?;
        let labels = imagenet_labels();
        let same_top1 = anchor
            .top1
            .iter()
            .map(|&id| labels.get(id).copied().unwrap_or_default())
            .eq(ember_top1.iter().map(String::as_str));
        let (mut ember_times, mut anchor_times) = (Vec::new(), Vec::new());
        for round in 0..self.repetitions {
            // ABBA order: neither side always runs on a machine the other just warmed.
            for ember_turn in [round % 2 == 1, round % 2 == 0] {
                if ember_turn {
                    let (seconds, _) = ember_round()?;
                    eprintln!("   ember {seconds:.2} s");
                    ember_times.push(seconds);
                } else {
                    let answer: DriverAnswer = onnxruntime.ask(&request)?;
                    eprintln!("   onnxruntime {:.2} s", answer.seconds);
                    anchor_times.push(answer.seconds);
                }
            }
        }
        let rate = |times: &[f64]| median(times).map(|s| self.images as f64 / s);
        let mut rows = vec![Row::new(
            &spec.id,
            "classification, one image at a time".into(),
            "images/s",
            rate(&ember_times),
            rate(&anchor_times),
            "",
        )];
        drop(onnxruntime);
        drop(model);
        let diffusion = match self.skip_diffusion {
            true => serde_json::Value::Null,
            false => {
                let python = match &self.python {
                    Some(python) => python.clone(),
                    None => super::setup_script("diffusers.sh")?,
                };
                let settings = DiffusionSettings {
                    steps: self.diffusion_steps,
                    size: self.diffusion_size,
                    repetitions: self.diffusion_repetitions,
                };
                let (diffusion_rows, json) = super::diffusion::bench(env, &python, &settings)?;
                rows.extend(diffusion_rows);
                json
            }
        };
        println!();
        report::print_table(&rows, "onnxruntime / diffusers");
        let json = serde_json::json!({
            "settings": {
                "model": spec.id,
                "threads": threads,
                "repetitions": self.repetitions,
                "images_per_round": self.images,
                "onnxruntime": "1.28.0, default graph optimizations, intra_op_num_threads = threads",
                "ember": env!("CARGO_PKG_VERSION"),
                "optimized_build": !cfg!(debug_assertions),
                "load_average_at_start": load_average,
            },
            "rows": rows,
            "same_top1": same_top1,
            "ember_seconds": ember_times,
            "onnxruntime_seconds": anchor_times,
            "diffusion": diffusion,
        });
        report::write_json(&self.out, &json)?;
        Ok(())
    }
}

/// ImageNet's class names in class order, as the classifier answers them.
fn imagenet_labels() -> Vec<&'static str> {
    ember_engines::vision::IMAGENET_LABELS.lines().collect()
}
