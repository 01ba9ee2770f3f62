//! What a weight loader hands the model: tensors under CTranslate2's names (the one naming
//! `model.rs` reads; `hf.rs` renames and fuses into it), f32 or f16 as stored, and the few
//! settings that live beside the weights in either layout.

use anyhow::Context;
use candle_core::{DType, Tensor};
use std::collections::HashMap;

/// A loaded model folder, whichever layout it came in.
pub(crate) struct Loaded {
    pub weights: Weights,
    pub encoder_heads: usize,
    pub decoder_heads: usize,
    /// (decoder layer, head) pairs whose cross-attention follows the timing of words.
    pub alignment_heads: Option<Vec<(usize, usize)>>,
    /// The language tokens, in the model's order.
    pub lang_ids: Option<Vec<u32>>,
    /// Tokens suppressed at the first sampled step with `suppress_blank` (a space and EOT).
    pub suppress_ids_begin: Option<Vec<u32>>,
}

/// Tensors by CTranslate2 name (`encoder/layer_0/self_attention/linear_0/weight`, ...).
pub(crate) struct Weights {
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    pub(crate) fn new(tensors: HashMap<String, Tensor>) -> Weights {
        Weights { tensors }
    }

    /// Removes and returns a tensor as f32: each is used once, by the layer built from it.
    pub(crate) fn take(&mut self, name: &str) -> anyhow::Result<Tensor> {
        Ok(self.take_stored(name)?.to_dtype(DType::F32)?)
    }

    /// Removes and returns a tensor as stored, f32 or f16 (for the weights `matvec` streams).
    pub(crate) fn take_stored(&mut self, name: &str) -> anyhow::Result<Tensor> {
        self.tensors
            .remove(name)
            .with_context(|| format!("the model has no tensor {name}"))
    }

    /// How many `<prefix>_<i>/` layers there are (`encoder/layer`, `decoder/layer`).
    pub(crate) fn count_layers(&self, prefix: &str) -> usize {
        (0..)
            .take_while(|i| {
                let layer = format!("{prefix}_{i}/");
                self.tensors.keys().any(|name| name.starts_with(&layer))
            })
            .count()
    }
}
