//! The denoising schedules, as diffusers' schedulers compute them for Stable Diffusion's training
//! noise (1000 steps, scaled-linear betas from 0.00085 to 0.012): DDIM (deterministic, `eta` 0,
//! "leading" spacing, the last step to `alphas_cumprod[0]`) and LCM (latent consistency: each
//! step predicts the clean latents and, but for the last, noises them again to the next
//! timestep).

use candle_core::Tensor;

const TRAIN_STEPS: usize = 1000;
const BETA_START: f64 = 0.00085;
const BETA_END: f64 = 0.012;
/// The step count LCM's schedule was distilled on; inference steps are picked from it.
const LCM_ORIGINAL_STEPS: usize = 50;
/// LCM's boundary condition: `sigma_data` and the scale of the timestep in `c_skip`/`c_out`.
const LCM_SIGMA_DATA: f64 = 0.5;
const LCM_TIMESTEP_SCALING: f64 = 10.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerKind {
    Ddim,
    Lcm,
}

/// What the UNet predicts (the scheduler config's `prediction_type`): the noise (SD 1.x, SD 2
/// base) or the velocity `√ᾱ·ε - √(1-ᾱ)·x₀` (SD 2's 768-pixel models).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    Velocity,
}

pub struct Scheduler {
    kind: SchedulerKind,
    prediction: Prediction,
    alphas_cumprod: Vec<f64>,
    /// Descending; the first is where denoising starts.
    timesteps: Vec<usize>,
    /// DDIM's distance between timesteps (that of the whole schedule, also when image-to-image
    /// runs only its end).
    stride: usize,
}

impl Scheduler {
    /// The schedule of `steps` steps, of which the last `strength` fraction is run (1: all of
    /// them, from pure noise; less: image-to-image, from a noised image). Empty when
    /// `steps × strength` is below one step.
    pub fn new(
        kind: SchedulerKind,
        prediction: Prediction,
        steps: usize,
        strength: f64,
    ) -> Scheduler {
        let (start, end) = (BETA_START.sqrt(), BETA_END.sqrt());
        let mut alphas_cumprod = Vec::with_capacity(TRAIN_STEPS);
        let mut product = 1.0;
        for i in 0..TRAIN_STEPS {
            let beta = (start + (end - start) * i as f64 / (TRAIN_STEPS - 1) as f64).powi(2);
            product *= 1.0 - beta;
            alphas_cumprod.push(product);
        }
        let steps = match kind {
            SchedulerKind::Ddim => steps.max(1),
            SchedulerKind::Lcm => steps.clamp(1, LCM_ORIGINAL_STEPS),
        };
        let stride = TRAIN_STEPS / steps;
        let all: Vec<usize> = match kind {
            SchedulerKind::Ddim => (0..steps).rev().map(|i| i * stride + 1).collect(),
            SchedulerKind::Lcm => {
                let origin_stride = TRAIN_STEPS / LCM_ORIGINAL_STEPS;
                (0..steps)
                    .map(|i| TRAIN_STEPS - 1 - i * LCM_ORIGINAL_STEPS / steps * origin_stride)
                    .collect()
            }
        };
        // As diffusers' img2img pipelines: `int(steps × strength)` steps, the last ones.
        let run = ((steps as f64 * strength) as usize).min(steps);
        let timesteps = all[steps - run..].to_vec();
        Scheduler {
            kind,
            prediction,
            alphas_cumprod,
            timesteps,
            stride,
        }
    }

    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// `original` noised to `timestep`: `√ᾱ·x + √(1-ᾱ)·noise`.
    pub fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        timestep: usize,
    ) -> candle_core::Result<Tensor> {
        let alpha = self.alphas_cumprod[timestep];
        (original * alpha.sqrt())? + (noise * (1.0 - alpha).sqrt())?
    }

    /// The latents after the step at `self.timesteps()[index]`, from the model's prediction.
    /// `noise` is drawn by the caller: LCM adds it at every step but the last; DDIM never does.
    pub fn step(
        &self,
        index: usize,
        model_output: &Tensor,
        sample: &Tensor,
        noise: impl FnOnce() -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        let timestep = self.timesteps[index];
        let alpha = self.alphas_cumprod[timestep];
        let (a, b) = (alpha.sqrt(), (1.0 - alpha).sqrt());
        // The clean latents and the noise the model's output implies.
        let (predicted_original, predicted_noise) = match self.prediction {
            Prediction::Epsilon => (((sample - (model_output * b)?)? / a)?, model_output.clone()),
            Prediction::Velocity => (
                ((sample * a)? - (model_output * b)?)?,
                ((model_output * a)? + (sample * b)?)?,
            ),
        };
        match self.kind {
            SchedulerKind::Ddim => {
                let previous = timestep.saturating_sub(self.stride);
                let alpha_previous = self.alphas_cumprod[previous];
                (predicted_original * alpha_previous.sqrt())?
                    + (predicted_noise * (1.0 - alpha_previous).sqrt())?
            }
            SchedulerKind::Lcm => {
                let scaled = timestep as f64 * LCM_TIMESTEP_SCALING;
                let sigma2 = LCM_SIGMA_DATA * LCM_SIGMA_DATA;
                let c_skip = sigma2 / (scaled * scaled + sigma2);
                let c_out = scaled / (scaled * scaled + sigma2).sqrt();
                let denoised = ((predicted_original * c_out)? + (sample * c_skip)?)?;
                match self.timesteps.get(index + 1) {
                    None => Ok(denoised),
                    Some(&next) => {
                        let alpha_next = self.alphas_cumprod[next];
                        (denoised * alpha_next.sqrt())? + (noise()? * (1.0 - alpha_next).sqrt())?
                    }
                }
            }
        }
    }
}
