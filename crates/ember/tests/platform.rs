//! The task platform through HTTP, on the fake runner kit (no real models): each of the text
//! tasks on REST, the binding and `/v1/rerank` with its exact shapes, its validation errors
//! naming the field, garbage bodies, the catalog routes, and an engine that panics.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::fake::{FAKE_MODELS, PANIC, SLOW, fake_ember};
use common::*;
use ember_access::AccessConfig;
use ember_access::clock::SystemClock;
use ember_http::HttpConfig;
use serde_json::{Value, json};
use std::sync::Arc;

const RUN: &str = "/client/v4/accounts/local/ai/run/";
const CLASSIFIER: &str = "@cf/huggingface/distilbert-sst-2-int8";
const RERANKER: &str = "@cf/baai/bge-reranker-base";
const TRANSLATOR: &str = "@cf/meta/m2m100-1.2b";
const SUMMARIZER: &str = "@cf/facebook/bart-large-cnn";

fn fake_app() -> App {
    app_on(
        fake_ember(),
        HttpConfig::default(),
        AccessConfig::default(),
        Arc::new(SystemClock),
    )
}

async fn rest(app: &App, model: &str, input: Value) -> Reply {
    send(app, post(&format!("{RUN}{model}"), input.to_string())).await
}

/// The REST result of a successful run, checking the envelope and `x-ember-model`.
async fn rest_result(app: &App, model: &str, input: Value) -> Value {
    let reply = rest(app, model, input).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.header("x-ember-model"), model);
    let body = reply.json();
    assert_eq!(
        (&body["success"], &body["errors"], &body["messages"]),
        (&json!(true), &json!([]), &json!([]))
    );
    body["result"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_text_task_answers_rest_and_binding_in_its_exact_shape() {
    let app = fake_app();
    let cases = [
        (
            CLASSIFIER,
            json!({"text": "a good film"}),
            json!([{"label": "NEGATIVE", "score": 0.25}, {"label": "POSITIVE", "score": 0.75}]),
        ),
        (
            RERANKER,
            json!({"query": "red planet", "contexts": [{"text": "blue sea"}, {"text": "the red planet"}, {"text": "red wine"}], "top_k": 2}),
            json!({"response": [{"id": 1, "score": 2.0}, {"id": 2, "score": 1.0}]}),
        ),
        (
            TRANSLATOR,
            json!({"text": "hello", "source_lang": "english", "target_lang": "fr"}),
            json!({"translated_text": "[fr] hello"}),
        ),
        (
            TRANSLATOR,
            json!({"requests": [{"text": "a", "target_lang": "German"}, {"text": "b", "target_lang": "es"}]}),
            json!([{"translated_text": "[de] a"}, {"translated_text": "[es] b"}]),
        ),
        (
            SUMMARIZER,
            json!({"input_text": "First point. Second point.", "max_length": 20}),
            json!({"summary": "First point"}),
        ),
    ];
    for (model, input, expected) in cases {
        assert_eq!(
            rest_result(&app, model, input.clone()).await,
            expected,
            "{model}"
        );
        let reply = send(&app, binding_request("/run?version=3", model, input)).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.header("content-type"), "application/json");
        assert_eq!(reply.json(), expected, "{model} through the binding");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_are_priced_at_the_model_price_from_their_tokens() {
    let app = fake_app();
    let reply = rest(
        &app,
        TRANSLATOR,
        json!({"text": "one two three", "target_lang": "fr"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let id = reply.header("cf-ai-req-id").to_string();
    let mut record = None;
    for _ in 0..100 {
        record = app.store.ledger.request(&id).await.unwrap();
        if record.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let record = record.expect("logged");
    // 3 input tokens and 4 output tokens, both at 31,050 neurons per million.
    assert_eq!((record.prompt_tokens, record.completion_tokens), (3, 4));
    assert!(
        (record.neurons - 7.0 * 31_050.0 / 1e6).abs() < 1e-9,
        "{}",
        record.neurons
    );
    assert_eq!(record.served_by.as_deref(), Some(TRANSLATOR));
}

/// The classifier's requests and errors today in the usage API.
async fn classifier_usage(app: &App) -> (u64, u64) {
    let path = format!("/client/v4/accounts/local/ai/usage?model={CLASSIFIER}");
    let reply = send(app, get(&path)).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let rows = reply.json()["result"].as_array().unwrap().clone();
    rows.iter().fold((0, 0), |(requests, errors), row| {
        let count = |field: &str| row[field].as_u64().unwrap();
        (requests + count("requests"), errors + count("errors"))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metering_layer_settles_every_run_once_however_it_ends() {
    use tower::ServiceExt;
    let app = fake_app();
    // A whole answer and an error are settled before they go out.
    rest_result(&app, CLASSIFIER, json!({"text": "good"})).await;
    assert_eq!(classifier_usage(&app).await, (1, 0));
    rest(&app, CLASSIFIER, json!({"text": 7}))
        .await
        .rest_error(400, 5006);
    assert_eq!(classifier_usage(&app).await, (2, 1));
    // Routes that run nothing are not runs.
    let search = send(&app, get("/client/v4/accounts/local/ai/models/search")).await;
    assert_eq!(search.status, StatusCode::OK);
    assert_eq!(classifier_usage(&app).await, (2, 1));
    // A client that leaves before its answer: the run is settled as aborted when its request
    // is dropped.
    let request = post(
        &format!("{RUN}{CLASSIFIER}"),
        json!({"text": SLOW}).to_string(),
    );
    let leaving = tokio::spawn(app.router.clone().oneshot(request));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    leaving.abort();
    let mut counted = (0, 0);
    for _ in 0..100 {
        counted = classifier_usage(&app).await;
        if counted == (3, 2) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        counted,
        (3, 2),
        "the abandoned run is logged once, as an error"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_a_400_naming_the_field() {
    let app = fake_app();
    let long = "x".repeat(200_000);
    let cases = [
        (CLASSIFIER, json!({}), "'/'"),
        (CLASSIFIER, json!({"text": 5}), "/text"),
        (CLASSIFIER, json!({"text": ""}), "/text"),
        (CLASSIFIER, json!({"text": long}), "/text"),
        (RERANKER, json!({"query": "q"}), "'/'"),
        (RERANKER, json!({"query": "q", "contexts": []}), "/contexts"),
        (
            RERANKER,
            json!({"query": "q", "contexts": [{"text": 1}]}),
            "/contexts/0/text",
        ),
        (
            RERANKER,
            json!({"query": "q", "contexts": [{"text": "a"}], "top_k": "2"}),
            "/top_k",
        ),
        (
            TRANSLATOR,
            json!({"text": "a", "target_lang": "klingon"}),
            "/target_lang",
        ),
        (
            TRANSLATOR,
            json!({"text": "a", "source_lang": 7, "target_lang": "fr"}),
            "/source_lang",
        ),
        (TRANSLATOR, json!({"requests": []}), "/requests"),
        (
            TRANSLATOR,
            json!({"requests": [{"text": "a", "target_lang": "xx"}]}),
            "/requests/0/target_lang",
        ),
        (SUMMARIZER, json!({"input_text": ["a"]}), "/input_text"),
        (
            SUMMARIZER,
            json!({"input_text": "a", "max_length": 0}),
            "/max_length",
        ),
        (SUMMARIZER, json!([1, 2]), "'/'"),
    ];
    for (model, input, field) in cases {
        let reply = rest(&app, model, input.clone()).await;
        let message = reply.rest_error(400, 5006);
        assert!(message.contains(field), "{model} {input}: {message}");
        let reply = send(&app, binding_request("/run", model, input)).await;
        reply.binding_error(400, 5006);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_bodies_are_refused_without_harm() {
    let app = fake_app();
    // Bytes are audio to a speech model: its decoder refuses garbage (tests/speech.rs).
    let json_models = FAKE_MODELS.iter().filter(|m| !m.contains("whisper"));
    for model in json_models {
        for body in [
            Body::from(vec![0xff, 0x00, 0xfe, 0x89, 0x50, 0x4e, 0x47]),
            Body::from("{\"text\": "),
            Body::from(""),
        ] {
            let request = Request::post(format!("{RUN}{model}"))
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(body)
                .unwrap();
            let reply = send(&app, request).await;
            assert_eq!(
                reply.status,
                StatusCode::BAD_REQUEST,
                "{model}: {:?}",
                reply.body
            );
        }
    }
    // Still serving.
    rest_result(&app, CLASSIFIER, json!({"text": "good"})).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_engine_is_answered_with_500_and_loaded_again() {
    let app = fake_app();
    rest_result(&app, CLASSIFIER, json!({"text": "good"})).await;
    let reply = rest(&app, CLASSIFIER, json!({"text": format!("{PANIC} now")})).await;
    let message = reply.rest_error(500, 3000);
    assert!(
        !message.contains("panic"),
        "details stay in the log: {message}"
    );
    // The model is loaded again for the next request, and the restart is counted.
    let result = rest_result(&app, CLASSIFIER, json!({"text": "good"})).await;
    assert_eq!(result[1]["label"], "POSITIVE");
    let health = send(&app, get("/health")).await.json();
    let loaded = health["loaded"].as_array().unwrap();
    let classifier = loaded.iter().find(|m| m["model"] == CLASSIFIER).unwrap();
    assert_eq!(classifier["restarts"], 1, "{health}");
    let metrics = String::from_utf8(send(&app, get("/metrics")).await.body.to_vec()).unwrap();
    assert!(
        metrics.contains(&format!(
            "ember_model_restarts_total{{model=\"{CLASSIFIER}\"}} 1"
        )),
        "{metrics}"
    );
    // Other models never noticed.
    rest_result(&app, SUMMARIZER, json!({"input_text": "Still. Here."})).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rerank_answers_in_the_cohere_shape() {
    let app = fake_app();
    for prefix in ["/v1", "/client/v4/accounts/local/ai/v1"] {
        let reply = send(
            &app,
            post(
                &format!("{prefix}/rerank"),
                json!({"model": RERANKER, "query": "red planet", "documents": ["blue sea", {"text": "the red planet"}], "top_n": 1, "return_documents": true}).to_string(),
            ),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        let body = reply.json();
        assert_eq!(
            body["results"],
            json!([{"index": 1, "relevance_score": 2.0, "document": {"text": "the red planet"}}])
        );
        assert_eq!(body["model"], RERANKER);
        assert_eq!(body["usage"]["total_tokens"], 7);
    }
    for (input, field) in [
        (json!({"model": RERANKER, "documents": ["a"]}), "query"),
        (
            json!({"model": RERANKER, "query": "q", "documents": []}),
            "documents",
        ),
        (
            json!({"model": RERANKER, "query": "q", "documents": [3]}),
            "documents[0]",
        ),
        (
            json!({"model": RERANKER, "query": "q", "documents": ["a"], "top_n": 0}),
            "top_n",
        ),
        (
            json!({"model": CLASSIFIER, "query": "q", "documents": ["a"]}),
            "model",
        ),
    ] {
        let reply = send(&app, post("/v1/rerank", input.to_string())).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{input}");
        let error = reply.json();
        assert!(
            error["error"]["param"].as_str().unwrap().starts_with(field),
            "{input}: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_catalog_lists_and_describes_the_text_tasks() {
    let app = fake_app();
    let search = send(
        &app,
        get("/client/v4/accounts/local/ai/models/search?task=Text%20Classification"),
    )
    .await
    .json();
    let names: Vec<&str> = search["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&CLASSIFIER) && names.contains(&RERANKER),
        "{names:?}"
    );
    for (model, required) in [
        (CLASSIFIER, json!(["text"])),
        (RERANKER, json!(["query", "contexts"])),
        (SUMMARIZER, json!(["input_text"])),
    ] {
        let schema = send(
            &app,
            get(&format!(
                "/client/v4/accounts/local/ai/models/schema?model={model}"
            )),
        )
        .await
        .json();
        assert_eq!(schema["result"]["input"]["required"], required, "{model}");
    }
    let translation = send(
        &app,
        get(&format!(
            "/client/v4/accounts/local/ai/models/schema?model={TRANSLATOR}"
        )),
    )
    .await
    .json();
    assert!(translation["result"]["input"]["oneOf"].is_array());
}

const WHISPER: &str = "@cf/openai/whisper-tiny-en";
const WHISPER_TURBO: &str = "@cf/openai/whisper-large-v3-turbo";

/// A POST of raw bytes with their content type.
fn binary_post(path: &str, content_type: &str, bytes: &[u8]) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(bytes.to_vec()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_inputs_arrive_in_every_form_on_rest_and_the_binding() {
    use base64::Engine as _;
    let app = fake_app();
    // The fake recognizer hears the audio bytes as text.
    let audio = b"hello binary world";
    let expected_words = json!([
        {"word": "hello", "start": 0.0, "end": 1.0},
        {"word": "binary", "start": 1.0, "end": 2.0},
        {"word": "world", "start": 2.0, "end": 3.0},
    ]);
    let base64 = base64::engine::general_purpose::STANDARD.encode(audio);
    let rest_bodies = [
        binary_post(&format!("{RUN}{WHISPER}"), "audio/wav", audio),
        binary_post(
            &format!("{RUN}{WHISPER}"),
            "application/octet-stream",
            audio,
        ),
        post(
            &format!("{RUN}{WHISPER}"),
            json!({ "audio": audio.to_vec() }).to_string(),
        ),
        post(
            &format!("{RUN}{WHISPER}"),
            json!({ "audio": base64 }).to_string(),
        ),
    ];
    for request in rest_bodies {
        let reply = send(&app, request).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.header("x-ember-model"), WHISPER);
        let result = &reply.json()["result"];
        assert_eq!(result["text"], "hello binary world");
        assert_eq!(result["word_count"], 3);
        assert_eq!(result["words"], expected_words);
        assert_eq!(
            result["vtt"],
            "WEBVTT\n\n00:00:00.000 --> 00:00:03.000\nhello binary world\n\n"
        );
    }
    // The binding sends a ReadableStream input as the body, the other inputs in `userInputs`.
    let stream = Request::post("/run?version=3&userInputs=%7B%22language%22%3A%22de%22%7D")
        .header(header::CONTENT_TYPE, "audio/mpeg")
        .header("cf-consn-model-id", WHISPER_TURBO)
        .body(Body::from(audio.to_vec()))
        .unwrap();
    let reply = send(&app, stream).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let result = reply.json();
    assert_eq!(result["transcription_info"]["language"], "de");
    assert_eq!(result["segments"][0]["text"], "hello binary world");
    assert_eq!(result["segments"][0]["words"], expected_words);
    // ... and a JSON input as {inputs}, here the turbo shape's {body, contentType}.
    let wrapped =
        json!({"audio": {"body": base64, "contentType": "audio/wav"}, "task": "transcribe"});
    let reply = send(&app, binding_request("/run", WHISPER_TURBO, wrapped)).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.json()["text"], "hello binary world");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_binary_inputs_are_refused_naming_the_field() {
    let app = fake_app();
    for (input, code, field) in [
        (json!({}), 5006, "/"),
        (json!({"audio": []}), 5006, "/audio"),
        (json!({"audio": [1, 300]}), 5006, "/audio/1"),
        (json!({"audio": "%%% not base64"}), 5004, "/audio"),
        (json!({"audio": [1], "task": "sing"}), 5006, "/task"),
        (json!({"audio": [1], "language": 7}), 5006, "/language"),
        (json!({"audio": [1], "beam_size": 99}), 5006, "/beam_size"),
    ] {
        let reply = rest(&app, WHISPER, input.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{input}");
        let error = &reply.json()["errors"][0];
        assert_eq!(error["code"], code, "{input}: {error}");
        assert!(
            error["message"].as_str().unwrap().contains(field),
            "{input}: {error}"
        );
    }
    // Raw bytes for a model that takes JSON, and an empty binary body.
    let reply = send(
        &app,
        binary_post(&format!("{RUN}{CLASSIFIER}"), "image/png", b"\x89PNG"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&reply.body).contains("takes a JSON body"));
    let reply = send(
        &app,
        binary_post(&format!("{RUN}{WHISPER}"), "audio/wav", b""),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    // Bad `userInputs` on the binding's stream form.
    let stream = Request::post("/run?version=3&userInputs=%7Bnot-json")
        .header(header::CONTENT_TYPE, "audio/wav")
        .header("cf-consn-model-id", WHISPER)
        .body(Body::from(b"abc".to_vec()))
        .unwrap();
    let reply = send(&app, stream).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["internalCode"], 5006);
}

/// A multipart/form-data upload as OpenAI's clients send it: text fields, then the file.
fn upload(path: &str, fields: &[(&str, &str)], file: Option<&[u8]>) -> Request<Body> {
    let boundary = "ember-test-boundary";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    if let Some(file) = file {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"speech.wav\"\r\nContent-Type: audio/wav\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(file);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    Request::post(path)
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_audio_uploads_answer_in_each_response_format() {
    let app = fake_app();
    let audio: &[u8] = b"hello upload";
    let path = "/v1/audio/transcriptions";
    let model = ("model", WHISPER);
    let reply = send(&app, upload(path, &[model], Some(audio))).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.header("x-ember-model"), WHISPER);
    assert_eq!(
        reply.json(),
        json!({"text": "hello upload", "usage": {"type": "duration", "seconds": 2}})
    );
    let reply = send(
        &app,
        upload(path, &[model, ("response_format", "text")], Some(audio)),
    )
    .await;
    assert_eq!(reply.header("content-type"), "text/plain; charset=utf-8");
    assert_eq!(&reply.body[..], b"hello upload\n");
    let reply = send(
        &app,
        upload(path, &[model, ("response_format", "srt")], Some(audio)),
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&reply.body),
        "1\n00:00:00,000 --> 00:00:02,000\nhello upload\n\n"
    );
    let fields = [
        model,
        ("response_format", "verbose_json"),
        ("timestamp_granularities[]", "word"),
        ("timestamp_granularities[]", "segment"),
        ("language", "de"),
    ];
    let reply = send(&app, upload(path, &fields, Some(audio))).await;
    let verbose = reply.json();
    assert_eq!(verbose["task"], "transcribe");
    assert_eq!(verbose["language"], "german");
    assert_eq!(
        verbose["words"][1],
        json!({"word": "upload", "start": 1.0, "end": 2.0})
    );
    assert_eq!(verbose["segments"][0]["end"], 2.0);
    let reply = send(
        &app,
        upload(
            "/v1/audio/translations",
            &[model, ("response_format", "verbose_json")],
            Some(audio),
        ),
    )
    .await;
    assert_eq!(reply.json()["task"], "translate");
    // Errors in OpenAI's shape, naming the parameter.
    for (fields, file, param) in [
        (vec![model], None, "file"),
        (vec![], Some(audio), "model"),
        (
            vec![model, ("response_format", "xml")],
            Some(audio),
            "response_format",
        ),
        (
            vec![model, ("timestamp_granularities[]", "letter")],
            Some(audio),
            "timestamp_granularities",
        ),
        (
            vec![model, ("temperature", "0.7")],
            Some(audio),
            "temperature",
        ),
        (vec![("model", CLASSIFIER)], Some(audio), "model"),
    ] {
        let reply = send(&app, upload(path, &fields, file)).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{param}: {:?}",
            reply.body
        );
        assert_eq!(reply.json()["error"]["param"], param);
    }
    // Not multipart at all.
    let reply = send(&app, post(path, json!({"model": WHISPER}).to_string())).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json()["error"]["message"].is_string());
}

const MELOTTS: &str = "@cf/myshell-ai/melotts";
const AURA: &str = "@cf/deepgram/aura-1";
const PIPER: &str = "@hf/rhasspy/piper-en-us-joe-medium";

#[tokio::test(flavor = "multi_thread")]
async fn speech_answers_as_base64_json_or_as_audio_bytes() {
    use base64::Engine as _;
    let app = fake_app();
    // MeloTTS: {audio: <base64 MP3>} in the envelope (the fake voice "says" the text's bytes).
    let reply = rest(&app, MELOTTS, json!({"prompt": "Hello there"})).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.header("x-ember-model"), PIPER);
    let audio = reply.json()["result"]["audio"]
        .as_str()
        .unwrap()
        .to_string();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(audio)
        .unwrap();
    assert_eq!(decoded, b"Hello there");
    // Aura: the audio itself, with its content type, on REST and through the binding alike.
    for (input, content_type) in [
        (json!({"text": "Hi"}), "audio/mpeg"),
        (json!({"text": "Hi", "encoding": "linear16"}), "audio/wav"),
        (
            json!({"text": "Hi", "encoding": "opus", "speaker": "luna"}),
            "audio/ogg",
        ),
        (
            json!({"text": "Hi", "encoding": "mulaw", "container": "none", "sample_rate": 8000}),
            "application/octet-stream",
        ),
    ] {
        let reply = rest(&app, AURA, input.clone()).await;
        assert_eq!(reply.status, StatusCode::OK, "{input}: {:?}", reply.body);
        assert_eq!(reply.header("content-type"), content_type, "{input}");
        assert_eq!(&reply.body[..], b"Hi");
        let reply = send(&app, binding_request("/run", AURA, input.clone())).await;
        assert_eq!(reply.header("content-type"), content_type, "{input}");
        assert_eq!(&reply.body[..], b"Hi");
    }
    for (model, input, field) in [
        (MELOTTS, json!({"text": "Hi"}), "/"),
        (MELOTTS, json!({"prompt": "Hi", "lang": "xx"}), "/lang"),
        (AURA, json!({"text": "Hi", "encoding": "aac"}), "/encoding"),
        (AURA, json!({"text": "Hi", "speaker": "nobody"}), "/speaker"),
        (
            AURA,
            json!({"text": "Hi", "encoding": "flac", "container": "ogg"}),
            "/container",
        ),
    ] {
        let message = rest(&app, model, input.clone()).await.rest_error(400, 5006);
        assert!(message.contains(field), "{input}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_speech_answers_with_the_audio() {
    let app = fake_app();
    let path = "/v1/audio/speech";
    let body = json!({"model": "tts-1", "input": "Hello", "voice": "alloy"});
    let reply = send(&app, post(path, body.to_string())).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.header("content-type"), "audio/mpeg");
    assert_eq!(reply.header("x-ember-model"), PIPER);
    assert_eq!(&reply.body[..], b"Hello");
    let wav = json!({"model": AURA, "input": "Hi", "voice": "luna", "response_format": "wav"});
    let reply = send(&app, post(path, wav.to_string())).await;
    assert_eq!(reply.header("content-type"), "audio/wav");
    for (body, param) in [
        (json!({"model": "tts-1", "voice": "alloy"}), "input"),
        (json!({"model": "tts-1", "input": "Hi"}), "voice"),
        (json!({"input": "Hi", "voice": "alloy"}), "model"),
        (
            json!({"model": "tts-1", "input": "Hi", "voice": "alloy", "response_format": "aac"}),
            "response_format",
        ),
        (
            json!({"model": "tts-1", "input": "Hi", "voice": "alloy", "speed": 2}),
            "speed",
        ),
        (
            json!({"model": WHISPER, "input": "Hi", "voice": "alloy"}),
            "model",
        ),
    ] {
        let reply = send(&app, post(path, body.to_string())).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(reply.json()["error"]["param"], param, "{body}");
    }
}
