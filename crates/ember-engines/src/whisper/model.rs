//! The Whisper transformer on candle, computing in f32 on the CPU (the decoder's weights are kept
//! as stored, f16 in CTranslate2's files, and widened by `matvec` as it reads them): the audio
//! encoder (two convolutions with GELU, positions, pre-norm blocks; run on ONNX Runtime where
//! it is installed, `encoder_onnx.rs`) and the text decoder (learned positions, a key/value cache,
//! cross-attention to the encoder, output projection tied to the token embeddings) that can hand
//! back the raw cross-attention scores of chosen heads, which word timestamps are made from.
//!
//! Weights are read by CTranslate2 name (see `weights.rs`); q, k and v of a self-attention are one
//! fused projection, as are k and v of a cross-attention. LayerNorm eps is 1e-5 and GELU the exact
//! (erf) one, as in OpenAI's model. Attention scales the queries by `head_dim^-1/2` before the
//! product, which CTranslate2 folds into the matmul.

use super::encoder_onnx::OnnxEncoder;
use super::matvec;
use super::softmax::softmax_last_dim;
use super::weights::Weights;
use anyhow::{Context, ensure};
use candle_core::{Device, IndexOp, Tensor};

pub(super) const LAYER_NORM_EPS: f32 = 1e-5;

/// The sizes a model is built with, read from its tensors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub n_mels: usize,
    pub d_model: usize,
    pub n_vocab: usize,
    /// Decoder positions (448).
    pub n_text_ctx: usize,
}

/// A projection with its weight stored `[in, out]`, the layout `matvec` streams.
pub(super) struct Linear {
    pub(super) weight_t: Tensor,
    pub(super) bias: Tensor,
}

/// Whether a layer's weights are kept as stored (a decoding step's few rows stream them, so
/// fewer bytes are faster) or widened to f32 at load (the encoder's thousand rows run gemm).
#[derive(Clone, Copy)]
enum Rows {
    Few,
    Many,
}

impl Linear {
    fn load(w: &mut Weights, name: &str, rows: Rows) -> anyhow::Result<Linear> {
        let weight = format!("{name}/weight");
        let weight = match rows {
            Rows::Few => w.take_stored(&weight)?,
            Rows::Many => w.take(&weight)?,
        };
        Ok(Linear {
            weight_t: weight.t()?.contiguous()?,
            bias: w.take(&format!("{name}/bias"))?,
        })
    }

    /// `[n, in]` → `[n, out]`.
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        matvec::matmul(xs, &self.weight_t)?.broadcast_add(&self.bias)
    }
}

pub(super) struct LayerNorm {
    pub(super) gamma: Tensor,
    pub(super) beta: Tensor,
}

impl LayerNorm {
    fn load(w: &mut Weights, name: &str) -> anyhow::Result<LayerNorm> {
        Ok(LayerNorm {
            gamma: w.take(&format!("{name}/gamma"))?,
            beta: w.take(&format!("{name}/beta"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(xs, &self.gamma, &self.beta, LAYER_NORM_EPS)
    }
}

pub(super) struct FeedForward {
    pub(super) norm: LayerNorm,
    pub(super) fc1: Linear,
    pub(super) fc2: Linear,
}

impl FeedForward {
    fn load(w: &mut Weights, name: &str, rows: Rows) -> anyhow::Result<FeedForward> {
        Ok(FeedForward {
            norm: LayerNorm::load(w, &format!("{name}/layer_norm"))?,
            fc1: Linear::load(w, &format!("{name}/linear_0"), rows)?,
            fc2: Linear::load(w, &format!("{name}/linear_1"), rows)?,
        })
    }

    /// `xs + fc2(gelu(fc1(norm(xs))))`.
    fn residual(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.fc1.forward(&self.norm.forward(xs)?)?.gelu_erf()?;
        xs + self.fc2.forward(&h)?
    }
}

/// Softmax attention of `q` (`[.., t, head_dim]`, already scaled) over `k`, `v` (`[.., s, head_dim]`),
/// with an additive mask broadcast over the leading dimensions.
fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let mut scores = q.matmul(&k.t()?)?;
    if let Some(mask) = mask {
        scores = scores.broadcast_add(mask)?;
    }
    softmax_last_dim(&scores)?.matmul(v)
}

pub(super) struct EncoderLayer {
    pub(super) norm: LayerNorm,
    pub(super) qkv: Linear,
    pub(super) out: Linear,
    pub(super) ffn: FeedForward,
}

/// The audio encoder on candle, and each decoder layer's cross-attention key/value projection,
/// which applies to the encoder's output once per window.
pub(super) struct Encoder {
    pub(super) conv1: (Tensor, Tensor),
    pub(super) conv2: (Tensor, Tensor),
    pub(super) positions: Tensor,
    pub(super) layers: Vec<EncoderLayer>,
    pub(super) norm: LayerNorm,
    pub(super) heads: usize,
    pub(super) cross_kv: Vec<Linear>,
    pub(super) decoder_heads: usize,
}

/// Where windows are encoded: ONNX Runtime, where it is installed (`encoder_onnx.rs`, faster:
/// its matrix products are), else candle.
enum AudioEncoder {
    Candle(Box<Encoder>),
    Onnx(OnnxEncoder),
}

impl Encoder {
    /// `[1, n_mels, 3000]` → the window's cross-attention keys and values.
    fn encode(&self, mel: &Tensor) -> candle_core::Result<CrossKv> {
        let audio = self.forward(mel)?;
        let (n, d) = audio.dims2()?;
        let heads = self.decoder_heads;
        let layers = self
            .cross_kv
            .iter()
            .map(|cross_kv| {
                let kv = cross_kv.forward(&audio)?;
                let kv = kv
                    .reshape((n, 2, heads, d / heads))?
                    .permute((1, 2, 0, 3))?;
                Ok((kv.i(0)?.t()?.contiguous()?, kv.i(1)?.contiguous()?))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(CrossKv { layers })
    }

    /// `[1, n_mels, 2 · n_audio_ctx]` → `[n_audio_ctx, d_model]`.
    fn forward(&self, mel: &Tensor) -> candle_core::Result<Tensor> {
        let conv =
            |xs: &Tensor, (w, b): &(Tensor, Tensor), stride| -> candle_core::Result<Tensor> {
                xs.conv1d(w, 1, stride, 1, 1)?
                    .broadcast_add(&b.reshape((1, (), 1))?)?
                    .gelu_erf()
            };
        let xs = conv(&conv(mel, &self.conv1, 1)?, &self.conv2, 2)?;
        let xs = xs.squeeze(0)?.t()?;
        let n = xs.dim(0)?;
        let mut xs = (xs + self.positions.narrow(0, 0, n)?)?;
        let d = xs.dim(1)?;
        let head_dim = d / self.heads;
        let scale = (head_dim as f64).powf(-0.5);
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&layer.norm.forward(&xs)?)?;
            // [n, 3d] → [3, heads, n, head_dim]
            let qkv = qkv
                .reshape((n, 3, self.heads, head_dim))?
                .permute((1, 2, 0, 3))?
                .contiguous()?;
            let q = (qkv.i(0)? * scale)?;
            let context = attend(&q, &qkv.i(1)?, &qkv.i(2)?, None)?;
            let context = context.transpose(0, 1)?.reshape((n, d))?;
            xs = (&xs + layer.out.forward(&context)?)?;
            xs = layer.ffn.residual(&xs)?;
        }
        self.norm.forward(&xs)
    }
}

struct DecoderLayer {
    self_norm: LayerNorm,
    self_qkv: Linear,
    self_out: Linear,
    cross_norm: LayerNorm,
    cross_q: Linear,
    cross_out: Linear,
    ffn: FeedForward,
}

/// The cross-attention keys and values of one window's encoder output, per decoder layer: keys
/// transposed `[heads, head_dim, n_audio_ctx]` (so a decoding step's scores are column-major
/// matrix-vector products), values `[heads, n_audio_ctx, head_dim]`. Computed once per window
/// and shared by every beam. Cloning shares the tensors.
#[derive(Clone)]
pub(crate) struct CrossKv {
    pub(super) layers: Vec<(Tensor, Tensor)>,
}

/// The self-attention cache of a batch of sequences of equal length: per layer, keys and values
/// `[batch, heads, len, head_dim]`. Cloning shares the tensors (decoding never writes into them).
#[derive(Clone)]
pub(crate) struct SelfKv {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
    /// The sequences the next step continues (`select`'s rows, not yet applied): gathered as
    /// that step appends to the cache, one copy of it instead of two.
    rows: Option<Vec<u32>>,
}

impl SelfKv {
    /// Keeps the sequences `rows` (indices into the batch, repeats allowed), in that order.
    pub(crate) fn select(&mut self, rows: &[u32]) {
        self.rows = Some(match &self.rows {
            Some(earlier) => rows.iter().map(|&r| earlier[r as usize]).collect(),
            None => rows.to_vec(),
        });
    }
}

/// `past` `[batch, heads, len, head_dim]` with `new` `[batch', heads, t, head_dim]` after it, its
/// rows taken in the order of `rows` (each row as it is without).
fn append(past: &Tensor, new: &Tensor, rows: Option<&[u32]>) -> candle_core::Result<Tensor> {
    let (_, heads, len, head_dim) = past.dims4()?;
    let (batch, _, t, _) = new.dims4()?;
    let (past_run, new_run) = (len * head_dim, t * head_dim);
    let mut joined = Vec::with_capacity(batch * heads * (past_run + new_run));
    matvec::with_slice(&past.contiguous()?, |past: &[f32]| {
        matvec::with_slice(&new.contiguous()?, |new: &[f32]| {
            for b in 0..batch {
                let from = rows.map_or(b, |rows| rows[b] as usize);
                for h in 0..heads {
                    let at = (from * heads + h) * past_run;
                    joined.extend_from_slice(&past[at..at + past_run]);
                    let at = (b * heads + h) * new_run;
                    joined.extend_from_slice(&new[at..at + new_run]);
                }
            }
            Ok(())
        })
    })?;
    Tensor::from_vec(joined, (batch, heads, len + t, head_dim), &Device::Cpu)
}

/// One batch of sequences' part of a `decode_many` pass: its new tokens (`[batch, t]`
/// row-major), its cache, its window's cross-attention, and the alignment heads whose scores
/// it wants.
pub(crate) struct DecodeCall<'a> {
    pub tokens: &'a [u32],
    pub batch: usize,
    pub cache: &'a mut SelfKv,
    pub cross: &'a CrossKv,
    pub heads: &'a [(usize, usize)],
}

/// Rows stacked in order (one part is returned as it is).
fn stack_rows(mut parts: Vec<Tensor>) -> candle_core::Result<Tensor> {
    match parts.len() {
        1 => Ok(parts.remove(0)),
        _ => Tensor::cat(&parts, 0),
    }
}

/// The text decoder.
struct Decoder {
    /// The token embeddings, which are also the output projection, transposed: `[d_model, vocab]`
    /// (as stored: f16 or f32).
    embeddings_t: Tensor,
    positions: Tensor,
    layers: Vec<DecoderLayer>,
    norm: LayerNorm,
    heads: usize,
}

/// Whisper: encoder, decoder and its sizes.
pub(crate) struct Model {
    pub dims: Dims,
    encoder: AudioEncoder,
    decoder: Decoder,
}

impl Model {
    /// Builds the model from `w`, taking its tensors (each original is freed once its
    /// transposed copy exists, so loading peaks near one copy of the weights).
    pub(crate) fn new(
        w: &mut Weights,
        encoder_heads: usize,
        decoder_heads: usize,
    ) -> anyhow::Result<Model> {
        let mut conv = |name: &str| -> anyhow::Result<(Tensor, Tensor)> {
            Ok((
                w.take(&format!("{name}/weight"))?,
                w.take(&format!("{name}/bias"))?,
            ))
        };
        let (conv1, conv2) = (conv("encoder/conv1")?, conv("encoder/conv2")?);
        let (d_model, n_mels, _) = conv1.0.dims3().context("encoder/conv1/weight")?;
        ensure!(
            d_model % encoder_heads == 0 && d_model % decoder_heads == 0,
            "{d_model} dimensions do not split into {encoder_heads} / {decoder_heads} heads"
        );
        let mut encoder_layers = Vec::new();
        for i in 0..w.count_layers("encoder/layer") {
            let name = format!("encoder/layer_{i}");
            encoder_layers.push(EncoderLayer {
                norm: LayerNorm::load(w, &format!("{name}/self_attention/layer_norm"))?,
                qkv: Linear::load(w, &format!("{name}/self_attention/linear_0"), Rows::Many)?,
                out: Linear::load(w, &format!("{name}/self_attention/linear_1"), Rows::Many)?,
                ffn: FeedForward::load(w, &format!("{name}/ffn"), Rows::Many)?,
            });
        }
        let (mut decoder_layers, mut cross_kv) = (Vec::new(), Vec::new());
        for i in 0..w.count_layers("decoder/layer") {
            let name = format!("decoder/layer_{i}");
            decoder_layers.push(DecoderLayer {
                self_norm: LayerNorm::load(w, &format!("{name}/self_attention/layer_norm"))?,
                self_qkv: Linear::load(w, &format!("{name}/self_attention/linear_0"), Rows::Few)?,
                self_out: Linear::load(w, &format!("{name}/self_attention/linear_1"), Rows::Few)?,
                cross_norm: LayerNorm::load(w, &format!("{name}/attention/layer_norm"))?,
                cross_q: Linear::load(w, &format!("{name}/attention/linear_0"), Rows::Few)?,
                cross_out: Linear::load(w, &format!("{name}/attention/linear_2"), Rows::Few)?,
                ffn: FeedForward::load(w, &format!("{name}/ffn"), Rows::Few)?,
            });
            cross_kv.push(Linear::load(
                w,
                &format!("{name}/attention/linear_1"),
                Rows::Many,
            )?);
        }
        ensure!(
            !encoder_layers.is_empty() && !decoder_layers.is_empty(),
            "the model has no layers"
        );
        let embeddings = w.take_stored("decoder/embeddings/weight")?;
        let decoder_positions = w.take("decoder/position_encodings/encodings")?;
        let dims = Dims {
            n_mels,
            d_model,
            n_vocab: embeddings.dim(0)?,
            n_text_ctx: decoder_positions.dim(0)?,
        };
        let encoder = Encoder {
            conv1,
            conv2,
            positions: w.take("encoder/position_encodings/encodings")?,
            layers: encoder_layers,
            norm: LayerNorm::load(w, "encoder/layer_norm")?,
            heads: encoder_heads,
            cross_kv,
            decoder_heads,
        };
        let encoder = match OnnxEncoder::build(&encoder, crate::cpu_threads()) {
            Ok(onnx) => AudioEncoder::Onnx(onnx),
            Err(why) => {
                tracing::warn!(reason = %format!("{why:#}"), "the Whisper encoder runs on candle");
                AudioEncoder::Candle(Box::new(encoder))
            }
        };
        Ok(Model {
            dims,
            encoder,
            decoder: Decoder {
                embeddings_t: embeddings.t()?.contiguous()?,
                positions: decoder_positions,
                layers: decoder_layers,
                norm: LayerNorm::load(w, "decoder/layer_norm")?,
                heads: decoder_heads,
            },
        })
    }

    pub(crate) fn decoder_layers(&self) -> usize {
        self.decoder.layers.len()
    }

    pub(crate) fn decoder_heads(&self) -> usize {
        self.decoder.heads
    }

    /// Encodes one 30 s window (`[1, n_mels, 3000]`) and computes every decoder layer's
    /// cross-attention keys and values from it.
    pub(crate) fn encode(&self, mel: &Tensor) -> anyhow::Result<CrossKv> {
        match &self.encoder {
            AudioEncoder::Candle(encoder) => Ok(encoder.encode(mel)?),
            AudioEncoder::Onnx(encoder) => encoder.encode(mel),
        }
    }

    /// An empty self-attention cache.
    pub(crate) fn new_cache(&self) -> SelfKv {
        SelfKv {
            layers: vec![None; self.decoder.layers.len()],
            len: 0,
            rows: None,
        }
    }

    /// Runs `tokens` (`[batch, t]` row-major) through the decoder after the `cache.len()` tokens
    /// the cache holds, and appends them to it. Returns the final hidden states `[batch · t,
    /// d_model]` and, for each `(layer, head)` of `heads`, that head's raw (scaled, pre-softmax)
    /// cross-attention scores `[batch · t, n_audio_ctx]`.
    pub(crate) fn decode(
        &self,
        tokens: &[u32],
        batch: usize,
        cache: &mut SelfKv,
        cross: &CrossKv,
        heads: &[(usize, usize)],
    ) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        let call = DecodeCall {
            tokens,
            batch,
            cache,
            cross,
            heads,
        };
        let mut decoded = self.decode_many(&mut [call])?;
        Ok(decoded.remove(0))
    }

    /// `decode` for several independent calls (other windows, other requests) in one pass: their
    /// rows are stacked for the projections, which so read each weight once for all of them, and
    /// attend apart, each to its own cache and window.
    pub(crate) fn decode_many(
        &self,
        calls: &mut [DecodeCall<'_>],
    ) -> candle_core::Result<Vec<(Tensor, Vec<Tensor>)>> {
        let dec = &self.decoder;
        let d = self.dims.d_model;
        let head_dim = d / dec.heads;
        let scale = (head_dim as f64).powf(-0.5);
        let rows: Vec<usize> = calls.iter().map(|call| call.tokens.len()).collect();
        let mut embedded = Vec::new();
        let mut masks = Vec::new();
        for call in calls.iter() {
            let (t, past) = (call.tokens.len() / call.batch, call.cache.len);
            let positions = dec.positions.narrow(0, past, t)?;
            let ids = Tensor::new(call.tokens, &Device::Cpu)?;
            embedded.push(
                dec.embeddings_t
                    .index_select(&ids, 1)?
                    .to_dtype(candle_core::DType::F32)?
                    .t()?
                    .reshape((call.batch, t, d))?
                    .broadcast_add(&positions)?
                    .reshape((call.batch * t, d))?,
            );
            // Causal within the new tokens; every cached position is visible.
            masks.push(
                (t > 1)
                    .then(|| {
                        let mask: Vec<f32> = (0..t)
                            .flat_map(|i| {
                                (0..past + t).map(move |j| {
                                    if j > past + i { f32::NEG_INFINITY } else { 0.0 }
                                })
                            })
                            .collect();
                        Tensor::from_vec(mask, (t, past + t), &Device::Cpu)
                    })
                    .transpose()?,
            );
        }
        let mut xs = stack_rows(embedded)?;
        let mut attention: Vec<Vec<Option<Tensor>>> = calls
            .iter()
            .map(|call| vec![None; call.heads.len()])
            .collect();
        for (l, layer) in dec.layers.iter().enumerate() {
            // Self-attention: each call's [batch·t, 3d] → [3, batch, heads, t, head_dim].
            let qkv = layer.self_qkv.forward(&layer.self_norm.forward(&xs)?)?;
            let mut contexts = Vec::new();
            let mut offset = 0;
            for (c, (call, &n)) in calls.iter_mut().zip(&rows).enumerate() {
                let (batch, t) = (call.batch, n / call.batch);
                let qkv = qkv
                    .narrow(0, offset, n)?
                    .reshape((batch, t, 3, dec.heads, head_dim))?
                    .permute((2, 0, 3, 1, 4))?
                    .contiguous()?;
                let (q, k, v) = ((qkv.i(0)? * scale)?, qkv.i(1)?, qkv.i(2)?);
                let rows = call.cache.rows.as_deref();
                let (k, v) = match &call.cache.layers[l] {
                    Some((past_k, past_v)) => {
                        (append(past_k, &k, rows)?, append(past_v, &v, rows)?)
                    }
                    None => (k, v),
                };
                let context = attend(&q, &k, &v, masks[c].as_ref())?;
                call.cache.layers[l] = Some((k, v));
                contexts.push(context.transpose(1, 2)?.reshape((n, d))?);
                offset += n;
            }
            xs = (&xs + layer.self_out.forward(&stack_rows(contexts)?)?)?;

            // Cross-attention: every row of a call against the same keys, so its batch and time
            // rows become one dimension: [heads, batch·t, head_dim].
            let q = layer.cross_q.forward(&layer.cross_norm.forward(&xs)?)?;
            let mut contexts = Vec::new();
            let mut offset = 0;
            for ((call, &n), attention) in calls.iter().zip(&rows).zip(&mut attention) {
                let q = (q
                    .narrow(0, offset, n)?
                    .reshape((n, dec.heads, head_dim))?
                    .transpose(0, 1)?
                    .contiguous()?
                    * scale)?;
                let (keys_t, values) = &call.cross.layers[l];
                let scores = matvec::matmul_heads(&q, keys_t)?;
                for (slot, &(_, h)) in attention
                    .iter_mut()
                    .zip(call.heads)
                    .filter(|(_, (hl, _))| *hl == l)
                {
                    *slot = Some(scores.i(h)?);
                }
                let context = matvec::matmul_heads(&softmax_last_dim(&scores)?, values)?;
                contexts.push(context.transpose(0, 1)?.reshape((n, d))?);
                offset += n;
            }
            xs = (&xs + layer.cross_out.forward(&stack_rows(contexts)?)?)?;
            xs = layer.ffn.residual(&xs)?;
        }
        let hidden = dec.norm.forward(&xs)?;
        let mut decoded = Vec::new();
        let mut offset = 0;
        for ((call, &n), attention) in calls.iter_mut().zip(&rows).zip(attention) {
            call.cache.len += n / call.batch;
            call.cache.rows = None;
            let attention = attention
                .into_iter()
                .map(|a| {
                    a.ok_or_else(|| {
                        candle_core::Error::Msg("alignment head layer out of range".into())
                    })
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            decoded.push((hidden.narrow(0, offset, n)?, attention));
            offset += n;
        }
        Ok(decoded)
    }

    /// Logits over the vocabulary for hidden states `[n, d_model]`: `n` rows of `n_vocab`.
    pub(crate) fn logits(&self, hidden: &Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
        matvec::matmul(hidden, &self.decoder.embeddings_t)?.to_vec2::<f32>()
    }
}
