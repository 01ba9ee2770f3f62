//! The BART / M2M100 encoder-decoder transformer, one implementation with a switch for where the
//! two differ, following Hugging Face transformers' `modeling_bart.py` and `modeling_m2m_100.py`.
//!
//! | | BART | M2M100 |
//! |---|---|---|
//! | positions | learned table, index = position + 2 | sinusoidal, index = padding_idx + 1 + position (pad tokens get padding_idx, a zero row) |
//! | after embeddings | `layernorm_embedding` | nothing |
//! | layers | post-norm (sublayer, add, LayerNorm) | pre-norm (LayerNorm, sublayer, add) |
//! | after the layers | nothing | `layer_norm` (encoder and decoder) |
//! | logits | tied embeddings + `final_logits_bias` | tied embeddings |
//!
//! Both: token embeddings × `sqrt(d_model)` when `scale_embedding`, attention with biases and
//! scores scaled by `head_dim^-0.5`, LayerNorm eps 1e-5. The decoder runs one token per beam per
//! step with a key/value cache; the encoder output's keys and values are computed once.

use crate::transformer::{Activation, Attention, FeedForward};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder, layer_norm};
use std::collections::HashMap;

/// transformers builds every LayerNorm of both models with `nn.LayerNorm`'s default eps.
const LAYER_NORM_EPS: f64 = 1e-5;
/// BART's learned position table starts its positions at row 2 (a fairseq leftover).
const BART_POSITION_OFFSET: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Arch {
    Bart,
    M2m100,
}

/// The architecture fields of a BART or M2M100 `config.json`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub decoder_attention_heads: usize,
    pub encoder_ffn_dim: usize,
    pub decoder_ffn_dim: usize,
    pub activation_function: String,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub scale_embedding: bool,
    #[serde(default = "one")]
    pub pad_token_id: u32,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}

/// `x + sublayer(x)` with the LayerNorm before the sublayer (pre-norm, M2M100) or after the sum
/// (post-norm, BART).
fn residual(
    xs: &Tensor,
    norm: &LayerNorm,
    pre_norm: bool,
    sublayer: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    if pre_norm {
        xs + sublayer(&norm.forward(xs)?)?
    } else {
        norm.forward(&(xs + sublayer(xs)?)?)
    }
}

struct EncoderLayer {
    self_attn: Attention,
    self_attn_layer_norm: LayerNorm,
    ffn: FeedForward,
    final_layer_norm: LayerNorm,
}

struct DecoderLayer {
    self_attn: Attention,
    self_attn_layer_norm: LayerNorm,
    encoder_attn: Attention,
    encoder_attn_layer_norm: LayerNorm,
    ffn: FeedForward,
    final_layer_norm: LayerNorm,
}

enum Positions {
    /// BART: a learned `[max_positions + 2, dim]` table.
    Learned(Embedding),
    /// M2M100: fairseq's sinusoids, computed per position; row `padding_idx` is zero.
    Sinusoidal { dim: usize, padding_idx: u32 },
}

impl Positions {
    /// Position embeddings `[n, dim]` for tokens at positions `start..start + n`; for M2M100,
    /// `tokens` decides which of them are padding (transformers' `create_position_ids_from_input_ids`).
    fn embed(&self, start: usize, tokens: &[u32]) -> candle_core::Result<Tensor> {
        match self {
            Positions::Learned(table) => {
                let ids: Vec<u32> = (0..tokens.len())
                    .map(|i| (start + i + BART_POSITION_OFFSET) as u32)
                    .collect();
                table.forward(&Tensor::new(ids.as_slice(), &Device::Cpu)?)
            }
            Positions::Sinusoidal { dim, padding_idx } => {
                let mut rows = Vec::with_capacity(tokens.len() * dim);
                let mut seen = start;
                for &token in tokens {
                    let index = if token == *padding_idx {
                        *padding_idx as usize
                    } else {
                        seen += 1;
                        *padding_idx as usize + seen
                    };
                    rows.extend(sinusoid(index, *dim, *padding_idx as usize));
                }
                Tensor::from_vec(rows, (tokens.len(), *dim), &Device::Cpu)
            }
        }
    }
}

/// Row `index` of fairseq's sinusoidal table (transformers' `M2M100SinusoidalPositionalEmbedding
/// .get_embedding`), in f32 step by step as torch computes it: `[sin(i·f_0..), cos(i·f_0..)]`
/// with `f_k = exp(-k · ln(10000) / (half - 1))`, a trailing zero for odd widths, zeros at
/// `padding_idx`.
fn sinusoid(index: usize, dim: usize, padding_idx: usize) -> Vec<f32> {
    if index == padding_idx {
        return vec![0.0; dim];
    }
    let half = dim / 2;
    let step = -(10000f64.ln() / (half as f64 - 1.0)) as f32;
    let angles: Vec<f32> = (0..half)
        .map(|k| index as f32 * (k as f32 * step).exp())
        .collect();
    let mut row: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
    row.extend(angles.iter().map(|a| a.cos()));
    row.resize(dim, 0.0);
    row
}

/// One side (encoder or decoder) of the stack: what the two sides share.
struct Stack {
    positions: Positions,
    /// BART's LayerNorm right after the embeddings.
    layernorm_embedding: Option<LayerNorm>,
    /// M2M100's LayerNorm after the last layer.
    final_norm: Option<LayerNorm>,
}

impl Stack {
    fn load(vb: &VarBuilder, arch: Arch, c: &Config) -> candle_core::Result<Stack> {
        Ok(match arch {
            Arch::Bart => Stack {
                positions: Positions::Learned(candle_nn::embedding(
                    c.max_position_embeddings + BART_POSITION_OFFSET,
                    c.d_model,
                    vb.pp("embed_positions"),
                )?),
                layernorm_embedding: Some(layer_norm(
                    c.d_model,
                    LAYER_NORM_EPS,
                    vb.pp("layernorm_embedding"),
                )?),
                final_norm: None,
            },
            Arch::M2m100 => Stack {
                positions: Positions::Sinusoidal {
                    dim: c.d_model,
                    padding_idx: c.pad_token_id,
                },
                layernorm_embedding: None,
                final_norm: Some(layer_norm(c.d_model, LAYER_NORM_EPS, vb.pp("layer_norm"))?),
            },
        })
    }

    fn finish(&self, xs: Tensor) -> candle_core::Result<Tensor> {
        match &self.final_norm {
            Some(norm) => norm.forward(&xs),
            None => Ok(xs),
        }
    }
}

/// The decoder's state for one generation: the encoder output's keys and values per layer, and
/// the self-attention keys and values of the tokens fed so far, one row per beam.
pub(crate) struct DecoderState {
    cross: Vec<(Tensor, Tensor)>,
    past: Vec<Option<(Tensor, Tensor)>>,
    /// Tokens fed so far (per beam).
    len: usize,
}

impl DecoderState {
    /// Keeps, for each new beam, the cache of beam `parents[i]`.
    pub(crate) fn reorder(&mut self, parents: &[u32]) -> candle_core::Result<()> {
        let index = Tensor::new(parents, &Device::Cpu)?;
        for (k, v) in self.past.iter_mut().flatten() {
            *k = k.index_select(&index, 0)?;
            *v = v.index_select(&index, 0)?;
        }
        Ok(())
    }
}

pub(crate) struct Model {
    arch: Arch,
    activation: Activation,
    /// Shared token embeddings `[vocab, dim]`, also the output projection.
    embeddings: Tensor,
    /// The output projection `[vocab, dim]` when it is not tied to `embeddings`.
    lm_head: Option<Tensor>,
    embed_scale: f64,
    final_logits_bias: Option<Tensor>,
    encoder: Stack,
    encoder_layers: Vec<EncoderLayer>,
    decoder: Stack,
    decoder_layers: Vec<DecoderLayer>,
}

impl Model {
    /// Builds the model from the checkpoint's tensors (names as transformers saves them).
    pub(crate) fn load(
        arch: Arch,
        c: &Config,
        tensors: HashMap<String, Tensor>,
    ) -> Result<Model, String> {
        let activation = Activation::parse(&c.activation_function)?;
        for heads in [c.encoder_attention_heads, c.decoder_attention_heads] {
            if heads == 0 || !c.d_model.is_multiple_of(heads) {
                return Err(format!(
                    "config.json: d_model {} is not a multiple of {heads} attention heads",
                    c.d_model
                ));
            }
        }
        // transformers ties the encoder's, the decoder's and the output embeddings to
        // `model.shared`; checkpoints hold any one of them.
        let embeddings = [
            "model.shared.weight",
            "model.encoder.embed_tokens.weight",
            "model.decoder.embed_tokens.weight",
            "lm_head.weight",
        ]
        .iter()
        .find_map(|name| tensors.get(*name))
        .ok_or("model.safetensors: no token embeddings (model.shared.weight)")?;
        let f32_tensor = |t: &Tensor| t.to_dtype(DType::F32).map_err(|e| e.to_string());
        let embeddings = f32_tensor(embeddings)?;
        if embeddings.dims() != [c.vocab_size, c.d_model] {
            return Err(format!(
                "model.safetensors: token embeddings are {:?}, config says {}x{}",
                embeddings.dims(),
                c.vocab_size,
                c.d_model
            ));
        }
        let lm_head = match (c.tie_word_embeddings, tensors.get("lm_head.weight")) {
            (true, _) => None,
            (false, Some(head)) => Some(f32_tensor(head)?),
            (false, None) => return Err("model.safetensors: no lm_head.weight".into()),
        };
        // A buffer transformers zero-fills when a checkpoint leaves it out.
        let final_logits_bias = match (arch, tensors.get("final_logits_bias")) {
            (Arch::Bart, Some(bias)) => Some(
                f32_tensor(bias)?
                    .reshape((1, c.vocab_size))
                    .map_err(|e| format!("model.safetensors: final_logits_bias: {e}"))?,
            ),
            _ => None,
        };
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let build = || -> candle_core::Result<Model> {
            let (enc, dec) = (vb.pp("model.encoder"), vb.pp("model.decoder"));
            let encoder_layers = (0..c.encoder_layers)
                .map(|i| {
                    let vb = enc.pp(format!("layers.{i}"));
                    Ok(EncoderLayer {
                        self_attn: Attention::load(
                            vb.pp("self_attn"),
                            c.d_model,
                            c.encoder_attention_heads,
                        )?,
                        self_attn_layer_norm: layer_norm(
                            c.d_model,
                            LAYER_NORM_EPS,
                            vb.pp("self_attn_layer_norm"),
                        )?,
                        ffn: FeedForward::load(&vb, c.d_model, c.encoder_ffn_dim)?,
                        final_layer_norm: layer_norm(
                            c.d_model,
                            LAYER_NORM_EPS,
                            vb.pp("final_layer_norm"),
                        )?,
                    })
                })
                .collect::<candle_core::Result<_>>()?;
            let decoder_layers = (0..c.decoder_layers)
                .map(|i| {
                    let vb = dec.pp(format!("layers.{i}"));
                    let heads = c.decoder_attention_heads;
                    Ok(DecoderLayer {
                        self_attn: Attention::load(vb.pp("self_attn"), c.d_model, heads)?,
                        self_attn_layer_norm: layer_norm(
                            c.d_model,
                            LAYER_NORM_EPS,
                            vb.pp("self_attn_layer_norm"),
                        )?,
                        encoder_attn: Attention::load(vb.pp("encoder_attn"), c.d_model, heads)?,
                        encoder_attn_layer_norm: layer_norm(
                            c.d_model,
                            LAYER_NORM_EPS,
                            vb.pp("encoder_attn_layer_norm"),
                        )?,
                        ffn: FeedForward::load(&vb, c.d_model, c.decoder_ffn_dim)?,
                        final_layer_norm: layer_norm(
                            c.d_model,
                            LAYER_NORM_EPS,
                            vb.pp("final_layer_norm"),
                        )?,
                    })
                })
                .collect::<candle_core::Result<_>>()?;
            Ok(Model {
                arch,
                activation,
                embeddings: embeddings.clone(),
                lm_head: lm_head.clone(),
                embed_scale: if c.scale_embedding {
                    (c.d_model as f64).sqrt()
                } else {
                    1.0
                },
                final_logits_bias: final_logits_bias.clone(),
                encoder: Stack::load(&enc, arch, c)?,
                encoder_layers,
                decoder: Stack::load(&dec, arch, c)?,
                decoder_layers,
            })
        };
        build().map_err(|e| format!("model.safetensors: {e}"))
    }

    pub(crate) fn vocab_size(&self) -> usize {
        self.embeddings.dims()[0]
    }

    fn pre_norm(&self) -> bool {
        self.arch == Arch::M2m100
    }

    /// Token embeddings × scale + position embeddings (+ BART's LayerNorm): `[1, t, dim]`.
    fn embed(&self, stack: &Stack, tokens: &[u32], start: usize) -> candle_core::Result<Tensor> {
        let ids = Tensor::new(tokens, &Device::Cpu)?;
        let xs = (self.embeddings.index_select(&ids, 0)? * self.embed_scale)?
            .add(&stack.positions.embed(start, tokens)?)?;
        let xs = match &stack.layernorm_embedding {
            Some(norm) => norm.forward(&xs)?,
            None => xs,
        };
        xs.unsqueeze(0)
    }

    /// The encoder's last hidden state for one text: `[1, t, dim]`.
    pub(crate) fn encode(&self, tokens: &[u32]) -> candle_core::Result<Tensor> {
        let mut xs = self.embed(&self.encoder, tokens, 0)?;
        let pre_norm = self.pre_norm();
        for layer in &self.encoder_layers {
            xs = residual(&xs, &layer.self_attn_layer_norm, pre_norm, |h| {
                let (k, v) = layer.self_attn.keys_values(h)?;
                layer.self_attn.attend(h, &k, &v)
            })?;
            xs = residual(&xs, &layer.final_layer_norm, pre_norm, |h| {
                layer.ffn.forward(h, self.activation)
            })?;
        }
        self.encoder.finish(xs)
    }

    /// A fresh decoder state for `beams` beams over one encoder output `[1, s, dim]`.
    pub(crate) fn start(
        &self,
        encoder_out: &Tensor,
        beams: usize,
    ) -> candle_core::Result<DecoderState> {
        let cross = self
            .decoder_layers
            .iter()
            .map(|layer| {
                let (k, v) = layer.encoder_attn.keys_values(encoder_out)?;
                Ok((k.repeat((beams, 1, 1, 1))?, v.repeat((beams, 1, 1, 1))?))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(DecoderState {
            cross,
            past: vec![None; self.decoder_layers.len()],
            len: 0,
        })
    }

    /// Feeds one token per beam; returns the next-token logits `[beams, vocab]`.
    pub(crate) fn step(
        &self,
        tokens: &[u32],
        state: &mut DecoderState,
    ) -> candle_core::Result<Tensor> {
        // Every beam is at the same position; the embedding of each beam's token is its own
        // 1-token sequence (M2M100's position depends on whether that token is padding).
        let rows = tokens
            .iter()
            .map(|&token| self.embed(&self.decoder, &[token], state.len))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut xs = Tensor::cat(&rows, 0)?;
        let pre_norm = self.pre_norm();
        for (i, layer) in self.decoder_layers.iter().enumerate() {
            let past = &mut state.past[i];
            xs = residual(&xs, &layer.self_attn_layer_norm, pre_norm, |h| {
                let (k, v) = layer.self_attn.keys_values(h)?;
                let (k, v) = match past.take() {
                    Some((pk, pv)) => (Tensor::cat(&[pk, k], 2)?, Tensor::cat(&[pv, v], 2)?),
                    None => (k, v),
                };
                let out = layer.self_attn.attend(h, &k, &v)?;
                *past = Some((k, v));
                Ok(out)
            })?;
            let (ck, cv) = &state.cross[i];
            xs = residual(&xs, &layer.encoder_attn_layer_norm, pre_norm, |h| {
                layer.encoder_attn.attend(h, ck, cv)
            })?;
            xs = residual(&xs, &layer.final_layer_norm, pre_norm, |h| {
                layer.ffn.forward(h, self.activation)
            })?;
        }
        state.len += 1;
        let hidden = self.decoder.finish(xs)?.squeeze(1)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embeddings);
        let logits = hidden.matmul(&head.t()?)?;
        match &self.final_logits_bias {
            Some(bias) => logits.broadcast_add(bias),
            None => Ok(logits),
        }?
        .contiguous()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinusoid_matches_fairseq_layout() {
        // dim 6: half 3, f = [1, 0.01, 0.0001].
        let row = sinusoid(3, 6, 1);
        let expected = [
            3f32.sin(),
            0.03f32.sin(),
            0.0003f32.sin(),
            3f32.cos(),
            0.03f32.cos(),
            0.0003f32.cos(),
        ];
        for (a, b) in row.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{row:?}");
        }
        assert_eq!(sinusoid(1, 6, 1), vec![0.0; 6]);
        assert_eq!(sinusoid(2, 7, 1).len(), 7);
        assert_eq!(sinusoid(2, 7, 1)[6], 0.0);
    }

    #[test]
    fn m2m100_positions_skip_padding() {
        let positions = Positions::Sinusoidal {
            dim: 4,
            padding_idx: 1,
        };
        let rows = positions
            .embed(0, &[5, 1, 7])
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(rows[0], sinusoid(2, 4, 1));
        assert_eq!(rows[1], vec![0.0; 4]);
        assert_eq!(rows[2], sinusoid(3, 4, 1));
        // In a decoding step the past length is added.
        let rows = positions.embed(4, &[9]).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(rows[0], sinusoid(6, 4, 1));
    }
}
