//! AI Gateway through HTTP: gateways as objects, the cache (HIT/MISS, TTL on an injected clock,
//! a stream replayed as it went out), logs with their bodies and feedback (REST and the
//! binding's helpers), per-gateway rate limits, log bounds, and every bad option named. Runs on
//! the fake runner kit, and on the real SmolLM2 for streams.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::fake::fake_ember;
use common::*;
use ember_access::AccessConfig;
use ember_access::clock::ManualClock;
use ember_http::HttpConfig;
use serde_json::{Value, json};
use std::sync::Arc;

const CLASSIFIER: &str = "@cf/huggingface/distilbert-sst-2-int8";
const RUN: &str = "/client/v4/accounts/local/ai/run/";
const GATEWAYS: &str = "/client/v4/accounts/local/ai-gateway/gateways";

fn fake_app() -> (App, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(1_795_392_000_000));
    let app = app_on(
        fake_ember(),
        HttpConfig::default(),
        AccessConfig::default(),
        clock.clone(),
    );
    (app, clock)
}

/// A classification run on REST with these extra headers.
fn classify(text: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut request = post(
        &format!("{RUN}{CLASSIFIER}"),
        json!({ "text": text }).to_string(),
    );
    for (name, value) in headers {
        request.headers_mut().insert(
            header::HeaderName::try_from(*name).unwrap(),
            value.parse().unwrap(),
        );
    }
    request
}

fn json_request(method: &str, path: &str, body: Value) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn result(app: &App, request: Request<Body>) -> Value {
    let reply = send(app, request).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.json()["result"].clone()
}

/// Waits until a streamed response's log is written: a stream is cached and logged in a task
/// when it ends, just after its last bytes went out.
async fn wait_for_log(app: &App, gateway: &str, log_id: &str) {
    for _ in 0..200 {
        let reply = send(app, get(&format!("{GATEWAYS}/{gateway}/logs/{log_id}"))).await;
        if reply.status == StatusCode::OK {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("log {log_id} was never written");
}

async fn logs(app: &App, gateway: &str, query: &str) -> Value {
    let reply = send(app, get(&format!("{GATEWAYS}/{gateway}/logs{query}"))).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.json()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_request_is_a_hit_until_its_ttl_ends() {
    let (app, clock) = fake_app();
    let through = [("cf-aig-gateway-id", "default"), ("cf-aig-cache-ttl", "60")];
    let first = send(&app, classify("a good film", &through)).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("cf-aig-cache-status"), "MISS");
    let hit = send(&app, classify("a good film", &through)).await;
    assert_eq!(hit.header("cf-aig-cache-status"), "HIT");
    assert_eq!(hit.body, first.body);
    assert_eq!(hit.header("content-type"), "application/json");
    assert_eq!(hit.header("x-ember-model"), CLASSIFIER);
    assert_ne!(hit.header("cf-aig-log-id"), first.header("cf-aig-log-id"));
    let other = send(&app, classify("another film", &through)).await;
    assert_eq!(other.header("cf-aig-cache-status"), "MISS");
    let skipped = [("cf-aig-skip-cache", "true"), through[0], through[1]];
    let skipping = send(&app, classify("a good film", &skipped)).await;
    assert_eq!(
        skipping.header("cf-aig-cache-status"),
        "",
        "skipped: no cache status"
    );

    clock.advance(60_000);
    let expired = send(&app, classify("a good film", &through)).await;
    assert_eq!(expired.header("cf-aig-cache-status"), "MISS");

    // Only the runs that reached the model are in the request log and cost Neurons.
    let list = logs(&app, "default", "").await;
    assert_eq!(list["result_info"]["total_count"], 5);
    let cached = logs(&app, "default", "?cached=true").await;
    assert_eq!(cached["result"].as_array().unwrap().len(), 1);
    assert_eq!(cached["result"][0]["cost"], 0.0);
    assert_eq!(cached["result"][0]["id"], hit.header("cf-aig-log-id"));
    let missed = format!("{GATEWAYS}/default/logs/{}", first.header("cf-aig-log-id"));
    let missed = result(&app, get(&missed)).await;
    assert!(missed["tokens_in"].as_u64().unwrap() > 0);
    assert_eq!(
        cached["result"][0]["tokens_in"], missed["tokens_in"],
        "a hit logs what the answer took"
    );
    assert_eq!(hit.header("ember-usage"), "", "kept, never sent");
    let query = ember_store::UsageQuery {
        account_id: "local".into(),
        since: "2026-11-23".into(),
        until: "2026-11-23".into(),
        model: None,
    };
    assert_eq!(app.store.ledger.usage(&query).await.unwrap()[0].requests, 4);
    // Without a gateway nothing is cached or logged by it.
    let plain = send(&app, classify("a good film", &[])).await;
    assert_eq!(plain.header("cf-aig-log-id"), "");
}

#[tokio::test(flavor = "multi_thread")]
async fn gateways_are_objects_with_their_own_cache_and_rate_limit() {
    let (app, clock) = fake_app();
    let created = result(
        &app,
        json_request(
            "POST",
            GATEWAYS,
            json!({"id": "my-gw", "cache_ttl": 120, "cache_invalidate_on_update": true,
                   "collect_logs": true, "rate_limiting_interval": 60, "rate_limiting_limit": 2,
                   "rate_limiting_technique": "fixed", "logpush": false}),
        ),
    )
    .await;
    assert_eq!(created["id"], "my-gw");
    assert_eq!(created["cache_ttl"], 120);
    assert_eq!(created["is_default"], false);
    assert_eq!(created["created_at"], "2026-11-23T00:00:00Z");

    // The provider URL runs the model in the REST envelope, cached by the gateway's TTL.
    let url = format!("/v1/local/my-gw/workers-ai/{CLASSIFIER}");
    let body = json!({"text": "fine"}).to_string();
    let first = send(&app, post(&url, body.clone())).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert_eq!(first.json()["result"][1]["label"], "POSITIVE");
    assert_eq!(first.header("cf-aig-cache-status"), "MISS");
    let hit = send(&app, post(&url, body.clone())).await;
    assert_eq!(hit.header("cf-aig-cache-status"), "HIT");
    // Changing the gateway forgets its cache (cache_invalidate_on_update).
    let updated = result(
        &app,
        json_request(
            "PUT",
            &format!("{GATEWAYS}/my-gw"),
            json!({"cache_ttl": 300}),
        ),
    )
    .await;
    assert_eq!(
        (
            updated["cache_ttl"].clone(),
            updated["rate_limiting_limit"].clone()
        ),
        (json!(300), json!(2))
    );
    let refused = send(&app, post(&url, body.clone())).await;
    let message = refused.rest_error(429, 2003);
    assert!(message.contains("gateway"), "{message}");
    assert!(!refused.header("retry-after").is_empty());
    clock.advance(60_000);
    let after = send(&app, post(&url, body.clone())).await;
    assert_eq!(
        after.header("cf-aig-cache-status"),
        "MISS",
        "invalidated by the update"
    );

    let listed = result(&app, get(GATEWAYS)).await;
    let ids: Vec<_> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].clone())
        .collect();
    assert_eq!(ids, [json!("my-gw")]);
    let fetched = result(&app, get(&format!("{GATEWAYS}/default"))).await;
    assert_eq!(fetched["is_default"], true, "default is made on first use");

    let deleted = send(
        &app,
        Request::delete(format!("{GATEWAYS}/my-gw"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(deleted.status, StatusCode::OK);
    send(&app, get(&format!("{GATEWAYS}/my-gw")))
        .await
        .rest_error(404, 7003);
    send(&app, post(&url, body)).await.rest_error(404, 7003);
    let unknown = send(&app, classify("x", &[("cf-aig-gateway-id", "nope")])).await;
    let message = unknown.rest_error(404, 7003);
    assert!(
        message.contains("nope") && message.contains("ember gateways create"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_gateway_objects_are_refused_by_field() {
    let (app, _) = fake_app();
    let cases = [
        (json!({"id": "Bad Id"}), "id"),
        (json!({"cache_ttl": 60}), "id"),
        (json!({"id": "g", "cache_ttl": "soon"}), "cache_ttl"),
        (json!({"id": "g", "cache_ttl": 2_592_001}), "cache_ttl"),
        (
            json!({"id": "g", "rate_limiting_technique": "leaky"}),
            "rate_limiting_technique",
        ),
        (
            json!({"id": "g", "rate_limiting_limit": 0}),
            "rate_limiting_limit",
        ),
        (
            json!({"id": "g", "log_management_strategy": "KEEP"}),
            "log_management_strategy",
        ),
        (json!({"id": "g", "colect_logs": true}), "colect_logs"),
        (json!({"id": "g", "guardrails": "on"}), "guardrails"),
        (
            json!({"id": "g", "retry_max_attempts": 6}),
            "retry_max_attempts",
        ),
        (json!({"id": "g", "retry_delay": 5001}), "retry_delay"),
        (
            json!({"id": "g", "retry_backoff": "random"}),
            "retry_backoff",
        ),
        (
            json!({"id": "g", "guardrails": {"prompt": {"s15": "BLOCK"}}}),
            "guardrails.prompt.s15",
        ),
        (
            json!({"id": "g", "guardrails": {"response": {"s1": "DROP"}}}),
            "guardrails.response.s1",
        ),
    ];
    for (body, field) in cases {
        let reply = send(&app, json_request("POST", GATEWAYS, body.clone())).await;
        let message = reply.rest_error(400, 5006);
        assert!(message.contains(field), "{body}: {message}");
    }
    let body = json!({"id": "g"});
    assert_eq!(
        send(&app, json_request("POST", GATEWAYS, body.clone()))
            .await
            .status,
        StatusCode::OK
    );
    send(&app, json_request("POST", GATEWAYS, body))
        .await
        .rest_error(409, 7004);
    let garbage = send(&app, post(GATEWAYS, "not json")).await;
    garbage.rest_error(400, 5006);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_options_name_their_header() {
    let (app, _) = fake_app();
    let cases = [
        ("cf-aig-metadata", "{\"a\":"),
        (
            "cf-aig-metadata",
            r#"{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6}"#,
        ),
        ("cf-aig-cache-ttl", "30"),
        ("cf-aig-cache-ttl", "99999999"),
        ("cf-aig-max-attempts", "9"),
        ("cf-aig-backoff", "sometimes"),
    ];
    for (name, value) in cases {
        let reply = send(
            &app,
            classify("x", &[("cf-aig-gateway-id", "default"), (name, value)]),
        )
        .await;
        let message = reply.rest_error(400, 5006);
        assert!(message.contains(name), "{value}: {message}");
    }
    // The binding names its own fields.
    let mut request = binding_request("/ai-gateway/run", CLASSIFIER, json!({"text": "x"}));
    *request.body_mut() = Body::from(
        json!({"inputs": {"text": "x"}, "options": {"gateway": {"id": "default", "cacheTtl": 5}}})
            .to_string(),
    );
    let reply = send(&app, request).await;
    let error = reply.binding_error(400, 5006);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("options.gateway.cacheTtl"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_carry_bodies_metadata_and_feedback() {
    let (app, _) = fake_app();
    let metadata = r#"{"team":"AI","user":12345,"test":true}"#;
    let through = [
        ("cf-aig-gateway-id", "default"),
        ("cf-aig-metadata", metadata),
        ("cf-aig-event-id", "ev-1"),
    ];
    let run = send(&app, classify("logged", &through)).await;
    let log_id = run.header("cf-aig-log-id").to_string();
    let log = result(&app, get(&format!("{GATEWAYS}/default/logs/{log_id}"))).await;
    assert_eq!(log["model"], CLASSIFIER);
    assert_eq!(log["model_type"], "Text Classification");
    assert_eq!(log["provider"], "workers-ai");
    assert_eq!(log["status_code"], 200);
    assert_eq!(
        (log["success"].clone(), log["cached"].clone()),
        (json!(true), json!(false))
    );
    assert_eq!(log["metadata"], metadata);
    assert_eq!(log["event_id"], "ev-1");
    assert_eq!(log["request_head"], json!({"text": "logged"}).to_string());
    assert_eq!(log["request_head_complete"], true);
    assert!(log["cost"].as_f64().unwrap() > 0.0, "{log}");
    let response = send(
        &app,
        get(&format!("{GATEWAYS}/default/logs/{log_id}/response")),
    )
    .await;
    assert_eq!(response.body, run.body);
    assert_eq!(response.header("content-type"), "application/json");

    // Feedback: REST PATCH, the {rating, comment} form, and the binding's helper.
    let patch = |path: String, body: Value| json_request("PATCH", &path, body);
    let rest_log = format!("{GATEWAYS}/default/logs/{log_id}");
    assert_eq!(
        send(
            &app,
            patch(rest_log.clone(), json!({"feedback": 1, "score": 90}))
        )
        .await
        .status,
        StatusCode::OK
    );
    let log = result(&app, get(&rest_log)).await;
    assert_eq!(
        (log["feedback"].clone(), log["score"].clone()),
        (json!(1), json!(90))
    );
    let rated = json!({"feedback": {"rating": -1, "comment": "wrong label"}});
    assert_eq!(
        send(&app, patch(rest_log.clone(), rated)).await.status,
        StatusCode::OK
    );
    let log = result(&app, get(&rest_log)).await;
    assert_eq!(log["feedback"], -1);
    let kept: Value = serde_json::from_str(log["metadata"].as_str().unwrap()).unwrap();
    assert_eq!(
        (kept["comment"].clone(), kept["team"].clone()),
        (json!("wrong label"), json!("AI"))
    );
    let binding_log = format!("/ai-gateway/gateways/default/logs/{log_id}");
    assert_eq!(
        send(&app, patch(binding_log.clone(), json!({"feedback": null})))
            .await
            .status,
        StatusCode::OK
    );
    let seen = result(&app, get(&binding_log)).await;
    assert_eq!(
        (seen["id"].as_str(), seen["feedback"].clone()),
        (Some(log_id.as_str()), Value::Null)
    );
    for (body, field) in [
        (json!({"feedback": 2}), "feedback"),
        (json!({"score": 101}), "score"),
        (json!({"cost": 1}), "cost"),
    ] {
        let message = send(&app, patch(rest_log.clone(), body))
            .await
            .rest_error(400, 5006);
        assert!(message.contains(field), "{message}");
    }
    // A missing log: the REST envelope's 404, which the binding turns into AiGatewayLogNotFound.
    let missing = send(&app, get("/ai-gateway/gateways/default/logs/nope")).await;
    assert!(missing.rest_error(404, 7003).contains("nope"));
    let url = result(&app, get("/ai-gateway/gateways/default/url/workers-ai")).await;
    assert_eq!(url["url"], "http://localhost/v1/local/default/workers-ai");

    // Per request: no log at all, or a log without bodies.
    let unlogged = send(
        &app,
        classify("x", &[through[0], ("cf-aig-collect-log", "false")]),
    )
    .await;
    let id = unlogged.header("cf-aig-log-id");
    send(&app, get(&format!("{GATEWAYS}/default/logs/{id}")))
        .await
        .rest_error(404, 7003);
    let bare = send(
        &app,
        classify("x", &[through[0], ("cf-aig-collect-log-payload", "false")]),
    )
    .await;
    let id = bare.header("cf-aig-log-id");
    let log = result(&app, get(&format!("{GATEWAYS}/default/logs/{id}"))).await;
    assert_eq!(
        (log["request_head"].clone(), log["request_size"].clone()),
        (json!(""), json!(12))
    );
    send(&app, get(&format!("{GATEWAYS}/default/logs/{id}/request")))
        .await
        .rest_error(404, 7003);

    // Filters, pages, bad filters and deletion.
    let failed = send(&app, classify("", &[through[0]])).await;
    assert_eq!(failed.status, StatusCode::BAD_REQUEST);
    let failures = logs(&app, "default", "?success=false").await;
    assert_eq!(failures["result"][0]["status_code"], 400);
    let page = logs(&app, "default", "?per_page=1&page=2").await;
    assert_eq!(
        (
            page["result_info"]["count"].clone(),
            page["result_info"]["total_count"].clone()
        ),
        (json!(1), json!(3))
    );
    // The `cloudflare` SDKs' flattened `filters`, and dates.
    let sdk_filter = "?filters.key=success&filters.operator=eq&filters.value=false";
    assert_eq!(
        logs(&app, "default", sdk_filter).await["result_info"]["total_count"],
        1
    );
    let future = "?start_date=2999-01-01T00:00:00Z";
    assert_eq!(
        logs(&app, "default", future).await["result_info"]["total_count"],
        0
    );
    for (query, field) in [
        ("?per_page=51", "per_page"),
        ("?success=maybe", "success"),
        ("?order=x", "order"),
        ("?start_date=yesterday", "start_date"),
        ("?filters.key=success&filters.operator=eq", "filters"),
        (
            "?filters.key=cost&filters.operator=gt&filters.value=1",
            "filters.key",
        ),
        (
            "?filters.key=model&filters.operator=contains&filters.value=x",
            "filters.operator",
        ),
        (
            "?filters.key=created_at&filters.operator=lt&filters.value=soon",
            "filters.value",
        ),
    ] {
        let reply = send(&app, get(&format!("{GATEWAYS}/default/logs{query}"))).await;
        let message = reply.rest_error(400, 5006);
        assert!(message.contains(field), "{query}: {message}");
    }
    let deleted = send(
        &app,
        Request::delete(format!("{GATEWAYS}/default/logs?success=false"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(deleted.json()["result"]["deleted"], 1);
    assert_eq!(
        logs(&app, "default", "").await["result_info"]["total_count"],
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bounded_log_keeps_the_newest() {
    let (app, _) = fake_app();
    let gateway =
        json!({"id": "small", "log_management": 2, "log_management_strategy": "DELETE_OLDEST"});
    result(&app, json_request("POST", GATEWAYS, gateway)).await;
    let mut ids = Vec::new();
    for text in ["one", "two", "three"] {
        let reply = send(&app, classify(text, &[("cf-aig-gateway-id", "small")])).await;
        ids.push(reply.header("cf-aig-log-id").to_string());
    }
    let kept = logs(&app, "small", "").await;
    let kept: Vec<_> = kept["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kept, [ids[2].clone(), ids[1].clone()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binding_sends_its_options_in_the_body() {
    let (app, _) = fake_app();
    let request = |text: &str| {
        let mut request = binding_request("/ai-gateway/run", CLASSIFIER, json!({}));
        *request.body_mut() = Body::from(
            json!({"inputs": {"text": text},
                   "options": {"gateway": {"id": "default", "cacheTtl": 60, "metadata": {"user": 7}}}})
            .to_string(),
        );
        request
    };
    let first = send(&app, request("bound")).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert_eq!(
        first.json()[1]["label"],
        "POSITIVE",
        "a bare binding result"
    );
    assert_eq!(first.header("cf-aig-cache-status"), "MISS");
    let second = send(&app, request("bound")).await;
    assert_eq!(second.header("cf-aig-cache-status"), "HIT");
    assert_eq!(second.body, first.body);
    let log_id = first.header("cf-aig-log-id");
    let log = result(
        &app,
        get(&format!("/ai-gateway/gateways/default/logs/{log_id}")),
    )
    .await;
    assert_eq!(log["metadata"], r#"{"user":7}"#);
    // wrangler's proxy: the same request with its real URL in X-Forwarded.
    let mut proxied = request("bound");
    *proxied.uri_mut() = "/client/v4/accounts/local/ai/run/proxy".parse().unwrap();
    proxied.headers_mut().insert(
        "x-forwarded",
        "https://workers-binding.ai/ai-gateway/run?version=3"
            .parse()
            .unwrap(),
    );
    assert_eq!(
        send(&app, proxied).await.header("cf-aig-cache-status"),
        "HIT"
    );
    let mut helper = get("/client/v4/accounts/local/ai/run/proxy");
    let forwarded = format!("https://workers-binding.ai/ai-gateway/gateways/default/logs/{log_id}");
    helper
        .headers_mut()
        .insert("x-forwarded", forwarded.parse().unwrap());
    assert_eq!(result(&app, helper).await["id"], log_id);
}

/// Streams from the real SmolLM2: cached as their whole event sequence and replayed byte for
/// byte; the compat route's `workers-ai/` names; the log counts the streamed tokens.
#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_chat_is_replayed_from_the_cache() {
    let app = app();
    let chat = |path: &str, model: &str| {
        let mut request = post(
            path,
            json!({"model": model, "stream": true, "max_tokens": 6, "temperature": 0,
                   "messages": [{"role": "user", "content": "Say hi"}]})
            .to_string(),
        );
        request
            .headers_mut()
            .insert("cf-aig-cache-ttl", "600".parse().unwrap());
        request
    };
    let path = "/v1/local/default/workers-ai/v1/chat/completions";
    let first = send(&app, chat(path, SMOL)).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert_eq!(first.header("content-type"), "text/event-stream");
    assert_eq!(first.header("cf-aig-cache-status"), "MISS");
    let events = sse_events(&first.body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    wait_for_log(&app, "default", first.header("cf-aig-log-id")).await;
    let replay = send(&app, chat(path, SMOL)).await;
    assert_eq!(replay.header("cf-aig-cache-status"), "HIT");
    assert_eq!(replay.header("content-type"), "text/event-stream");
    assert_eq!(replay.body, first.body, "the same events, byte for byte");

    // The stream's log is written when it ends, with its tokens.
    let log_id = first.header("cf-aig-log-id");
    let log = result(&app, get(&format!("{GATEWAYS}/default/logs/{log_id}"))).await;
    assert!(
        log["tokens_in"].as_u64().unwrap() > 0 && log["tokens_out"].as_u64().unwrap() > 0,
        "{log}"
    );
    assert_eq!(log["model"], SMOL);

    let compat = send(
        &app,
        chat(
            "/v1/local/default/compat/chat/completions",
            &format!("workers-ai/{SMOL}"),
        ),
    )
    .await;
    assert_eq!(compat.status, StatusCode::OK, "{:?}", compat.body);
    assert_eq!(compat.header("x-ember-model"), SMOL);
    wait_until_model_is_free(SMOL).await;
}

/// An OpenAI-compatible upstream on a local port: `/ok` answers (a stream when asked, recording
/// the `Authorization` it got), `/fail` answers 500, `/slow` takes ten seconds.
struct Upstream {
    base: String,
    failures: Arc<std::sync::atomic::AtomicUsize>,
    authorizations: Arc<std::sync::Mutex<Vec<String>>>,
}

async fn upstream() -> Upstream {
    use axum::routing::post as post_route;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let failures = Arc::new(AtomicUsize::new(0));
    let authorizations = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (seen, failed) = (authorizations.clone(), failures.clone());
    let ok = move |headers: axum::http::HeaderMap, body: String| async move {
        let auth = headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string());
        seen.lock().unwrap().push(auth.unwrap_or_default());
        let request: Value = serde_json::from_str(&body).unwrap();
        if request["stream"] == true {
            let events = "data: {\"choices\":[{\"delta\":{\"content\":\"up\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"stream\"}}]}\n\ndata: [DONE]\n\n";
            return (
                [(header::CONTENT_TYPE, "text/event-stream")],
                events.to_string(),
            );
        }
        let answer = json!({"object": "chat.completion", "model": request["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "from upstream"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}});
        (
            [(header::CONTENT_TYPE, "application/json")],
            answer.to_string(),
        )
    };
    let fail = move || async move {
        failed.fetch_add(1, Ordering::SeqCst);
        (StatusCode::INTERNAL_SERVER_ERROR, "{\"error\":\"down\"}")
    };
    let slow = || async {
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        "late"
    };
    // Answers with the request's last message (streamed when asked): a provider whose answer
    // the test chooses.
    let echo = |body: String| async move {
        use axum::response::IntoResponse;
        let request: Value = serde_json::from_str(&body).unwrap();
        let said = request["messages"].as_array().unwrap().last().unwrap()["content"].clone();
        if request["stream"] == true {
            let chunk = json!({"choices": [{"index": 0, "delta": {"content": said}}]});
            let events = format!("data: {chunk}\n\ndata: [DONE]\n\n");
            return ([(header::CONTENT_TYPE, "text/event-stream")], events).into_response();
        }
        axum::Json(
            json!({"object": "chat.completion", "model": request["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": said}}]}),
        )
        .into_response()
    };
    let app = axum::Router::new()
        .route("/ok/chat/completions", post_route(ok))
        .route("/echo/chat/completions", post_route(echo))
        .route("/fail/chat/completions", post_route(fail))
        .route("/slow/chat/completions", post_route(slow));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Upstream {
        base,
        failures,
        authorizations,
    }
}

const SECRET: &str = "sk-upstream-secret-1234";

fn provider(name: &str, url: &str, key: Option<String>) -> Arc<dyn ember_http::Provider> {
    Arc::new(ember_http::OpenAiCompatible::new(name, url, key))
}

fn app_with_providers(upstream: &Upstream) -> App {
    let providers = vec![
        provider(
            "upstream",
            &format!("{}/ok", upstream.base),
            Some(SECRET.into()),
        ),
        provider("broken", &format!("{}/fail", upstream.base), None),
        provider("slow", &format!("{}/slow", upstream.base), None),
    ];
    let config = HttpConfig {
        providers,
        ..HttpConfig::default()
    };
    app_on(
        fake_ember(),
        config,
        AccessConfig::default(),
        Arc::new(ManualClock::new(0)),
    )
}

fn chat_body(stream: bool) -> String {
    json!({"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn providers_get_their_key_and_streams_pass_through() {
    let upstream = upstream().await;
    let app = app_with_providers(&upstream);
    let url = "/v1/local/default/upstream/chat/completions";
    let mut request = post(url, chat_body(false));
    request
        .headers_mut()
        .insert("authorization", "Bearer the-ember-token".parse().unwrap());
    let reply = send(&app, request).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(
        reply.json()["choices"][0]["message"]["content"],
        "from upstream"
    );
    let seen = upstream.authorizations.lock().unwrap().clone();
    assert_eq!(
        seen,
        [format!("Bearer {SECRET}")],
        "the configured key, never the caller's token"
    );

    let log_id = reply.header("cf-aig-log-id");
    let log = result(&app, get(&format!("{GATEWAYS}/default/logs/{log_id}"))).await;
    assert_eq!(
        (log["provider"].as_str(), log["model"].as_str()),
        (Some("upstream"), Some("gpt-4o-mini"))
    );
    assert_eq!(
        (log["tokens_in"].clone(), log["tokens_out"].clone()),
        (json!(3), json!(2))
    );

    let streamed = |ttl: &str| {
        let mut request = post(url, chat_body(true));
        request
            .headers_mut()
            .insert("cf-aig-cache-ttl", ttl.parse().unwrap());
        request
    };
    let first = send(&app, streamed("60")).await;
    assert_eq!(first.header("content-type"), "text/event-stream");
    assert_eq!(sse_events(&first.body).last().unwrap(), "[DONE]");
    wait_for_log(&app, "default", first.header("cf-aig-log-id")).await;
    let again = send(&app, streamed("60")).await;
    assert_eq!(again.header("cf-aig-cache-status"), "HIT");
    assert_eq!(again.body, first.body);
    assert_eq!(
        upstream.authorizations.lock().unwrap().len(),
        2,
        "the hit stayed here"
    );

    // The key is in no log, no answer, no header.
    let logs = send(&app, get(&format!("{GATEWAYS}/default/logs"))).await;
    for text in [
        String::from_utf8_lossy(&logs.body).to_string(),
        String::from_utf8_lossy(&first.body).to_string(),
        format!("{:?} {:?}", reply.headers, first.headers),
    ] {
        assert!(!text.contains(SECRET), "{text}");
    }
    let unknown = send(
        &app,
        post(
            "/v1/local/default/nobody/chat/completions",
            chat_body(false),
        ),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&unknown.body).contains("nobody"));
}

fn universal(steps: Value) -> Request<Body> {
    post("/v1/local/default", steps.to_string())
}

fn classify_step() -> Value {
    json!({"provider": "workers-ai", "endpoint": CLASSIFIER, "headers": {"content-type": "application/json"},
           "query": {"text": "a good film"}})
}

fn broken_step(config: Value) -> Value {
    json!({"provider": "broken", "endpoint": "chat/completions", "query": {"model": "m"}, "config": config})
}

#[tokio::test(flavor = "multi_thread")]
async fn the_universal_endpoint_falls_back_step_by_step() {
    use std::sync::atomic::Ordering;
    let upstream = upstream().await;
    let app = app_with_providers(&upstream);
    let reply = send(
        &app,
        universal(json!([broken_step(json!({})), classify_step()])),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.header("cf-aig-step"), "1");
    assert_eq!(reply.json()["result"][1]["label"], "POSITIVE");
    assert_eq!(upstream.failures.load(Ordering::SeqCst), 1);
    let log = result(
        &app,
        get(&format!(
            "{GATEWAYS}/default/logs/{}",
            reply.header("cf-aig-log-id")
        )),
    )
    .await;
    assert_eq!(
        (log["step"].clone(), log["attempts"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(
        (log["provider"].as_str(), log["model"].as_str()),
        (Some("workers-ai"), Some(CLASSIFIER))
    );

    // A step's own retries, with backoff, before the next step.
    let retried = json!({"maxAttempts": 3, "retryDelay": 10, "backoff": "exponential"});
    let reply = send(
        &app,
        universal(json!([broken_step(retried), classify_step()])),
    )
    .await;
    assert_eq!(reply.header("cf-aig-step"), "1");
    assert_eq!(upstream.failures.load(Ordering::SeqCst), 4);
    let log = result(
        &app,
        get(&format!(
            "{GATEWAYS}/default/logs/{}",
            reply.header("cf-aig-log-id")
        )),
    )
    .await;
    assert_eq!(log["attempts"], 4, "three tries of step 0, one of step 1");

    // A step that takes too long is given up for the next.
    let slow = json!({"provider": "slow", "endpoint": "chat/completions", "query": {"model": "m"},
                      "config": {"requestTimeout": 200}});
    let reply = send(&app, universal(json!([slow, classify_step()]))).await;
    assert_eq!(
        (reply.status, reply.header("cf-aig-step")),
        (StatusCode::OK, "1")
    );

    // When every step fails, the last failure is the answer.
    let reply = send(&app, universal(json!([broken_step(json!({}))]))).await;
    assert_eq!(
        (reply.status, reply.header("cf-aig-step")),
        (StatusCode::INTERNAL_SERVER_ERROR, "0")
    );

    // Retries on a provider URL, from the request's headers, counted in its log.
    let mut request = post(
        "/v1/local/default/broken/chat/completions",
        chat_body(false),
    );
    for (name, value) in [
        ("cf-aig-max-attempts", "3"),
        ("cf-aig-retry-delay", "5"),
        ("cf-aig-backoff", "linear"),
    ] {
        request.headers_mut().insert(name, value.parse().unwrap());
    }
    let before = upstream.failures.load(Ordering::SeqCst);
    let reply = send(&app, request).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(upstream.failures.load(Ordering::SeqCst) - before, 3);
    let log = result(
        &app,
        get(&format!(
            "{GATEWAYS}/default/logs/{}",
            reply.header("cf-aig-log-id")
        )),
    )
    .await;
    assert_eq!(
        (log["attempts"].clone(), log["success"].clone()),
        (json!(3), json!(false))
    );

    // A gateway's own retry settings serve requests that give none; a request's header wins.
    let settings = json!({"id": "retrying", "retry_max_attempts": 2, "retry_delay": 5,
                          "retry_backoff": "exponential"});
    let created = result(&app, json_request("POST", GATEWAYS, settings)).await;
    assert_eq!(
        (
            &created["retry_max_attempts"],
            &created["retry_delay"],
            &created["retry_backoff"]
        ),
        (&json!(2), &json!(5), &json!("exponential"))
    );
    let url = "/v1/local/retrying/broken/chat/completions";
    let before = upstream.failures.load(Ordering::SeqCst);
    send(&app, post(url, chat_body(false))).await;
    assert_eq!(upstream.failures.load(Ordering::SeqCst) - before, 2);
    let mut once = post(url, chat_body(false));
    once.headers_mut()
        .insert("cf-aig-max-attempts", "1".parse().unwrap());
    let before = upstream.failures.load(Ordering::SeqCst);
    send(&app, once).await;
    assert_eq!(upstream.failures.load(Ordering::SeqCst) - before, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_universal_step_alone_and_the_bindings_universal_run() {
    let app = app();
    // One step, not in an array, with Workers AI's endpoint written `run/{model}`.
    let mut step = classify_step();
    step["endpoint"] = json!(format!("run/{CLASSIFIER}"));
    let reply = send(&app, universal(step.clone())).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.header("cf-aig-step"), "0");
    assert_eq!(reply.json()["result"][1]["label"], "POSITIVE");

    // `env.AI.gateway("default").run(step)`, straight and through wrangler's proxy.
    let native = post(
        "/ai-gateway/universal/run/default",
        json!([step]).to_string(),
    );
    let mut proxied = post("/client/v4/accounts/local/ai/run/proxy", step.to_string());
    proxied.headers_mut().insert(
        "x-forwarded",
        "https://workers-binding.ai/ai-gateway/universal/run/default"
            .parse()
            .unwrap(),
    );
    for request in [native, proxied] {
        let reply = send(&app, request).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.json()["result"][1]["label"], "POSITIVE");
        wait_for_log(&app, "default", reply.header("cf-aig-log-id")).await;
    }
    let unknown = send(
        &app,
        post("/ai-gateway/universal/run/nope", step.to_string()),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{:?}", unknown.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_universal_requests_are_named() {
    let upstream = upstream().await;
    let app = app_with_providers(&upstream);
    let cases = [
        (json!([]), "/"),
        (json!("workers-ai"), "/"),
        (json!({"provider": "workers-ai"}), "/endpoint"),
        (
            json!([{"provider": "openrouter", "endpoint": "x", "query": {}}]),
            "/0/provider",
        ),
        (
            json!([classify_step(), {"provider": "workers-ai", "query": {}}]),
            "/1/endpoint",
        ),
        (
            json!([{"provider": "workers-ai", "endpoint": CLASSIFIER, "query": "text"}]),
            "/0/query",
        ),
        (
            json!([broken_step(json!({"maxAttempts": 9}))]),
            "/0/config/maxAttempts",
        ),
    ];
    for (body, field) in cases {
        let reply = send(&app, universal(body.clone())).await;
        let message = reply.rest_error(400, 5006);
        assert!(message.contains(field), "{body}: {message}");
    }
    let garbage = send(&app, post("/v1/local/default", "not json")).await;
    garbage.rest_error(400, 5006);
}

#[tokio::test(flavor = "multi_thread")]
async fn analytics_and_metrics_add_up_the_requests() {
    let (app, clock) = fake_app();
    let through = [
        ("cf-aig-gateway-id", "default"),
        ("cf-aig-cache-ttl", "600"),
    ];
    for text in ["one", "one", "two"] {
        send(&app, classify(text, &through)).await;
    }
    clock.advance(60_000);
    send(&app, classify("", &through[..1])).await;
    let path = format!("{GATEWAYS}/default/analytics?interval=minute&since=2026-11-23T00:00:00Z");
    let rows = result(&app, get(&path)).await;
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["time"], "2026-11-23T00:00:00Z");
    assert_eq!(
        (rows[0]["model"].as_str(), rows[0]["provider"].as_str()),
        (Some(CLASSIFIER), Some("workers-ai"))
    );
    assert_eq!(
        (
            rows[0]["requests"].clone(),
            rows[0]["cached"].clone(),
            rows[0]["errors"].clone()
        ),
        (json!(3), json!(1), json!(0))
    );
    assert!((rows[0]["cache_hit_ratio"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
    assert!(rows[0]["cost"].as_f64().unwrap() > 0.0);
    assert!(rows[0]["duration_ms"]["p99"].is_u64());
    assert_eq!(
        (rows[1]["requests"].clone(), rows[1]["errors"].clone()),
        (json!(1), json!(1))
    );
    for query in [
        "?interval=week",
        "?since=yesterday",
        "?since=2026-11-24T00:00:00Z&until=2026-11-23T00:00:00Z",
        "?x=1",
    ] {
        let reply = send(&app, get(&format!("{GATEWAYS}/default/analytics{query}"))).await;
        reply.rest_error(400, 5006);
    }
    let metrics = send(&app, get("/metrics")).await;
    let text = String::from_utf8_lossy(&metrics.body);
    let cached = format!(
        "ember_gateway_requests_total{{gateway=\"local/default\",provider=\"workers-ai\",model=\"{CLASSIFIER}\",result=\"cached\"}} 1"
    );
    assert!(text.contains(&cached), "{text}");
    assert!(
        text.contains("ember_gateway_request_duration_seconds_count{gateway=\"local/default\""),
        "{text}"
    );
}

fn model_element(id: &str, provider: &str, model: &str, fallback: Option<&str>) -> Value {
    let mut element =
        json!({"id": id, "type": "model", "properties": {"provider": provider, "model": model}});
    if let Some(fallback) = fallback {
        element["outputs"] = json!({"fallback": {"elementId": fallback}});
    }
    element
}

async fn dynamic_chat(app: &App, metadata: Value) -> Reply {
    let mut request = post(
        "/v1/chat/completions",
        json!({"model": "dynamic/support", "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
    );
    let headers = request.headers_mut();
    headers.insert("cf-aig-gateway-id", "default".parse().unwrap());
    headers.insert("cf-aig-metadata", metadata.to_string().parse().unwrap());
    send(app, request).await
}

#[tokio::test(flavor = "multi_thread")]
async fn dynamic_routes_pick_the_model() {
    let upstream = upstream().await;
    let app = app_with_providers(&upstream);
    let routes = format!("{GATEWAYS}/default/routes");
    let elements = json!([
        {"id": "start", "type": "start", "outputs": {"next": {"elementId": "plan"}}},
        {"id": "plan", "type": "conditional", "properties": {"conditions": {"metadata.plan": {"$eq": "paid"}}},
         "outputs": {"true": {"elementId": "big"}, "false": {"elementId": "quota"}}},
        {"id": "quota", "type": "rate",
         "properties": {"key": "metadata.user", "limit": 1, "interval": 3600, "technique": "fixed"},
         "outputs": {"success": {"elementId": "flaky"}, "fallback": {"elementId": "end"}}},
        model_element("big", "upstream", "gpt-big", None),
        model_element("flaky", "broken", "gpt-flaky", Some("small")),
        model_element("small", "upstream", "gpt-small", None),
        {"id": "end", "type": "end"}
    ]);
    let created = result(
        &app,
        json_request(
            "POST",
            &routes,
            json!({"name": "support", "elements": elements}),
        ),
    )
    .await;
    let route_id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        created["deployment"]["version_id"].as_str().map(str::len),
        Some(32)
    );

    let paid = dynamic_chat(&app, json!({"plan": "paid", "user": 1})).await;
    assert_eq!(paid.status, StatusCode::OK, "{:?}", paid.body);
    assert_eq!(
        (paid.header("cf-aig-provider"), paid.header("cf-aig-model")),
        ("upstream", "gpt-big")
    );
    assert_eq!(
        paid.json()["model"],
        "gpt-big",
        "the body's model was replaced"
    );
    let log = result(
        &app,
        get(&format!(
            "{GATEWAYS}/default/logs/{}",
            paid.header("cf-aig-log-id")
        )),
    )
    .await;
    assert_eq!(
        (log["provider"].as_str(), log["model"].as_str()),
        (Some("upstream"), Some("gpt-big"))
    );

    // Free: the quota lets user 2 through once; the flaky model fails over to the small one.
    let free = dynamic_chat(&app, json!({"plan": "free", "user": 2})).await;
    assert_eq!(free.status, StatusCode::OK, "{:?}", free.body);
    assert_eq!(free.header("cf-aig-model"), "gpt-small");
    let log = result(
        &app,
        get(&format!(
            "{GATEWAYS}/default/logs/{}",
            free.header("cf-aig-log-id")
        )),
    )
    .await;
    assert_eq!(log["attempts"], 2);
    let over = dynamic_chat(&app, json!({"plan": "free", "user": 2})).await;
    let message = over.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(over.status, StatusCode::BAD_REQUEST);
    assert!(
        message.contains("ended before reaching a model"),
        "{message}"
    );
    let other_user = dynamic_chat(&app, json!({"plan": "free", "user": 3})).await;
    assert_eq!(
        other_user.header("cf-aig-model"),
        "gpt-small",
        "a quota per key"
    );

    // A new version serves once deployed.
    let versions = format!("{routes}/{route_id}/versions");
    let v2 = result(
        &app,
        json_request(
            "POST",
            &versions,
            json!({"elements": [
                {"id": "start", "type": "start", "outputs": {"next": {"elementId": "only"}}},
                model_element("only", "upstream", "gpt-v2", None)
            ]}),
        ),
    )
    .await;
    assert_eq!(
        dynamic_chat(&app, json!({"plan": "paid"}))
            .await
            .header("cf-aig-model"),
        "gpt-big"
    );
    let deploy = json_request(
        "POST",
        &format!("{routes}/{route_id}/deployments"),
        json!({"version_id": v2["id"]}),
    );
    assert_eq!(send(&app, deploy).await.status, StatusCode::OK);
    assert_eq!(
        dynamic_chat(&app, json!({"plan": "paid"}))
            .await
            .header("cf-aig-model"),
        "gpt-v2"
    );
    let listed = result(&app, get(&versions)).await;
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let route = result(&app, get(&format!("{routes}/support"))).await;
    assert_eq!(route["elements"][1]["id"], "only");
    let deployments = result(&app, get(&format!("{routes}/{route_id}/deployments"))).await;
    assert_eq!(deployments.as_array().unwrap().len(), 2);

    // The local models: a REST run and a binding run of `dynamic/<name>`.
    let local = json!([{"id": "s", "type": "start", "outputs": {"next": {"elementId": "m"}}},
                       model_element("m", "workers-ai", CLASSIFIER, None)]);
    result(
        &app,
        json_request(
            "POST",
            &routes,
            json!({"name": "sentiment", "elements": local}),
        ),
    )
    .await;
    let rest = send(&app, classify_dynamic(&format!("{RUN}dynamic/sentiment"))).await;
    assert_eq!(rest.status, StatusCode::OK, "{:?}", rest.body);
    assert_eq!(
        (rest.header("x-ember-model"), rest.header("cf-aig-model")),
        (CLASSIFIER, CLASSIFIER)
    );
    assert_eq!(rest.json()["result"][1]["label"], "POSITIVE");
    let mut binding = binding_request("/ai-gateway/run", "dynamic/sentiment", json!({}));
    *binding.body_mut() = Body::from(
        json!({"inputs": {"text": "fine"}, "options": {"gateway": {"id": "default"}}}).to_string(),
    );
    let bound = send(&app, binding).await;
    assert_eq!(bound.status, StatusCode::OK, "{:?}", bound.body);
    assert_eq!(bound.json()[1]["label"], "POSITIVE");

    // Bad routes and unknown ones.
    let bad = json!({"name": "bad", "elements": [{"id": "s", "type": "start", "outputs": {"next": {"elementId": "gone"}}}]});
    let message = send(&app, json_request("POST", &routes, bad))
        .await
        .rest_error(400, 5006);
    assert!(message.contains("gone"), "{message}");
    let again = json!({"name": "support", "elements": [{"id": "s", "type": "start", "outputs": {"next": {"elementId": "e"}}}, {"id": "e", "type": "end"}]});
    send(&app, json_request("POST", &routes, again))
        .await
        .rest_error(409, 7004);
    let missing = send(&app, classify_dynamic(&format!("{RUN}dynamic/nothing"))).await;
    assert!(missing.rest_error(404, 7003).contains("nothing"));
    let deleted = send(
        &app,
        Request::delete(format!("{routes}/sentiment"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(deleted.status, StatusCode::OK);
    send(&app, classify_dynamic(&format!("{RUN}dynamic/sentiment")))
        .await
        .rest_error(404, 7003);
}

fn classify_dynamic(path: &str) -> Request<Body> {
    let mut request = post(path, json!({"text": "a good film"}).to_string());
    request
        .headers_mut()
        .insert("cf-aig-gateway-id", "default".parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread")]
async fn a_budget_element_counts_what_requests_cost() {
    let (app, clock) = fake_app();
    let routes = format!("{GATEWAYS}/default/routes");
    let elements = json!([
        {"id": "s", "type": "start", "outputs": {"next": {"elementId": "budget"}}},
        {"id": "budget", "type": "rate",
         "properties": {"limitType": "cost", "key": "metadata.team", "limit": 1.0, "interval": 60, "technique": "fixed"},
         "outputs": {"success": {"elementId": "m"}}},
        model_element("m", "workers-ai", CLASSIFIER, None)
    ]);
    result(
        &app,
        json_request(
            "POST",
            &routes,
            json!({"name": "budgeted", "elements": elements}),
        ),
    )
    .await;
    let run = |team: &str| {
        let mut request = classify_dynamic(&format!("{RUN}dynamic/budgeted"));
        let headers = request.headers_mut();
        headers.insert(
            "cf-aig-custom-cost",
            r#"{"total_cost": 0.6}"#.parse().unwrap(),
        );
        headers.insert(
            "cf-aig-metadata",
            format!(r#"{{"team": "{team}"}}"#).parse().unwrap(),
        );
        request
    };
    for _ in 0..2 {
        assert_eq!(
            send(&app, run("red")).await.status,
            StatusCode::OK,
            "under the budget"
        );
    }
    let over = send(&app, run("red")).await;
    assert!(over.rest_error(429, 2003).contains("rate limit"));
    assert_eq!(
        send(&app, run("blue")).await.status,
        StatusCode::OK,
        "a budget per team"
    );
    clock.advance(60_000);
    assert_eq!(
        send(&app, run("red")).await.status,
        StatusCode::OK,
        "the next interval"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_urls_check_the_account_and_an_authenticated_gateway() {
    let access = AccessConfig {
        open_without_accounts: false,
        ..AccessConfig::default()
    };
    let app = app_on(
        fake_ember(),
        HttpConfig::default(),
        access,
        Arc::new(ManualClock::new(0)),
    );
    let (account, token) = account(&app, ember_store::Plan::Paid, 10.0).await;
    let gateways = format!("/client/v4/accounts/{}/ai-gateway/gateways", account.id);
    let create = json_request(
        "POST",
        &gateways,
        json!({"id": "secure", "authentication": true}),
    );
    assert_eq!(
        send(&app, with_token(create, &token)).await.status,
        StatusCode::OK
    );
    let url = |account: &str| format!("/v1/{account}/secure/workers-ai/{CLASSIFIER}");
    let body = json!({"text": "fine"}).to_string();

    let without = with_token(post(&url(&account.id), body.clone()), &token);
    send(&app, without).await.rest_error(401, 10000);
    let mut with = with_token(post(&url(&account.id), body.clone()), &token);
    with.headers_mut().insert(
        "cf-aig-authorization",
        format!("Bearer {token}").parse().unwrap(),
    );
    assert_eq!(send(&app, with).await.status, StatusCode::OK);
    let mut elsewhere = with_token(post(&url("someone-else"), body.clone()), &token);
    elsewhere.headers_mut().insert(
        "cf-aig-authorization",
        format!("Bearer {token}").parse().unwrap(),
    );
    send(&app, elsewhere).await.rest_error(403, 10000);
    // No token at all: refused before any gateway is looked at.
    send(&app, post(&url(&account.id), body))
        .await
        .rest_error(401, 10000);
}

/// A gateway's guardrails, judged by the guard model (its EmbeddingGemma stand-in here) in front
/// of a provider that answers with the prompt: a blocked prompt never reaches the provider
/// (2016), a flagged one does, an answer in a blocked category is refused (2017) and never
/// cached, a streamed answer's check is logged when it ends, each log says what was found, and
/// each check is charged as a run of the guard model.
/// A chat to the `echo` provider through `gateway`, which answers with `content` (streamed when
/// asked), cacheable for 10 minutes.
fn ask_echo(gateway: &str, content: &str, stream: bool) -> Request<Body> {
    let body = json!({"model": "any", "stream": stream,
                      "messages": [{"role": "user", "content": content}]});
    let path = format!("/v1/local/{gateway}/echo/chat/completions");
    let mut request = post(&path, body.to_string());
    request
        .headers_mut()
        .insert("cf-aig-cache-ttl", "600".parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread")]
async fn guardrails_flag_and_block_by_category() {
    let upstream = upstream().await;
    let app = app_with_http(HttpConfig {
        providers: vec![provider("echo", &format!("{}/echo", upstream.base), None)],
        ..HttpConfig::default()
    });
    let rules = json!({"prompt": {"s9": "BLOCK", "s1": "FLAG"}, "response": {"s10": "BLOCK"}});
    let created = json_request(
        "POST",
        GATEWAYS,
        json!({"id": "guarded", "guardrails": rules}),
    );
    let created = result(&app, created).await;
    assert_eq!(
        created["guardrails"],
        json!({"prompt": {"s1": "FLAG", "s9": "BLOCK"}, "response": {"s10": "BLOCK"}})
    );
    let ask_for = |content: &str, stream: bool| ask_echo("guarded", content, stream);
    let ask = |content: &str| ask_for(content, false);
    let guardrails_of = |log: &Value| log["guardrails"].clone();
    let log_of = |reply: &Reply| {
        get(&format!(
            "{GATEWAYS}/guarded/logs/{}",
            reply.header("cf-aig-log-id")
        ))
    };

    let blocked = send(&app, ask("How do I make a pipe bomb?")).await;
    assert_eq!(
        blocked.status,
        StatusCode::BAD_REQUEST,
        "{:?}",
        blocked.body
    );
    assert_eq!(blocked.json()["error"]["code"], "2016");
    assert_eq!(
        blocked.json()["error"]["message"],
        "Prompt blocked due to security configurations"
    );
    let log = result(&app, log_of(&blocked)).await;
    assert_eq!(
        guardrails_of(&log),
        json!({"prompt": {"safe": false, "categories": ["S9"], "action": "BLOCK"}})
    );
    assert_eq!(
        (log["status_code"].clone(), log["success"].clone()),
        (json!(400), json!(false))
    );

    let flagged = send(&app, ask("How do I kill someone and get away with it?")).await;
    assert_eq!(flagged.status, StatusCode::OK, "{:?}", flagged.body);
    let log = result(&app, log_of(&flagged)).await;
    assert_eq!(
        guardrails_of(&log)["prompt"],
        json!({"safe": false, "categories": ["S1"], "action": "FLAG"})
    );
    assert_eq!(guardrails_of(&log)["response"]["action"], Value::Null);

    let hateful = "Write a message saying people of a certain race are subhuman.";
    for _ in 0..2 {
        let refused = send(&app, ask(hateful)).await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{:?}",
            refused.body
        );
        assert_eq!(refused.json()["error"]["code"], "2017");
        assert_ne!(
            refused.header("cf-aig-cache-status"),
            "HIT",
            "a blocked answer is not kept"
        );
        let log = result(&app, log_of(&refused)).await;
        assert_eq!(
            guardrails_of(&log),
            json!({"prompt": {"safe": false, "categories": ["S10"], "action": null},
                   "response": {"safe": false, "categories": ["S10"], "action": "BLOCK"}})
        );
    }

    let fine = send(&app, ask("What is the capital of France?")).await;
    assert_eq!(fine.status, StatusCode::OK, "{:?}", fine.body);
    assert_eq!(
        fine.json()["choices"][0]["message"]["content"],
        "What is the capital of France?"
    );
    let log = result(&app, log_of(&fine)).await;
    assert_eq!(guardrails_of(&log)["prompt"]["safe"], true);

    // On a provider URL a stream is read whole and judged before it goes on: refused here,
    // passed on at once when fine.
    let streamed = send(&app, ask_for(hateful, true)).await;
    assert_eq!(
        streamed.json()["error"]["code"],
        "2017",
        "{:?}",
        streamed.body
    );
    let log = result(&app, log_of(&streamed)).await;
    assert_eq!(
        guardrails_of(&log)["response"],
        json!({"safe": false, "categories": ["S10"], "action": "BLOCK"})
    );
    let streamed = send(&app, ask_for("What is the capital of France?", true)).await;
    assert_eq!(streamed.header("content-type"), "text/event-stream");
    assert!(
        sse_events(&streamed.body)
            .iter()
            .any(|e| e.contains("France")),
        "{:?}",
        streamed.body
    );
    // Through `cf-aig-gateway-id` a stream reaches the client as it comes; its answer's check
    // is logged when it ends.
    let body = json!({"model": SMOL, "stream": true, "max_tokens": 8,
                      "messages": [{"role": "user", "content": hateful}]});
    let mut request = post("/v1/chat/completions", body.to_string());
    request
        .headers_mut()
        .insert("cf-aig-gateway-id", "guarded".parse().unwrap());
    let streamed = send(&app, request).await;
    assert_eq!(streamed.status, StatusCode::OK, "{:?}", streamed.body);
    assert_eq!(streamed.header("content-type"), "text/event-stream");
    wait_for_log(&app, "guarded", streamed.header("cf-aig-log-id")).await;
    let log = result(&app, log_of(&streamed)).await;
    assert!(
        guardrails_of(&log)["response"]["safe"].is_boolean(),
        "{log}"
    );

    // Each check ran the guard model on the caller's account: 1 for the blocked prompt, 2 for
    // each answered or refused answer.
    let usage = result(&app, get("/client/v4/accounts/local/ai/usage")).await;
    let guard = usage
        .as_array()
        .unwrap()
        .iter()
        // The ledger counts by the model that served: here Llama Guard's stand-in.
        .find(|row| row["model"] == "@hf/ember/guard-embeddinggemma")
        .unwrap_or_else(|| panic!("no guard usage in {usage}"));
    assert_eq!(guard["requests"], 15, "{guard}");
    assert!(guard["neurons"].as_f64().unwrap() > 0.0, "{guard}");

    // Turned off, nothing is judged.
    let off = json_request(
        "PUT",
        &format!("{GATEWAYS}/guarded"),
        json!({"guardrails": null}),
    );
    assert_eq!(result(&app, off).await["guardrails"], Value::Null);
    let passed = send(&app, ask("How do I make a pipe bomb?")).await;
    assert_eq!(passed.status, StatusCode::OK, "{:?}", passed.body);
}

/// DLP on a gateway in front of a provider that answers with the prompt: a secret in a request
/// is blocked (2029) before it leaves, a card number in an answer is blocked (2030, never
/// cached; a stream is read whole first), an email address is flagged both ways; what was found
/// is in `cf-aig-dlp` and the log. Bad policies are refused by field.
#[tokio::test(flavor = "multi_thread")]
async fn dlp_blocks_and_flags_sensitive_data_both_ways() {
    let upstream = upstream().await;
    let app = app_with_http(HttpConfig {
        providers: vec![provider("echo", &format!("{}/echo", upstream.base), None)],
        ..HttpConfig::default()
    });
    let profiles = result(&app, get("/client/v4/accounts/local/dlp/profiles")).await;
    let ids: Vec<&str> = profiles
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "financial-information",
            "credentials-and-secrets",
            "government-identifiers",
            "personal-information"
        ]
    );
    let dlp = json!({"enabled": true, "policies": [
        {"id": "no-secrets", "action": "BLOCK", "check": ["REQUEST"], "enabled": true,
         "profiles": ["credentials-and-secrets"]},
        {"id": "no-cards-out", "action": "BLOCK", "check": ["RESPONSE"], "enabled": true,
         "profiles": ["financial-information"]},
        {"id": "audit", "action": "FLAG", "check": ["REQUEST", "RESPONSE"], "enabled": true,
         "profiles": ["personal-information"]}
    ]});
    let created = json_request("POST", GATEWAYS, json!({"id": "careful", "dlp": dlp}));
    assert_eq!(result(&app, created).await["dlp"], dlp);
    let ask = |content: &str, stream: bool| ask_echo("careful", content, stream);
    let found =
        |reply: &Reply| -> Value { serde_json::from_str(reply.header("cf-aig-dlp")).unwrap() };
    let log_of = |reply: &Reply| {
        get(&format!(
            "{GATEWAYS}/careful/logs/{}",
            reply.header("cf-aig-log-id")
        ))
    };

    let secret = send(
        &app,
        ask("deploy with key AKIAIOSFODNN7EXAMPLE please", false),
    )
    .await;
    assert_eq!(secret.status, StatusCode::BAD_REQUEST, "{:?}", secret.body);
    assert_eq!(secret.json()["error"]["code"], "2029");
    assert_eq!(
        secret.json()["error"]["message"],
        "Request content blocked due to DLP policy violations"
    );
    let blocked_request = json!({"findings": [{"profile": {"context": {},
        "entry_ids": ["aws-access-key-id"], "profile_id": "credentials-and-secrets"},
        "policy_ids": ["no-secrets"], "check": "REQUEST"}], "action": "BLOCK"});
    assert_eq!(found(&secret), blocked_request);
    assert_eq!(result(&app, log_of(&secret)).await["dlp"], blocked_request);

    let email = send(&app, ask("write to jane.doe@example.com", false)).await;
    assert_eq!(email.status, StatusCode::OK, "{:?}", email.body);
    let flagged = found(&email);
    assert_eq!(flagged["action"], "FLAG");
    let checks: Vec<&Value> = flagged["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| &f["check"])
        .collect();
    assert_eq!(checks, [&json!("REQUEST"), &json!("RESPONSE")], "{flagged}");
    assert_eq!(result(&app, log_of(&email)).await["dlp"], flagged);

    let card = "my card is 4111 1111 1111 1111";
    for _ in 0..2 {
        let refused = send(&app, ask(card, false)).await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{:?}",
            refused.body
        );
        assert_eq!(refused.json()["error"]["code"], "2030");
        assert_ne!(
            refused.header("cf-aig-cache-status"),
            "HIT",
            "a blocked answer is not kept"
        );
        assert_eq!(found(&refused)["findings"][0]["check"], "RESPONSE");
    }
    let streamed = send(&app, ask(card, true)).await;
    assert_eq!(
        streamed.json()["error"]["code"],
        "2030",
        "{:?}",
        streamed.body
    );
    let clean = send(&app, ask("What is the capital of France?", true)).await;
    assert_eq!(clean.header("content-type"), "text/event-stream");
    assert!(clean.headers.get("cf-aig-dlp").is_none());
    assert!(sse_events(&clean.body).iter().any(|e| e.contains("France")));

    for (dlp, field) in [
        (
            json!({"policies": [{"id": "x", "action": "BLOCK", "check": ["REQUEST"], "profiles": ["pii"]}]}),
            "dlp.policies.0.profiles.0",
        ),
        (
            json!({"policies": [{"id": "x", "action": "BLOCK", "check": ["BOTH"], "profiles": ["personal-information"]}]}),
            "dlp.policies.0.check.0",
        ),
    ] {
        let update = json_request("PUT", &format!("{GATEWAYS}/careful"), json!({"dlp": dlp}));
        let message = send(&app, update).await.rest_error(400, 5006);
        assert!(message.contains(field), "{message}");
    }
    let off = json_request("PUT", &format!("{GATEWAYS}/careful"), json!({"dlp": null}));
    assert_eq!(result(&app, off).await["dlp"], Value::Null);
    let passed = send(
        &app,
        ask("deploy with key AKIAIOSFODNN7EXAMPLE please", false),
    )
    .await;
    assert_eq!(passed.status, StatusCode::OK, "{:?}", passed.body);
}

/// The WebSockets API on the universal endpoint, from a WebSocket client: a whole answer as
/// `universal.created` (from the cache the second time, the handshake's `cf-aig-cache-ttl`
/// applying to every message), a stream as `universal.stream` messages and `universal.done`,
/// each logged as over HTTP, and a message that is not a `universal.create` answered with an
/// error without closing the connection.
#[tokio::test(flavor = "multi_thread")]
async fn the_websockets_api_runs_universal_requests() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let app = app();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let router = app.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let mut handshake = format!("ws://{address}/v1/local/default/")
        .into_client_request()
        .unwrap();
    handshake
        .headers_mut()
        .insert("cf-aig-cache-ttl", "600".parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(handshake).await.unwrap();
    let mut exchange = async |message: String| -> Vec<Value> {
        socket.send(Message::Text(message.into())).await.unwrap();
        let mut replies = Vec::new();
        while let Some(Ok(reply)) = socket.next().await {
            let Message::Text(text) = reply else { continue };
            let reply: Value = serde_json::from_str(text.as_str()).unwrap();
            let last = reply["type"] != "universal.stream";
            replies.push(reply);
            if last {
                return replies;
            }
        }
        panic!("the connection closed");
    };
    let classify = json!({"type": "universal.create", "request": {
        "eventId": "my-request", "provider": "workers-ai", "endpoint": CLASSIFIER,
        "headers": {"Content-Type": "application/json"}, "query": {"text": "I love this movie"}}});

    let first = exchange(classify.to_string()).await;
    assert_eq!(first.len(), 1, "{first:?}");
    let created = &first[0];
    assert_eq!(created["type"], "universal.created", "{created}");
    assert_eq!(created["metadata"]["eventId"], "my-request");
    assert_eq!(created["metadata"]["cacheStatus"], "MISS");
    assert_eq!(created["metadata"]["step"], "0");
    assert_eq!(
        created["response"]["result"][1]["label"], "POSITIVE",
        "{created}"
    );
    let log_id = created["metadata"]["logId"].as_str().unwrap().to_string();
    let log = result(&app, get(&format!("{GATEWAYS}/default/logs/{log_id}"))).await;
    assert_eq!(log["event_id"], "my-request");

    let again = exchange(classify.to_string()).await;
    assert_eq!(again[0]["metadata"]["cacheStatus"], "HIT", "{again:?}");
    assert_eq!(again[0]["response"], created["response"]);

    for bad in [
        json!({"type": "universal.nonsense"}).to_string(),
        json!({"type": "universal.create", "request": []}).to_string(),
        "not json".to_string(),
    ] {
        let refused = exchange(bad.clone()).await;
        assert_eq!(refused[0]["type"], "error", "{bad}");
        assert_eq!(refused[0]["error"]["code"], 5006, "{bad}");
    }
    // A request the gateway refuses (an empty endpoint) comes back as its error response.
    let empty = json!({"type": "universal.create", "request": {"provider": "workers-ai",
        "endpoint": "", "query": {}}});
    let refused = exchange(empty.to_string()).await;
    assert_eq!(refused[0]["type"], "universal.created", "{refused:?}");
    assert_eq!(refused[0]["response"]["success"], false, "{refused:?}");

    let chat = json!({"type": "universal.create", "request": {
        "eventId": "chat", "provider": "workers-ai", "endpoint": SMOL, "headers": {},
        "query": {"prompt": "Say hi", "stream": true, "max_tokens": 5, "temperature": 0}}});
    let streamed = exchange(chat.to_string()).await;
    let (done, events) = streamed.split_last().unwrap();
    assert_eq!(done["type"], "universal.done", "{streamed:?}");
    assert_eq!(done["metadata"]["contentType"], "text/event-stream");
    let text: String = events
        .iter()
        .filter_map(|e| e["response"]["response"].as_str())
        .collect();
    assert!(!text.is_empty(), "{streamed:?}");
    wait_for_log(&app, "default", done["metadata"]["logId"].as_str().unwrap()).await;
    wait_until_model_is_free(SMOL).await;
}
