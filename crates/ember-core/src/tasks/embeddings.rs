//! Text embeddings: texts in, one vector per text out, pooled as asked.

use serde::Serialize;

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
