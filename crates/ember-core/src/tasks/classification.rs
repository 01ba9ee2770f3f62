//! Text classification (`@cf/huggingface/distilbert-sst-2-int8`): a text in, every label of the
//! model with its probability out, in the model's label order, the probabilities summing to 1.

use super::{TaskInfo, Usage};

pub const INFO: TaskInfo = TaskInfo {
    name: "Text Classification",
    uuid: "19606750-23ed-4371-aab2-c20349b53a60",
    requests_per_minute: 2000,
    description: "Sentiment analysis or text classification is a common NLP task that classifies a text input into labels or classes.",
};

pub fn usage(output: &ClassificationOutput) -> Usage {
    Usage::new(output.input_tokens, 0)
}

pub fn most_usage(_: &ClassificationRequest, input_bytes: u32) -> Usage {
    Usage::new(input_bytes, 0)
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClassificationRequest {
    pub text: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LabelScore {
    pub label: String,
    pub score: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClassificationOutput {
    pub labels: Vec<LabelScore>,
    pub input_tokens: u32,
}
