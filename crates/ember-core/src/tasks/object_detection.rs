//! Object detection (`@cf/facebook/detr-resnet-50`): image bytes in (any format the decoder
//! knows), the objects found with their label, probability and box out, most likely first.
//! Charged per image.

use super::{TaskInfo, Usage};

pub const INFO: TaskInfo = TaskInfo {
    name: "Object Detection",
    uuid: "9c178979-90d9-49d8-9e2c-0f1cf01815d4",
    requests_per_minute: 3000,
    description: "Object detection models can detect instances of objects like persons, faces, license plates, or others in an image. This task takes an image as input and returns a list of detected objects, each one containing a label, a probability score, and its surrounding box coordinates.",
};

/// Objects less likely than this are left out (the default of transformers' object-detection
/// pipeline, which the catalog model's answers follow).
pub const SCORE_THRESHOLD: f32 = 0.5;

pub fn usage(_: &ObjectDetectionOutput) -> Usage {
    Usage::of_images(1)
}

pub fn most_usage(_: &ObjectDetectionRequest, _input_bytes: u32) -> Usage {
    Usage::of_images(1)
}

#[derive(Debug, Clone, PartialEq)]
pub struct ObjectDetectionRequest {
    /// The encoded image, as the caller sent it.
    pub image: Vec<u8>,
}

/// A box in the image's pixels, from its top-left corner.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoundingBox {
    pub xmin: f32,
    pub ymin: f32,
    pub xmax: f32,
    pub ymax: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DetectedObject {
    pub label: String,
    pub score: f32,
    pub bounding_box: BoundingBox,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ObjectDetectionOutput {
    /// By descending score.
    pub objects: Vec<DetectedObject>,
}
