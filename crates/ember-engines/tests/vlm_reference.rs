//! Chat with images on llama.cpp's multimodal library (through Ember's engine: chat template via
//! minijinja, media markers, mtmd's chunks, the scheduler's image prefill and shared decode
//! batches) must match, token for token, what llama.cpp's own `llama-mtmd-cli` generated greedily
//! from the same files (`scripts/reference/vlm.sh`). No registry holds a real vision-language
//! model, so the files are a tiny Gemma 3 with random weights (SigLIP encoder and projector in
//! `mmproj.gguf`), converted by llama.cpp's converter; the CLI ran the same llama.cpp, built the
//! same way, so alone the match is exact. Batched with other sequences, llama.cpp's kernels take
//! other shapes and round differently: there the tokens must match until the first step where
//! the reference's best two logits were within `NEAR_TIE` of each other.

use ember_core::Catalog;
use ember_core::InferError;
use ember_core::metrics::Metrics;
use ember_core::tasks::{
    ChatMessage, FinishReason, ImagePart, PromptInput, Sampling, TextGenerationRequest,
};
use ember_engines::llm::{self, LlmEngine, LlmSettings, Traced};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;

const MODEL: &str = "@hf/ember/tiny-gemma3-vision";
/// Logit margin below which a greedy choice may differ between batch shapes.
const NEAR_TIE: f32 = 0.25;

#[derive(Deserialize)]
struct Fixture {
    sampling: Settings,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Settings {
    n_predict: u32,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    image: String,
    prompt: String,
    /// The prompt's token ids, `None` where the image's embeddings go.
    prompt_tokens_with_image_as_null: Vec<Option<i32>>,
    generated_tokens: Vec<i32>,
    generated_text: String,
    step_logit_margins: Vec<f32>,
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture() -> Fixture {
    let path = fixtures().join("vlm/reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The model, loaded from the fixture folder itself.
fn load() -> LlmEngine {
    let catalog = Catalog::builtin().unwrap();
    let spec = catalog.get(MODEL).unwrap();
    let settings = LlmSettings {
        max_sequences: 4,
        kv_cells: Some(2048),
        ..LlmSettings::default()
    };
    llm::load(
        spec,
        &fixtures().join("vlm"),
        &settings,
        Metrics::new().model(MODEL),
    )
    .unwrap()
}

/// The case as a chat: one user message, the image, then the prompt (as `llama-mtmd-cli` puts
/// them).
fn request(case: &Case, max_tokens: u32) -> TextGenerationRequest {
    let bytes = std::fs::read(fixtures().join("vision/images").join(&case.image)).unwrap();
    let mut message = ChatMessage::text("user", &case.prompt);
    message.images.push(ImagePart {
        bytes,
        text_offset: 0,
        at: "/messages/0/content/0".into(),
    });
    TextGenerationRequest::new(
        PromptInput::Messages(vec![message]),
        max_tokens,
        Sampling::greedy(),
    )
}

/// Tokens must match until the first step the reference decided by less than `NEAR_TIE`.
fn compare_until_near_tie(case: &Case, traced: &Traced, how: &str) {
    let end = case
        .step_logit_margins
        .iter()
        .position(|&margin| margin < NEAR_TIE)
        .map_or(case.generated_tokens.len(), |step| step + 1);
    assert_eq!(
        traced.tokens[..end.min(traced.tokens.len())],
        case.generated_tokens[..end],
        "{} {how}",
        case.name
    );
}

#[tokio::test(flavor = "current_thread")]
async fn generates_what_llama_mtmd_cli_generates() {
    let fixture = fixture();
    let max_tokens = fixture.sampling.n_predict;
    for case in &fixture.cases {
        // A fresh engine for each: the reference ran each case alone.
        let engine = load();
        let expected: Vec<i32> = case
            .prompt_tokens_with_image_as_null
            .iter()
            .map(|token| token.unwrap_or(-1))
            .collect();
        let request = request(case, max_tokens);
        assert_eq!(
            engine.prompt_tokens(&request).unwrap(),
            expected,
            "{}: prompt",
            case.name
        );
        let traced = engine.run_traced(&request, false).await.unwrap();
        assert_eq!(traced.tokens, case.generated_tokens, "{}", case.name);
        assert_eq!(traced.completion.text, case.generated_text, "{}", case.name);
        assert_eq!(traced.completion.finish_reason, FinishReason::Length);
        let usage = traced.completion.usage;
        assert_eq!(
            (usage.prompt_tokens, usage.completion_tokens),
            (expected.len() as u32, max_tokens)
        );
    }
}

/// Every case at once, beside a text-only chat: each image prompt is evaluated on admission,
/// then all decode in shared batches.
#[tokio::test(flavor = "current_thread")]
async fn image_prompts_decode_beside_each_other_and_text() {
    let fixture = fixture();
    let max_tokens = fixture.sampling.n_predict;
    let engine = Arc::new(load());
    let mut runs = Vec::new();
    for case in &fixture.cases {
        let (engine, request) = (engine.clone(), request(case, max_tokens));
        runs.push(tokio::spawn(async move {
            engine.run_traced(&request, false).await
        }));
    }
    let text = TextGenerationRequest::new(
        PromptInput::Messages(vec![ChatMessage::text("user", "Describe a cat.")]),
        max_tokens,
        Sampling::greedy(),
    );
    let text_run = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.run_traced(&text, false).await })
    };
    for (case, run) in fixture.cases.iter().zip(runs) {
        compare_until_near_tie(case, &run.await.unwrap().unwrap(), "batched");
    }
    let text = text_run.await.unwrap().unwrap();
    assert_eq!(text.tokens.len(), max_tokens as usize);
    // The same image prompt again: image sequences never enter the prefix cache.
    let again = engine
        .run_traced(&request(&fixture.cases[0], max_tokens), false)
        .await
        .unwrap();
    assert_eq!(
        again.completion.usage.prompt_tokens_details.cached_tokens,
        0
    );
    compare_until_near_tie(&fixture.cases[0], &again, "after the others");
}

#[tokio::test(flavor = "current_thread")]
async fn unreadable_images_and_models_without_an_encoder_are_refused() {
    let fixture = fixture();
    let engine = load();
    let mut garbage = request(&fixture.cases[0], 4);
    if let PromptInput::Messages(messages) = &mut garbage.prompt {
        messages[0].images[0].bytes = b"not an image".to_vec();
    }
    match engine.run_traced(&garbage, false).await {
        Err(InferError::InvalidInput { field, .. }) => {
            assert_eq!(field, "/messages/0/content/0")
        }
        other => panic!("expected invalid input, got {other:?}"),
    }
    // The text model alone, without its encoder: images are refused by field.
    let folder = std::env::temp_dir().join(format!("ember-vlm-blind-{}", std::process::id()));
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(fixtures().join("vlm/model.gguf"), folder.join("model.gguf")).unwrap();
    let catalog = Catalog::builtin().unwrap();
    let blind = llm::load(
        catalog.get(MODEL).unwrap(),
        &folder,
        &LlmSettings::default(),
        Metrics::new().model(MODEL),
    )
    .unwrap();
    std::fs::remove_dir_all(&folder).unwrap();
    match blind
        .run_traced(&request(&fixture.cases[0], 4), false)
        .await
    {
        Err(InferError::InvalidInput { field, problem }) => {
            assert_eq!(field, "/messages/0/content/0");
            assert!(problem.contains("does not take images"), "{problem}");
        }
        other => panic!("expected invalid input, got {other:?}"),
    }
}
