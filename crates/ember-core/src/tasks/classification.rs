//! Text classification (`@cf/huggingface/distilbert-sst-2-int8`): a text in, every label of the
//! model with its probability out, in the model's label order, the probabilities summing to 1.

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
