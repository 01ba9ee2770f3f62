//! TAESD, the tiny autoencoder's decoder (diffusers' `AutoencoderTiny`, `DecoderTiny`): latents to
//! pixels through a few plain 3×3 convolutions with ReLU and nearest upsampling, a fraction of the
//! KL autoencoder's work. It reads the latents as the UNet leaves them (its scaling factor is 1).
//! Configured from the folder's `config.json`; weights under `decoder.layers.{i}`, numbered as the
//! reference's `nn.Sequential` numbers them (activations and upsampling count as layers).

use super::{read_json, weights};
use anyhow::{bail, ensure};
use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, conv2d, conv2d_no_bias};
use serde::Deserialize;
use std::path::Path;

/// The fields of `AutoencoderTiny`'s `config.json` the decoder reads.
#[derive(Deserialize)]
struct TinyFile {
    latent_channels: usize,
    out_channels: usize,
    decoder_block_out_channels: Vec<usize>,
    num_decoder_blocks: Vec<usize>,
    upsampling_scaling_factor: usize,
    act_fn: String,
    upsample_fn: String,
    scaling_factor: f64,
}

/// A residual block: three convolutions (ReLU between), added to the input, ReLU.
struct Block {
    convs: [Conv2d; 3],
}

impl Module for Block {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let ys = self.convs[0].forward(xs)?.relu()?;
        let ys = self.convs[1].forward(&ys)?.relu()?;
        (self.convs[2].forward(&ys)? + xs)?.relu()
    }
}

enum Layer {
    Conv(Conv2d),
    Relu,
    Block(Block),
    Upsample(usize),
}

pub struct TinyDecoder {
    layers: Vec<Layer>,
}

impl TinyDecoder {
    pub fn load(dir: &Path) -> anyhow::Result<TinyDecoder> {
        let file: TinyFile = read_json(&dir.join("config.json"))?;
        ensure!(
            file.act_fn == "relu" && file.upsample_fn == "nearest",
            "{}: only ReLU and nearest upsampling are supported, not {} and {}",
            dir.display(),
            file.act_fn,
            file.upsample_fn
        );
        // The UNet's latents go in as they are.
        ensure!(
            file.scaling_factor == 1.0,
            "a TAESD scaling factor other than 1"
        );
        let channels = &file.decoder_block_out_channels;
        if channels.len() != file.num_decoder_blocks.len() || channels.is_empty() {
            bail!("decoder_block_out_channels and num_decoder_blocks differ in length");
        }
        let vb = weights(&dir.join("diffusion_pytorch_model.safetensors"))?.pp("decoder.layers");
        let padded = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let mut layers = vec![
            Layer::Conv(conv2d(
                file.latent_channels,
                channels[0],
                3,
                padded,
                vb.pp(0),
            )?),
            Layer::Relu,
        ];
        for (i, (&width, &blocks)) in channels.iter().zip(&file.num_decoder_blocks).enumerate() {
            let last = i + 1 == channels.len();
            // Blocks keep their width, so the skip is the identity (no skip convolution).
            ensure!(i == 0 || width == channels[i - 1], "blocks change width");
            for _ in 0..blocks {
                let vb = vb.pp(layers.len()).pp("conv");
                let conv = |n: usize| conv2d(width, width, 3, padded, vb.pp(n));
                layers.push(Layer::Block(Block {
                    convs: [conv(0)?, conv(2)?, conv(4)?],
                }));
            }
            if !last {
                layers.push(Layer::Upsample(file.upsampling_scaling_factor));
            }
            let at = vb.pp(layers.len());
            layers.push(Layer::Conv(match last {
                true => conv2d(width, file.out_channels, 3, padded, at)?,
                false => conv2d_no_bias(width, width, 3, padded, at)?,
            }));
        }
        Ok(TinyDecoder { layers })
    }

    /// Decodes latents (`[n, 4, h/8, w/8]`) to an image in [-1, 1] (unclamped): `[n, 3, h, w]`.
    pub fn decode(&self, latents: &Tensor) -> candle_core::Result<Tensor> {
        // Latents beyond ±3 are squashed into that range first.
        let mut xs = ((latents / 3.0)?.tanh()? * 3.0)?;
        for layer in &self.layers {
            xs = match layer {
                Layer::Conv(conv) => conv.forward(&xs)?,
                Layer::Relu => xs.relu()?,
                Layer::Block(block) => block.forward(&xs)?,
                Layer::Upsample(factor) => {
                    let (_, _, h, w) = xs.dims4()?;
                    xs.upsample_nearest2d(h * factor, w * factor)?
                }
            };
        }
        xs.affine(2.0, -1.0)
    }
}
