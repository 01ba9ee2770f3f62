//! Where ONNX Runtime cannot be loaded, BERT embeddings run on candle (`embed/bert.rs`) and still
//! match sentence-transformers (`tests/fixtures/embeddings/all-minilm-l6-v2.json`). A test binary
//! of its own: the library is loaded once per process, and here it is pointed at nothing.

use ember_core::catalog::Catalog;
use ember_core::installed;
use ember_core::tasks::Pooling;
use ember_engines::embed;
use serde::Deserialize;

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

#[test]
fn bert_embeddings_fall_back_to_candle_and_match_the_reference() {
    // SAFETY: set before any thread of this test binary reads the environment (the only test).
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
    };
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
