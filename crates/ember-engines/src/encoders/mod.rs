//! Text classification on candle: encoder models with a classification head, run on whole
//! texts (no generation).
//!
//! - [`SequenceClassifier`]: DistilBERT sequence classification (distilbert-sst-2), written in
//!   [`distilbert`]; softmax probabilities over the labels of `config.json`'s `id2label`.
//! - [`CrossEncoder`]: an XLM-RoBERTa cross-encoder reranker (bge-reranker-base) on
//!   `candle_transformers::models::xlm_roberta`, in [`cross_encoder`]; one sigmoid score per
//!   (query, passage) pair.
//!
//! Both read a Hugging Face model folder (`config.json`, `model.safetensors`, `tokenizer.json`),
//! tokenize with the folder's own tokenizer (its special tokens, pair template and truncation to
//! the model's position table, as `tokenizer(..., truncation=True)` does), batch with right
//! padding and an attention mask, and take the classification head on the first token.

pub mod cross_encoder;
pub mod distilbert;

pub use cross_encoder::CrossEncoder;
pub use distilbert::SequenceClassifier;

use crate::embed::load_safetensors;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use ember_core::InferError;
use ember_core::tasks::classification::{ClassificationOutput, LabelScore};
use ember_core::tasks::reranking::RerankOutput;
use ember_core::tasks::{TaskOutput, TaskRequest};
use std::path::Path;
use tokenizers::Tokenizer;

/// `InferError::LoadFailed` for a model known only by its folder.
fn load_failed(dir: &Path, reason: impl Into<String>) -> InferError {
    InferError::LoadFailed {
        model: dir.display().to_string(),
        reason: reason.into(),
    }
}

fn internal(error: candle_core::Error) -> InferError {
    InferError::Internal(format!("classification engine: {error}"))
}

/// Reads and parses `config.json` from a model folder.
fn read_config<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<T, String> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The weights of `model.safetensors` as f32 CPU tensors.
fn read_weights(dir: &Path) -> Result<VarBuilder<'static>, String> {
    let tensors = load_safetensors(&dir.join("model.safetensors"))?;
    Ok(VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu))
}

/// Labels in label-id order from `id2label` (keys are the ids as strings). Every id from 0 to
/// n-1 must be present, so that position i of the classifier's output is label i.
pub(crate) fn labels_in_order(
    id2label: &std::collections::HashMap<String, String>,
) -> Result<Vec<String>, String> {
    let mut labels = vec![None; id2label.len()];
    for (id, label) in id2label {
        let index: usize = id
            .parse()
            .map_err(|_| format!("config.json: id2label key {id:?} is not a number"))?;
        let slot = labels
            .get_mut(index)
            .ok_or_else(|| format!("config.json: id2label ids are not 0..{}", id2label.len()))?;
        *slot = Some(label.clone());
    }
    labels
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .filter(|labels| !labels.is_empty())
        .ok_or_else(|| "config.json: id2label is empty or has repeated ids".to_string())
}

/// Loads the folder's `tokenizer.json` with its padding off and truncation to `max_tokens` tokens
/// in all, special tokens included (for pairs, the longer text is cut first, as `truncation=True`).
fn load_tokenizer(dir: &Path, max_tokens: usize) -> Result<Tokenizer, String> {
    crate::embed::load_tokenizer(&dir.join("tokenizer.json"), max_tokens)
}

/// Numerically stable softmax of one row of logits.
pub(crate) fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl ember_core::runner::Runner for SequenceClassifier {
    fn run(&mut self, request: TaskRequest) -> Result<TaskOutput, InferError> {
        let TaskRequest::TextClassification(request) = request else {
            return Err(crate::wrong_task(&request));
        };
        let (probabilities, tokens) = self
            .classify(std::slice::from_ref(&request.text))?
            .pop()
            .ok_or_else(|| InferError::Internal("the classifier returned nothing".into()))?;
        let labels = self
            .labels()
            .iter()
            .zip(probabilities)
            .map(|(label, score)| LabelScore {
                label: label.clone(),
                score,
            })
            .collect();
        Ok(TaskOutput::TextClassification(ClassificationOutput {
            labels,
            input_tokens: tokens,
        }))
    }
}

impl ember_core::runner::Runner for CrossEncoder {
    fn run(&mut self, request: TaskRequest) -> Result<TaskOutput, InferError> {
        let TaskRequest::Reranking(request) = request else {
            return Err(crate::wrong_task(&request));
        };
        let (scores, tokens) = self.score(&request.query, &request.contexts)?;
        Ok(TaskOutput::Reranking(RerankOutput::new(
            &scores,
            request.top_k,
            tokens,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn labels_follow_ids_not_map_order() {
        let map: HashMap<String, String> = [("1", "POSITIVE"), ("0", "NEGATIVE")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(labels_in_order(&map).unwrap(), ["NEGATIVE", "POSITIVE"]);
        let gap: HashMap<String, String> =
            [("0".to_string(), "A".to_string()), ("2".into(), "C".into())]
                .into_iter()
                .collect();
        assert!(labels_in_order(&gap).is_err());
        assert!(labels_in_order(&HashMap::new()).is_err());
    }

    #[test]
    fn softmax_and_sigmoid() {
        let p = softmax(&[1000.0, 1000.0]);
        assert_eq!(p, vec![0.5, 0.5]);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
        assert!(sigmoid(-100.0) >= 0.0 && sigmoid(100.0) <= 1.0);
    }
}
