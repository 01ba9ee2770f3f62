//! Greedy generation on llama.cpp (through Ember's runner: chat template via minijinja, tokenizer,
//! prompt batching, sampling loop) must match, token for token, the reference produced by
//! llama-cpp-python with a Jinja2-rendered template (`scripts/reference/generation.py`).
//! Needs the default models in the model cache (`ember models pull --defaults`).

use ember_core::tasks::{ChatMessage, FinishReason, PromptInput, Sampling, TextGenerationRequest};
use ember_core::{Catalog, installed};
use ember_engines::llm;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Deserialize)]
struct Fixture {
    model: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    messages: Option<Vec<ChatMessage>>,
    prompt: Option<String>,
    raw: bool,
    max_tokens: u32,
    prompt_tokens: Vec<i32>,
    completion_tokens: Vec<i32>,
    completion_text: String,
    finish_reason: String,
}

fn fixture(name: &str) -> Fixture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/generation")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn greedy(prompt: PromptInput, max_tokens: u32) -> TextGenerationRequest {
    TextGenerationRequest {
        prompt,
        max_tokens,
        sampling: Sampling {
            temperature: 0.0,
            top_p: None,
            top_k: None,
            seed: None,
            repetition_penalty: None,
            frequency_penalty: None,
            presence_penalty: None,
        },
        stream: false,
    }
}

fn check(fixture_file: &str) {
    let fixture = fixture(fixture_file);
    let catalog = Catalog::builtin().unwrap();
    let spec = catalog.get(&fixture.model).unwrap();
    let dir = installed::model_dir(&installed::default_home(), spec);
    assert!(
        installed::is_installed(spec, &dir),
        "{} is not installed in {}: run `ember models pull --defaults`",
        spec.id,
        dir.display()
    );
    let mut runner = llm::load(spec, &dir).unwrap();
    assert!(fixture.cases.len() >= 3);
    for case in &fixture.cases {
        let prompt = match (&case.messages, &case.prompt) {
            (Some(messages), _) => PromptInput::Messages(messages.clone()),
            (None, Some(text)) => PromptInput::Prompt {
                text: text.clone(),
                raw: case.raw,
            },
            (None, None) => panic!("case {} has neither messages nor prompt", case.name),
        };
        let prompt_tokens = runner.prompt_tokens(&prompt).unwrap();
        assert_eq!(
            prompt_tokens, case.prompt_tokens,
            "{}: prompt tokens differ",
            case.name
        );

        let mut tokens = Vec::new();
        let completion = runner
            .generate_tokens(&greedy(prompt, case.max_tokens), &mut |token, _| {
                tokens.push(token);
                true
            })
            .unwrap();
        tokens.retain(|t| *t >= 0);
        assert_eq!(
            tokens, case.completion_tokens,
            "{}: generated tokens differ",
            case.name
        );
        assert_eq!(completion.text, case.completion_text, "{}", case.name);
        assert_eq!(
            completion.usage.prompt_tokens as usize,
            case.prompt_tokens.len()
        );
        assert_eq!(
            completion.usage.completion_tokens as usize,
            case.completion_tokens.len()
        );
        let expected_finish = if case.finish_reason == "stop" {
            FinishReason::Stop
        } else {
            FinishReason::Length
        };
        assert_eq!(completion.finish_reason, expected_finish, "{}", case.name);
    }
}

#[test]
fn smollm2_greedy_matches_llama_cpp_python() {
    check("smollm2-135m-instruct.json");
}

#[test]
fn qwen_coder_greedy_matches_llama_cpp_python() {
    check("qwen2.5-coder-0.5b-instruct.json");
}
