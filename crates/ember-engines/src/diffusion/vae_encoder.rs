//! The autoencoder's encoder (image → latent distribution), built from candle-transformers'
//! blocks. candle's own `AutoEncoderKL::encode` samples the distribution with an unseeded
//! generator and keeps its mean private; image-to-image needs the mean and standard deviation to
//! draw from its seeded generator, so that one seed gives one image.

use super::config::VaeFile;
use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, VarBuilder, conv2d, group_norm};
use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    DownEncoderBlock2D, DownEncoderBlock2DConfig, UNetMidBlock2D, UNetMidBlock2DConfig,
};

/// diffusers' autoencoder norms.
const EPS: f64 = 1e-6;

pub struct VaeEncoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock2D>,
    mid_block: UNetMidBlock2D,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
}

impl VaeEncoder {
    /// `vb` is the autoencoder's root (`encoder.*`, `quant_conv.*`).
    pub fn new(vb: VarBuilder, config: &VaeFile) -> candle_core::Result<VaeEncoder> {
        let padded = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let channels = &config.block_out_channels;
        let groups = config.norm_num_groups;
        let encoder = vb.pp("encoder");
        let down_blocks = (0..channels.len())
            .map(|i| {
                let block = DownEncoderBlock2DConfig {
                    num_layers: config.layers_per_block,
                    resnet_eps: EPS,
                    resnet_groups: groups,
                    add_downsample: i + 1 < channels.len(),
                    downsample_padding: 0,
                    ..Default::default()
                };
                let in_channels = channels[i.saturating_sub(1)];
                DownEncoderBlock2D::new(
                    encoder.pp(format!("down_blocks.{i}")),
                    in_channels,
                    channels[i],
                    block,
                )
            })
            .collect::<candle_core::Result<_>>()?;
        let last = channels[channels.len() - 1];
        let mid = UNetMidBlock2DConfig {
            resnet_eps: EPS,
            output_scale_factor: 1.0,
            attn_num_head_channels: None,
            resnet_groups: Some(groups),
            ..Default::default()
        };
        let latent = config.latent_channels;
        let quant_conv = match config.use_quant_conv {
            true => Some(conv2d(
                2 * latent,
                2 * latent,
                1,
                Default::default(),
                vb.pp("quant_conv"),
            )?),
            false => None,
        };
        Ok(VaeEncoder {
            conv_in: conv2d(
                config.in_channels,
                channels[0],
                3,
                padded,
                encoder.pp("conv_in"),
            )?,
            down_blocks,
            mid_block: UNetMidBlock2D::new(encoder.pp("mid_block"), last, None, mid)?,
            conv_norm_out: group_norm(groups, last, EPS, encoder.pp("conv_norm_out"))?,
            conv_out: conv2d(last, 2 * latent, 3, padded, encoder.pp("conv_out"))?,
            quant_conv,
        })
    }

    /// The latent distribution of `image` (`[b, 3, h, w]` in [-1, 1]): its mean and standard
    /// deviation, each `[b, latent, h / f, w / f]`.
    pub fn forward(&self, image: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let mut x = self.conv_in.forward(image)?;
        for block in &self.down_blocks {
            x = block.forward(&x)?;
        }
        x = self.mid_block.forward(&x, None)?;
        x = self
            .conv_out
            .forward(&self.conv_norm_out.forward(&x)?.silu()?)?;
        if let Some(quant_conv) = &self.quant_conv {
            x = quant_conv.forward(&x)?;
        }
        let halves = x.chunk(2, 1)?;
        let log_variance = halves[1].clamp(-30.0, 20.0)?;
        Ok((halves[0].clone(), (log_variance * 0.5)?.exp()?))
    }
}
