//! Where ONNX Runtime cannot be loaded, the models Ember otherwise runs on it as graphs of its
//! own fall back to candle and still match their references: BERT embeddings (`embed/bert.rs`,
//! against sentence-transformers' `tests/fixtures/embeddings/all-minilm-l6-v2.json`), the image
//! classifiers (EfficientNet-Lite0's real weights and the tiny ResNet, as `vision_reference.rs`),
//! Stable Diffusion's UNet and decoder (the tiny SD 1.5, as `diffusion_reference.rs`), and
//! Whisper's encoder (tiny.en's tokens as faster-whisper's, as `whisper_reference.rs`), with
//! those tests' tolerances. A test binary of its own, with one test: the library is loaded once
//! per process, and here it is pointed at nothing before anything runs.

use candle_core::{Device, Tensor};
use ember_core::catalog::Catalog;
use ember_core::installed;
use ember_core::metrics::Metrics;
use ember_core::tasks::Pooling;
use ember_engines::audio::{self, DecodeOptions};
use ember_engines::diffusion::scheduler::SchedulerKind;
use ember_engines::diffusion::{DecoderKind, ImageGenerator};
use ember_engines::embed;
use ember_engines::vision::ImageClassifier;
use ember_engines::vision::image::decode_rgb;
use ember_engines::whisper::{TranscribeOptions, Whisper};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Deserialize)]
struct Fixture {
    tolerance_cosine_distance: f64,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    mean: Vec<f32>,
}

#[derive(Deserialize)]
struct ClassifierReference {
    cases: std::collections::HashMap<String, ClassifierCase>,
}

#[derive(Deserialize)]
struct ClassifierCase {
    logits: Vec<f32>,
}

#[test]
fn models_fall_back_to_candle_and_match_their_references() {
    // SAFETY: set before any thread of this test binary reads the environment (the only test).
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
    };
    bert_embeddings();
    image_classifiers();
    stable_diffusion();
    whisper_tiny_en();
}

fn bert_embeddings() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/embeddings/all-minilm-l6-v2.json");
    let fixture: Fixture = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let catalog = Catalog::builtin().unwrap();
    let spec = catalog
        .get("@hf/sentence-transformers/all-minilm-l6-v2")
        .unwrap();
    let dir = installed::model_dir(&installed::default_home(), spec);
    let embedder = embed::load(spec, &dir).unwrap();
    let cases = &fixture.cases[..4];
    let texts: Vec<String> = cases.iter().map(|c| c.text.clone()).collect();
    let output = embedder.embed(&texts, Pooling::Mean).unwrap();
    for (case, vector) in cases.iter().zip(&output.vectors) {
        let dot: f64 = case
            .mean
            .iter()
            .zip(vector)
            .map(|(a, b)| f64::from(a * b))
            .sum();
        let norm = |v: &[f32]| v.iter().map(|x| f64::from(x * x)).sum::<f64>().sqrt();
        let distance = 1.0 - dot / (norm(&case.mean) * norm(vector));
        assert!(
            distance < fixture.tolerance_cosine_distance,
            "{}: cosine distance {distance}",
            case.text
        );
    }
}

fn engine_fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn max_difference(ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

fn image_classifiers() {
    let vision = engine_fixtures().join("vision");
    let efficientnet = installed::default_home().join("models/hf--google--efficientnet-lite0");
    let cases: [(&str, PathBuf, PathBuf); 2] = [
        (
            "efficientnet-lite",
            efficientnet,
            vision.join("efficientnet-lite0.json"),
        ),
        (
            "resnet",
            vision.join("resnet"),
            vision.join("resnet/reference.json"),
        ),
    ];
    for (architecture, dir, reference) in cases {
        let classifier = ImageClassifier::load(architecture, &dir).unwrap();
        assert!(!classifier.on_onnx_runtime());
        let reference: ClassifierReference =
            serde_json::from_slice(&std::fs::read(reference).unwrap()).unwrap();
        for (name, case) in &reference.cases {
            let bytes = std::fs::read(vision.join("images").join(format!("{name}.png"))).unwrap();
            let pixels = classifier.pixels(&decode_rgb(&bytes).unwrap()).unwrap();
            let difference = max_difference(&classifier.logits(&pixels).unwrap(), &case.logits);
            assert!(
                difference <= 1e-4,
                "{architecture} {name}: logits differ by {difference}"
            );
        }
    }
}

fn stable_diffusion() {
    let fixtures = engine_fixtures().join("diffusion");
    let tensors =
        candle_core::safetensors::load(fixtures.join("reference.safetensors"), &Device::Cpu)
            .unwrap();
    let generator = ImageGenerator::load(
        &fixtures.join("tiny-sd"),
        SchedulerKind::Ddim,
        DecoderKind::Autoencoder,
        Metrics::new().model("@hf/ember/tiny-sd"),
    )
    .unwrap();
    assert!(!generator.on_onnx_runtime());
    let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();

    let timestep = tensors["unet.timestep"].to_vec1::<f32>().unwrap()[0] as usize;
    let predicted = generator
        .predict_noise(&tensors["unet.latents"], timestep, &tensors["unet.context"])
        .unwrap();
    let difference = max_difference(&values(&predicted), &values(&tensors["unet.out"]));
    assert!(difference <= 5e-4, "noise prediction: {difference}");

    let decoded = generator
        .decode(&(&tensors["vae.latents"] * 0.18215).unwrap())
        .unwrap();
    let expected = tensors["vae.decoded"].affine(0.5, 0.5).unwrap();
    let expected = expected.clamp(0.0f32, 1.0f32).unwrap();
    let difference = max_difference(&values(&decoded), &values(&expected));
    assert!(difference <= 1e-4, "decoded image: {difference}");
}

#[derive(Deserialize)]
struct WhisperFixture {
    cases: Vec<WhisperCase>,
}

#[derive(Deserialize)]
struct WhisperCase {
    clip: String,
    beam_size: usize,
    segments: Vec<WhisperSegment>,
}

#[derive(Deserialize)]
struct WhisperSegment {
    tokens: Vec<u32>,
}

fn whisper_tiny_en() {
    let fixtures = engine_fixtures().join("whisper");
    let fixture: WhisperFixture =
        serde_json::from_slice(&std::fs::read(fixtures.join("tiny-en.json")).unwrap()).unwrap();
    let dir = installed::default_home().join("models/cf--openai--whisper-tiny-en");
    let whisper = Whisper::load(&dir).unwrap();
    let case = &fixture.cases[0];
    let decode = DecodeOptions {
        target_rate: 16_000,
        max_seconds: 60.0,
        hint: Some("audio/wav"),
    };
    let samples =
        audio::decode_to_mono(&std::fs::read(fixtures.join(&case.clip)).unwrap(), &decode).unwrap();
    let options = TranscribeOptions {
        beam_size: case.beam_size,
        temperatures: vec![0.0],
        ..TranscribeOptions::default()
    };
    let got = whisper.transcribe(&samples, &options).unwrap();
    let tokens = |segments: Vec<Vec<u32>>| segments.concat();
    assert_eq!(
        tokens(got.segments.into_iter().map(|s| s.tokens).collect()),
        tokens(case.segments.iter().map(|s| s.tokens.clone()).collect()),
        "Whisper tiny.en on candle against faster-whisper ({})",
        case.clip
    );
}
