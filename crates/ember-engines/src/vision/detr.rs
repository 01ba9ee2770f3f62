//! DETR object detection (facebook/detr-resnet-50's `DetrForObjectDetection`), read from a Hugging
//! Face folder: `config.json` (sizes, `id2label`) and `model.safetensors` in the Hub checkpoint's
//! layout (the ResNet backbone under timm's names). A ResNet's last features, projected to
//! `d_model` and given sine position embeddings, go through a post-norm transformer encoder; a
//! decoder turns `num_queries` learned object queries into one class distribution (the last class
//! is "no object") and one box (centre, size, relative to the image) each.

use super::resnet::Backbone;
use crate::transformer::{Activation, Attention, FeedForward};
use candle_core::{D, Device, Tensor};
use candle_nn::{LayerNorm, Linear, Module, VarBuilder, layer_norm, linear};
use serde::Deserialize;

/// DETR's frozen batch norms and its layer norms.
const BATCH_NORM_EPS: f64 = 1e-5;
const LAYER_NORM_EPS: f64 = 1e-5;

#[derive(Debug, Deserialize)]
pub struct DetrConfig {
    d_model: usize,
    encoder_layers: usize,
    decoder_layers: usize,
    encoder_attention_heads: usize,
    decoder_attention_heads: usize,
    encoder_ffn_dim: usize,
    decoder_ffn_dim: usize,
    num_queries: usize,
    #[serde(default = "relu")]
    activation_function: String,
    #[serde(default = "sine")]
    position_embedding_type: String,
}

fn relu() -> String {
    "relu".into()
}

fn sine() -> String {
    "sine".into()
}

struct EncoderLayer {
    attention: Attention,
    attention_norm: LayerNorm,
    feed_forward: FeedForward,
    final_norm: LayerNorm,
}

/// `attention` from `query` (position added) to keys from `key` (position added) and values
/// from `value` (no position): DETR's positions go into queries and keys, never values.
fn attend(
    attention: &Attention,
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
) -> candle_core::Result<Tensor> {
    attention.attend(query, &attention.keys(key)?, &attention.values(value)?)
}

impl EncoderLayer {
    fn forward(&self, x: &Tensor, position: &Tensor) -> candle_core::Result<Tensor> {
        let with_position = (x + position)?;
        let attended = attend(&self.attention, &with_position, &with_position, x)?;
        let x = self.attention_norm.forward(&(x + attended)?)?;
        let fed = self.feed_forward.forward(&x, Activation::Relu)?;
        self.final_norm.forward(&(&x + fed)?)
    }
}

struct DecoderLayer {
    self_attention: Attention,
    self_attention_norm: LayerNorm,
    cross_attention: Attention,
    cross_attention_norm: LayerNorm,
    feed_forward: FeedForward,
    final_norm: LayerNorm,
}

impl DecoderLayer {
    fn forward(
        &self,
        x: &Tensor,
        query_position: &Tensor,
        memory: &Tensor,
        memory_keys: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let with_position = (x + query_position)?;
        let attended = attend(&self.self_attention, &with_position, &with_position, x)?;
        let x = self.self_attention_norm.forward(&(x + attended)?)?;
        let with_position = (&x + query_position)?;
        let attended = attend(&self.cross_attention, &with_position, memory_keys, memory)?;
        let x = self.cross_attention_norm.forward(&(x + attended)?)?;
        let fed = self.feed_forward.forward(&x, Activation::Relu)?;
        self.final_norm.forward(&(&x + fed)?)
    }
}

/// What DETR found: per query, the class logits (the last is "no object") and the box
/// `(cx, cy, w, h)` relative to the image.
pub struct Detections {
    pub logits: Tensor,
    pub boxes: Tensor,
}

pub struct Detr {
    backbone: Backbone,
    /// A 1×1 convolution with bias, as a matrix `[d_model, channels]` and its bias.
    projection: (Tensor, Tensor),
    encoder: Vec<EncoderLayer>,
    decoder: Vec<DecoderLayer>,
    decoder_norm: LayerNorm,
    queries: Tensor,
    classifier: Linear,
    box_head: Vec<Linear>,
    d_model: usize,
}

impl Detr {
    pub fn new(config: &DetrConfig, vb: VarBuilder) -> anyhow::Result<Detr> {
        anyhow::ensure!(
            config.activation_function == "relu" && config.position_embedding_type == "sine",
            "only DETR with ReLU and sine position embeddings is supported (detr-resnet-50's)"
        );
        let d = config.d_model;
        let model = vb.pp("model");
        let backbone =
            Backbone::from_timm(model.pp("backbone.conv_encoder.model"), BATCH_NORM_EPS)?;
        let weight = model.get_unchecked("input_projection.weight")?;
        let projection = (
            weight.reshape((weight.dim(0)?, weight.dim(1)?))?,
            model.get(d, "input_projection.bias")?,
        );
        let norm = |vb: VarBuilder| layer_norm(d, LAYER_NORM_EPS, vb);
        let encoder = (0..config.encoder_layers)
            .map(|i| {
                let vb = model.pp(format!("encoder.layers.{i}"));
                Ok(EncoderLayer {
                    attention: Attention::load(
                        vb.pp("self_attn"),
                        d,
                        config.encoder_attention_heads,
                    )?,
                    attention_norm: norm(vb.pp("self_attn_layer_norm"))?,
                    feed_forward: FeedForward::load(&vb, d, config.encoder_ffn_dim)?,
                    final_norm: norm(vb.pp("final_layer_norm"))?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let decoder = (0..config.decoder_layers)
            .map(|i| {
                let vb = model.pp(format!("decoder.layers.{i}"));
                let heads = config.decoder_attention_heads;
                Ok(DecoderLayer {
                    self_attention: Attention::load(vb.pp("self_attn"), d, heads)?,
                    self_attention_norm: norm(vb.pp("self_attn_layer_norm"))?,
                    cross_attention: Attention::load(vb.pp("encoder_attn"), d, heads)?,
                    cross_attention_norm: norm(vb.pp("encoder_attn_layer_norm"))?,
                    feed_forward: FeedForward::load(&vb, d, config.decoder_ffn_dim)?,
                    final_norm: norm(vb.pp("final_layer_norm"))?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let classes = vb.get_unchecked("class_labels_classifier.weight")?.dim(0)?;
        let box_head = (0..3)
            .map(|i| {
                let out = if i == 2 { 4 } else { d };
                linear(d, out, vb.pp(format!("bbox_predictor.layers.{i}")))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Detr {
            backbone,
            projection,
            encoder,
            decoder,
            decoder_norm: norm(model.pp("decoder.layernorm"))?,
            queries: model.get((config.num_queries, d), "query_position_embeddings.weight")?,
            classifier: linear(d, classes, vb.pp("class_labels_classifier"))?,
            box_head,
            d_model: d,
        })
    }

    /// Classes the model tells apart, "no object" included.
    pub fn classes(&self) -> usize {
        self.classifier.weight().dim(0).unwrap_or(0)
    }

    /// Class logits and boxes for every query, for `pixels` (`[1, 3, height, width]`).
    pub fn forward(&self, pixels: &Tensor) -> candle_core::Result<Detections> {
        let features = self.backbone.forward(pixels)?;
        let (_, channels, height, width) = features.dims4()?;
        let (weight, bias) = &self.projection;
        // [height × width, d_model]
        let tokens = weight
            .matmul(&features.reshape((channels, height * width))?)?
            .broadcast_add(&bias.unsqueeze(1)?)?
            .t()?
            .unsqueeze(0)?
            .contiguous()?;
        let position = sine_positions(height, width, self.d_model)?.unsqueeze(0)?;
        let mut memory = tokens;
        for layer in &self.encoder {
            memory = layer.forward(&memory, &position)?;
        }
        let memory_keys = (&memory + &position)?;
        let queries = self.queries.unsqueeze(0)?;
        let mut x = queries.zeros_like()?;
        for layer in &self.decoder {
            x = layer.forward(&x, &queries, &memory, &memory_keys)?;
        }
        let x = self.decoder_norm.forward(&x)?.squeeze(0)?;
        let mut boxes = x.clone();
        for (i, layer) in self.box_head.iter().enumerate() {
            boxes = layer.forward(&boxes)?;
            if i + 1 < self.box_head.len() {
                boxes = boxes.relu()?;
            }
        }
        Ok(Detections {
            logits: self.classifier.forward(&x)?,
            boxes: candle_nn::ops::sigmoid(&boxes)?,
        })
    }
}

/// DETR's normalised sine position embedding of a `height`×`width` grid with no padding:
/// `[height × width, d_model]`, the first half from the row, the second from the column, each
/// alternating sine and cosine over frequencies `10000^(2⌊i/2⌋ / (d_model/2))`.
fn sine_positions(height: usize, width: usize, d_model: usize) -> candle_core::Result<Tensor> {
    const EPS: f32 = 1e-6;
    let features = d_model / 2;
    let scale = 2.0 * std::f32::consts::PI;
    let frequencies: Vec<f32> = (0..features)
        .map(|i| 10000f32.powf(2.0 * (i / 2) as f32 / features as f32))
        .collect();
    let embed = |position: usize, size: usize, out: &mut Vec<f32>| {
        let normalised = position as f32 / (size as f32 + EPS) * scale;
        for (i, frequency) in frequencies.iter().enumerate() {
            let angle = normalised / frequency;
            out.push(if i % 2 == 0 { angle.sin() } else { angle.cos() });
        }
    };
    let mut values = Vec::with_capacity(height * width * d_model);
    for y in 1..=height {
        for x in 1..=width {
            embed(y, height, &mut values);
            embed(x, width, &mut values);
        }
    }
    Tensor::from_vec(values, (height * width, d_model), &Device::Cpu)
}

/// Softmax over the classes of `logits` (`[queries, classes + 1]`) without the last, "no object":
/// per query the best class and its probability.
pub fn best_classes(logits: &Tensor) -> candle_core::Result<Vec<(usize, f32)>> {
    let probabilities = candle_nn::ops::softmax_last_dim(logits)?;
    let classes = probabilities.dim(D::Minus1)? - 1;
    let rows = probabilities
        .narrow(D::Minus1, 0, classes)?
        .to_vec2::<f32>()?;
    Ok(rows
        .into_iter()
        .map(|row| {
            row.into_iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, p)| {
                    if p > best.1 { (i, p) } else { best }
                })
        })
        .collect())
}
