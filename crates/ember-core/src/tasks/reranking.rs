//! Reranking (`@cf/baai/bge-reranker-base`): a query and passages in, the passages' indices with
//! their relevance scores out, best first, at most `top_k` of them.

use super::{TaskInfo, Usage};

/// Workers AI files its reranker under Text Classification (and limits it as one); its schema is
/// its own.
pub const INFO: TaskInfo = super::classification::INFO;

pub fn usage(output: &RerankOutput) -> Usage {
    Usage::new(output.input_tokens, 0)
}

pub fn most_usage(_: &RerankRequest, input_bytes: u32) -> Usage {
    Usage::new(input_bytes, 0)
}

/// Most contexts in one request.
pub const MAX_CONTEXTS: usize = 1000;

#[derive(Debug, Clone, PartialEq)]
pub struct RerankRequest {
    pub query: String,
    pub contexts: Vec<String>,
    /// How many of the best contexts to return (all when absent).
    pub top_k: Option<usize>,
}

/// Scores of the contexts, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct RerankOutput {
    /// `(index in contexts, score)`, sorted by score, highest first.
    pub ranked: Vec<(usize, f32)>,
    pub input_tokens: u32,
}

impl RerankOutput {
    /// Ranks `scores` (one per context, in input order), keeping the best `top_k`.
    pub fn new(scores: &[f32], top_k: Option<usize>, input_tokens: u32) -> RerankOutput {
        let mut ranked: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(top_k.unwrap_or(usize::MAX));
        RerankOutput {
            ranked,
            input_tokens,
        }
    }
}
