//! XLM-RoBERTa cross-encoder reranking (bge-reranker-base), as Hugging Face transformers'
//! `XLMRobertaForSequenceClassification` with one label, on
//! `candle_transformers::models::xlm_roberta`.
//!
//! XLM-R: Conneau et al., "Unsupervised Cross-lingual Representation Learning at Scale"
//! (<https://arxiv.org/abs/1911.02116>). BGE reranker: Xiao et al., "C-Pack: Packaged Resources
//! To Advance General Chinese Embedding" (<https://arxiv.org/abs/2309.07597>).
//!
//! Each (query, passage) pair goes through the tokenizer's pair template (`<s> q </s></s> p </s>`
//! for XLM-R), cut longest-first to the position table; the score is sigmoid of the single logit
//! of the classification head (dense → tanh → out_proj on token 0), as `FlagReranker` with
//! `normalize=True`.

use super::{internal, load_failed, load_tokenizer, read_config, read_weights, sigmoid};
use crate::embed::run_batched;
use candle_nn::Activation;
use candle_transformers::models::xlm_roberta::{self, XLMRobertaForSequenceClassification};
use ember_core::InferError;
use std::collections::HashMap;
use std::path::Path;
use tokenizers::{EncodeInput, Tokenizer};

/// The fields of an XLM-R `config.json`, with transformers' `XLMRobertaConfig` defaults for the
/// ones a saved config may leave out.
#[derive(serde::Deserialize)]
struct Config {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "gelu")]
    hidden_act: Activation,
    max_position_embeddings: usize,
    #[serde(default = "two")]
    type_vocab_size: usize,
    #[serde(default = "layer_norm_eps")]
    layer_norm_eps: f64,
    #[serde(default = "one")]
    pad_token_id: u32,
    #[serde(default = "absolute")]
    position_embedding_type: String,
    id2label: HashMap<String, String>,
}

fn gelu() -> Activation {
    Activation::Gelu
}
fn two() -> usize {
    2
}
fn one() -> u32 {
    1
}
fn layer_norm_eps() -> f64 {
    1e-12
}
fn absolute() -> String {
    "absolute".into()
}

/// A (query, passage) relevance scorer.
pub struct CrossEncoder {
    model: XLMRobertaForSequenceClassification,
    tokenizer: Tokenizer,
    pad_id: u32,
}

impl CrossEncoder {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from a model folder.
    pub fn load(dir: &Path) -> Result<CrossEncoder, InferError> {
        let failed = |reason: String| load_failed(dir, reason);
        let c: Config = read_config(dir).map_err(failed)?;
        if c.id2label.len() != 1 {
            return Err(failed(format!(
                "config.json: a cross-encoder has one label, this model has {}",
                c.id2label.len()
            )));
        }
        if c.position_embedding_type != "absolute" {
            return Err(failed(format!(
                "config.json: unsupported position_embedding_type {:?}",
                c.position_embedding_type
            )));
        }
        // RoBERTa positions start after the padding id, so the table holds pad_id + 1 fewer
        // tokens than it has rows (514 rows → 512 tokens).
        let max_tokens = c
            .max_position_embeddings
            .checked_sub(c.pad_token_id as usize + 1)
            .filter(|&n| n > 4)
            .ok_or_else(|| failed("config.json: max_position_embeddings is too small".into()))?;
        let config = xlm_roberta::Config {
            hidden_size: c.hidden_size,
            layer_norm_eps: c.layer_norm_eps,
            attention_probs_dropout_prob: 0.0,
            hidden_dropout_prob: 0.0,
            num_attention_heads: c.num_attention_heads,
            position_embedding_type: c.position_embedding_type,
            intermediate_size: c.intermediate_size,
            hidden_act: c.hidden_act,
            num_hidden_layers: c.num_hidden_layers,
            vocab_size: c.vocab_size,
            max_position_embeddings: c.max_position_embeddings,
            type_vocab_size: c.type_vocab_size,
            pad_token_id: c.pad_token_id,
        };
        let vb = read_weights(dir).map_err(failed)?;
        let model = XLMRobertaForSequenceClassification::new(1, &config, vb)
            .map_err(|e| failed(format!("model.safetensors: {e}")))?;
        let tokenizer = load_tokenizer(dir, max_tokens).map_err(failed)?;
        Ok(CrossEncoder {
            model,
            tokenizer,
            pad_id: c.pad_token_id,
        })
    }

    /// sigmoid(logit) per passage, in input order, and the total tokens used.
    pub fn score(
        &mut self,
        query: &str,
        passages: &[String],
    ) -> Result<(Vec<f32>, u32), InferError> {
        let pairs: Vec<EncodeInput> = passages
            .iter()
            .map(|p| (query, p.as_str()).into())
            .collect();
        let encodings = self
            .tokenizer
            .encode_batch_fast(pairs, true)
            .map_err(|e| InferError::Internal(format!("tokenizer failed: {e}")))?;
        let rows: Vec<Vec<u32>> = encodings.iter().map(|e| e.get_ids().to_vec()).collect();
        let logits = run_batched(&rows, self.pad_id, |ids, mask| {
            // XLM-R has a single token type; every token is type 0.
            self.model.forward(ids, mask, &ids.zeros_like()?)
        })
        .map_err(internal)?;
        let scores = logits.iter().map(|row| sigmoid(row[0])).collect();
        let tokens = rows.iter().map(|r| r.len() as u32).sum();
        Ok((scores, tokens))
    }
}
