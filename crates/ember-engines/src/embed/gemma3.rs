//! EmbeddingGemma's encoder: Gemma 3 run bidirectionally (no causal mask), written for candle.
//!
//! References:
//! - EmbeddingGemma: Vera et al., "EmbeddingGemma: Powerful and Lightweight Text
//!   Representations", 2025 (<https://arxiv.org/abs/2509.20354>); model card
//!   <https://ai.google.dev/gemma/docs/embeddinggemma>.
//! - Gemma 3: Gemma Team, "Gemma 3 Technical Report", 2025 (<https://arxiv.org/abs/2503.19786>).
//! - Reference implementation matched here: Hugging Face transformers 4.57,
//!   `models/gemma3/modeling_gemma3.py` (`Gemma3TextModel` with `use_bidirectional_attention`),
//!   `models/gemma3/configuration_gemma3.py` and `masking_utils.py`, as loaded by
//!   sentence-transformers 5.1.
//!
//! The forward pass, all in f32:
//! - embeddings × √hidden_size (the scale rounded to f32, as the reference's f32 buffer);
//! - per layer: `x += post_attn_norm(attn(input_norm(x)))`, then
//!   `x += post_ff_norm(mlp(pre_ff_norm(x)))`; MLP = `down(gelu_tanh(gate(x)) · up(x))`;
//! - RMSNorm is `x / sqrt(mean(x²) + eps) · (1 + w)`;
//! - attention: q/k/v projections, RMSNorm of each q and k head (over head_dim) *before* RoPE
//!   (rotate-half form; θ = `rope_theta` on `full_attention` layers, `rope_local_base_freq` on
//!   `sliding_attention` layers), grouped-query (kv heads shared by `heads / kv_heads` q heads),
//!   scores scaled by `query_pre_attn_scalar^-½`, no soft-capping;
//! - masks: padding keys are masked everywhere; full layers see every real token in both
//!   directions; sliding layers see key `k` from query `q` only when `|q − k| < W` where
//!   `W = sliding_window / 2 + 1` (see [`bidirectional_window`]);
//! - final RMSNorm. Pooling and the dense head are done by the caller ([`super`]).

use super::{Encoder, load_safetensors};
use candle_core::{DType, Device, Tensor};
use candle_nn::ops::{rms_norm, softmax_last_dim};
use candle_nn::rotary_emb::rope;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

/// Added to the attention score of a key a query must not see. Finite so that a padding query
/// with no visible key (its row is never pooled) stays finite instead of turning into NaN.
const MASKED: f32 = -1e30;

/// The Gemma 3 text config fields the encoder needs (`config.json`).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    #[serde(default = "default_local_base")]
    pub rope_local_base_freq: f64,
    pub sliding_window: usize,
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(
        default = "default_pattern",
        rename = "_sliding_window_pattern",
        alias = "sliding_window_pattern"
    )]
    pub sliding_window_pattern: usize,
    pub query_pre_attn_scalar: f64,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default = "default_activation")]
    pub hidden_activation: String,
    #[serde(default)]
    pub use_bidirectional_attention: Option<bool>,
    #[serde(default)]
    pub attn_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
}

fn default_local_base() -> f64 {
    10_000.0
}

fn default_pattern() -> usize {
    6
}

fn default_activation() -> String {
    "gelu_pytorch_tanh".into()
}

impl Config {
    /// Whether each layer is a sliding-window layer.
    fn sliding_layers(&self) -> Result<Vec<bool>, String> {
        match &self.layer_types {
            Some(types) => {
                if types.len() != self.num_hidden_layers {
                    return Err(format!(
                        "layer_types lists {} layers, num_hidden_layers is {}",
                        types.len(),
                        self.num_hidden_layers
                    ));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        "sliding_attention" => Ok(true),
                        "full_attention" => Ok(false),
                        other => Err(format!("unknown layer type {other}")),
                    })
                    .collect()
            }
            None => Ok((0..self.num_hidden_layers)
                .map(|i| (i + 1) % self.sliding_window_pattern.max(1) != 0)
                .collect()),
        }
    }
}

/// The half-width bound of the bidirectional sliding window: a key is visible from a query when
/// `|q − k| < bidirectional_window(sliding_window)`.
///
/// Transformers (`Gemma3TextConfig.__init__`, 4.56+) rewrites the configured window when
/// `use_bidirectional_attention` is set: `sliding_window = sliding_window // 2 + 1` ("due to fa we
/// set exclusive bounds"). `Gemma3TextModel.forward` then builds the sliding mask as
/// `create_sliding_window_causal_mask(..., or_mask_function=_bidirectional_window_overlay(W))`,
/// i.e. (causal ∧ `q − k < W`) ∨ `|q − k| < W`, which is `|q − k| < W`, and-ed with the padding
/// mask. For EmbeddingGemma (`sliding_window` 512) W = 257: a token sees 256 tokens each way.
pub fn bidirectional_window(sliding_window: usize) -> usize {
    sliding_window / 2 + 1
}

/// Whether query position `q` may attend to key position `k` on a sliding layer with window
/// bound `window` (from [`bidirectional_window`]).
pub fn window_allows(q: usize, k: usize, window: usize) -> bool {
    q.abs_diff(k) < window
}

/// Additive `[t, t]` mask of a sliding layer: 0 where [`window_allows`], [`MASKED`] elsewhere.
fn window_mask(t: usize, window: usize) -> candle_core::Result<Tensor> {
    let mut values = Vec::with_capacity(t * t);
    for q in 0..t {
        values.extend((0..t).map(|k| {
            if window_allows(q, k, window) {
                0.0
            } else {
                MASKED
            }
        }));
    }
    Tensor::from_vec(values, (t, t), &Device::Cpu)
}

/// Rotary tables for positions `0..positions`: `(cos, sin)`, each `[positions, head_dim / 2]`,
/// computed in f32 as the reference's default RoPE (`inv_freq = 1 / base^(2i/d)`).
fn rope_tables(
    base: f64,
    head_dim: usize,
    positions: usize,
) -> candle_core::Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / (base as f32).powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for p in 0..positions {
        for &f in &inv_freq {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    Ok((
        Tensor::from_vec(cos, (positions, half), &Device::Cpu)?,
        Tensor::from_vec(sin, (positions, half), &Device::Cpu)?,
    ))
}

struct Layer {
    sliding: bool,
    input_norm: Tensor,
    post_attention_norm: Tensor,
    pre_feedforward_norm: Tensor,
    post_feedforward_norm: Tensor,
    // Projection weights are stored transposed (`[in, out]`, contiguous): gemm runs up to twice
    // as fast on them as on a transposed view of the checkpoint's `[out, in]` layout.
    /// q, k and v projections side by side: `[hidden, (heads + 2·kv_heads)·head_dim]`.
    qkv: Tensor,
    o: Tensor,
    q_norm: Tensor,
    k_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

/// The bidirectional Gemma 3 encoder.
pub struct Gemma3Encoder {
    config: Config,
    embed_tokens: Tensor,
    embed_scale: f64,
    layers: Vec<Layer>,
    norm: Tensor,
    window: usize,
    rope_global: (Tensor, Tensor),
    rope_local: (Tensor, Tensor),
}

struct Weights {
    tensors: HashMap<String, Tensor>,
    prefix: &'static str,
}

impl Weights {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor, String> {
        let tensor = self
            .tensors
            .remove(&format!("{}{name}", self.prefix))
            .ok_or_else(|| format!("model.safetensors has no tensor {}{name}", self.prefix))?;
        if tensor.dims() != shape {
            return Err(format!("{name} is {:?}, expected {shape:?}", tensor.dims()));
        }
        tensor
            .to_dtype(DType::F32)
            .map_err(|e| format!("{name}: {e}"))
    }

    /// A linear layer's `[out, in]` weight, as a contiguous `[in, out]` matrix.
    fn linear(&mut self, name: &str, out: usize, input: usize) -> Result<Tensor, String> {
        self.take(name, &[out, input])?
            .t()
            .and_then(|w| w.contiguous())
            .map_err(|e| format!("{name}: {e}"))
    }

    /// An RMSNorm weight, stored as the multiplier `1 + w`.
    fn norm(&mut self, name: &str, size: usize) -> Result<Tensor, String> {
        (self.take(name, &[size])? + 1.0).map_err(|e| format!("{name}: {e}"))
    }
}

impl Gemma3Encoder {
    /// Loads `config.json` and `model.safetensors` from the model folder.
    pub fn load(dir: &Path) -> Result<Gemma3Encoder, String> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| format!("cannot read {}: {e}", config_path.display()))?;
        let config: Config =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", config_path.display()))?;
        let tensors = load_safetensors(&dir.join("model.safetensors"))?;
        Self::from_tensors(config, tensors)
    }

    fn from_tensors(
        config: Config,
        tensors: HashMap<String, Tensor>,
    ) -> Result<Gemma3Encoder, String> {
        if config.use_bidirectional_attention != Some(true) {
            return Err(
                "not a bidirectional Gemma 3 encoder (use_bidirectional_attention is not true)"
                    .into(),
            );
        }
        if !matches!(
            config.hidden_activation.as_str(),
            "gelu_pytorch_tanh" | "gelu_tanh"
        ) {
            return Err(format!(
                "unsupported hidden_activation {}",
                config.hidden_activation
            ));
        }
        if config.attn_logit_softcapping.is_some() {
            return Err("attention logit soft-capping is not supported".into());
        }
        if config.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err("rope_scaling is not supported".into());
        }
        let (heads, kv_heads, head_dim) = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        );
        if kv_heads == 0 || heads % kv_heads != 0 || head_dim % 2 != 0 {
            return Err(format!(
                "bad attention shape: {heads} heads, {kv_heads} kv heads, head_dim {head_dim}"
            ));
        }
        let sliding = config.sliding_layers()?;
        let prefix = if tensors.contains_key("model.embed_tokens.weight") {
            "model."
        } else {
            ""
        };
        let mut w = Weights { tensors, prefix };
        let (hidden, inter) = (config.hidden_size, config.intermediate_size);
        let cat = |parts: &[Tensor], name: &str| {
            Tensor::cat(parts, 1).map_err(|e| format!("{name}: {e}"))
        };
        let embed_tokens = w.take("embed_tokens.weight", &[config.vocab_size, hidden])?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for (i, sliding) in sliding.into_iter().enumerate() {
            let p = format!("layers.{i}.");
            let q = w.linear(
                &format!("{p}self_attn.q_proj.weight"),
                heads * head_dim,
                hidden,
            )?;
            let k = w.linear(
                &format!("{p}self_attn.k_proj.weight"),
                kv_heads * head_dim,
                hidden,
            )?;
            let v = w.linear(
                &format!("{p}self_attn.v_proj.weight"),
                kv_heads * head_dim,
                hidden,
            )?;
            layers.push(Layer {
                sliding,
                input_norm: w.norm(&format!("{p}input_layernorm.weight"), hidden)?,
                post_attention_norm: w
                    .norm(&format!("{p}post_attention_layernorm.weight"), hidden)?,
                pre_feedforward_norm: w
                    .norm(&format!("{p}pre_feedforward_layernorm.weight"), hidden)?,
                post_feedforward_norm: w
                    .norm(&format!("{p}post_feedforward_layernorm.weight"), hidden)?,
                qkv: cat(&[q, k, v], "qkv")?,
                o: w.linear(
                    &format!("{p}self_attn.o_proj.weight"),
                    hidden,
                    heads * head_dim,
                )?,
                q_norm: w.norm(&format!("{p}self_attn.q_norm.weight"), head_dim)?,
                k_norm: w.norm(&format!("{p}self_attn.k_norm.weight"), head_dim)?,
                gate: w.linear(&format!("{p}mlp.gate_proj.weight"), inter, hidden)?,
                up: w.linear(&format!("{p}mlp.up_proj.weight"), inter, hidden)?,
                down: w.linear(&format!("{p}mlp.down_proj.weight"), hidden, inter)?,
            });
        }
        let norm = w.norm("norm.weight", hidden)?;
        let positions = config.max_position_embeddings;
        let rope_global =
            rope_tables(config.rope_theta, head_dim, positions).map_err(|e| e.to_string())?;
        let rope_local = rope_tables(config.rope_local_base_freq, head_dim, positions)
            .map_err(|e| e.to_string())?;
        Ok(Gemma3Encoder {
            embed_tokens,
            // The reference keeps √hidden in an f32 buffer; candle rounds the scalar to f32 too.
            embed_scale: (hidden as f64).sqrt(),
            layers,
            norm,
            window: bidirectional_window(config.sliding_window),
            rope_global,
            rope_local,
            config,
        })
    }

    fn rms(&self, xs: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
        rms_norm(xs, weight, self.config.rms_norm_eps as f32)
    }

    /// Self-attention of `xs` (`[b·t, hidden]`), mask broadcastable to `[b, heads, t, t]`.
    fn attention(
        &self,
        layer: &Layer,
        xs: &Tensor,
        (b, t): (usize, usize),
        mask: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (heads, kv_heads, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let groups = heads / kv_heads;
        let qkv = xs.matmul(&layer.qkv)?;
        let q = qkv.narrow(1, 0, heads * hd)?.reshape((b, t, heads, hd))?;
        let k = qkv
            .narrow(1, heads * hd, kv_heads * hd)?
            .reshape((b, t, kv_heads, hd))?;
        let v = qkv
            .narrow(1, (heads + kv_heads) * hd, kv_heads * hd)?
            .reshape((b, t, kv_heads, hd))?;
        let q = self.rms(&q, &layer.q_norm)?.transpose(1, 2)?.contiguous()?;
        let k = self.rms(&k, &layer.k_norm)?.transpose(1, 2)?.contiguous()?;
        let v = v.transpose(1, 2)?.contiguous()?;
        let q = rope(&q, cos, sin)?;
        let k = rope(&k, cos, sin)?;
        // Scaling by a power of two (1/16 here) commutes exactly with the dot products.
        let q = (q * c.query_pre_attn_scalar.powf(-0.5))?;
        // Grouped-query attention without copying k/v: the q heads sharing a kv head are stacked
        // along the sequence axis ([b, kv, groups·t, hd]).
        let q = q.reshape((b, kv_heads, groups * t, hd))?;
        // A contiguous kᵀ: gemm is ~1.5× faster on it than on the transposed view.
        let k_t = k.t()?.contiguous()?;
        let scores = q
            .matmul(&k_t)?
            .reshape((b, heads, t, t))?
            .broadcast_add(mask)?;
        let probs = softmax_last_dim(&scores)?.reshape((b, kv_heads, groups * t, t))?;
        let out = probs
            .matmul(&v)?
            .reshape((b, heads, t, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        out.reshape((b * t, heads * hd))?.matmul(&layer.o)
    }

    fn mlp(&self, layer: &Layer, xs: &Tensor) -> candle_core::Result<Tensor> {
        // Separate gate and up products keep both contiguous (gelu on a strided view is 2× slower).
        let gate = xs.matmul(&layer.gate)?.gelu()?;
        let up = xs.matmul(&layer.up)?;
        (gate * up)?.matmul(&layer.down)
    }
}

impl Encoder for Gemma3Encoder {
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        if t > self.config.max_position_embeddings {
            candle_core::bail!(
                "{t} tokens exceed the model's {} positions",
                self.config.max_position_embeddings
            );
        }
        let hidden = self.config.hidden_size;
        let ids = input_ids.flatten_all()?;
        let mut xs = (self.embed_tokens.index_select(&ids, 0)? * self.embed_scale)?;
        // Padding keys: 0 for real tokens, MASKED for padding; [b, 1, 1, t].
        let padding = ((attention_mask.to_dtype(DType::F32)? - 1.0)? * (-(MASKED as f64)))?
            .reshape((b, 1, 1, t))?;
        let sliding_mask = if t > self.window {
            Some(padding.broadcast_add(&window_mask(t, self.window)?.reshape((1, 1, t, t))?)?)
        } else {
            // Every pair is within the window: sliding layers see what full layers see.
            None
        };
        let narrow = |(cos, sin): &(Tensor, Tensor)| -> candle_core::Result<(Tensor, Tensor)> {
            Ok((cos.narrow(0, 0, t)?, sin.narrow(0, 0, t)?))
        };
        let (global_cos, global_sin) = narrow(&self.rope_global)?;
        let (local_cos, local_sin) = narrow(&self.rope_local)?;
        for layer in &self.layers {
            let (mask, rope) = if layer.sliding {
                (
                    sliding_mask.as_ref().unwrap_or(&padding),
                    (&local_cos, &local_sin),
                )
            } else {
                (&padding, (&global_cos, &global_sin))
            };
            let h = self.rms(&xs, &layer.input_norm)?;
            let h = self.attention(layer, &h, (b, t), mask, rope)?;
            xs = (xs + self.rms(&h, &layer.post_attention_norm)?)?;
            let h = self.rms(&xs, &layer.pre_feedforward_norm)?;
            let h = self.mlp(layer, &h)?;
            xs = (xs + self.rms(&h, &layer.post_feedforward_norm)?)?;
        }
        self.rms(&xs, &self.norm)?.reshape((b, t, hidden))
    }

    fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn pad_id(&self) -> u32 {
        self.config.pad_token_id.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddinggemma_window_sees_256_tokens_each_way() {
        let window = bidirectional_window(512);
        assert_eq!(window, 257);
        assert!(window_allows(0, 0, window));
        assert!(window_allows(300, 300 - 256, window));
        assert!(window_allows(300, 300 + 256, window));
        assert!(!window_allows(300, 300 - 257, window));
        assert!(!window_allows(300, 300 + 257, window));
        // Odd configured windows round down, as Python's `//`.
        assert_eq!(bidirectional_window(5), 3);
    }

    #[test]
    fn window_mask_is_symmetric_band() {
        let window = bidirectional_window(4); // 3: |q - k| <= 2
        let mask = window_mask(6, window).unwrap().to_vec2::<f32>().unwrap();
        for (q, row) in mask.iter().enumerate() {
            for (k, &value) in row.iter().enumerate() {
                let expected = if q.abs_diff(k) <= 2 { 0.0 } else { MASKED };
                assert_eq!(value, expected, "q {q} k {k}");
            }
        }
    }

    #[test]
    fn rope_tables_start_at_identity() {
        let (cos, sin) = rope_tables(10_000.0, 8, 3).unwrap();
        let (cos, sin) = (cos.to_vec2::<f32>().unwrap(), sin.to_vec2::<f32>().unwrap());
        assert_eq!(cos[0], vec![1.0; 4]);
        assert_eq!(sin[0], vec![0.0; 4]);
        // Position 1, frequency 0 rotates by 1 radian; the last by 1 / 10000^(6/8).
        assert!((cos[1][0] - 1f32.cos()).abs() < 1e-6);
        assert!((sin[1][3] - (1.0 / 10_000f32.powf(0.75)).sin()).abs() < 1e-7);
    }

    /// A tiny random model: a padded batch gives the same vectors for the real tokens as each
    /// text alone, on both layer kinds, with a window smaller than the sequence.
    #[test]
    fn padding_does_not_change_real_tokens() {
        let config: Config = serde_json::from_value(serde_json::json!({
            "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4, "rms_norm_eps": 1e-6,
            "rope_theta": 1e6, "rope_local_base_freq": 1e4, "sliding_window": 4,
            "layer_types": ["sliding_attention", "full_attention"], "query_pre_attn_scalar": 4,
            "max_position_embeddings": 16, "use_bidirectional_attention": true
        }))
        .unwrap();
        let dev = Device::Cpu;
        let mut tensors = HashMap::new();
        let mut seed = 0u32;
        let mut add = |name: String, shape: &[usize]| {
            seed += 1;
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|i| {
                    (((i as u32 + 1).wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503))
                        % 1000) as f32
                        / 2000.0
                        - 0.25
                })
                .collect();
            tensors.insert(name, Tensor::from_vec(values, shape, &dev).unwrap());
        };
        add("embed_tokens.weight".into(), &[11, 8]);
        add("norm.weight".into(), &[8]);
        for i in 0..2 {
            let p = format!("layers.{i}.");
            for (name, shape) in [
                ("input_layernorm.weight", vec![8]),
                ("post_attention_layernorm.weight", vec![8]),
                ("pre_feedforward_layernorm.weight", vec![8]),
                ("post_feedforward_layernorm.weight", vec![8]),
                ("self_attn.q_proj.weight", vec![8, 8]),
                ("self_attn.k_proj.weight", vec![4, 8]),
                ("self_attn.v_proj.weight", vec![4, 8]),
                ("self_attn.o_proj.weight", vec![8, 8]),
                ("self_attn.q_norm.weight", vec![4]),
                ("self_attn.k_norm.weight", vec![4]),
                ("mlp.gate_proj.weight", vec![12, 8]),
                ("mlp.up_proj.weight", vec![12, 8]),
                ("mlp.down_proj.weight", vec![8, 12]),
            ] {
                add(format!("{p}{name}"), &shape);
            }
        }
        let model = Gemma3Encoder::from_tensors(config, tensors).unwrap();
        assert_eq!(model.window, 3);
        let long: &[u32] = &[2, 5, 6, 7, 8, 9, 10, 1];
        let short: &[u32] = &[2, 5, 1];
        let (ids, mask) = super::super::pad_batch(&[long, short], 0).unwrap();
        let batched = model.forward(&ids, &mask).unwrap();
        for (row, text) in [long, short].iter().enumerate() {
            let (ids, mask) = super::super::pad_batch(&[text], 0).unwrap();
            let alone = model.forward(&ids, &mask).unwrap().squeeze(0).unwrap();
            let together = batched.get(row).unwrap().narrow(0, 0, text.len()).unwrap();
            let diff = (alone - together)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "row {row}: {diff}");
        }
    }
}
