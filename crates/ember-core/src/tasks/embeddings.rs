//! Text embeddings: texts in, one vector per text out, pooled as asked.

use super::{TaskInfo, Usage};
use serde::Serialize;

pub const INFO: TaskInfo = TaskInfo {
    name: "Text Embeddings",
    uuid: "0137cdcf-162a-4108-94f2-1ca59e8c65ee",
    requests_per_minute: 3000,
    description: "Feature extraction models transform raw data into numerical features that can be processed while preserving the information in the original dataset. These models are ideal as part of building vector search applications or Retrieval Augmented Generation workflows with Large Language Models (LLM).",
};

pub fn usage(output: &EmbeddingsOutput) -> Usage {
    Usage::new(output.input_tokens(), 0)
}

pub fn most_usage(_: &EmbeddingsRequest, input_bytes: u32) -> Usage {
    Usage::new(input_bytes, 0)
}

/// Most texts in one embeddings request.
pub const MAX_EMBEDDING_TEXTS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Mean,
    Cls,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingsRequest {
    pub texts: Vec<String>,
    pub pooling: Pooling,
}

/// Vectors in input order, the tokens each text used after truncation, and how they were pooled.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingsOutput {
    pub vectors: Vec<Vec<f32>>,
    pub token_counts: Vec<u32>,
    pub pooling: Pooling,
}

impl EmbeddingsOutput {
    pub fn input_tokens(&self) -> u32 {
        self.token_counts.iter().sum()
    }
}
