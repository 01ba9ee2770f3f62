//! DistilBERT sequence classification (distilbert-sst-2), as Hugging Face transformers'
//! `DistilBertForSequenceClassification`.
//!
//! DistilBERT: Sanh et al., "DistilBERT, a distilled version of BERT: smaller, faster, cheaper and
//! lighter" (<https://arxiv.org/abs/1910.01108>). The encoder is written here rather than taken
//! from `candle_transformers::models::distilbert`, whose "gelu" is the tanh approximation while
//! transformers' is the exact erf GELU, and whose config hides the sizes the head needs.
//!
//! Forward pass: word + learned position embeddings → LayerNorm → `n_layers` post-norm blocks
//! (self-attention, add & LayerNorm, FFN, add & LayerNorm; eps 1e-12) → hidden state of token 0
//! (`[CLS]`) → `pre_classifier` → ReLU → `classifier` → softmax.

use super::{
    internal, labels_in_order, load_failed, load_tokenizer, read_config, read_weights, softmax,
};
use crate::embed::run_batched;
use candle_core::{Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder, layer_norm, linear};
use ember_core::InferError;
use std::collections::HashMap;
use std::path::Path;
use tokenizers::Tokenizer;

/// DistilBERT's LayerNorm epsilon (fixed in transformers, not in the config).
const LAYER_NORM_EPS: f64 = 1e-12;

#[derive(serde::Deserialize)]
struct Config {
    vocab_size: usize,
    dim: usize,
    n_layers: usize,
    n_heads: usize,
    hidden_dim: usize,
    #[serde(default = "gelu")]
    activation: String,
    max_position_embeddings: usize,
    #[serde(default)]
    pad_token_id: u32,
    id2label: HashMap<String, String>,
}

fn gelu() -> String {
    "gelu".into()
}

#[derive(Clone, Copy)]
enum Activation {
    /// Exact GELU, `x · Φ(x)` (transformers' "gelu").
    Gelu,
    Relu,
}

impl Activation {
    fn parse(name: &str) -> Result<Activation, String> {
        match name {
            "gelu" => Ok(Activation::Gelu),
            "relu" => Ok(Activation::Relu),
            other => Err(format!("config.json: unsupported activation {other:?}")),
        }
    }

    fn forward(self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Gelu => xs.gelu_erf(),
            Activation::Relu => xs.relu(),
        }
    }
}

struct Block {
    q_lin: Linear,
    k_lin: Linear,
    v_lin: Linear,
    out_lin: Linear,
    sa_layer_norm: LayerNorm,
    lin1: Linear,
    lin2: Linear,
    output_layer_norm: LayerNorm,
}

impl Block {
    fn load(vb: VarBuilder, c: &Config) -> candle_core::Result<Block> {
        let attention = vb.pp("attention");
        Ok(Block {
            q_lin: linear(c.dim, c.dim, attention.pp("q_lin"))?,
            k_lin: linear(c.dim, c.dim, attention.pp("k_lin"))?,
            v_lin: linear(c.dim, c.dim, attention.pp("v_lin"))?,
            out_lin: linear(c.dim, c.dim, attention.pp("out_lin"))?,
            sa_layer_norm: layer_norm(c.dim, LAYER_NORM_EPS, vb.pp("sa_layer_norm"))?,
            lin1: linear(c.dim, c.hidden_dim, vb.pp("ffn.lin1"))?,
            lin2: linear(c.hidden_dim, c.dim, vb.pp("ffn.lin2"))?,
            output_layer_norm: layer_norm(c.dim, LAYER_NORM_EPS, vb.pp("output_layer_norm"))?,
        })
    }

    /// `xs`: `[b, t, dim]`; `bias`: `[b, 1, 1, t]` additive attention bias (0 or a huge negative).
    fn forward(
        &self,
        xs: &Tensor,
        bias: &Tensor,
        heads: usize,
        activation: Activation,
    ) -> candle_core::Result<Tensor> {
        let (b, t, dim) = xs.dims3()?;
        let head_dim = dim / heads;
        let split = |x: Tensor| -> candle_core::Result<Tensor> {
            x.reshape((b, t, heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split((self.q_lin.forward(xs)? / (head_dim as f64).sqrt())?)?;
        let k = split(self.k_lin.forward(xs)?)?;
        let v = split(self.v_lin.forward(xs)?)?;
        let scores = q.matmul(&k.t()?)?.broadcast_add(bias)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = weights.matmul(&v)?.transpose(1, 2)?.reshape((b, t, dim))?;
        let xs = self
            .sa_layer_norm
            .forward(&(self.out_lin.forward(&context)? + xs)?)?;
        let ffn = self
            .lin2
            .forward(&activation.forward(&self.lin1.forward(&xs)?)?)?;
        self.output_layer_norm.forward(&(ffn + xs)?)
    }
}

struct DistilBert {
    word_embeddings: candle_nn::Embedding,
    position_embeddings: candle_nn::Embedding,
    embeddings_norm: LayerNorm,
    blocks: Vec<Block>,
    heads: usize,
    activation: Activation,
    pre_classifier: Linear,
    classifier: Linear,
}

impl DistilBert {
    fn load(vb: VarBuilder, c: &Config, labels: usize) -> Result<DistilBert, String> {
        let activation = Activation::parse(&c.activation)?;
        if c.n_heads == 0 || !c.dim.is_multiple_of(c.n_heads) {
            return Err(format!(
                "config.json: dim {} is not a multiple of n_heads {}",
                c.dim, c.n_heads
            ));
        }
        let load = || -> candle_core::Result<DistilBert> {
            let encoder = vb.pp("distilbert");
            let embeddings = encoder.pp("embeddings");
            Ok(DistilBert {
                word_embeddings: candle_nn::embedding(
                    c.vocab_size,
                    c.dim,
                    embeddings.pp("word_embeddings"),
                )?,
                position_embeddings: candle_nn::embedding(
                    c.max_position_embeddings,
                    c.dim,
                    embeddings.pp("position_embeddings"),
                )?,
                embeddings_norm: layer_norm(c.dim, LAYER_NORM_EPS, embeddings.pp("LayerNorm"))?,
                blocks: (0..c.n_layers)
                    .map(|i| Block::load(encoder.pp(format!("transformer.layer.{i}")), c))
                    .collect::<candle_core::Result<_>>()?,
                heads: c.n_heads,
                activation,
                pre_classifier: linear(c.dim, c.dim, vb.pp("pre_classifier"))?,
                classifier: linear(c.dim, labels, vb.pp("classifier"))?,
            })
        };
        load().map_err(|e| format!("model.safetensors: {e}"))
    }

    /// `input_ids`, `mask`: `[b, t]` (u32 ids, f32 1 = token / 0 = padding) → logits `[b, labels]`.
    fn forward(&self, input_ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let positions = Tensor::arange(0u32, t as u32, input_ids.device())?;
        let mut xs = self
            .word_embeddings
            .forward(input_ids)?
            .broadcast_add(&self.position_embeddings.forward(&positions)?)?;
        xs = self.embeddings_norm.forward(&xs)?;
        // Padding keys get the smallest f32 added, as transformers' masked_fill with finfo.min.
        let bias = ((1.0 - mask)? * f32::MIN as f64)?.reshape((b, 1, 1, t))?;
        for block in &self.blocks {
            xs = block.forward(&xs, &bias, self.heads, self.activation)?;
        }
        let cls = xs.narrow(1, 0, 1)?.squeeze(1)?;
        let hidden = self.pre_classifier.forward(&cls)?.relu()?;
        self.classifier.forward(&hidden)?.contiguous()
    }
}

/// A DistilBERT text classifier with its tokenizer and labels.
pub struct SequenceClassifier {
    model: DistilBert,
    tokenizer: Tokenizer,
    labels: Vec<String>,
    max_tokens: usize,
    pad_id: u32,
}

impl SequenceClassifier {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from a model folder.
    pub fn load(dir: &Path) -> Result<SequenceClassifier, InferError> {
        let failed = |reason: String| load_failed(dir, reason);
        let config: Config = read_config(dir).map_err(failed)?;
        let labels = labels_in_order(&config.id2label).map_err(failed)?;
        let vb = read_weights(dir).map_err(failed)?;
        let model = DistilBert::load(vb, &config, labels.len()).map_err(failed)?;
        let max_tokens = config.max_position_embeddings;
        let tokenizer = load_tokenizer(dir, max_tokens).map_err(failed)?;
        Ok(SequenceClassifier {
            model,
            tokenizer,
            labels,
            max_tokens,
            pad_id: config.pad_token_id,
        })
    }

    /// The label names in label-id order (the order of [`classify`](Self::classify)'s
    /// probabilities).
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Per text: softmax probabilities in label-id order, and the tokens the text used (after
    /// truncation to max positions).
    pub fn classify(&mut self, texts: &[String]) -> Result<Vec<(Vec<f32>, u32)>, InferError> {
        let logits = self.logits(texts)?;
        Ok(logits
            .into_iter()
            .map(|(logits, tokens)| (softmax(&logits), tokens))
            .collect())
    }

    /// Per text: the classifier's raw logits and the tokens used.
    pub fn logits(&self, texts: &[String]) -> Result<Vec<(Vec<f32>, u32)>, InferError> {
        let encodings = self
            .tokenizer
            .encode_batch_fast(texts.iter().map(String::as_str).collect::<Vec<_>>(), true)
            .map_err(|e| InferError::Internal(format!("tokenizer failed: {e}")))?;
        let rows: Vec<Vec<u32>> = encodings
            .iter()
            .map(|e| {
                let mut ids = e.get_ids().to_vec();
                // The tokenizer already truncates; this only guards the position table.
                ids.truncate(self.max_tokens);
                ids
            })
            .collect();
        let logits = run_batched(&rows, self.pad_id, |ids, mask| {
            self.model.forward(ids, mask)
        })
        .map_err(internal)?;
        Ok(logits
            .into_iter()
            .zip(&rows)
            .map(|(logits, ids)| (logits, ids.len() as u32))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn activation_names() {
        assert!(Activation::parse("gelu").is_ok());
        assert!(Activation::parse("relu").is_ok());
        assert!(Activation::parse("swish").is_err());
        let xs = Tensor::new(&[-1f32, 0.0, 1.0], &Device::Cpu).unwrap();
        let ys = Activation::Gelu
            .forward(&xs)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // Exact GELU(1) = 0.8413447; the tanh approximation gives 0.8411920.
        assert!((ys[2] - 0.841_344_7).abs() < 1e-6, "{ys:?}");
    }
}
