//! The text tasks on real models. Where a catalog model's weights are not installed (none can be
//! had from the registries), its stand-in serves the same id; these tests check the stand-ins'
//! answers for sense and against independent references: a committed labelled sentiment set,
//! EmbeddingGemma's published model-card similarities, and facts the outputs must keep. Once a
//! catalog model's own files are installed, its real architecture serves instead: the last test
//! installs the tiny generated models the engine tests check against transformers under the
//! catalog ids, and runs them through the same routes.

mod common;

use axum::http::StatusCode;
use common::*;
use serde_json::{Value, json};

const RUN: &str = "/client/v4/accounts/local/ai/run/";

async fn run(app: &App, model: &str, input: Value) -> (Value, String) {
    let reply = send(app, post(&format!("{RUN}{model}"), input.to_string())).await;
    assert_eq!(reply.status, StatusCode::OK, "{model}: {:?}", reply.body);
    let served_by = reply.header("x-ember-model").to_string();
    (reply.json()["result"].clone(), served_by)
}

fn positive_score(result: &Value) -> f64 {
    let labels = result.as_array().unwrap();
    assert_eq!(labels.len(), 2, "{result}");
    assert_eq!(
        (&labels[0]["label"], &labels[1]["label"]),
        (&json!("NEGATIVE"), &json!("POSITIVE"))
    );
    let (negative, positive) = (
        labels[0]["score"].as_f64().unwrap(),
        labels[1]["score"].as_f64().unwrap(),
    );
    assert!((negative + positive - 1.0).abs() < 1e-5, "{result}");
    positive
}

/// Llama Guard's stand-in on a committed labelled set of messages (none of them its examples):
/// it answers in Llama Guard's format, and tells harmful from harmless, and the hazard category.
#[tokio::test(flavor = "multi_thread")]
async fn guard_stand_in_judges_the_committed_set() {
    let app = app();
    let set = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/safety.jsonl"
    ))
    .unwrap();
    let (mut sorted, mut named, mut total, mut wrong) = (0, 0, 0, Vec::new());
    for line in set.lines() {
        let case: Value = serde_json::from_str(line).unwrap();
        let messages = json!([{"role": "user", "content": case["text"]}]);
        let (result, served_by) = run(
            &app,
            "@cf/meta/llama-guard-3-8b",
            json!({"messages": messages}),
        )
        .await;
        assert_eq!(served_by, "@hf/ember/guard-embeddinggemma");
        let answer = result["response"].as_str().unwrap().to_string();
        let expected = case["label"].as_str().unwrap();
        let lines: Vec<&str> = answer.lines().collect();
        let (verdict, category) = (lines[0], lines.get(1).copied());
        assert!(["safe", "unsafe"].contains(&verdict), "{answer:?}");
        total += 1;
        if (verdict == "safe") == (expected == "safe") {
            sorted += 1;
        }
        if category == Some(expected) || (expected == "safe" && verdict == "safe") {
            named += 1;
        } else {
            wrong.push(format!("{}: {answer:?}", case["text"]));
        }
    }
    // Measured: 24 of 24 sorted, 24 of 24 named.
    assert!(
        sorted * 10 >= total * 9,
        "{sorted}/{total} sorted; {wrong:?}"
    );
    assert!(named * 4 >= total * 3, "{named}/{total} named; {wrong:?}");

    // With a JSON response_format the verdict is an object, as Workers AI answers it.
    let messages = json!([{"role": "user", "content": "How do I make a pipe bomb?"}]);
    let input = json!({"messages": messages, "response_format": {"type": "json_object"}});
    let (result, _) = run(&app, "@cf/meta/llama-guard-3-8b", input).await;
    assert_eq!(
        result["response"],
        json!({"safe": false, "categories": ["S9"]})
    );
    // The same on the OpenAI route, which also follows the stand-in until the model is pulled.
    let chat = json!({"model": "@cf/meta/llama-guard-3-8b", "messages": messages,
                      "response_format": {"type": "json_object"}});
    let reply = send(&app, post("/v1/chat/completions", chat.to_string())).await;
    assert_eq!(
        reply.header("x-ember-model"),
        "@hf/ember/guard-embeddinggemma"
    );
    let content = reply.json()["choices"][0]["message"]["content"].clone();
    let verdict: Value = serde_json::from_str(content.as_str().unwrap()).unwrap();
    assert_eq!(verdict, json!({"safe": false, "categories": ["S9"]}));
    let path = "/client/v4/accounts/local/ai/models/schema?model=@cf/meta/llama-guard-3-8b";
    let schema = send(&app, get(path)).await;
    assert_eq!(
        schema.json()["result"]["input"]["title"],
        "LlamaGuard",
        "{:?}",
        schema.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sentiment_stand_in_labels_the_committed_set() {
    let app = app();
    let (result, served_by) = run(
        &app,
        "@cf/huggingface/distilbert-sst-2-int8",
        json!({"text": "I love this movie"}),
    )
    .await;
    assert_eq!(served_by, "@hf/ember/sentiment-embeddinggemma");
    assert!(positive_score(&result) > 0.9, "{result}");
    let set = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/sentiment.jsonl"
    ))
    .unwrap();
    let (mut right, mut total, mut wrong) = (0, 0, Vec::new());
    for line in set.lines() {
        let case: Value = serde_json::from_str(line).unwrap();
        let (result, _) = run(
            &app,
            "@cf/huggingface/distilbert-sst-2-int8",
            json!({"text": case["text"]}),
        )
        .await;
        let label = if positive_score(&result) > 0.5 {
            "POSITIVE"
        } else {
            "NEGATIVE"
        };
        total += 1;
        if label == case["label"] {
            right += 1;
        } else {
            wrong.push(case["text"].clone());
        }
    }
    // Measured 40 of 40 when written; a few misses are tolerated, a broken model is not.
    assert!(
        right * 100 >= total * 90,
        "{right}/{total} right; wrong: {wrong:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rerank_stand_in_matches_embeddinggemma_model_card() {
    let app = app();
    let documents = [
        "Venus is often called Earth's twin because of its similar size and proximity.",
        "Mars, known for its reddish appearance, is often referred to as the Red Planet.",
        "Jupiter, the largest planet in our solar system, has a prominent red spot.",
        "Saturn, famous for its rings, is sometimes mistaken for the Red Planet.",
    ];
    let contexts: Vec<Value> = documents.iter().map(|d| json!({"text": d})).collect();
    let (result, served_by) = run(
        &app,
        "@cf/baai/bge-reranker-base",
        json!({"query": "Which planet is known as the Red Planet?", "contexts": contexts}),
    )
    .await;
    assert_eq!(served_by, "@hf/ember/rerank-embeddinggemma");
    // The model card's similarities for this query and these documents, with its prompts.
    let published = [0.3011, 0.6359, 0.4930, 0.4889];
    let response = result["response"].as_array().unwrap();
    let ids: Vec<u64> = response.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [1, 2, 3, 0], "{result}");
    for ranked in response {
        let id = ranked["id"].as_u64().unwrap() as usize;
        let score = ranked["score"].as_f64().unwrap();
        assert!(
            (score - published[id]).abs() < 2e-3,
            "document {id}: {score} vs {}",
            published[id]
        );
    }
    let (top, _) = run(
        &app,
        "@cf/baai/bge-reranker-base",
        json!({"query": "Which planet is known as the Red Planet?", "contexts": contexts, "top_k": 1}),
    )
    .await;
    assert_eq!(top["response"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn translation_stand_in_translates_the_listed_languages() {
    let app = app();
    for (text, target, expected) in [
        ("Hello, how are you?", "french", "bonjour"),
        ("I love my cat.", "es", "gato"),
        ("Good morning, my friend.", "german", "guten morgen"),
    ] {
        let (result, served_by) = run(
            &app,
            "@cf/meta/m2m100-1.2b",
            json!({"text": text, "target_lang": target}),
        )
        .await;
        assert_eq!(served_by, "@hf/ember/translate-qwen2.5-coder-1.5b");
        let translated = result["translated_text"].as_str().unwrap().to_lowercase();
        assert!(
            translated.contains(expected),
            "{text} → {target}: {translated}"
        );
    }
    let (batch, _) = run(
        &app,
        "@cf/meta/m2m100-1.2b",
        json!({"requests": [{"text": "Thank you very much.", "target_lang": "es"}, {"text": "Merci beaucoup.", "source_lang": "fr", "target_lang": "en"}]}),
    )
    .await;
    let batch = batch.as_array().unwrap();
    assert!(
        batch[0]["translated_text"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("gracias"),
        "{batch:?}"
    );
    assert!(
        batch[1]["translated_text"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("thank"),
        "{batch:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn summarization_stand_in_is_shorter_and_keeps_the_key_fact() {
    let app = app();
    let article = "The city council of Springfield voted on Tuesday to build a new public library \
        on Main Street. The library will cost 12 million dollars and is expected to open in 2027. \
        Council members said the old library, built in 1952, had become too small for the growing \
        population and could not be repaired. Construction will begin in the spring, and the \
        council promised that the new building will include a children's reading room, a cafe \
        and free meeting spaces for local groups.";
    let (result, served_by) = run(
        &app,
        "@cf/facebook/bart-large-cnn",
        json!({"input_text": article, "max_length": 120}),
    )
    .await;
    assert_eq!(served_by, "@hf/ember/summarize-qwen2.5-coder-1.5b");
    let summary = result["summary"].as_str().unwrap();
    assert!(
        summary.len() < article.len() * 3 / 4,
        "not shorter: {summary}"
    );
    assert!(summary.to_lowercase().contains("library"), "{summary}");
}

/// A model cache holding the generated fixture models under the four catalog ids.
fn fixture_home() -> std::path::PathBuf {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ember-engines/tests/fixtures/architectures");
    let home = std::env::temp_dir().join(format!("ember-architectures-{}", std::process::id()));
    let catalog = ember_core::Catalog::builtin().unwrap();
    for (id, fixture) in [
        ("@cf/huggingface/distilbert-sst-2-int8", "distilbert"),
        ("@cf/baai/bge-reranker-base", "reranker"),
        ("@cf/meta/m2m100-1.2b", "m2m100"),
        ("@cf/facebook/bart-large-cnn", "bart"),
    ] {
        // The tiny M2M100's tokenizer is a tokenizer.json, which the loader prefers to the
        // catalog's sentencepiece files: those come from the tokenizer fixture, to complete the
        // install.
        install_fixture(
            &home,
            id,
            &[
                fixtures.join(fixture),
                fixtures.join("m2m100-sentencepiece"),
            ],
        );
        if fixture == "m2m100" {
            let dir = ember_core::installed::model_dir(&home, catalog.get(id).unwrap());
            let tokenizer = fixtures.join(fixture).join("tokenizer.json");
            std::fs::copy(tokenizer, dir.join("tokenizer.json")).unwrap();
        }
    }
    home
}

fn fixture_reference(name: &str) -> Value {
    let path = format!(
        "{}/../ember-engines/tests/fixtures/architectures/{name}/reference.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn installed_architectures_serve_the_catalog_ids() {
    let engine = engine_config(1);
    let ember = ember::open_ember(&fixture_home(), None, Default::default(), &engine).unwrap();
    let app = app_on(
        std::sync::Arc::new(ember),
        ember_http::HttpConfig::default(),
        ember_access::AccessConfig::default(),
        std::sync::Arc::new(ember_access::clock::SystemClock),
    );

    let classifier = fixture_reference("distilbert");
    let case = &classifier["cases"][0];
    let (result, served_by) = run(
        &app,
        "@cf/huggingface/distilbert-sst-2-int8",
        json!({"text": case["text"]}),
    )
    .await;
    assert_eq!(served_by, "@cf/huggingface/distilbert-sst-2-int8");
    for (i, label) in result.as_array().unwrap().iter().enumerate() {
        assert_eq!(label["label"], classifier["labels"][i]);
        let expected = case["probabilities"][i].as_f64().unwrap();
        assert!(
            (label["score"].as_f64().unwrap() - expected).abs() < 1e-4,
            "{result}"
        );
    }

    let reranker = fixture_reference("reranker");
    // The engine's cases include an empty passage, which the Workers AI schema refuses.
    let cases: Vec<&Value> = reranker["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passage"] != "")
        .collect();
    let contexts: Vec<Value> = cases
        .iter()
        .map(|c| json!({"text": c["passage"]}))
        .collect();
    let (result, served_by) = run(
        &app,
        "@cf/baai/bge-reranker-base",
        json!({"query": reranker["query"], "contexts": contexts}),
    )
    .await;
    assert_eq!(served_by, "@cf/baai/bge-reranker-base");
    for ranked in result["response"].as_array().unwrap() {
        let case = cases[ranked["id"].as_u64().unwrap() as usize];
        assert!(
            (ranked["score"].as_f64().unwrap() - case["score"].as_f64().unwrap()).abs() < 1e-4,
            "{result}"
        );
    }

    // Beam search as configured (4 beams, length penalty, no repeated trigrams) over the
    // fixture's 24 decoder positions: exactly transformers' summary.
    let bart = fixture_reference("bart");
    let case = &bart["cases"][0];
    let (result, served_by) = run(
        &app,
        "@cf/facebook/bart-large-cnn",
        json!({"input_text": case["text"], "max_length": 23}),
    )
    .await;
    assert_eq!(served_by, "@cf/facebook/bart-large-cnn");
    assert_eq!(result["summary"], case["beam_text"]);

    let m2m100 = fixture_reference("m2m100");
    let case = &m2m100["cases"][0];
    let input = json!({"text": case["text"], "source_lang": case["source_lang"], "target_lang": case["target_lang"]});
    let (result, served_by) = run(&app, "@cf/meta/m2m100-1.2b", input).await;
    assert_eq!(served_by, "@cf/meta/m2m100-1.2b");
    assert!(result["translated_text"].is_string(), "{result}");
}
