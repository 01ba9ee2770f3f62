//! Stable Diffusion's UNet and its autoencoder's decoder on ONNX Runtime: each built here as an
//! ONNX graph from the diffusers folder's safetensors (the operations of diffusers'
//! `UNet2DConditionModel` and `Decoder`, weights widened to f32), which ONNX Runtime loads from
//! memory and runs. Measured against candle's blocks in `ember bench image` (ARCHITECTURE.md);
//! the generator uses these where ONNX Runtime is installed and candle's elsewhere.
//!
//! The graphs follow the weights: resnets, transformer blocks and up/down samplers are built
//! while their tensors exist, shortcut convolutions where a resnet has one, and a transformer's
//! projections as linear layers or 1×1 convolutions by the rank of their weights. The config
//! gives only what the weights cannot: group counts, epsilons, heads, the time embedding.

use super::config::{UNetFile, VaeFile};
use crate::embed::load_safetensors;
use crate::onnx;
use crate::onnx_proto::{BuiltModel, FLOAT, GraphBuilder, float, int, ints, string, value_info};
use anyhow::{Context, anyhow, bail};
use candle_core::{DType, Tensor};
use ort::session::Session;
use ort::value::Tensor as OrtTensor;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

/// diffusers' epsilons where the config has none: transformer and autoencoder group norms.
const TRANSFORMER_NORM_EPS: f32 = 1e-6;
const LAYER_NORM_EPS: f32 = 1e-5;
const VAE_NORM_EPS: f32 = 1e-6;

/// The UNet: noise predicted for `latents` at a timestep, conditioned on text states.
pub struct OnnxUNet {
    session: Mutex<Session>,
    time_channels: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
}

impl OnnxUNet {
    pub fn load(weights: &Path, file: &UNetFile, threads: usize) -> anyhow::Result<OnnxUNet> {
        let weights = load_safetensors(weights).map_err(|e| anyhow!(e))?;
        let model = Builder::new(&weights).unet(file)?;
        Ok(OnnxUNet {
            session: Mutex::new(onnx::session_from_memory(model, threads)?),
            time_channels: file.block_out_channels[0],
            flip_sin_to_cos: file.flip_sin_to_cos,
            freq_shift: file.freq_shift,
        })
    }

    /// `latents` `[batch, in, h, w]` and `context` `[batch, tokens, dim]` → `[batch, out, h, w]`.
    pub fn forward(
        &self,
        latents: &Tensor,
        timestep: f64,
        context: &Tensor,
    ) -> anyhow::Result<Tensor> {
        let features = self.time_features(timestep);
        let width = features.len();
        let inputs = ort::inputs![
            "latents" => onnx::input(latents)?,
            "time_features" => OrtTensor::from_array(([1, width], features))?,
            "context" => onnx::input(context)?,
        ];
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        onnx::first_output(&session.run(inputs).context("ONNX Runtime")?)
    }

    /// The timestep's sinusoidal features (diffusers' `Timesteps`): `half` frequencies from 1
    /// down to 1/10000, sines then cosines (cosines first when `flip_sin_to_cos`).
    fn time_features(&self, timestep: f64) -> Vec<f32> {
        let half = self.time_channels / 2;
        let angles: Vec<f64> = (0..half)
            .map(|i| {
                let exponent = -(10000f64.ln()) * i as f64 / (half as f64 - self.freq_shift);
                timestep * exponent.exp()
            })
            .collect();
        let sines = angles.iter().map(|a| a.sin() as f32);
        let cosines = angles.iter().map(|a| a.cos() as f32);
        match self.flip_sin_to_cos {
            true => cosines.chain(sines).collect(),
            false => sines.chain(cosines).collect(),
        }
    }
}

/// The autoencoder's decoder: latents (already divided by the scaling factor) → pixels in
/// [-1, 1].
pub struct OnnxDecoder {
    session: Mutex<Session>,
}

impl OnnxDecoder {
    pub fn load(weights: &Path, file: &VaeFile, threads: usize) -> anyhow::Result<OnnxDecoder> {
        let weights = load_safetensors(weights).map_err(|e| anyhow!(e))?;
        let model = Builder::new(&weights).decoder(file)?;
        Ok(OnnxDecoder {
            session: Mutex::new(onnx::session_from_memory(model, threads)?),
        })
    }

    pub fn decode(&self, latents: &Tensor) -> anyhow::Result<Tensor> {
        let inputs = ort::inputs!["latents" => onnx::input(latents)?];
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        onnx::first_output(&session.run(inputs).context("ONNX Runtime")?)
    }
}

/// A graph being built from a checkpoint's tensors.
struct Builder<'a> {
    weights: &'a HashMap<String, Tensor>,
    onnx: GraphBuilder,
}

impl<'a> Builder<'a> {
    fn new(weights: &'a HashMap<String, Tensor>) -> Builder<'a> {
        Builder {
            weights,
            onnx: GraphBuilder::default(),
        }
    }

    fn unet(mut self, file: &UNetFile) -> anyhow::Result<BuiltModel> {
        // The options candle's UNet refuses, this one refuses too.
        file.candle()?;
        let groups = file.norm_num_groups;
        let eps = file.norm_eps as f32;
        let heads = |block: usize| file.heads_of_block(block);
        let blocks = file.block_out_channels.len();

        let temb = self.linear("time_features", "time_embedding.linear_1")?;
        let temb = self.silu(&temb);
        let temb = self.linear(&temb, "time_embedding.linear_2")?;
        // Every resnet adds its projection of SiLU(temb).
        let temb = self.silu(&temb);

        let mut x = "latents".to_string();
        if file.center_input_sample {
            let (two, one) = (self.scalar(2.0), self.scalar(1.0));
            let doubled = self.onnx.node("Mul", &[&x, &two], vec![]);
            x = self.onnx.node("Sub", &[&doubled, &one], vec![]);
        }
        x = self.conv(&x, "conv_in", 1, 1)?;
        let mut skips = vec![x.clone()];
        for block in 0..blocks {
            let prefix = format!("down_blocks.{block}");
            for layer in 0.. {
                let resnet = format!("{prefix}.resnets.{layer}");
                if !self.has(&format!("{resnet}.conv1.weight")) {
                    break;
                }
                x = self.resnet(&x, &resnet, Some(&temb), groups, eps, 1.0)?;
                let attention = format!("{prefix}.attentions.{layer}");
                if self.has(&format!("{attention}.norm.weight")) {
                    x = self.transformer(&x, &attention, "context", groups, heads(block))?;
                }
                skips.push(x.clone());
            }
            let down = format!("{prefix}.downsamplers.0.conv");
            if self.has(&format!("{down}.weight")) {
                x = self.conv(&x, &down, 2, file.downsample_padding)?;
                skips.push(x.clone());
            }
        }
        let scale = file.mid_block_scale_factor as f32;
        x = self.resnet(&x, "mid_block.resnets.0", Some(&temb), groups, eps, scale)?;
        x = self.transformer(
            &x,
            "mid_block.attentions.0",
            "context",
            groups,
            heads(blocks - 1),
        )?;
        x = self.resnet(&x, "mid_block.resnets.1", Some(&temb), groups, eps, scale)?;
        for block in 0..blocks {
            let prefix = format!("up_blocks.{block}");
            for layer in 0.. {
                let resnet = format!("{prefix}.resnets.{layer}");
                if !self.has(&format!("{resnet}.conv1.weight")) {
                    break;
                }
                let skip = skips
                    .pop()
                    .ok_or_else(|| anyhow!("{resnet}: more up layers than down"))?;
                x = self.onnx.node("Concat", &[&x, &skip], vec![int("axis", 1)]);
                x = self.resnet(&x, &resnet, Some(&temb), groups, eps, 1.0)?;
                let attention = format!("{prefix}.attentions.{layer}");
                if self.has(&format!("{attention}.norm.weight")) {
                    let heads = heads(blocks - 1 - block);
                    x = self.transformer(&x, &attention, "context", groups, heads)?;
                }
            }
            let up = format!("{prefix}.upsamplers.0.conv");
            if self.has(&format!("{up}.weight")) {
                x = self.upsample(&x, &up)?;
            }
        }
        if !skips.is_empty() {
            bail!(
                "{} down-block outputs left unused: not a UNet this builds",
                skips.len()
            );
        }
        x = self.group_norm(&x, "conv_norm_out", groups, eps)?;
        x = self.silu(&x);
        x = self.conv(&x, "conv_out", 1, 1)?;
        self.onnx.output(&x, "noise");

        let image = |name: &str| {
            value_info(
                name,
                FLOAT,
                &[
                    Some("batch"),
                    Some("channels"),
                    Some("height"),
                    Some("width"),
                ],
                &[],
            )
        };
        let inputs = vec![
            image("latents"),
            value_info(
                "time_features",
                FLOAT,
                &[None, None],
                &[1, file.block_out_channels[0] as i64],
            ),
            value_info(
                "context",
                FLOAT,
                &[Some("batch"), Some("tokens"), None],
                &[file.cross_attention_dim as i64],
            ),
        ];
        Ok(self.onnx.model("unet", inputs, vec![image("noise")], 18))
    }

    fn decoder(mut self, file: &VaeFile) -> anyhow::Result<BuiltModel> {
        let groups = file.norm_num_groups;
        let mut x = "latents".to_string();
        if file.use_post_quant_conv {
            x = self.conv(&x, "post_quant_conv", 1, 0)?;
        }
        x = self.conv(&x, "decoder.conv_in", 1, 1)?;
        x = self.resnet(
            &x,
            "decoder.mid_block.resnets.0",
            None,
            groups,
            VAE_NORM_EPS,
            1.0,
        )?;
        x = self.self_attention(&x, "decoder.mid_block.attentions.0", groups)?;
        x = self.resnet(
            &x,
            "decoder.mid_block.resnets.1",
            None,
            groups,
            VAE_NORM_EPS,
            1.0,
        )?;
        for block in 0..file.block_out_channels.len() {
            let prefix = format!("decoder.up_blocks.{block}");
            for layer in 0.. {
                let resnet = format!("{prefix}.resnets.{layer}");
                if !self.has(&format!("{resnet}.conv1.weight")) {
                    break;
                }
                x = self.resnet(&x, &resnet, None, groups, VAE_NORM_EPS, 1.0)?;
            }
            let up = format!("{prefix}.upsamplers.0.conv");
            if self.has(&format!("{up}.weight")) {
                x = self.upsample(&x, &up)?;
            }
        }
        x = self.group_norm(&x, "decoder.conv_norm_out", groups, VAE_NORM_EPS)?;
        x = self.silu(&x);
        x = self.conv(&x, "decoder.conv_out", 1, 1)?;
        self.onnx.output(&x, "image");
        let image = |name: &str, channels: usize| {
            value_info(
                name,
                FLOAT,
                &[Some("batch"), None, Some("height"), Some("width")],
                &[channels as i64],
            )
        };
        let inputs = vec![image("latents", file.latent_channels)];
        let outputs = vec![image("image", file.out_channels)];
        Ok(self.onnx.model("vae-decoder", inputs, outputs, 18))
    }

    fn has(&self, name: &str) -> bool {
        self.weights.contains_key(name)
    }

    fn tensor(&self, name: &str) -> anyhow::Result<Tensor> {
        let tensor = self
            .weights
            .get(name)
            .ok_or_else(|| anyhow!("no tensor {name}"))?;
        Ok(tensor.to_dtype(DType::F32)?)
    }

    /// The checkpoint's tensor `name` as a weight, reshaped to `dims` when given.
    fn weight(&mut self, name: &str, dims: Option<&[usize]>) -> anyhow::Result<String> {
        let tensor = self.tensor(name)?;
        let values = tensor.flatten_all()?.to_vec1::<f32>()?;
        let dims = dims.unwrap_or(tensor.dims()).to_vec();
        Ok(self.onnx.weight_f32(name, &dims, values))
    }

    /// A per-channel tensor `[C]` as `[C, 1, 1]`, to scale or shift NCHW activations.
    fn channel_weight(&mut self, name: &str) -> anyhow::Result<String> {
        let channels = self.tensor(name)?.elem_count();
        self.weight(name, Some(&[channels, 1, 1]))
    }

    fn scalar(&mut self, value: f32) -> String {
        self.onnx.constant_f32(&format!("scalar/{value}"), value)
    }

    fn conv(&mut self, x: &str, prefix: &str, stride: i64, pad: usize) -> anyhow::Result<String> {
        let weight = self.weight(&format!("{prefix}.weight"), None)?;
        let bias = self.weight(&format!("{prefix}.bias"), None)?;
        let pad = pad as i64;
        Ok(self.onnx.node(
            "Conv",
            &[x, &weight, &bias],
            vec![
                ints("strides", &[stride, stride]),
                ints("pads", &[pad, pad, pad, pad]),
            ],
        ))
    }

    /// `x · Wᵀ + b` for the linear layer `prefix` (its bias optional; a 1×1 convolution's
    /// weight is read as the matrix it is).
    fn linear(&mut self, x: &str, prefix: &str) -> anyhow::Result<String> {
        let tensor = self.tensor(&format!("{prefix}.weight"))?;
        let (out, input) = (tensor.dim(0)?, tensor.elem_count() / tensor.dim(0)?);
        let transposed = tensor.reshape((out, input))?.t()?.contiguous()?;
        let values = transposed.flatten_all()?.to_vec1::<f32>()?;
        let weight = self
            .onnx
            .weight_f32(&format!("{prefix}.weight_t"), &[input, out], values);
        let product = self.onnx.node("MatMul", &[x, &weight], vec![]);
        let bias = format!("{prefix}.bias");
        if !self.has(&bias) {
            return Ok(product);
        }
        let bias = self.weight(&bias, None)?;
        Ok(self.onnx.node("Add", &[&product, &bias], vec![]))
    }

    fn silu(&mut self, x: &str) -> String {
        let gate = self.onnx.node("Sigmoid", &[x], vec![]);
        self.onnx.node("Mul", &[x, &gate], vec![])
    }

    /// GroupNorm on NCHW: the groups normalized as the channels of an instance norm, then the
    /// per-channel scale and shift.
    fn group_norm(
        &mut self,
        x: &str,
        prefix: &str,
        groups: usize,
        eps: f32,
    ) -> anyhow::Result<String> {
        let grouped_shape = self
            .onnx
            .constant_i64(&format!("{prefix}/groups"), &[0, groups as i64, -1]);
        let grouped = self.onnx.node("Reshape", &[x, &grouped_shape], vec![]);
        let ones = self
            .onnx
            .weight_f32(&format!("{prefix}/ones"), &[groups], vec![1.0; groups]);
        let zeros = self
            .onnx
            .weight_f32(&format!("{prefix}/zeros"), &[groups], vec![0.0; groups]);
        let normed = self.onnx.node(
            "InstanceNormalization",
            &[&grouped, &ones, &zeros],
            vec![float("epsilon", eps)],
        );
        let shape = self.onnx.node("Shape", &[x], vec![]);
        let normed = self.onnx.node("Reshape", &[&normed, &shape], vec![]);
        let gamma = self.channel_weight(&format!("{prefix}.weight"))?;
        let beta = self.channel_weight(&format!("{prefix}.bias"))?;
        let scaled = self.onnx.node("Mul", &[&normed, &gamma], vec![]);
        Ok(self.onnx.node("Add", &[&scaled, &beta], vec![]))
    }

    fn layer_norm(&mut self, x: &str, prefix: &str) -> anyhow::Result<String> {
        let gamma = self.weight(&format!("{prefix}.weight"), None)?;
        let beta = self.weight(&format!("{prefix}.bias"), None)?;
        Ok(self.onnx.node(
            "LayerNormalization",
            &[x, &gamma, &beta],
            vec![int("axis", -1), float("epsilon", LAYER_NORM_EPS)],
        ))
    }

    /// diffusers' `ResnetBlock2D`: two normed, SiLU'd 3×3 convolutions, the time embedding's
    /// projection added between them, and the input (through a 1×1 convolution where the
    /// channels change) added back, divided by `scale`.
    fn resnet(
        &mut self,
        x: &str,
        prefix: &str,
        temb: Option<&str>,
        groups: usize,
        eps: f32,
        scale: f32,
    ) -> anyhow::Result<String> {
        let h = self.group_norm(x, &format!("{prefix}.norm1"), groups, eps)?;
        let h = self.silu(&h);
        let mut h = self.conv(&h, &format!("{prefix}.conv1"), 1, 1)?;
        if let Some(temb) = temb {
            let projected = self.linear(temb, &format!("{prefix}.time_emb_proj"))?;
            let shape = self
                .onnx
                .constant_i64(&format!("{prefix}/temb_shape"), &[0, -1, 1, 1]);
            let projected = self.onnx.node("Reshape", &[&projected, &shape], vec![]);
            h = self.onnx.node("Add", &[&h, &projected], vec![]);
        }
        let h = self.group_norm(&h, &format!("{prefix}.norm2"), groups, eps)?;
        let h = self.silu(&h);
        let h = self.conv(&h, &format!("{prefix}.conv2"), 1, 1)?;
        let shortcut = format!("{prefix}.conv_shortcut");
        let input = match self.has(&format!("{shortcut}.weight")) {
            true => self.conv(x, &shortcut, 1, 0)?,
            false => x.to_string(),
        };
        let sum = self.onnx.node("Add", &[&input, &h], vec![]);
        if scale == 1.0 {
            return Ok(sum);
        }
        let scale = self.scalar(scale);
        Ok(self.onnx.node("Div", &[&sum, &scale], vec![]))
    }

    /// `[B, C, H, W]` → `[B, H·W, C]`.
    fn tokens_of(&mut self, x: &str, prefix: &str) -> String {
        let flat = self
            .onnx
            .constant_i64(&format!("{prefix}/flat"), &[0, 0, -1]);
        let flat = self.onnx.node("Reshape", &[x, &flat], vec![]);
        self.onnx
            .node("Transpose", &[&flat], vec![ints("perm", &[0, 2, 1])])
    }

    /// `[B, H·W, C]` → the NCHW shape of `like`.
    fn spatial_of(&mut self, tokens: &str, like: &str) -> String {
        let channels_first = self
            .onnx
            .node("Transpose", &[tokens], vec![ints("perm", &[0, 2, 1])]);
        let shape = self.onnx.node("Shape", &[like], vec![]);
        self.onnx
            .node("Reshape", &[&channels_first, &shape], vec![])
    }

    /// diffusers' `Transformer2DModel`: group norm, projection in, its transformer blocks
    /// (self-attention, cross-attention to `context`, GEGLU feed-forward, each pre-normed and
    /// residual), projection out, and the input added back.
    fn transformer(
        &mut self,
        x: &str,
        prefix: &str,
        context: &str,
        groups: usize,
        heads: usize,
    ) -> anyhow::Result<String> {
        let normed = self.group_norm(x, &format!("{prefix}.norm"), groups, TRANSFORMER_NORM_EPS)?;
        let linear_projection = self.tensor(&format!("{prefix}.proj_in.weight"))?.rank() == 2;
        let (mut tokens, projected_like) = if linear_projection {
            let tokens = self.tokens_of(&normed, prefix);
            (
                self.linear(&tokens, &format!("{prefix}.proj_in"))?,
                normed.clone(),
            )
        } else {
            let projected = self.conv(&normed, &format!("{prefix}.proj_in"), 1, 0)?;
            (self.tokens_of(&projected, prefix), projected)
        };
        for block in 0.. {
            let p = format!("{prefix}.transformer_blocks.{block}");
            if !self.has(&format!("{p}.norm1.weight")) {
                break;
            }
            let h = self.layer_norm(&tokens, &format!("{p}.norm1"))?;
            let h = self.attention(&h, None, &format!("{p}.attn1"), heads)?;
            tokens = self.onnx.node("Add", &[&h, &tokens], vec![]);
            let h = self.layer_norm(&tokens, &format!("{p}.norm2"))?;
            let h = self.attention(&h, Some(context), &format!("{p}.attn2"), heads)?;
            tokens = self.onnx.node("Add", &[&h, &tokens], vec![]);
            let h = self.layer_norm(&tokens, &format!("{p}.norm3"))?;
            let h = self.geglu(&h, &format!("{p}.ff.net"))?;
            tokens = self.onnx.node("Add", &[&h, &tokens], vec![]);
        }
        let out = if linear_projection {
            let projected = self.linear(&tokens, &format!("{prefix}.proj_out"))?;
            self.spatial_of(&projected, &projected_like)
        } else {
            let spatial = self.spatial_of(&tokens, &projected_like);
            self.conv(&spatial, &format!("{prefix}.proj_out"), 1, 0)?
        };
        Ok(self.onnx.node("Add", &[&out, x], vec![]))
    }

    /// Multi-head attention of `x` `[B, N, C]` to `context` (itself when `None`), with the
    /// projections of `prefix` (`to_q`, `to_k`, `to_v`, `to_out.0`).
    fn attention(
        &mut self,
        x: &str,
        context: Option<&str>,
        prefix: &str,
        heads: usize,
    ) -> anyhow::Result<String> {
        let inner = self.tensor(&format!("{prefix}.to_q.weight"))?.dim(0)?;
        let head_dim = inner / heads;
        let context = context.unwrap_or(x);
        let q = self.linear(x, &format!("{prefix}.to_q"))?;
        let k = self.linear(context, &format!("{prefix}.to_k"))?;
        let v = self.linear(context, &format!("{prefix}.to_v"))?;
        let attended = self
            .onnx
            .scaled_dot_product(&q, &k, &v, heads, head_dim, prefix);
        self.linear(&attended, &format!("{prefix}.to_out.0"))
    }

    /// The feed-forward `net`: a GEGLU (one projection split into a value and its gate, the
    /// value times GELU(gate), erf GELU) and the projection back.
    fn geglu(&mut self, x: &str, prefix: &str) -> anyhow::Result<String> {
        let projected = self.linear(x, &format!("{prefix}.0.proj"))?;
        let halves = self.onnx.node_outputs(
            "Split",
            &[&projected],
            2,
            vec![int("axis", -1), int("num_outputs", 2)],
        );
        let (value, gate) = (&halves[0], &halves[1]);
        let gelu = self.onnx.gelu(gate);
        let gated = self.onnx.node("Mul", &[value, &gelu], vec![]);
        self.linear(&gated, &format!("{prefix}.2"))
    }

    /// The autoencoder's single-head self-attention over the pixels, residual: its projections
    /// under diffusers' names (`to_q`...) or the older ones (`query`, `key`, `value`,
    /// `proj_attn`), as checkpoints have them.
    fn self_attention(&mut self, x: &str, prefix: &str, groups: usize) -> anyhow::Result<String> {
        let normed = self.group_norm(x, &format!("{prefix}.group_norm"), groups, VAE_NORM_EPS)?;
        let tokens = self.tokens_of(&normed, prefix);
        let names = match self.has(&format!("{prefix}.to_q.weight")) {
            true => ["to_q", "to_k", "to_v", "to_out.0"],
            false => ["query", "key", "value", "proj_attn"],
        };
        let q = self.linear(&tokens, &format!("{prefix}.{}", names[0]))?;
        let k = self.linear(&tokens, &format!("{prefix}.{}", names[1]))?;
        let v = self.linear(&tokens, &format!("{prefix}.{}", names[2]))?;
        let channels = self
            .tensor(&format!("{prefix}.{}.weight", names[0]))?
            .dim(0)?;
        let attended = self
            .onnx
            .scaled_dot_product(&q, &k, &v, 1, channels, prefix);
        let out = self.linear(&attended, &format!("{prefix}.{}", names[3]))?;
        let spatial = self.spatial_of(&out, x);
        Ok(self.onnx.node("Add", &[&spatial, x], vec![]))
    }

    /// Nearest-neighbour doubling of height and width, then the 3×3 convolution `prefix`.
    fn upsample(&mut self, x: &str, prefix: &str) -> anyhow::Result<String> {
        let scales =
            self.onnx
                .weight_f32(&format!("{prefix}/scales"), &[4], vec![1.0, 1.0, 2.0, 2.0]);
        let doubled = self.onnx.node(
            "Resize",
            &[x, "", &scales],
            vec![
                string("mode", "nearest"),
                string("coordinate_transformation_mode", "asymmetric"),
                string("nearest_mode", "floor"),
            ],
        );
        self.conv(&doubled, prefix, 1, 1)
    }
}
