//! Stable Diffusion (1.x and 2.x) from a diffusers folder: `tokenizer/` and `text_encoder/` (CLIP,
//! `clip_text`, on candle), `unet/` and `vae/` (on ONNX Runtime, `onnx_graphs`, where it is
//! installed, else candle-transformers' blocks, configured by `config`; the encoder side in
//! `vae_encoder`, on candle), and a schedule (`scheduler`: DDIM, or LCM for latent-consistency
//! models). One request at a time on the model's worker thread:
//!
//! 1. the prompt and the negative prompt are encoded (both, when guidance is above 1);
//! 2. the starting latents are drawn from the request's seed: noise, or, with a starting image,
//!    the image's latents noised to where the schedule's `strength` starts; an inpainting UNet
//!    (9 input channels) also reads the mask and the latents of the image outside it;
//! 3. each step runs the UNet on the latents (twice over, unconditioned and conditioned, mixed
//!    by the guidance scale) and the scheduler steps them;
//! 4. the autoencoder decodes the latents (or TAESD, `taesd`, for models whose catalog entry asks
//!    for it), and the image is encoded as a PNG.
//!
//! Sizes are checked against memory before anything runs: the attention scores over the largest
//! latent grid (`tokens²` floats per head, for both guidance halves) must fit.

pub mod clip_text;
pub mod config;
mod onnx_graphs;
pub mod scheduler;
pub mod taesd;
pub mod vae_encoder;

use self::clip_text::{ClipTextEncoder, ClipTokenizer};
use self::config::{SchedulerFile, UNetFile, VaeFile};
use self::onnx_graphs::{OnnxDecoder, OnnxUNet};
use self::scheduler::{Prediction, Scheduler, SchedulerKind};
use self::taesd::TinyDecoder;
use self::vae_encoder::VaeEncoder;
use crate::vision::image::decode_rgb;
use crate::wrong_task;
use anyhow::{Context, anyhow};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel;
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKL;
use ember_core::InferError;
use ember_core::metrics::ModelMetrics;
use ember_core::runner::Runner;
use ember_core::tasks::text_to_image::{DEFAULT_STEPS, TextToImageOutput, TextToImageRequest};
use ember_core::tasks::{TaskOutput, TaskRequest};
use image::{GrayImage, RgbImage, imageops::FilterType};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};
use std::path::Path;
use std::time::Instant;

/// UNet input channels of an inpainting model: latents, mask, latents of the masked image.
const INPAINTING_CHANNELS: usize = 9;

pub struct ImageGenerator {
    tokenizer: ClipTokenizer,
    text_encoder: ClipTextEncoder,
    unet: Denoiser,
    unet_file: UNetFile,
    decoder: Decoder,
    vae_encoder: VaeEncoder,
    vae_file: VaeFile,
    scheduler: SchedulerKind,
    prediction: Prediction,
    metrics: ModelMetrics,
}

/// The UNet: on ONNX Runtime, or on candle where ONNX Runtime cannot be loaded.
enum Denoiser {
    Onnx(OnnxUNet),
    Candle(Box<UNet2DConditionModel>),
}

/// What turns the final latents into pixels.
enum Decoder {
    /// The KL autoencoder's decoder (`vae/`), on ONNX Runtime.
    OnnxAutoencoder(OnnxDecoder),
    /// The same on candle, where ONNX Runtime cannot be loaded.
    Autoencoder(Box<AutoEncoderKL>),
    /// TAESD (`taesd/`): much less work, a little less detail.
    Tiny(TinyDecoder),
}

/// Which decoder a model uses: its catalog entry's `decoder` property (`taesd`), or the
/// autoencoder's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderKind {
    Autoencoder,
    Tiny,
}

impl ImageGenerator {
    /// Loads the diffusers folder `dir`, denoising on the `scheduler` schedule and decoding with
    /// `decoder`.
    pub fn load(
        dir: &Path,
        scheduler: SchedulerKind,
        decoder: DecoderKind,
        metrics: ModelMetrics,
    ) -> Result<ImageGenerator, InferError> {
        let load = || -> anyhow::Result<ImageGenerator> {
            let unet_file: UNetFile = read_json(&dir.join("unet/config.json"))?;
            let vae_file: VaeFile = read_json(&dir.join("vae/config.json"))?;
            // Older folders have no scheduler config: Stable Diffusion's noise, predicting it.
            let scheduler_path = dir.join("scheduler/scheduler_config.json");
            let prediction = match scheduler_path.is_file() {
                true => read_json::<SchedulerFile>(&scheduler_path)?.prediction()?,
                false => Prediction::Epsilon,
            };
            let threads = crate::cpu_threads();
            let unet_path = dir.join("unet/diffusion_pytorch_model.safetensors");
            let unet = match OnnxUNet::load(&unet_path, &unet_file, threads) {
                Ok(unet) => Denoiser::Onnx(unet),
                Err(why) => {
                    tracing::warn!(reason = %format!("{why:#}"), "the UNet runs on candle");
                    Denoiser::Candle(Box::new(UNet2DConditionModel::new(
                        weights(&unet_path)?,
                        unet_file.in_channels,
                        unet_file.out_channels,
                        false,
                        unet_file.candle()?,
                    )?))
                }
            };
            let vae_path = dir.join("vae/diffusion_pytorch_model.safetensors");
            let vae_weights = weights(&vae_path)?;
            let decoder = match decoder {
                DecoderKind::Autoencoder => {
                    match OnnxDecoder::load(&vae_path, &vae_file, threads) {
                        Ok(decoder) => Decoder::OnnxAutoencoder(decoder),
                        Err(why) => {
                            tracing::warn!(reason = %format!("{why:#}"), "the decoder runs on candle");
                            Decoder::Autoencoder(Box::new(AutoEncoderKL::new(
                                vae_weights.clone(),
                                vae_file.in_channels,
                                vae_file.out_channels,
                                vae_file.candle(),
                            )?))
                        }
                    }
                }
                DecoderKind::Tiny => Decoder::Tiny(TinyDecoder::load(&dir.join("taesd"))?),
            };
            Ok(ImageGenerator {
                tokenizer: ClipTokenizer::load(&dir.join("tokenizer"))?,
                text_encoder: ClipTextEncoder::load(&dir.join("text_encoder"))?,
                unet,
                vae_encoder: VaeEncoder::new(vae_weights, &vae_file)?,
                unet_file,
                decoder,
                vae_file,
                scheduler,
                prediction,
                metrics,
            })
        };
        load().map_err(|e| InferError::LoadFailed {
            model: dir.display().to_string(),
            reason: format!("{e:#}"),
        })
    }

    /// Whether the UNet and the autoencoder's decoder run on ONNX Runtime (else on candle).
    pub fn on_onnx_runtime(&self) -> bool {
        matches!(self.unet, Denoiser::Onnx(_)) && !matches!(self.decoder, Decoder::Autoencoder(_))
    }

    /// The side, in pixels, the model was trained at.
    pub fn native_side(&self) -> u32 {
        (self.unet_file.sample_size * self.vae_file.latent_factor()) as u32
    }

    /// The CLIP encoding of `text`, padded to 77 tokens: `[1, 77, hidden]`.
    pub fn encode_text(&self, text: &str) -> Result<Tensor, InferError> {
        let ids = self.tokenizer.encode_padded(text).map_err(internal)?;
        self.text_encoder.forward(&ids).map_err(internal)
    }

    /// The UNet's noise prediction for `latents` at `timestep`, conditioned on `context`.
    pub fn predict_noise(
        &self,
        latents: &Tensor,
        timestep: usize,
        context: &Tensor,
    ) -> Result<Tensor, InferError> {
        match &self.unet {
            Denoiser::Onnx(unet) => unet.forward(latents, timestep as f64, context),
            Denoiser::Candle(unet) => unet
                .forward(latents, timestep as f64, context)
                .map_err(anyhow::Error::from),
        }
        .map_err(internal)
    }

    /// Decodes the UNet's latents (`[1, 4, h/8, w/8]`, still multiplied by the autoencoder's
    /// scaling factor) to an image in [0, 1]: `[1, 3, h, w]`.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor, InferError> {
        let unscaled = || latents / self.vae_file.scaling_factor;
        let image = match &self.decoder {
            Decoder::OnnxAutoencoder(vae) => unscaled()
                .map_err(anyhow::Error::from)
                .and_then(|latents| vae.decode(&latents)),
            Decoder::Autoencoder(vae) => unscaled()
                .and_then(|latents| vae.decode(&latents))
                .map_err(anyhow::Error::from),
            Decoder::Tiny(taesd) => taesd.decode(latents).map_err(anyhow::Error::from),
        }
        .map_err(internal)?;
        image
            .affine(0.5, 0.5)
            .and_then(|image| image.clamp(0.0f32, 1.0f32))
            .map_err(internal)
    }

    /// The mean and standard deviation of the latents of `image` (`[1, 3, h, w]` in [-1, 1]),
    /// before scaling.
    pub fn encode_image(&self, image: &Tensor) -> Result<(Tensor, Tensor), InferError> {
        self.vae_encoder.forward(image).map_err(internal)
    }

    /// Runs `request` and returns the image in [0, 1] (`[1, 3, h, w]`) and the steps run, its
    /// noise drawn from the request's seed or, for tests, `given`. Stops with `Aborted` at the
    /// first step after `caller_gone` turns true.
    pub fn generate_pixels(
        &self,
        request: &TextToImageRequest,
        given: Option<GivenNoise>,
        caller_gone: &dyn Fn() -> bool,
    ) -> Result<(Tensor, u32), InferError> {
        let side = self.native_side();
        let (width, height) = (
            request.width.unwrap_or(side),
            request.height.unwrap_or(side),
        );
        self.check_memory(width, height)?;
        let factor = self.vae_file.latent_factor();
        let latent_shape = (
            1,
            self.vae_file.latent_channels,
            height as usize / factor,
            width as usize / factor,
        );
        let inpainting = self.unet_file.in_channels == INPAINTING_CHANNELS;
        let refused = match (inpainting, &request.image, &request.mask) {
            (false, _, Some(_)) => Some((
                "/mask",
                "this model does not inpaint; leave the mask out or use an inpainting model",
            )),
            (true, None, _) => Some(("/", "required properties are 'image', 'mask'")),
            (true, Some(_), None) => Some(("/", "required properties are 'mask'")),
            _ => None,
        };
        if let Some((field, problem)) = refused {
            return Err(InferError::invalid(field, problem));
        }
        let start = match &request.image {
            Some(image) => Some(self.start_image(image, request.mask.as_deref(), width, height)?),
            None => None,
        };

        let steps = request.steps.unwrap_or(DEFAULT_STEPS) as usize;
        let strength = match &start {
            Some(_) => f64::from(request.strength),
            None => 1.0,
        };
        let schedule = Scheduler::new(self.scheduler, self.prediction, steps, strength);
        let Some(&first) = schedule.timesteps().first() else {
            return Err(InferError::invalid(
                "/strength",
                format!(
                    "{} of {steps} steps runs no step; raise strength or num_steps",
                    request.strength
                ),
            ));
        };

        let mut rng = StdRng::seed_from_u64(request.seed.unwrap_or_else(rand::random));
        let noise = |rng: &mut StdRng| gaussian(rng, latent_shape);
        let guided = request.guidance > 1.0;
        let began = Instant::now();
        let context = {
            let prompt = self.encode_text(&request.prompt)?;
            match guided {
                true => {
                    let negative = request.negative_prompt.as_deref().unwrap_or("");
                    Tensor::cat(&[self.encode_text(negative)?, prompt], 0).map_err(internal)?
                }
                false => prompt,
            }
        };

        tracing::debug!(seconds = began.elapsed().as_secs_f64(), "prompt encoded");
        let (initial, image_noise) = match given {
            Some(given) => (given.latents, given.image_latents),
            None => (noise(&mut rng)?, None),
        };
        let image_condition = match start.as_ref().and_then(|s| s.mask.as_ref().map(|m| (s, m))) {
            Some((start, mask)) => Some(self.inpainting_condition(start, mask, latent_shape)?),
            None => None,
        };
        let mut latents = match &start {
            // Inpainting over the whole schedule starts from noise alone, as diffusers does.
            Some(_) if inpainting && strength >= 1.0 => initial,
            Some(start) => {
                let (mean, std) = self.encode_image(&start.pixels)?;
                let drawn = match image_noise {
                    Some(given) => given,
                    None => noise(&mut rng)?,
                };
                let image_latents = (std * drawn)
                    .and_then(|spread| (mean + spread)? * self.vae_file.scaling_factor)
                    .map_err(internal)?;
                schedule
                    .add_noise(&image_latents, &initial, first)
                    .map_err(internal)?
            }
            None => initial,
        };

        for (index, &timestep) in schedule.timesteps().iter().enumerate() {
            if caller_gone() {
                tracing::debug!(step = index + 1, "caller gone; generation stopped");
                return Err(InferError::Aborted);
            }
            let began = Instant::now();
            let batch = if guided { 2 } else { 1 };
            let mut input = Tensor::cat(&vec![&latents; batch], 0).map_err(internal)?;
            if let Some(condition) = &image_condition {
                let condition = Tensor::cat(&vec![condition; batch], 0).map_err(internal)?;
                input = Tensor::cat(&[&input, &condition], 1).map_err(internal)?;
            }
            let mut predicted = self.predict_noise(&input, timestep, &context)?;
            if guided {
                predicted = guide(&predicted, request.guidance).map_err(internal)?;
            }
            latents = schedule
                .step(index, &predicted, &latents, || {
                    noise(&mut rng).map_err(|e| candle_core::Error::Msg(e.to_string()))
                })
                .map_err(internal)?;
            self.metrics.denoising_step(began.elapsed().as_secs_f64());
            tracing::debug!(
                step = index + 1,
                of = schedule.timesteps().len(),
                timestep,
                seconds = began.elapsed().as_secs_f64(),
                "denoising step"
            );
        }
        let began = Instant::now();
        let pixels = self.decode(&latents)?;
        tracing::debug!(seconds = began.elapsed().as_secs_f64(), "latents decoded");
        Ok((pixels, schedule.timesteps().len() as u32))
    }

    /// The whole request: each image as a PNG, the `i`th from seed `seed + i`.
    pub fn generate(
        &self,
        request: &TextToImageRequest,
        caller_gone: &dyn Fn() -> bool,
    ) -> Result<TextToImageOutput, InferError> {
        let first_seed = request.seed.unwrap_or_else(rand::random);
        let mut output = TextToImageOutput {
            pngs: Vec::new(),
            width: 0,
            height: 0,
            steps: 0,
        };
        for i in 0..u64::from(request.count.max(1)) {
            let seeded = TextToImageRequest {
                seed: Some(first_seed.wrapping_add(i)),
                ..request.clone()
            };
            let (pixels, steps) = self.generate_pixels(&seeded, None, caller_gone)?;
            let image = to_rgb(&pixels)?;
            let mut png = Vec::new();
            image
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .map_err(internal)?;
            (output.width, output.height, output.steps) = (image.width(), image.height(), steps);
            output.pngs.push(png);
        }
        Ok(output)
    }

    /// Refuses sizes whose attention scores or full-size activations would not fit in memory.
    fn check_memory(&self, width: u32, height: u32) -> Result<(), InferError> {
        let factor = self.vae_file.latent_factor() as u64;
        let tokens = u64::from(width) / factor * (u64::from(height) / factor);
        // Scores and their softmax for every head of both guidance halves, and the decoder's
        // widest full-size tensors (a few live at once).
        let heads = self.unet_file.first_block_heads() as u64;
        let channels = *self.vae_file.block_out_channels.first().unwrap_or(&128) as u64;
        let needed = 2 * heads * tokens * tokens * 4 * 2
            + u64::from(width) * u64::from(height) * channels * 4 * 4;
        let available = crate::available_memory();
        if needed > available {
            return Err(InferError::ModelInputRejected(format!(
                "a {width}×{height} image needs about {} MB of memory to generate and {} MB are free; ask for a smaller width or height",
                needed >> 20,
                available >> 20
            )));
        }
        Ok(())
    }

    fn start_image(
        &self,
        bytes: &[u8],
        mask: Option<&[u8]>,
        width: u32,
        height: u32,
    ) -> Result<StartImage, InferError> {
        let image = decode_rgb(bytes).map_err(|e| InferError::invalid("/image", e.to_string()))?;
        let image = fit(image, width, height);
        let mask = match mask {
            None => None,
            Some(bytes) => {
                let mask =
                    decode_rgb(bytes).map_err(|e| InferError::invalid("/mask", e.to_string()))?;
                Some(luma(&fit(mask, width, height)))
            }
        };
        Ok(StartImage {
            pixels: image_tensor(&image)?,
            mask,
        })
    }

    /// What an inpainting UNet reads beside the latents: the mask at latent size (1 where the
    /// image is repainted) and the latents of the image with the repainted part blanked (to 0,
    /// mid grey, as diffusers does).
    fn inpainting_condition(
        &self,
        start: &StartImage,
        mask: &GrayImage,
        latent_shape: (usize, usize, usize, usize),
    ) -> Result<Tensor, InferError> {
        let (_, _, latent_h, latent_w) = latent_shape;
        let binary = |mask: &GrayImage| -> Result<Tensor, InferError> {
            let values: Vec<f32> = mask
                .pixels()
                .map(|p| if p.0[0] >= 128 { 1.0 } else { 0.0 })
                .collect();
            let shape = (1, 1, mask.height() as usize, mask.width() as usize);
            Tensor::from_vec(values, shape, &Device::Cpu).map_err(internal)
        };
        // torch's nearest interpolation, as diffusers shrinks the mask: latent pixel (x, y) takes
        // image pixel (x · f, y · f).
        let (step_x, step_y) = (
            mask.width() / latent_w as u32,
            mask.height() / latent_h as u32,
        );
        let small = GrayImage::from_fn(latent_w as u32, latent_h as u32, |x, y| {
            *mask.get_pixel(x * step_x, y * step_y)
        });
        let kept = start
            .pixels
            .broadcast_mul(&(1.0 - binary(mask)?).map_err(internal)?)
            .map_err(internal)?;
        let (mean, _) = self.encode_image(&kept)?;
        let masked_latents = (mean * self.vae_file.scaling_factor).map_err(internal)?;
        Tensor::cat(&[&binary(&small)?, &masked_latents], 1).map_err(internal)
    }
}

impl Runner for ImageGenerator {
    fn run(&mut self, request: TaskRequest) -> Result<TaskOutput, InferError> {
        self.run_until(request, &|| false)
    }

    fn run_until(
        &mut self,
        request: TaskRequest,
        caller_gone: &dyn Fn() -> bool,
    ) -> Result<TaskOutput, InferError> {
        let TaskRequest::TextToImage(request) = request else {
            return Err(wrong_task(&request));
        };
        Ok(TaskOutput::TextToImage(
            self.generate(&request, caller_gone)?,
        ))
    }
}

/// Classifier-free guidance: the unconditioned half of `predicted` moved `scale` times the way
/// the conditioned half differs from it.
fn guide(predicted: &Tensor, scale: f32) -> candle_core::Result<Tensor> {
    let halves = predicted.chunk(2, 0)?;
    let (unconditioned, conditioned) = (&halves[0], &halves[1]);
    unconditioned + ((conditioned - unconditioned)? * f64::from(scale))?
}

/// A starting image resized to the output size: as pixels, and as the autoencoder's input.
struct StartImage {
    pixels: Tensor,
    mask: Option<GrayImage>,
}

/// Noise a test gives instead of the seed's: the starting latents and, for image-to-image, the
/// draw of the image's latents from their distribution.
pub struct GivenNoise {
    pub latents: Tensor,
    pub image_latents: Option<Tensor>,
}

/// `image` at `width`×`height` (Lanczos, as diffusers' image processor), untouched at that size.
fn fit(image: RgbImage, width: u32, height: u32) -> RgbImage {
    match image.dimensions() == (width, height) {
        true => image,
        false => image::imageops::resize(&image, width, height, FilterType::Lanczos3),
    }
}

/// Pillow's grey ("L": ITU-R 601-2 luma, in its fixed-point arithmetic), as diffusers reads masks.
fn luma(image: &RgbImage) -> GrayImage {
    GrayImage::from_fn(image.width(), image.height(), |x, y| {
        let [r, g, b] = image.get_pixel(x, y).0.map(u32::from);
        image::Luma([((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8])
    })
}

/// `image` as `[1, 3, h, w]` in [-1, 1].
fn image_tensor(image: &RgbImage) -> Result<Tensor, InferError> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let values: Vec<f32> = image
        .as_raw()
        .iter()
        .map(|&v| f32::from(v) / 127.5 - 1.0)
        .collect();
    Tensor::from_vec(values, (1, h, w, 3), &Device::Cpu)
        .and_then(|t| t.permute((0, 3, 1, 2)))
        .map_err(internal)
}

/// An image in [0, 1] (`[1, 3, h, w]`) as 8-bit RGB, rounded as diffusers' `numpy_to_pil`.
pub fn to_rgb(pixels: &Tensor) -> Result<RgbImage, InferError> {
    let (_, _, h, w) = pixels.dims4().map_err(internal)?;
    let values: Vec<u8> = (pixels.squeeze(0).and_then(|t| t.permute((1, 2, 0))))
        .and_then(|t| {
            (t * 255.0)?
                .round()?
                .to_dtype(DType::U8)?
                .flatten_all()?
                .to_vec1()
        })
        .map_err(internal)?;
    RgbImage::from_raw(w as u32, h as u32, values)
        .ok_or_else(|| InferError::Internal("image buffer of the wrong size".into()))
}

/// Standard normal noise of `shape` from `rng`.
fn gaussian(rng: &mut StdRng, shape: (usize, usize, usize, usize)) -> Result<Tensor, InferError> {
    let (a, b, c, d) = shape;
    let values: Vec<f32> = (0..a * b * c * d)
        .map(|_| StandardNormal.sample(rng))
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).map_err(internal)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The weights of a safetensors file as f32 CPU tensors.
fn weights(path: &Path) -> anyhow::Result<VarBuilder<'static>> {
    let tensors = crate::embed::load_safetensors(path).map_err(|e| anyhow!(e))?;
    let tensors = tensors
        .into_iter()
        .map(|(name, tensor)| Ok((name, tensor.to_dtype(DType::F32)?)))
        .collect::<candle_core::Result<_>>()?;
    Ok(VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu))
}

fn internal(error: impl std::fmt::Display) -> InferError {
    InferError::Internal(format!("diffusion engine: {error}"))
}
