//! Summarization (`@cf/facebook/bart-large-cnn`): a text and the longest summary wanted in, the
//! summary out.

use super::{TEMPLATE_TOKENS, TaskInfo, Usage};

pub const INFO: TaskInfo = TaskInfo {
    name: "Summarization",
    uuid: "6f4e65d8-da0f-40d2-9aa4-db582a5a04fd",
    requests_per_minute: 1500,
    description: "Summarization is the task of producing a shorter version of a document while preserving its important information. Some models can extract text from the original input, while other models can generate entirely new text.",
};

pub fn usage(output: &SummarizationOutput) -> Usage {
    output.usage
}

pub fn most_usage(request: &SummarizationRequest, input_bytes: u32) -> Usage {
    Usage::new(
        input_bytes.saturating_add(TEMPLATE_TOKENS),
        request.max_length,
    )
}

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
