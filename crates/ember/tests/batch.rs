//! The async batch API (`queueRequest`) on the real default models: submitting and polling on
//! REST and the binding, results equal to the same requests run interactively, one charge per
//! request, and the errors of bad submissions and polls.

mod common;

use common::*;
use ember_http::{BatchSettings, Batches};
use ember_store::Plan;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const RUN: &str = "/client/v4/accounts/local/ai/run";

/// The dev-mode app with its batch processor running.
fn app_with_processor() -> App {
    let app = app();
    tokio::spawn(ember_http::process_batches(app.state.clone()));
    app
}

/// Polls `model`'s batch `id` on REST until it is done; its `{responses, usage}`.
async fn results(app: &App, model: &str, id: &str) -> Value {
    for _ in 0..600 {
        let poll = post(
            &format!("{RUN}/{model}?queueRequest=true"),
            json!({ "request_id": id }).to_string(),
        );
        let reply = send(app, poll).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let result = reply.json()["result"].clone();
        if result.get("responses").is_some() {
            return result;
        }
        let status = result["status"].as_str().unwrap();
        assert!(["queued", "running"].contains(&status), "{result}");
        assert_eq!(result["request_id"], id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("batch {id} did not finish in a minute");
}

fn cosine(a: &Value, b: &Value) -> f64 {
    let (a, b) = (a.as_array().unwrap(), b.as_array().unwrap());
    assert_eq!(a.len(), b.len());
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| x.as_f64().unwrap() * y.as_f64().unwrap())
        .sum();
    let norm = |v: &[Value]| {
        v.iter()
            .map(|x| x.as_f64().unwrap().powi(2))
            .sum::<f64>()
            .sqrt()
    };
    dot / (norm(a) * norm(b))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rest_batch_of_embeddings_equals_the_same_requests_run_one_by_one() {
    let app = app_with_processor();
    let texts: Vec<String> = (0..12)
        .map(|i| format!("batch sentence number {i}"))
        .collect();
    let requests: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| json!({ "text": text, "external_reference": format!("ref-{i}") }))
        .collect();
    let submit = post(
        &format!("{RUN}/{MINILM}?queueRequest=true"),
        json!({ "requests": requests }).to_string(),
    );
    let reply = send(&app, submit).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let queued = reply.json()["result"].clone();
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["model"], MINILM);
    let id = queued["request_id"].as_str().unwrap().to_string();

    let done = results(&app, MINILM, &id).await;
    let responses = done["responses"].as_array().unwrap();
    assert_eq!(responses.len(), texts.len());
    let mut prompt_tokens = 0;
    for (i, response) in responses.iter().enumerate() {
        assert_eq!(response["id"], i);
        assert_eq!(response["success"], true);
        assert_eq!(response["external_reference"], format!("ref-{i}"));
        let alone = send(
            &app,
            post(
                &format!("{RUN}/{MINILM}"),
                json!({ "text": texts[i] }).to_string(),
            ),
        )
        .await;
        let alone = alone.json()["result"].clone();
        assert_eq!(response["result"]["shape"], json!([1, 384]));
        let similarity = cosine(&response["result"]["data"][0], &alone["data"][0]);
        assert!(similarity > 0.999_999, "request {i}: cosine {similarity}");
    }

    // One log row and one charge per request, which the batch's usage adds up.
    for i in 0..texts.len() {
        let record = app
            .store
            .ledger
            .request(&format!("{id}:{i}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((record.route.as_str(), record.http_status), ("batch", 200));
        assert!(record.neurons > 0.0 && record.prompt_tokens > 0);
        prompt_tokens += u64::from(record.prompt_tokens);
    }
    assert_eq!(done["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(done["usage"]["total_tokens"], prompt_tokens);
    assert_eq!(
        app.store
            .ledger
            .request(&format!("{id}:{}", texts.len()))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_binding_batch_of_chats_answers_what_interactive_runs_answer() {
    let app = app_with_processor();
    let prompts = ["Name a colour.", "Say hello.", "Count to three."];
    let requests: Vec<Value> = prompts
        .iter()
        .map(|p| json!({ "messages": [{"role": "user", "content": p}], "max_tokens": 12, "temperature": 0, "stream": true }))
        .collect();
    let mut submit = binding_request("/run?version=3", SMOL, json!({ "requests": requests }));
    *submit.body_mut() =
        json!({"inputs": {"requests": requests}, "options": {"queueRequest": true}})
            .to_string()
            .into();
    let reply = send(&app, submit).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let queued = reply.json();
    assert_eq!(
        queued["status"], "queued",
        "a bare result on the binding: {queued}"
    );
    let id = queued["request_id"].as_str().unwrap();

    let done = results(&app, SMOL, id).await;
    for (i, response) in done["responses"].as_array().unwrap().iter().enumerate() {
        assert_eq!(response["success"], true, "{response}");
        assert_eq!(response["external_reference"], Value::Null);
        let mut alone = requests[i].clone();
        alone["stream"] = json!(false);
        let alone = send(&app, post(&format!("{RUN}/{SMOL}"), alone.to_string()))
            .await
            .json();
        let text = response["result"]["response"].as_str().unwrap();
        assert!(!text.is_empty());
        assert_eq!(
            text, alone["result"]["response"],
            "request {i}, greedy on one sequence"
        );
    }
    // The poll on the binding gives the same bare result.
    let mut poll = binding_request("/run?version=3", SMOL, json!({}));
    *poll.body_mut() = json!({"inputs": {"request_id": id}, "options": {"queueRequest": true}})
        .to_string()
        .into();
    let polled = send(&app, poll).await.json();
    assert_eq!(
        polled["responses"].as_array().unwrap().len(),
        prompts.len(),
        "{polled}"
    );
}

#[tokio::test]
async fn bad_submissions_and_polls_get_clear_errors() {
    let app = app();
    let queued = |model: &str| format!("{RUN}/{model}?queueRequest=true");
    let no_requests = send(
        &app,
        post(&queued(MINILM), json!({"text": "hi"}).to_string()),
    )
    .await;
    assert!(no_requests.rest_error(400, 5006).contains("/requests"));
    let empty = send(
        &app,
        post(&queued(MINILM), json!({"requests": []}).to_string()),
    )
    .await;
    assert!(empty.rest_error(400, 5006).contains("no requests"));
    let bad_item = json!({"requests": [{"text": "fine"}, {"text": 7}]});
    let bad_item = send(&app, post(&queued(MINILM), bad_item.to_string())).await;
    assert!(bad_item.rest_error(400, 5006).contains("/requests/1/text"));
    let unknown = send(
        &app,
        post(&queued(MINILM), json!({"request_id": "nope"}).to_string()),
    )
    .await;
    assert!(unknown.rest_error(404, 7003).contains("nope"));
    let unknown_model = send(
        &app,
        post(
            &queued("@cf/no/such"),
            json!({"requests": [{}]}).to_string(),
        ),
    )
    .await;
    unknown_model.rest_error(400, 5007);
    let big =
        json!({"requests": [{"text": "x".repeat(5_000_000)}, {"text": "y".repeat(5_000_000)}]});
    let too_big = send(&app, post(&queued(MINILM), big.to_string())).await;
    assert_eq!(
        too_big.status,
        413,
        "{:?}",
        &too_big.body[..too_big.body.len().min(300)]
    );
    assert_eq!(
        app.store.batches.batches(None, 10).await.unwrap(),
        vec![],
        "nothing was queued"
    );
}

#[tokio::test]
async fn a_full_queue_refuses_with_429_and_another_accounts_batch_is_unknown() {
    let mut state = app().state;
    state.batches = Arc::new(Batches::new(BatchSettings {
        max_pending: 3,
        ..BatchSettings::default()
    }));
    // No processor: what is queued stays queued.
    let app = App {
        router: ember_http::router(state.clone()),
        store: state.access.stores().clone(),
        state,
        abort: tokio::sync::watch::channel(false).0,
    };
    let (one, one_token) = account(&app, Plan::Paid, 10_000.0).await;
    let (two, two_token) = account(&app, Plan::Paid, 10_000.0).await;
    let path =
        |account: &str| format!("/client/v4/accounts/{account}/ai/run/{MINILM}?queueRequest=true");
    let submit = |n: usize| json!({"requests": vec![json!({"text": "hi"}); n]}).to_string();
    let first = send(
        &app,
        with_token(post(&path(&one.id), submit(2)), &one_token),
    )
    .await;
    assert_eq!(first.status, 200);
    let id = first.json()["result"]["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    let full = send(
        &app,
        with_token(post(&path(&one.id), submit(2)), &one_token),
    )
    .await;
    full.rest_error(429, 3040);
    let queued = send(
        &app,
        with_token(
            post(&path(&one.id), json!({"request_id": id}).to_string()),
            &one_token,
        ),
    )
    .await;
    assert_eq!(queued.json()["result"]["status"], "queued");
    let theirs = send(
        &app,
        with_token(
            post(&path(&two.id), json!({"request_id": id}).to_string()),
            &two_token,
        ),
    )
    .await;
    theirs.rest_error(404, 7003);
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_wait_while_an_interactive_request_is_in_flight() {
    let mut state = app().state;
    state.batches = Arc::new(Batches::new(BatchSettings {
        max_pause: Duration::from_secs(3_600),
        ..BatchSettings::default()
    }));
    tokio::spawn(ember_http::process_batches(state.clone()));
    let app = App {
        router: ember_http::router(state.clone()),
        store: state.access.stores().clone(),
        state,
        abort: tokio::sync::watch::channel(false).0,
    };
    // A stream whose body is not read: its request stays in flight.
    let stream = json!({"prompt": "Tell a story.", "max_tokens": 8, "stream": true});
    let request = post(&format!("{RUN}/{SMOL}"), stream.to_string());
    let in_flight = app.router.clone().oneshot(request).await.unwrap();
    assert_eq!(in_flight.status(), 200);

    let submit = json!({"requests": [{"text": "one"}, {"text": "two"}]});
    let reply = send(
        &app,
        post(
            &format!("{RUN}/{MINILM}?queueRequest=true"),
            submit.to_string(),
        ),
    )
    .await;
    let id = reply.json()["result"]["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let waiting = app.store.batches.batch(&id).await.unwrap().unwrap();
    assert_eq!(
        waiting.status,
        ember_store::BatchStatus::Queued,
        "nothing ran beside the stream"
    );

    drop(in_flight); // The client goes away: the batch runs.
    let done = results(&app, MINILM, &id).await;
    assert_eq!(done["responses"].as_array().unwrap().len(), 2);
    wait_until_model_is_free(SMOL).await;
}
