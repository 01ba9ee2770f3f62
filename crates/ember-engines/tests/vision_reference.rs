//! The image classifiers against `scripts/reference/image_classification.py`, from
//! `tests/fixtures/vision/`: EfficientNet-Lite0 with its real weights against its PyTorch port,
//! ResNet-50's architecture (a tiny random ResNet in `resnet/`) against transformers'
//! `ResNetForImageClassification`, and the preprocessing of both against transformers' image
//! processor (Pillow's bicubic resize), on the same three photos. Then the decoder's EXIF
//! orientation.
//!
//! Needs EfficientNet-Lite0 in the model cache (`$EMBER_HOME/models/hf--google--efficientnet-lite0`,
//! EMBER_HOME defaulting to `~/.cache/ember`); a missing model fails.
//!
//! Tolerances: the preprocessed pixels equal the reference's (the resize is Pillow's, to the
//! bit; 1e-5 covers float formatting); logits within 1e-4 (measured: 6e-6 for EfficientNet,
//! 5e-7 for the tiny ResNet; f32 sums in another order); the five most likely labels in the same
//! order.

use ember_engines::vision::ImageClassifier;
use ember_engines::vision::image::decode_rgb;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;

const PIXEL_TOLERANCE: f32 = 1e-5;
const LOGIT_TOLERANCE: f32 = 1e-4;
const IMAGES: [&str; 3] = ["cat", "espresso", "astronaut"];

#[derive(Deserialize)]
struct Reference {
    pixel_stride: usize,
    cases: HashMap<String, Case>,
}

#[derive(Deserialize)]
struct Case {
    pixels: Vec<f32>,
    logits: Vec<f32>,
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vision")
}

fn read<T: serde::de::DeserializeOwned>(path: PathBuf) -> T {
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn image_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("images").join(format!("{name}.png"))).unwrap()
}

/// The largest |a - b| over two equally long slices.
fn worst(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len());
    actual
        .iter()
        .zip(expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

/// Every `stride`th value of `tensor`, flattened, as the fixtures sample pixels.
fn every_nth(tensor: &candle_core::Tensor, stride: usize) -> Vec<f32> {
    let values = tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    values.into_iter().step_by(stride).collect()
}

fn indices_by_score(logits: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order
}

/// Compares `classifier` with `reference` on every image.
fn check(classifier: &ImageClassifier, reference: &Reference) {
    for name in IMAGES {
        let case = &reference.cases[name];
        let image = decode_rgb(&image_bytes(name)).unwrap();
        let pixels = classifier.pixels(&image).unwrap();
        let sampled = every_nth(&pixels, reference.pixel_stride);
        let difference = worst(&sampled, &case.pixels);
        assert!(
            difference <= PIXEL_TOLERANCE,
            "{name}: a pixel differs by {difference}"
        );
        let logits = classifier.logits(&pixels).unwrap();
        let difference = worst(&logits, &case.logits);
        assert!(
            difference <= LOGIT_TOLERANCE,
            "{name}: a logit differs by {difference}"
        );
        assert_eq!(
            indices_by_score(&logits)[..5],
            indices_by_score(&case.logits)[..5],
            "{name}: top five"
        );
    }
}

#[test]
fn efficientnet_lite0_matches_its_pytorch_port() {
    let dir = ember_core::installed::default_home().join("models/hf--google--efficientnet-lite0");
    assert!(
        dir.is_dir(),
        "{} is missing (run `ember models pull @hf/google/efficientnet-lite0`)",
        dir.display()
    );
    let classifier = ImageClassifier::load("efficientnet-lite", &dir).unwrap();
    // ONNX Runtime is installed (scripts/install-deps.sh); candle's path is checked by
    // `without_onnxruntime.rs`.
    assert!(classifier.on_onnx_runtime());
    let reference: Reference = read(fixtures().join("efficientnet-lite0.json"));
    check(&classifier, &reference);

    // And the answers make sense: the cat photo is a cat, the espresso an espresso.
    let top = |name: &str| classifier.classify(&image_bytes(name)).unwrap();
    let cat = top("cat");
    assert_eq!(cat.len(), 5);
    assert!(cat[0].label.contains("cat"), "{:?}", cat[0]);
    assert!(cat.windows(2).all(|w| w[0].score >= w[1].score));
    assert_eq!(top("espresso")[0].label, "espresso");
}

#[test]
fn resnet_matches_transformers() {
    let dir = fixtures().join("resnet");
    let classifier = ImageClassifier::load("resnet", &dir).unwrap();
    assert!(classifier.on_onnx_runtime());
    let reference: Reference = read(dir.join("reference.json"));
    check(&classifier, &reference);
    let labels = classifier.classify(&image_bytes("cat")).unwrap();
    assert!(labels[0].label.starts_with("class "));
}

/// `rotated.jpg` is stored 48×32 with a red top-left corner and EXIF orientation 6 (rotate 90°
/// clockwise to display): decoded, it is 32×48 with the red corner at the top right.
#[test]
fn exif_orientation_is_applied() {
    let bytes = std::fs::read(fixtures().join("images/rotated.jpg")).unwrap();
    let image = decode_rgb(&bytes).unwrap();
    assert_eq!(image.dimensions(), (32, 48));
    let red = |x, y| {
        let p = image.get_pixel(x, y).0;
        p[0] > 200 && p[2] < 60
    };
    assert!(red(29, 2));
    assert!(!red(2, 2));
}

#[derive(Deserialize)]
struct DetrReference {
    pixel_stride: usize,
    cases: HashMap<String, DetrCase>,
}

#[derive(Deserialize)]
struct DetrCase {
    pixels_shape: Vec<usize>,
    pixels: Vec<f32>,
    logits: Vec<f32>,
    boxes: Vec<f32>,
    detections: Vec<Detection>,
}

#[derive(Deserialize)]
struct Detection {
    score: f32,
    label: String,
    #[serde(rename = "box")]
    bounding_box: [f32; 4],
}

/// A tiny generated DETR (`detr/`) against transformers' `DetrForObjectDetection`, its image
/// processor (shortest edge 800, longest 1333, Pillow bilinear) and `post_process_object_detection`
/// (threshold 0.3): pixels equal, logits and relative boxes within 1e-4, detections the same in
/// label and order, scores within 1e-4 and boxes within 0.05 pixels.
#[test]
fn detr_matches_transformers() {
    use ember_engines::vision::detector::ObjectDetector;
    let dir = fixtures().join("detr");
    let detector = ObjectDetector::load(&dir).unwrap();
    let reference: DetrReference = read(dir.join("reference.json"));
    for name in ["cat", "astronaut"] {
        let case = &reference.cases[name];
        let image = decode_rgb(&image_bytes(name)).unwrap();
        let (pixels, found) = detector.raw(&image).unwrap();
        assert_eq!(pixels.dims(), case.pixels_shape, "{name}");
        let sampled = every_nth(&pixels, reference.pixel_stride);
        assert!(
            worst(&sampled, &case.pixels) <= PIXEL_TOLERANCE,
            "{name}: pixels"
        );
        let logits = found
            .logits
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let boxes = found.boxes.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            worst(&logits, &case.logits) <= LOGIT_TOLERANCE,
            "{name}: logits {}",
            worst(&logits, &case.logits)
        );
        assert!(
            worst(&boxes, &case.boxes) <= LOGIT_TOLERANCE,
            "{name}: boxes {}",
            worst(&boxes, &case.boxes)
        );

        let objects = detector.detect(&image_bytes(name), 0.3).unwrap();
        assert_eq!(objects.len(), case.detections.len(), "{name}: detections");
        let mut expected: Vec<&Detection> = case.detections.iter().collect();
        expected.sort_by(|a, b| b.score.total_cmp(&a.score));
        for (object, expected) in objects.iter().zip(expected) {
            assert_eq!(object.label, expected.label, "{name}");
            assert!(
                (object.score - expected.score).abs() <= LOGIT_TOLERANCE,
                "{name}: score"
            );
            let b = object.bounding_box;
            let got = [b.xmin, b.ymin, b.xmax, b.ymax];
            assert!(
                worst(&got, &expected.bounding_box) <= 0.05,
                "{name}: box {got:?} {:?}",
                expected.bounding_box
            );
        }
    }
}
