//! With `batch_invariant`, a sequence's logits are bit-identical however it runs: alone, batched
//! with seven others (its prompt read in other chunks beside decoding streams), or with its
//! prompt from the prefix cache; so greedy tokens, every step's top-2 logit margin and a seeded
//! sample's text are equal. On SmolLM2-135M Q4_1, and on Qwen2.5-Coder-0.5B Q4_K_M, whose Q4_K
//! weights llama.cpp would repack (and so round differently by batch size) if the mode did not
//! turn repacking off. Needs the default models (`ember models pull --defaults`).
//!
//! One test function: the mode needs a process-wide setting made before any model runs.

use ember_core::InferError;
use ember_core::metrics::Metrics;
use ember_core::tasks::{ChatMessage, PromptInput, Sampling, TextGenerationRequest};
use ember_engines::llm::{self, LlmEngine, LlmSettings, Traced};
use std::sync::Arc;

mod common;

const MODELS: [&str; 2] = [
    "@hf/huggingfacetb/smollm2-135m-instruct",
    "@hf/qwen/qwen2.5-coder-0.5b-instruct",
];

const QUESTIONS: [&str; 7] = [
    "Write a haiku about the sea.",
    "What is the capital of France? Explain its history briefly.",
    "Write a Python function that reverses a linked list.",
    "List three uses of a paperclip.",
    "Why is the sky blue?",
    "Explain recursion to a child.",
    "What are prime numbers? Give five examples.",
];

fn load(model: &str, prefix_cache: bool) -> Result<LlmEngine, InferError> {
    let settings = LlmSettings {
        max_sequences: 8,
        kv_cells: Some(8192),
        prefix_cache,
        batch_invariant: true,
        ..LlmSettings::default()
    };
    common::load_llm(model, &settings, Metrics::new().model(model))
}

/// The seven questions, then a prompt of about 750 tokens: alone it is read in chunks of 512
/// and the rest; beside seven decoding streams, in chunks of at most 128.
fn requests() -> Vec<TextGenerationRequest> {
    let long = format!(
        "Summarise this log in one sentence.\n{}",
        (0..40)
            .map(|i| format!("line {i}: the service answered request {} in {i} ms", i * 7))
            .collect::<Vec<_>>()
            .join("\n")
    );
    QUESTIONS
        .iter()
        .map(|q| q.to_string())
        .chain([long])
        .map(|text| {
            TextGenerationRequest::new(
                PromptInput::Messages(vec![ChatMessage::text("user", text)]),
                64,
                Sampling::greedy(),
            )
        })
        .collect()
}

fn seeded() -> TextGenerationRequest {
    TextGenerationRequest::new(
        PromptInput::Messages(vec![ChatMessage::text(
            "user",
            "Tell me a short story about a lighthouse keeper.",
        )]),
        48,
        Sampling {
            temperature: 0.9,
            seed: Some(1234),
            ..Sampling::greedy()
        },
    )
}

fn assert_identical(expected: &Traced, got: &Traced, what: &str) {
    assert_eq!(got.tokens, expected.tokens, "{what}: tokens differ");
    let bits = |t: &Traced| t.margins.iter().map(|m| m.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(got), bits(expected), "{what}: logit margins differ");
    assert_eq!(got.completion.text, expected.completion.text, "{what}");
}

/// Runs every request at once on `engine` and returns their results in order.
async fn together(engine: &Arc<LlmEngine>, requests: &[TextGenerationRequest]) -> Vec<Traced> {
    let runs: Vec<_> = requests
        .iter()
        .cloned()
        .map(|request| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.run_traced(&request, false).await })
        })
        .collect();
    let mut results = Vec::new();
    for run in runs {
        results.push(run.await.unwrap().unwrap());
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_is_bit_identical_alone_batched_and_from_the_cache() {
    // SAFETY: first thing in the only test of this binary, before any model or other thread
    // of ours could read the environment.
    #[allow(unsafe_code)]
    unsafe {
        llm::use_batch_invariant_kernels()
    };
    for model in MODELS {
        check(model).await;
    }
}

async fn check(model: &str) {
    let requests = requests();

    // Alone: one request at a time, nothing cached.
    let engine = load(model, false).unwrap();
    let mut alone = Vec::new();
    for request in &requests {
        let traced = engine.run_traced(request, false).await.unwrap();
        assert_eq!(
            traced.completion.usage.prompt_tokens_details.cached_tokens,
            0
        );
        alone.push(traced);
    }
    let seeded_alone = engine.run_traced(&seeded(), false).await.unwrap();
    assert_eq!(seeded_alone.tokens.len(), 48);
    assert!(
        alone[7].completion.usage.prompt_tokens > 600,
        "the long prompt should take several chunks"
    );
    drop(engine);

    // Batched: all eight at once on a fresh engine.
    let engine = Arc::new(load(model, true).unwrap());
    for (i, (batched, alone)) in together(&engine, &requests)
        .await
        .iter()
        .zip(&alone)
        .enumerate()
    {
        assert_identical(
            alone,
            batched,
            &format!("{model}: request {i} batched with 7 others"),
        );
    }

    // From the prefix cache: each again, one at a time.
    for (i, (request, alone)) in requests.iter().zip(&alone).enumerate() {
        let hit = engine.run_traced(request, false).await.unwrap();
        let cached = hit.completion.usage.prompt_tokens_details.cached_tokens;
        assert!(
            cached > 0,
            "{model}: request {i} should come from the prefix cache"
        );
        assert_identical(
            alone,
            &hit,
            &format!("{model}: request {i} from the prefix cache"),
        );
    }

    // A seeded sample beside seven greedy streams.
    let mut load_and_seeded = requests[..7].to_vec();
    load_and_seeded.push(seeded());
    let under_load = together(&engine, &load_and_seeded).await;
    assert_identical(
        &seeded_alone,
        &under_load[7],
        &format!("{model}: seeded sample under load"),
    );
}
