//! Accounts, tokens, Neurons and rate limits through the real router, with a real embedding
//! model (MiniLM: cheap, and its cost per request is exact) and a clock the tests move: the free
//! allocation runs out exactly at its boundary and comes back at 00:00 UTC, 200 parallel
//! requests never overshoot it by more than what was in flight, rate limits slide and say when
//! to retry, revoked and expired tokens are refused at once, and accounts cannot see each other.

mod common;

use common::*;
use ember_access::clock::{Clock, ManualClock};
use ember_access::{AccessConfig, credentials};
use ember_core::tasks::estimate_usage;
use ember_http::HttpConfig;
use ember_store::{Account, Plan};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

const DAY_MS: i64 = 86_400_000;
/// 2026-11-23T00:00:00Z.
const MIDNIGHT: i64 = 1_795_392_000_000;

struct Setup {
    app: App,
    clock: Arc<ManualClock>,
}

fn setup(access: AccessConfig) -> Setup {
    let clock = Arc::new(ManualClock::new(MIDNIGHT + 12 * 3_600_000));
    let app = app_with(HttpConfig::default(), access, clock.clone());
    Setup { app, clock }
}

fn locked() -> AccessConfig {
    AccessConfig {
        open_without_accounts: false,
        ..AccessConfig::default()
    }
}

fn embeddings_body() -> Value {
    json!({"model": MINILM, "input": "hello world"})
}

/// One OpenAI embeddings request; its reply.
async fn embed(app: &App, account: &Account, token: &str) -> Reply {
    let path = format!("/client/v4/accounts/{}/ai/v1/embeddings", account.id);
    send(
        app,
        with_token(post(&path, embeddings_body().to_string()), token),
    )
    .await
}

fn neurons_of(reply: &Reply) -> f64 {
    assert_eq!(reply.status.as_u16(), 200, "{:?}", reply.body);
    reply.json()["usage"]["neurons"].as_f64().unwrap()
}

/// What one "hello world" embedding costs on MiniLM, measured on a paid account.
async fn cost_of_one(app: &App) -> f64 {
    let (paid, token) = account(app, Plan::Paid, 0.0).await;
    neurons_of(&embed(app, &paid, &token).await)
}

async fn usage(app: &App, account: &Account, token: &str, query: &str) -> Vec<Value> {
    let path = format!("/client/v4/accounts/{}/ai/usage?{query}", account.id);
    let reply = send(app, with_token(get(&path), token)).await;
    assert_eq!(reply.status.as_u16(), 200, "{:?}", reply.body);
    reply.json()["result"].as_array().unwrap().clone()
}

fn total_neurons(rows: &[Value]) -> f64 {
    rows.iter()
        .map(|row| row["neurons"].as_f64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_free_allocation_runs_out_exactly_at_its_boundary_and_resets_at_midnight() {
    let Setup { app, clock } = setup(locked());
    let cost = cost_of_one(&app).await;
    // 4 tokens at 1841 neurons per million.
    assert!((cost - 4.0 * 1841.0 / 1e6).abs() < 1e-9, "{cost}");
    // An allocation of exactly three requests, summed as the meter sums them.
    let (free, token) = account(&app, Plan::Free, cost + cost + cost).await;
    clock.set(MIDNIGHT + DAY_MS - 2_000);
    for _ in 0..3 {
        assert_eq!(neurons_of(&embed(&app, &free, &token).await), cost);
    }
    let refused = embed(&app, &free, &token).await;
    assert_eq!(refused.status.as_u16(), 429);
    let error = refused.json()["error"].clone();
    assert_eq!(error["type"], "insufficient_quota");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("You have used up your daily free allocation of"),
        "{error}"
    );
    assert_eq!(
        refused.header("retry-after"),
        "2",
        "the allocation resets at 00:00 UTC"
    );
    // The native route says the same with the documented code.
    let native = format!("/client/v4/accounts/{}/ai/run/{MINILM}", free.id);
    let reply = send(
        &app,
        with_token(post(&native, json!({"text": "x"}).to_string()), &token),
    )
    .await;
    reply.rest_error(429, 3036);

    clock.set(MIDNIGHT + DAY_MS);
    assert_eq!(neurons_of(&embed(&app, &free, &token).await), cost);
    let rows = usage(&app, &free, &token, "since=2026-11-23&until=2026-11-24").await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["date"], "2026-11-23");
    assert_eq!(rows[0]["model"], MINILM);
    // Three charged, two refused (counted as errors, not charged).
    assert_eq!(rows[0]["requests"], 5);
    assert_eq!(rows[0]["errors"], 2);
    assert_eq!(rows[0]["input_tokens"], 12);
    assert_eq!(rows[0]["neurons"].as_f64().unwrap(), cost + cost + cost);
    assert_eq!(rows[1]["date"], "2026-11-24");
    assert_eq!(rows[1]["neurons"].as_f64().unwrap(), cost);
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_requests_never_overshoot_by_more_than_what_was_in_flight() {
    let Setup { app, .. } = setup(locked());
    let cost = cost_of_one(&app).await;
    let allocation = 20.0 * cost;
    let (free, token) = account(&app, Plan::Free, allocation).await;
    let app = Arc::new(app);
    let replies = futures::future::join_all((0..200).map(|_| {
        let (app, free, token) = (app.clone(), free.clone(), token.clone());
        tokio::spawn(async move { embed(&app, &free, &token).await })
    }))
    .await;
    let mut charged = 0.0;
    let mut succeeded = 0;
    for reply in replies {
        let reply = reply.unwrap();
        match reply.status.as_u16() {
            200 => {
                charged += neurons_of(&reply);
                succeeded += 1;
            }
            429 => assert_eq!(reply.json()["error"]["type"], "insufficient_quota"),
            other => panic!("unexpected {other}: {:?}", reply.body),
        }
    }
    let ledger = total_neurons(&usage(&app, &free, &token, "").await);
    assert!(
        (ledger - charged).abs() < 1e-9,
        "the ledger holds what the clients were told: {ledger} vs {charged}"
    );
    assert!((1..200).contains(&succeeded), "{succeeded}");
    // Each admitted request saw spent + reserved below the allocation, and a reservation is
    // at least the real cost, so the overshoot is below one request's reservation.
    let spec = ember().resolve(MINILM).unwrap().clone();
    let target = ember_core::Target {
        requested: &spec,
        served: &spec,
    };
    let json = json!({"text": "hello world"});
    let input =
        ember_http::wire::parse(ember_http::wire::Incoming::new(target, &json, None)).unwrap();
    let reservation = estimate_usage(&spec, &input, embeddings_body().to_string().len()).neurons;
    assert!(reservation >= cost);
    assert!(
        ledger < allocation + reservation,
        "spent {ledger} of {allocation} (one reservation: {reservation})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paid_account_goes_on_and_the_excess_is_billable() {
    let Setup { app, .. } = setup(locked());
    let cost = cost_of_one(&app).await;
    let (paid, token) = account(&app, Plan::Paid, cost + cost).await;
    for _ in 0..3 {
        neurons_of(&embed(&app, &paid, &token).await);
    }
    let rows = usage(&app, &paid, &token, "").await;
    assert_eq!(rows[0]["requests"], 3);
    assert!((rows[0]["billable_neurons"].as_f64().unwrap() - cost).abs() < 1e-12);
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_slide_per_task_and_say_when_to_retry() {
    let Setup { app, clock } = setup(AccessConfig {
        task_limits: HashMap::from([(ember_core::catalog::Task::TextEmbeddings, 3)]),
        ..locked()
    });
    let (team, token) = account(&app, Plan::Paid, 10_000.0).await;
    for _ in 0..3 {
        neurons_of(&embed(&app, &team, &token).await);
        clock.advance(10_000);
    }
    // Requests at 0, 10 and 20 s: the first leaves the window at 60 s.
    let limited = embed(&app, &team, &token).await;
    assert_eq!(limited.status.as_u16(), 429);
    assert_eq!(limited.json()["error"]["code"], "rate_limit_exceeded");
    assert_eq!(limited.header("retry-after"), "30");
    let native = format!("/client/v4/accounts/{}/ai/run/{MINILM}", team.id);
    let reply = send(
        &app,
        with_token(post(&native, json!({"text": "x"}).to_string()), &token),
    )
    .await;
    let message = reply.rest_error(429, 3021);
    assert_eq!(
        message,
        "rate limiting: inference request per min rate reached"
    );
    clock.advance(30_000);
    neurons_of(&embed(&app, &team, &token).await);
    // Another account has its own window.
    let (other, other_token) = account(&app, Plan::Paid, 10_000.0).await;
    neurons_of(&embed(&app, &other, &other_token).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_and_expired_tokens_are_refused_at_once() {
    let Setup { app, clock } = setup(locked());
    let (team, token) = account(&app, Plan::Paid, 10_000.0).await;
    let expiring = credentials::issue_token(
        app.store.accounts.as_ref(),
        &team.id,
        "short",
        Some(clock.now_ms() + 1_000),
        0,
    )
    .await
    .unwrap();
    neurons_of(&embed(&app, &team, &expiring.bearer).await);
    clock.advance(1_000);
    let expired = embed(&app, &team, &expiring.bearer).await;
    assert_eq!(expired.status.as_u16(), 401);
    neurons_of(&embed(&app, &team, &token).await);
    let id = token.split('_').nth(1).unwrap();
    assert!(app.store.accounts.revoke_token(id, 0).await.unwrap());
    assert_eq!(embed(&app, &team, &token).await.status.as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn accounts_cannot_run_under_or_read_each_other() {
    let Setup { app, .. } = setup(locked());
    let (a, a_token) = account(&app, Plan::Paid, 10_000.0).await;
    let (b, b_token) = account(&app, Plan::Paid, 10_000.0).await;
    neurons_of(&embed(&app, &b, &b_token).await);
    // A's token on B's paths.
    let run = format!("/client/v4/accounts/{}/ai/run/{MINILM}", b.id);
    send(
        &app,
        with_token(post(&run, json!({"text": "x"}).to_string()), &a_token),
    )
    .await
    .rest_error(403, 10000);
    let usage_path = format!("/client/v4/accounts/{}/ai/usage", b.id);
    send(&app, with_token(get(&usage_path), &a_token))
        .await
        .rest_error(403, 10000);
    // A's own usage holds none of B's.
    assert!(usage(&app, &a, &a_token, "").await.is_empty());
    assert_eq!(usage(&app, &b, &b_token, "").await.len(), 1);
    // Bad usage parameters name the field.
    let bad = format!("/client/v4/accounts/{}/ai/usage?since=yesterday", a.id);
    let message = send(&app, with_token(get(&bad), &a_token))
        .await
        .rest_error(400, 5006);
    assert!(message.contains("since"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_mode_runs_under_the_local_account_until_an_account_exists() {
    let Setup { app, .. } = setup(AccessConfig::default());
    let path = format!("/client/v4/accounts/anything/ai/run/{MINILM}");
    let reply = send(&app, post(&path, json!({"text": "hi"}).to_string())).await;
    assert_eq!(reply.status.as_u16(), 200);
    let rows = usage(
        &app,
        &Account {
            id: "local".into(),
            name: String::new(),
            plan: Plan::Paid,
            daily_free_neurons: 0.0,
            created_at_ms: 0,
        },
        "dummy",
        "",
    )
    .await;
    assert_eq!(rows[0]["requests"], 1);
    account(&app, Plan::Free, 1.0).await;
    send(&app, post(&path, json!({"text": "hi"}).to_string()))
        .await
        .rest_error(401, 10000);
}
