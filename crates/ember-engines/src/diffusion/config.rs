//! A diffusers folder's `unet/config.json` and `vae/config.json`, read into candle-transformers'
//! configurations, and what Ember needs of `scheduler/scheduler_config.json`. Options candle's Stable Diffusion blocks do not implement (SDXL's added
//! embeddings, LCM's guidance embedding, mismatched up and down blocks) are refused at load with
//! their name, rather than run wrong.

use super::scheduler::Prediction;
use anyhow::{Result, bail};
use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModelConfig,
};
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKLConfig;
use serde::Deserialize;
use serde_json::Value;

/// A number per block, or one for all (diffusers writes both).
#[derive(Deserialize)]
#[serde(untagged)]
enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    fn get(&self, block: usize) -> usize {
        match self {
            PerBlock::One(n) => *n,
            PerBlock::Each(each) => each.get(block).copied().unwrap_or(1),
        }
    }
}

#[derive(Deserialize)]
pub struct UNetFile {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Latent pixels on a side the model was trained at.
    pub sample_size: usize,
    pub block_out_channels: Vec<usize>,
    down_block_types: Vec<String>,
    up_block_types: Vec<String>,
    layers_per_block: usize,
    /// Heads per block, in SD 1.x/2.x's configs (diffusers' historical name for it), unless
    /// `num_attention_heads` says otherwise.
    attention_head_dim: PerBlock,
    #[serde(default)]
    num_attention_heads: Option<PerBlock>,
    #[serde(default)]
    transformer_layers_per_block: Option<PerBlock>,
    pub cross_attention_dim: usize,
    #[serde(default = "one")]
    pub downsample_padding: usize,
    #[serde(default = "one_f64")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    #[serde(default = "norm_eps")]
    pub norm_eps: f64,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default)]
    use_linear_projection: bool,
    /// Refused when set (see `candle`).
    #[serde(default)]
    addition_embed_type: Option<Value>,
    #[serde(default)]
    time_cond_proj_dim: Option<Value>,
    #[serde(default)]
    class_embed_type: Option<Value>,
}

fn one() -> usize {
    1
}
fn one_f64() -> f64 {
    1.0
}
fn thirty_two() -> usize {
    32
}
fn norm_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}

impl UNetFile {
    /// Attention heads of the first (largest) block.
    pub fn first_block_heads(&self) -> usize {
        self.heads().get(0)
    }

    fn heads(&self) -> &PerBlock {
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
    }

    /// Attention heads of block `block` (the down block's; up blocks mirror them).
    pub fn heads_of_block(&self, block: usize) -> usize {
        self.heads().get(block)
    }

    /// candle's configuration for this UNet (also the check of what the ONNX UNet builds).
    pub fn candle(&self) -> Result<UNet2DConditionModelConfig> {
        for (name, value) in [
            ("addition_embed_type", &self.addition_embed_type),
            ("time_cond_proj_dim", &self.time_cond_proj_dim),
            ("class_embed_type", &self.class_embed_type),
        ] {
            if value.as_ref().is_some_and(|v| !v.is_null()) {
                bail!("unet/config.json: {name} is not supported");
            }
        }
        let blocks = self.block_out_channels.len();
        if self.down_block_types.len() != blocks || self.up_block_types.len() != blocks {
            bail!("unet/config.json: one down and one up block per block_out_channels entry");
        }
        let heads = self.heads();
        let blocks = (0..blocks)
            .map(|i| {
                let cross_attention = match self.down_block_types[i].as_str() {
                    "CrossAttnDownBlock2D" => true,
                    "DownBlock2D" => false,
                    other => bail!("unet/config.json: down block {other} is not supported"),
                };
                // candle mirrors the down blocks; the up blocks must be their mirror.
                let up = &self.up_block_types[self.up_block_types.len() - 1 - i];
                let mirrored = if cross_attention {
                    "CrossAttnUpBlock2D"
                } else {
                    "UpBlock2D"
                };
                if up != mirrored {
                    bail!("unet/config.json: up block {up} does not mirror its down block");
                }
                let transformer_layers = self.transformer_layers_per_block.as_ref();
                Ok(BlockConfig {
                    out_channels: self.block_out_channels[i],
                    use_cross_attn: cross_attention
                        .then(|| transformer_layers.map_or(1, |layers| layers.get(i))),
                    attention_head_dim: heads.get(i),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(UNet2DConditionModelConfig {
            center_input_sample: self.center_input_sample,
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
            blocks,
            layers_per_block: self.layers_per_block,
            downsample_padding: self.downsample_padding,
            mid_block_scale_factor: self.mid_block_scale_factor,
            norm_num_groups: self.norm_num_groups,
            norm_eps: self.norm_eps,
            cross_attention_dim: self.cross_attention_dim,
            // candle's sliced attention fails on rank-4 inputs; memory is checked per request.
            sliced_attention_size: None,
            use_linear_projection: self.use_linear_projection,
        })
    }
}

#[derive(Deserialize)]
pub struct VaeFile {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    /// Latents are divided by it before decoding (and multiplied after encoding).
    #[serde(default = "sd_scaling")]
    pub scaling_factor: f64,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
}

fn sd_scaling() -> f64 {
    0.18215
}

impl VaeFile {
    pub fn candle(&self) -> AutoEncoderKLConfig {
        AutoEncoderKLConfig {
            block_out_channels: self.block_out_channels.clone(),
            layers_per_block: self.layers_per_block,
            latent_channels: self.latent_channels,
            norm_num_groups: self.norm_num_groups,
            use_quant_conv: self.use_quant_conv,
            use_post_quant_conv: self.use_post_quant_conv,
        }
    }

    /// Image pixels per latent pixel on a side.
    pub fn latent_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// The parts of `scheduler/scheduler_config.json` Ember reads: the schedules in `scheduler` are
/// Stable Diffusion's training noise, so a folder trained on another is refused.
#[derive(Deserialize)]
pub struct SchedulerFile {
    #[serde(default = "epsilon")]
    prediction_type: String,
    #[serde(default = "sd_beta_start")]
    beta_start: f64,
    #[serde(default = "sd_beta_end")]
    beta_end: f64,
    #[serde(default = "scaled_linear")]
    beta_schedule: String,
    #[serde(default = "thousand")]
    num_train_timesteps: usize,
}

fn epsilon() -> String {
    "epsilon".into()
}
fn sd_beta_start() -> f64 {
    0.00085
}
fn sd_beta_end() -> f64 {
    0.012
}
fn scaled_linear() -> String {
    "scaled_linear".into()
}
fn thousand() -> usize {
    1000
}

impl SchedulerFile {
    /// What the UNet predicts, once the training noise is checked to be Stable Diffusion's.
    pub fn prediction(&self) -> Result<Prediction> {
        let sd_noise = (self.beta_start - sd_beta_start()).abs() < 1e-9
            && (self.beta_end - sd_beta_end()).abs() < 1e-9
            && self.beta_schedule == scaled_linear()
            && self.num_train_timesteps == thousand();
        if !sd_noise {
            bail!(
                "scheduler/scheduler_config.json: trained on {} betas {}..{} over {} steps, not Stable Diffusion's",
                self.beta_schedule,
                self.beta_start,
                self.beta_end,
                self.num_train_timesteps
            );
        }
        match self.prediction_type.as_str() {
            "epsilon" => Ok(Prediction::Epsilon),
            "v_prediction" => Ok(Prediction::Velocity),
            other => {
                bail!("scheduler/scheduler_config.json: prediction_type {other} is not supported")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction(json: &str) -> Result<Prediction> {
        serde_json::from_str::<SchedulerFile>(json)?.prediction()
    }

    #[test]
    fn scheduler_configs_are_read_or_refused_by_name() {
        assert_eq!(prediction("{}").unwrap(), Prediction::Epsilon);
        let velocity = r#"{"prediction_type": "v_prediction", "beta_start": 0.00085}"#;
        assert_eq!(prediction(velocity).unwrap(), Prediction::Velocity);
        let sample = prediction(r#"{"prediction_type": "sample"}"#).unwrap_err();
        assert!(
            sample.to_string().contains("prediction_type sample"),
            "{sample}"
        );
        let other_noise = prediction(r#"{"beta_schedule": "linear"}"#).unwrap_err();
        assert!(
            other_noise.to_string().contains("not Stable Diffusion's"),
            "{other_noise}"
        );
    }
}
