//! The Stable Diffusion engine against `scripts/reference/diffusion.py` (diffusers and
//! transformers on the same tiny generated SD 1.5 in `tests/fixtures/diffusion/tiny-sd/`): the CLIP
//! tokenizer's ids, the text encoder, one UNet call, the autoencoder both ways, the DDIM and LCM
//! schedules (also cut short for image-to-image), one LCM step with its noise and one DDIM step of a
//! velocity-predicting model, a whole four-step
//! guided text-to-image run from the same initial latents, and image-to-image and inpainting runs
//! (an inpainting UNet in place of the text-to-image one) with diffusers' noise given to both.
//!
//! Tolerances (max absolute difference; the measured value in brackets): text states 1e-4 (1e-6),
//! noise prediction 5e-4 (7e-5, on values up to 1.6), decoded pixels 1e-4 (4e-6), latent mean
//! and deviation 1e-4 (2e-6), scheduler steps 1e-5 (2e-6), the whole run's image in [0, 1] 1e-3 (2e-5):
//! f32 sums in another order, compounded over the steps.

use candle_core::{Device, Tensor};
use ember_core::metrics::Metrics;
use ember_core::tasks::text_to_image::TextToImageRequest;
use ember_engines::diffusion::clip_text::ClipTokenizer;
use ember_engines::diffusion::scheduler::Prediction::{Epsilon, Velocity};
use ember_engines::diffusion::scheduler::{Scheduler, SchedulerKind};
use ember_engines::diffusion::taesd::TinyDecoder;
use ember_engines::diffusion::{DecoderKind, GivenNoise, ImageGenerator};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

#[derive(Deserialize)]
struct Reference {
    tokens: Vec<Tokens>,
    ddim_timesteps: BTreeMap<String, Vec<usize>>,
    lcm_timesteps: BTreeMap<String, Vec<usize>>,
    img2img_timesteps: Vec<Img2ImgSchedule>,
    lcm_step: Step,
    ddim_v_step: Step,
    pipeline: Run,
    img2img: ImageRun,
    inpaint: ImageRun,
}

/// A run from `start.png` at its 256×256.
#[derive(Deserialize)]
struct ImageRun {
    prompt: String,
    negative_prompt: String,
    steps: u32,
    guidance: f32,
    #[serde(default = "whole_schedule")]
    strength: f32,
}

fn whole_schedule() -> f32 {
    1.0
}

#[derive(Deserialize)]
struct Tokens {
    prompt: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Img2ImgSchedule {
    steps: usize,
    strength: f64,
    timesteps: Vec<usize>,
}

/// One scheduler step: of `steps`, the one at `step_index`.
#[derive(Deserialize)]
struct Step {
    steps: usize,
    step_index: usize,
    timestep: usize,
}

#[derive(Deserialize)]
struct Run {
    prompt: String,
    negative_prompt: String,
    steps: u32,
    guidance: f32,
    width: u32,
    height: u32,
}

impl Run {
    /// The request diffusers' pipeline was given.
    fn request(&self) -> TextToImageRequest {
        TextToImageRequest {
            prompt: self.prompt.clone(),
            negative_prompt: Some(self.negative_prompt.clone()),
            width: Some(self.width),
            height: Some(self.height),
            steps: Some(self.steps),
            guidance: self.guidance,
            strength: 1.0,
            seed: None,
            image: None,
            mask: None,
            count: 1,
        }
    }
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusion")
}

fn reference() -> (Reference, HashMap<String, Tensor>) {
    let text = std::fs::read_to_string(fixtures().join("reference.json")).unwrap();
    let tensors =
        candle_core::safetensors::load(fixtures().join("reference.safetensors"), &Device::Cpu)
            .unwrap();
    (serde_json::from_str(&text).unwrap(), tensors)
}

fn generator() -> ImageGenerator {
    generator_with(DecoderKind::Autoencoder)
}

fn generator_with(decoder: DecoderKind) -> ImageGenerator {
    let metrics = Metrics::new().model("@hf/ember/tiny-sd");
    ImageGenerator::load(
        &fixtures().join("tiny-sd"),
        SchedulerKind::Ddim,
        decoder,
        metrics,
    )
    .unwrap()
}

/// The largest absolute difference between two tensors of one shape.
fn max_difference(ours: &Tensor, theirs: &Tensor) -> f32 {
    assert_eq!(ours.dims(), theirs.dims());
    (ours - theirs)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn assert_close(what: &str, ours: &Tensor, theirs: &Tensor, tolerance: f32) {
    let difference = max_difference(ours, theirs);
    eprintln!("{what}: max difference {difference:e}");
    assert!(
        difference <= tolerance,
        "{what}: {difference} > {tolerance}"
    );
}

#[test]
fn tokenizer_matches_clip_tokenizer() {
    let (reference, _) = reference();
    let tokenizer = ClipTokenizer::load(&fixtures().join("tiny-sd/tokenizer")).unwrap();
    for case in &reference.tokens {
        assert_eq!(
            tokenizer.encode(&case.prompt).unwrap(),
            case.ids,
            "{:?}",
            case.prompt
        );
    }
}

#[test]
fn schedules_match_diffusers() {
    let (reference, _) = reference();
    for (kind, schedules) in [
        (SchedulerKind::Ddim, &reference.ddim_timesteps),
        (SchedulerKind::Lcm, &reference.lcm_timesteps),
    ] {
        for (steps, timesteps) in schedules {
            let scheduler = Scheduler::new(kind, Epsilon, steps.parse().unwrap(), 1.0);
            assert_eq!(scheduler.timesteps(), timesteps, "{kind:?} {steps}");
        }
    }
    for case in &reference.img2img_timesteps {
        let scheduler = Scheduler::new(SchedulerKind::Ddim, Epsilon, case.steps, case.strength);
        assert_eq!(
            scheduler.timesteps(),
            case.timesteps,
            "{} steps at {}",
            case.steps,
            case.strength
        );
    }
}

#[test]
fn steps_match_diffusers() {
    let (reference, tensors) = reference();
    for (what, kind, prediction, step, expected) in [
        (
            "LCM step",
            SchedulerKind::Lcm,
            Epsilon,
            &reference.lcm_step,
            "lcm.stepped",
        ),
        (
            "DDIM step, velocity",
            SchedulerKind::Ddim,
            Velocity,
            &reference.ddim_v_step,
            "ddim_v.stepped",
        ),
    ] {
        let scheduler = Scheduler::new(kind, prediction, step.steps, 1.0);
        assert_eq!(scheduler.timesteps()[step.step_index], step.timestep);
        let stepped = scheduler
            .step(
                step.step_index,
                &tensors["lcm.model_output"],
                &tensors["lcm.sample"],
                || Ok(tensors["lcm.noise"].clone()),
            )
            .unwrap();
        assert_close(what, &stepped, &tensors[expected], 1e-5);
    }
}

#[test]
fn components_match_diffusers() {
    let (_, tensors) = reference();
    let generator = generator();
    // ONNX Runtime is installed (scripts/install-deps.sh); candle's blocks are checked by
    // `without_onnxruntime.rs`.
    assert!(generator.on_onnx_runtime());

    let states = generator.encode_text("a photo of a cat").unwrap();
    assert_close("text states", &states, &tensors["text.states"], 1e-4);

    let timestep = tensors["unet.timestep"].to_vec1::<f32>().unwrap()[0] as usize;
    let predicted = generator
        .predict_noise(&tensors["unet.latents"], timestep, &tensors["unet.context"])
        .unwrap();
    assert_close("noise prediction", &predicted, &tensors["unet.out"], 5e-4);

    // The reference decodes to [-1, 1]; the engine answers [0, 1], clamped.
    let decoded = generator
        .decode(&(&tensors["vae.latents"] * 0.18215).unwrap())
        .unwrap();
    let expected = tensors["vae.decoded"]
        .affine(0.5, 0.5)
        .unwrap()
        .clamp(0.0f32, 1.0f32)
        .unwrap();
    assert_close("decoded image", &decoded, &expected, 1e-4);

    let (mean, std) = generator.encode_image(&tensors["vae.image"]).unwrap();
    assert_close("latent mean", &mean, &tensors["vae.mean"], 1e-4);
    assert_close("latent deviation", &std, &tensors["vae.std"], 1e-4);
}

#[test]
fn text_to_image_matches_diffusers() {
    let (reference, tensors) = reference();
    let run = &reference.pipeline;
    let request = run.request();
    let generator = generator();
    let (pixels, steps) = generator
        .generate_pixels(
            &request,
            Some(GivenNoise {
                latents: tensors["pipeline.latents"].clone(),
                image_latents: None,
            }),
            &|| false,
        )
        .unwrap();
    assert_eq!(steps, run.steps);
    let expected = channels_first(&tensors["pipeline.image"]);
    assert_close("generated image", &pixels, &expected, 1e-3);

    // A seed gives one image; the PNG is the requested size.
    let seeded = TextToImageRequest {
        seed: Some(42),
        ..request
    };
    let first = generator.generate(&seeded, &|| false).unwrap();
    assert_eq!(first, generator.generate(&seeded, &|| false).unwrap());
    // A caller gone stops the run.
    assert_eq!(
        generator.generate(&seeded, &|| true),
        Err(ember_core::InferError::Aborted)
    );
    let png = image::load_from_memory(&first.pngs[0]).unwrap();
    assert_eq!((png.width(), png.height()), (run.width, run.height));
}

/// The image of `run` from `start.png` on `generator`, its noise given.
fn image_run(generator: &ImageGenerator, run: &ImageRun, mask: bool, noise: GivenNoise) -> Tensor {
    let read = |name: &str| std::fs::read(fixtures().join(name)).unwrap();
    let request = TextToImageRequest {
        prompt: run.prompt.clone(),
        negative_prompt: Some(run.negative_prompt.clone()),
        width: Some(256),
        height: Some(256),
        steps: Some(run.steps),
        guidance: run.guidance,
        strength: run.strength,
        seed: None,
        image: Some(read("start.png")),
        mask: mask.then(|| read("mask.png")),
        count: 1,
    };
    generator
        .generate_pixels(&request, Some(noise), &|| false)
        .unwrap()
        .0
}

/// diffusers' height × width × 3 image as `[1, 3, h, w]`.
/// TAESD (`scripts/reference/taesd.py`, a tiny generated `AutoencoderTiny` in `tiny-sd/taesd/`):
/// one decode, and the whole text-to-image run decoded through it.
#[test]
fn taesd_matches_diffusers_autoencoder_tiny() {
    let (reference, given) = reference();
    let tensors =
        candle_core::safetensors::load(fixtures().join("taesd.safetensors"), &Device::Cpu).unwrap();
    let taesd = TinyDecoder::load(&fixtures().join("tiny-sd/taesd")).unwrap();
    let decoded = taesd.decode(&tensors["taesd.latents"]).unwrap();
    assert_close("TAESD decode", &decoded, &tensors["taesd.decoded"], 1e-4);

    let run = &reference.pipeline;
    let request = run.request();
    let noise = GivenNoise {
        latents: given["pipeline.latents"].clone(),
        image_latents: None,
    };
    let (pixels, _) = generator_with(DecoderKind::Tiny)
        .generate_pixels(&request, Some(noise), &|| false)
        .unwrap();
    let expected = channels_first(&tensors["taesd.pipeline.image"]);
    assert_close("image decoded by TAESD", &pixels, &expected, 1e-3);
}

fn channels_first(image: &Tensor) -> Tensor {
    image.permute((2, 0, 1)).unwrap().unsqueeze(0).unwrap()
}

#[test]
fn image_to_image_and_inpainting_match_diffusers() {
    let (reference, tensors) = reference();
    let noise = || GivenNoise {
        latents: tensors["img2img.noise"].clone(),
        image_latents: Some(tensors["img2img.image_noise"].clone()),
    };
    let pixels = image_run(&generator(), &reference.img2img, false, noise());
    let expected = channels_first(&tensors["img2img.image"]);
    assert_close("image-to-image", &pixels, &expected, 1e-3);

    // The tiny model with its inpainting UNet.
    let folder = std::env::temp_dir().join(format!("ember-tiny-sd-inpaint-{}", std::process::id()));
    for (from, to) in [
        ("tiny-sd/tokenizer", "tokenizer"),
        ("tiny-sd/text_encoder", "text_encoder"),
        ("tiny-sd/vae", "vae"),
        ("tiny-sd-inpainting-unet", "unet"),
    ] {
        std::fs::create_dir_all(folder.join(to)).unwrap();
        for file in std::fs::read_dir(fixtures().join(from)).unwrap() {
            let file = file.unwrap();
            std::fs::copy(file.path(), folder.join(to).join(file.file_name())).unwrap();
        }
    }
    let metrics = Metrics::new().model("inpainting");
    let inpainting = ImageGenerator::load(
        &folder,
        SchedulerKind::Ddim,
        DecoderKind::Autoencoder,
        metrics,
    )
    .unwrap();
    let pixels = image_run(&inpainting, &reference.inpaint, true, noise());
    let expected = channels_first(&tensors["inpaint.image"]);
    assert_close("inpainting", &pixels, &expected, 1e-3);
    std::fs::remove_dir_all(&folder).ok();
}
