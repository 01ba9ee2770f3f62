//! A finetune's LoRA adapter on Qwen2.5-Coder-0.5B: Ember converts the PEFT files itself
//! (`llm/lora.rs`) and must generate, greedily, what llama.cpp's llama-completion generates with
//! the same adapter converted by llama.cpp's gguf-py (`scripts/reference/lora.sh`), and without it
//! what the base model generates; both at once on one engine (the scheduler decodes them in
//! separate passes), and in either order. Needs the default models in the model cache.

use ember_core::metrics::Metrics;
use ember_core::tasks::{Lora, PromptInput, Sampling, TextGenerationRequest};
use ember_core::{InferError, finetunes};
use ember_engines::llm::{LlmEngine, LlmSettings};
use serde::Deserialize;
use std::path::{Path, PathBuf};

mod common;

const MODEL: &str = "@hf/qwen/qwen2.5-coder-0.5b-instruct";

#[derive(Deserialize)]
struct Reference {
    prompt: String,
    max_tokens: u32,
    with_lora: String,
    without_lora: String,
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora")
}

fn reference() -> Reference {
    let text = std::fs::read_to_string(fixtures().join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A finetune folder holding the fixture's PEFT files (the engine writes its GGUF beside them).
fn finetune(name: &str, files: &[(&str, &[u8])]) -> Lora {
    let folder = std::env::temp_dir().join(format!("ember-lora-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&folder);
    std::fs::create_dir_all(&folder).unwrap();
    for (file, bytes) in files {
        std::fs::write(folder.join(file), bytes).unwrap();
    }
    Lora {
        id: name.into(),
        folder,
    }
}

fn fixture_finetune(name: &str) -> Lora {
    let read = |file: &str| std::fs::read(fixtures().join(file)).unwrap();
    let (config, weights) = (read(finetunes::CONFIG_FILE), read(finetunes::WEIGHTS_FILE));
    finetune(
        name,
        &[
            (finetunes::CONFIG_FILE, &config),
            (finetunes::WEIGHTS_FILE, &weights),
        ],
    )
}

fn request(reference: &Reference, lora: Option<&Lora>) -> TextGenerationRequest {
    let prompt = PromptInput::Prompt {
        text: reference.prompt.clone(),
        raw: true,
    };
    let mut request = TextGenerationRequest::new(prompt, reference.max_tokens, Sampling::greedy());
    request.lora = lora.cloned();
    request
}

fn engine() -> LlmEngine {
    let settings = LlmSettings {
        max_sequences: 4,
        kv_cells: Some(2048),
        ..LlmSettings::default()
    };
    common::load_llm(MODEL, &settings, Metrics::new().model(MODEL)).unwrap()
}

async fn text(engine: &LlmEngine, request: &TextGenerationRequest) -> String {
    engine
        .run_traced(request, true)
        .await
        .unwrap()
        .completion
        .text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_generates_what_llama_cpp_generates_with_it() {
    let reference = reference();
    let engine = engine();
    let lora = fixture_finetune("reference");
    let (adapted, base) = (request(&reference, Some(&lora)), request(&reference, None));

    // Alone, first with the adapter, then without it, then with it again (loaded once).
    assert_eq!(text(&engine, &adapted).await, reference.with_lora);
    assert_eq!(text(&engine, &base).await, reference.without_lora);
    assert_eq!(text(&engine, &adapted).await, reference.with_lora);
    // Side by side: each step decodes the two in passes of their own adapter.
    let (with, without) = tokio::join!(text(&engine, &adapted), text(&engine, &base));
    assert_eq!(with, reference.with_lora);
    assert_eq!(without, reference.without_lora);
    let converted: Vec<_> = std::fs::read_dir(&lora.folder)
        .unwrap()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().extension().is_some_and(|e| e == "gguf"))
        .collect();
    assert_eq!(
        converted.len(),
        1,
        "converted once, kept beside the PEFT files"
    );
    let _ = std::fs::remove_dir_all(&lora.folder);
}

/// An adapter whose shapes are another model's (Qwen2.5-Coder-1.5B's 1536 columns) is refused
/// before it runs, naming the tensor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_for_another_base_model_is_refused_by_name() {
    let reference = reference();
    let engine = engine();
    let header = serde_json::json!({
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
            {"dtype": "F32", "shape": [4, 1536], "data_offsets": [0, 4 * 4 * 1536]},
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight":
            {"dtype": "F32", "shape": [1536, 4], "data_offsets": [4 * 4 * 1536, 2 * 4 * 4 * 1536]},
    });
    let header = header.to_string().into_bytes();
    let mut weights = (header.len() as u64).to_le_bytes().to_vec();
    weights.extend(header);
    weights.extend(vec![0u8; 2 * 4 * 4 * 1536]);
    let config = std::fs::read(fixtures().join(finetunes::CONFIG_FILE)).unwrap();
    let lora = finetune(
        "other-base",
        &[
            (finetunes::CONFIG_FILE, &config),
            (finetunes::WEIGHTS_FILE, &weights),
        ],
    );
    match engine
        .run_traced(&request(&reference, Some(&lora)), true)
        .await
    {
        Err(InferError::InvalidInput { field, problem }) => {
            assert_eq!(field, "/lora");
            assert!(problem.contains("another base model"), "{problem}");
            assert!(problem.contains("blk.0.attn_q.weight"), "{problem}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&lora.folder);
    assert!(!Path::new(&lora.folder).exists());
}
