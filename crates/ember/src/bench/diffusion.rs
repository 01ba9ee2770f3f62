//! `ember bench image`'s diffusion rows: Ember's Stable Diffusion against diffusers (PyPI, torch on
//! the CPU) on the same folder and cores, interleaved in one run. Each round generates one image at
//! `steps` steps and one at a single step on each side; the difference over `steps - 1` is the time
//! of a denoising step (guided: two UNet halves), free of the prompt encoding and decoding both
//! share. Rows: denoising steps per second, and whole images per second at `steps` steps.
//!
//! The model: an installed SD 1.5-family catalog model, or else a folder of Stable Diffusion 1.5's
//! architecture at full size with random weights that `scripts/bench/diffusers_driver.py --make`
//! writes once (speed does not depend on the weights' values).

use super::driver::{Driver, repo_file};
use super::report::{Row, median};
use anyhow::{Context, Result, bail, ensure};
use ember_core::catalog::{Engine, ModelSpec};
use ember_core::installed;
use ember_core::metrics::Metrics;
use ember_core::runner::LoadedModel;
use ember_core::tasks::text_to_image::TextToImageRequest;
use ember_core::tasks::{TaskOutput, TaskRequest};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Catalog models tried, in order, before the random-weights folder.
const INSTALLED_CANDIDATES: [&str; 2] = [
    "@cf/runwayml/stable-diffusion-v1-5-img2img",
    "@cf/lykon/dreamshaper-8-lcm",
];
/// The catalog entry whose engine settings the random-weights folder is run with.
const SHAPE_SPEC: &str = "@hf/ember/tiny-sd";
const PROMPT: &str = "a lighthouse on a cliff at sunset, oil painting";
const GUIDANCE: f32 = 7.5;

pub struct DiffusionSettings {
    pub steps: u32,
    pub size: u32,
    pub repetitions: u32,
}

#[derive(Deserialize)]
struct DriverAnswer {
    seconds: f64,
}

/// The rows and the settings they were measured with.
pub fn bench(
    env: &super::Env,
    python: &Path,
    settings: &DiffusionSettings,
) -> Result<(Vec<Row>, serde_json::Value)> {
    ensure!(settings.steps >= 2, "--diffusion-steps must be at least 2");
    let (spec, dir, label) = model(env, python)?;
    let scheduler = spec
        .properties
        .get("scheduler")
        .map_or("ddim", String::as_str);
    let dir_arg = dir.as_os_str();
    let args = [
        "--model".as_ref(),
        dir_arg,
        "--scheduler".as_ref(),
        scheduler.as_ref(),
    ];
    let mut diffusers = Driver::start(python, "diffusers_driver.py", &args)?;
    let model = {
        let _guard = env.runtime.enter();
        ember_engines::load(
            spec,
            &dir,
            &Default::default(),
            Metrics::new().model(&spec.id),
        )?
    };
    let LoadedModel::Worker(worker) = &model else {
        bail!("image generation runs on a worker thread");
    };
    let ember_seconds = |steps: u32| -> Result<f64> {
        let request = TaskRequest::TextToImage(TextToImageRequest {
            prompt: PROMPT.into(),
            negative_prompt: None,
            width: Some(settings.size),
            height: Some(settings.size),
            steps: Some(steps),
            guidance: GUIDANCE,
            strength: 1.0,
            seed: Some(0),
            image: None,
            mask: None,
            count: 1,
        });
        let start = Instant::now();
        let TaskOutput::TextToImage(_) = env.runtime.block_on(worker.run(request))? else {
            bail!("the generator answered with another task's output");
        };
        Ok(start.elapsed().as_secs_f64())
    };
    let mut diffusers_seconds = |steps: u32| -> Result<f64> {
        let request = serde_json::json!({
            "prompt": PROMPT, "steps": steps, "size": settings.size, "guidance": GUIDANCE, "seed": 0,
        });
        Ok(diffusers.ask::<DriverAnswer>(&request)?.seconds)
    };

    eprintln!("== diffusion warm-up ({label})");
    ember_seconds(1)?;
    diffusers_seconds(1)?;
    let (mut ember, mut anchor) = (Rounds::default(), Rounds::default());
    for round in 0..settings.repetitions {
        // ABBA order, as the classification rows.
        for ember_turn in [round % 2 == 1, round % 2 == 0] {
            let (side, name) = match ember_turn {
                true => (&mut ember, "ember"),
                false => (&mut anchor, "diffusers"),
            };
            let (full, single) = match ember_turn {
                true => (ember_seconds(settings.steps)?, ember_seconds(1)?),
                false => (diffusers_seconds(settings.steps)?, diffusers_seconds(1)?),
            };
            eprintln!(
                "   {name} {full:.1} s at {} steps, {single:.1} s at 1",
                settings.steps
            );
            side.record(full, single, settings.steps);
        }
    }
    let steps_metric = format!("denoising, {0}×{0}, guidance {GUIDANCE}", settings.size);
    let image_metric = format!("whole images, {} steps", settings.steps);
    let rows = vec![
        Row::new(
            &label,
            steps_metric,
            "steps/s",
            ember.steps_per_second(),
            anchor.steps_per_second(),
            "",
        ),
        Row::new(
            &label,
            image_metric,
            "images/s",
            ember.images_per_second(),
            anchor.images_per_second(),
            "",
        ),
    ];
    let json = serde_json::json!({
        "model": label,
        "steps": settings.steps,
        "size": settings.size,
        "repetitions": settings.repetitions,
        "diffusers": "0.42.1 on torch 2.15.0 (CPU, float32, default threads)",
        "ember_seconds": {"full": ember.full, "single_step": ember.single},
        "diffusers_seconds": {"full": anchor.full, "single_step": anchor.single},
    });
    Ok((rows, json))
}

/// Whole-generation times of one side at the bench's step count and at one step.
#[derive(Default)]
struct Rounds {
    full: Vec<f64>,
    single: Vec<f64>,
    step: Vec<f64>,
}

impl Rounds {
    fn record(&mut self, full: f64, single: f64, steps: u32) {
        self.full.push(full);
        self.single.push(single);
        self.step.push((full - single) / f64::from(steps - 1));
    }

    fn steps_per_second(&self) -> Option<f64> {
        median(&self.step).map(|seconds| 1.0 / seconds)
    }

    fn images_per_second(&self) -> Option<f64> {
        median(&self.full).map(|seconds| 1.0 / seconds)
    }
}

/// The model to bench: its catalog entry, its folder and how the report names it.
fn model<'a>(env: &'a super::Env, python: &Path) -> Result<(&'a ModelSpec, PathBuf, String)> {
    for id in INSTALLED_CANDIDATES {
        if let Some(spec) = env.catalog.get(id) {
            let dir = installed::model_dir(env.home, spec);
            if installed::is_installed(spec, &dir) {
                return Ok((spec, dir, id.to_string()));
            }
        }
    }
    let spec = env
        .catalog
        .get(SHAPE_SPEC)
        .context("the catalog has no @hf/ember/tiny-sd")?;
    ensure!(spec.engine == Engine::CandleDiffusion);
    let dir = env.home.join("bench/sd15-shaped-random-weights");
    if !dir
        .join("unet/diffusion_pytorch_model.safetensors")
        .is_file()
    {
        eprintln!(
            "setup: writing Stable Diffusion 1.5's architecture with random weights to {}",
            dir.display()
        );
        let tokenizer = repo_file(
            "crates/ember-engines/tests/fixtures/diffusion/tiny-sd/tokenizer/vocab.json",
        )?;
        let driver = repo_file("scripts/bench/diffusers_driver.py")?;
        let status = std::process::Command::new(python)
            .arg(driver)
            .arg("--make")
            .arg(&dir)
            .arg("--tokenizer")
            .arg(tokenizer.parent().context("tokenizer folder")?)
            .status()?;
        ensure!(status.success(), "writing the random-weights model failed");
    }
    let label = "SD 1.5 architecture, random weights".to_string();
    Ok((spec, dir, label))
}
