//! Image classification (`@cf/microsoft/resnet-50`): image bytes in (any format the decoder
//! knows), the model's five most likely labels with their probabilities out, most likely first.
//! Charged per image.

use super::classification::LabelScore;
use super::{TaskInfo, Usage};

pub const INFO: TaskInfo = TaskInfo {
    name: "Image Classification",
    uuid: "00cd182b-bf30-4fc4-8481-84a3ab349657",
    requests_per_minute: 3000,
    description: "Image classification models take an image input and assigns it labels or classes.",
};

/// Labels in an answer, as Workers AI's resnet-50 returns them.
pub const TOP_LABELS: usize = 5;

pub fn usage(_: &ImageClassificationOutput) -> Usage {
    Usage::of_images(1)
}

pub fn most_usage(_: &ImageClassificationRequest, _input_bytes: u32) -> Usage {
    Usage::of_images(1)
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImageClassificationRequest {
    /// The encoded image, as the caller sent it.
    pub image: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImageClassificationOutput {
    /// At most `TOP_LABELS`, by descending score.
    pub labels: Vec<LabelScore>,
}
