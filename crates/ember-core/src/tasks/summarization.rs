//! Summarization (`@cf/facebook/bart-large-cnn`): a text and the longest summary wanted in, the
//! summary out.

use super::Usage;

/// Workers AI's default `max_length` (tokens of summary).
pub const DEFAULT_MAX_LENGTH: u32 = 1024;
/// Largest `max_length` accepted: bart-large-cnn's positions.
pub const MAX_LENGTH: u32 = 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct SummarizationRequest {
    pub input_text: String,
    /// Most tokens of summary.
    pub max_length: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SummarizationOutput {
    pub summary: String,
    pub usage: Usage,
}
