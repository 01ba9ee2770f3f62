//! The object detection runner: the uploaded image decoded and prepared as DETR's image processor
//! does, DETR run on it, and its queries turned into the objects found, as transformers'
//! `post_process_object_detection` does: the best class of each query (never "no object"), kept
//! above the score threshold, its box from relative centre and size to the image's pixels.

use super::detr::{Detr, DetrConfig, best_classes};
use super::image::{Preprocess, Resize, decode_rgb};
use crate::wrong_task;
use ember_core::InferError;
use ember_core::runner::Runner;
use ember_core::tasks::object_detection::{
    BoundingBox, DetectedObject, ObjectDetectionOutput, SCORE_THRESHOLD,
};
use ember_core::tasks::{TaskOutput, TaskRequest};
use std::path::Path;

pub struct ObjectDetector {
    detr: Detr,
    preprocess: Preprocess,
    /// By class id; `None` for ids the model has no name for.
    labels: Vec<Option<String>>,
}

impl ObjectDetector {
    /// Loads a DETR folder (`config.json`, `model.safetensors`).
    pub fn load(dir: &Path) -> Result<ObjectDetector, InferError> {
        Self::read(dir).map_err(|e| InferError::LoadFailed {
            model: dir.display().to_string(),
            reason: format!("{e:#}"),
        })
    }

    fn read(dir: &Path) -> anyhow::Result<ObjectDetector> {
        let (config, id2label, weights): (DetrConfig, _, _) = super::read_folder(dir)?;
        let detr = Detr::new(&config, weights)?;
        // COCO's ids have gaps (id2label has 91 names for 92 outputs), so labels go by id.
        let mut labels = vec![None; detr.classes()];
        for (id, name) in id2label {
            if let Some(slot) = id.parse::<usize>().ok().and_then(|id| labels.get_mut(id)) {
                *slot = Some(name);
            }
        }
        Ok(ObjectDetector {
            detr,
            preprocess: Preprocess {
                resize: Resize::Within {
                    shortest: 800,
                    longest: 1333,
                },
                mean: super::IMAGENET_MEAN,
                std: super::IMAGENET_STD,
            },
            labels,
        })
    }

    /// The objects in the encoded image scoring above `threshold`, most likely first.
    pub fn detect(&self, bytes: &[u8], threshold: f32) -> Result<Vec<DetectedObject>, InferError> {
        let image =
            decode_rgb(bytes).map_err(|error| InferError::invalid("/image", error.to_string()))?;
        let (_, found) = self.raw(&image).map_err(internal)?;
        let classes = best_classes(&found.logits).map_err(internal)?;
        let boxes = found.boxes.to_vec2::<f32>().map_err(internal)?;
        let (width, height) = (image.width() as f32, image.height() as f32);
        let mut objects: Vec<DetectedObject> = classes
            .into_iter()
            .zip(boxes)
            .filter(|((_, score), _)| *score > threshold)
            .map(|((class, score), b)| {
                let (cx, cy, w, h) = (b[0], b[1], b[2], b[3]);
                DetectedObject {
                    label: self.labels[class]
                        .clone()
                        .unwrap_or_else(|| format!("LABEL_{class}")),
                    score,
                    bounding_box: BoundingBox {
                        xmin: (cx - 0.5 * w) * width,
                        ymin: (cy - 0.5 * h) * height,
                        xmax: (cx + 0.5 * w) * width,
                        ymax: (cy + 0.5 * h) * height,
                    },
                }
            })
            .collect();
        objects.sort_by(|a, b| b.score.total_cmp(&a.score));
        Ok(objects)
    }

    /// The model's input and raw output for `image`: class logits and relative boxes per query.
    pub fn raw(
        &self,
        image: &image::RgbImage,
    ) -> anyhow::Result<(candle_core::Tensor, super::detr::Detections)> {
        let pixels = self.preprocess.pixels(image)?;
        let found = self.detr.forward(&pixels)?;
        Ok((pixels, found))
    }
}

impl Runner for ObjectDetector {
    fn run(&mut self, request: TaskRequest) -> Result<TaskOutput, InferError> {
        let TaskRequest::ObjectDetection(request) = request else {
            return Err(wrong_task(&request));
        };
        let objects = self.detect(&request.image, SCORE_THRESHOLD)?;
        Ok(TaskOutput::ObjectDetection(ObjectDetectionOutput {
            objects,
        }))
    }
}

fn internal(error: impl std::fmt::Display) -> InferError {
    InferError::Internal(format!("object detector: {error}"))
}
