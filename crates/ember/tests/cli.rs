//! The `ember` binary as a user runs it: `run` in-process (JSON and streamed, and with batch
//! invariance, which the binary sets up before any thread starts), `models list`,
//! `models pull` on an installed model (verifies, downloads nothing), `accounts`, `tokens` and
//! `usage`, and `serve` killed with SIGKILL under load then restarted on the same database.
//! Needs the default models installed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MINILM: &str = "@hf/sentence-transformers/all-minilm-l6-v2";

fn ember(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .env("EMBER_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn run_prints_the_result_object() {
    let output = ember(&[
        "run",
        "@hf/qwen/qwen2.5-coder-0.5b-instruct",
        "--input",
        r#"{"messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0, "max_tokens": 16}"#,
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["response"], "The capital of France is Paris.");
    assert_eq!(result["usage"]["completion_tokens"], 7);
}

#[test]
fn run_streams_text_and_reports_usage() {
    let output = ember(&[
        "run",
        "@hf/huggingfacetb/smollm2-135m-instruct",
        "--input",
        r#"{"prompt": "The capital of France is", "raw": true, "temperature": 0, "max_tokens": 8}"#,
        "--stream",
    ]);
    assert!(output.status.success());
    assert!(
        String::from_utf8(output.stdout)
            .unwrap()
            .starts_with(" Paris.")
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("\"completion_tokens\":8"));
}

#[test]
fn run_reports_bad_input_and_unknown_models() {
    let output = ember(&["run", "@cf/nobody/nothing", "--input", "{}"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("No such model @cf/nobody/nothing"));
    let output = ember(&[
        "run",
        "@hf/huggingfacetb/smollm2-135m-instruct",
        "--input",
        r#"{"prompt": 1}"#,
    ]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("/prompt"));
}

#[test]
fn run_with_batch_invariance_serves_q4_1_and_q4_k_models() {
    let input =
        r#"{"prompt": "The capital of France is", "raw": true, "temperature": 0, "max_tokens": 8}"#;
    // SmolLM2's Q4_1 and Qwen's Q4_K_M, whose weights the mode loads without repacking.
    for model in [
        "@hf/huggingfacetb/smollm2-135m-instruct",
        "@hf/qwen/qwen2.5-coder-0.5b-instruct",
    ] {
        let output = ember(&["run", model, "--batch-invariant", "--input", input]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{model}: {stderr}");
        let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let response = result["response"].as_str().unwrap();
        assert!(response.contains("Paris"), "{model}: {response}");
    }
}

#[test]
fn models_list_and_pull_of_an_installed_model() {
    let output = ember(&["models", "list"]);
    let text = String::from_utf8(output.stdout).unwrap();
    let minilm = text
        .lines()
        .find(|l| l.starts_with("@hf/sentence-transformers/all-minilm-l6-v2"))
        .unwrap();
    assert!(minilm.contains(" yes "), "{minilm}");
    assert!(text.contains("@cf/meta/llama-3.1-8b-instruct"));

    // Already installed: verified against the catalog sha256 without touching the network.
    let output = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args([
            "models",
            "pull",
            "@hf/sentence-transformers/all-minilm-l6-v2",
        ])
        .env("EMBER_PYPI_INDEX", "http://127.0.0.1:1/simple")
        .env("HF_ENDPOINT", "http://127.0.0.1:1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("already installed"));
}

/// A fresh database file for one test.
fn temp_db(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir.join("ember.db")
}

/// Runs `ember` on `db`; its stdout, or the test fails with its stderr.
fn admin(db: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .arg("--db")
        .arg(db)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "ember {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn accounts_tokens_and_usage_from_the_command_line() {
    let db = temp_db("admin");
    let id = admin(
        &db,
        &[
            "accounts",
            "create",
            "--name",
            "team",
            "--daily-free-neurons",
            "5",
        ],
    );
    let id = id.trim();
    assert_eq!(id.len(), 32);
    assert!(admin(&db, &["accounts", "list"]).contains(id));
    let updated = admin(&db, &["accounts", "update", id, "--plan", "paid"]);
    assert!(updated.contains("paid, 5 neurons"), "{updated}");
    let bearer = admin(
        &db,
        &[
            "tokens",
            "create",
            "--account",
            id,
            "--name",
            "ci",
            "--expires",
            "30d",
        ],
    );
    assert!(bearer.trim().starts_with("ember_"));
    let token_id = bearer.trim().split('_').nth(1).unwrap().to_string();
    let listed = admin(&db, &["tokens", "list", "--account", id]);
    assert!(
        listed.contains(&token_id) && listed.contains("live"),
        "{listed}"
    );
    assert!(!listed.contains(bearer.trim()), "secrets are never listed");
    admin(&db, &["tokens", "revoke", &token_id]);
    assert!(admin(&db, &["tokens", "list"]).contains("revoked"));
    let refused = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["tokens", "create", "--account", "nobody", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no account nobody"));
    let usage = admin(&db, &["usage", "--account", id]);
    assert!(usage.contains("total neurons: 0.0000"), "{usage}");
    let _ = std::fs::remove_dir_all(db.parent().unwrap());
}

/// `ember serve` on `db`, killed when dropped; `address` once it listens.
struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn start(db: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--require-auth",
                "--preload",
                MINILM,
            ])
            .arg("--db")
            .arg(db)
            .env("EMBER_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let mut lines = stderr.lines();
        let address = loop {
            let line = lines
                .next()
                .expect("ember serve exited before listening")
                .unwrap();
            if let Some(at) = line.find("listening on http://") {
                let rest = &line[at + "listening on http://".len()..];
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Server { child, address }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn embed(client: &reqwest::Client, server: &str, account: &str, token: &str) -> Option<f64> {
    let reply = client
        .post(format!(
            "http://{server}/client/v4/accounts/{account}/ai/v1/embeddings"
        ))
        .bearer_auth(token)
        .json(&serde_json::json!({"model": MINILM, "input": "hello world"}))
        .send()
        .await
        .ok()?;
    let body: serde_json::Value = reply.json().await.ok()?;
    body["usage"]["neurons"].as_f64()
}

async fn ledger_total(client: &reqwest::Client, server: &str, account: &str, token: &str) -> f64 {
    let body: serde_json::Value = client
        .get(format!(
            "http://{server}/client/v4/accounts/{account}/ai/usage"
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["neurons"].as_f64().unwrap())
        .sum()
}

/// A paid account on `db` and a token for it, made with the admin commands.
fn paid_account(db: &Path) -> (String, String) {
    let account = admin(db, &["accounts", "create", "--plan", "paid"]);
    let account = account.trim().to_string();
    let token = admin(db, &["tokens", "create", "--account", &account]);
    (account, token.trim().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_killed_under_load_loses_no_settled_request() {
    let db = temp_db("kill");
    let (account, token) = paid_account(&db);
    let client = reqwest::Client::new();

    let server = Server::start(&db);
    let received = Arc::new(Mutex::new(Vec::new()));
    let requests: Vec<_> = (0..200)
        .map(|_| {
            let (client, address) = (client.clone(), server.address.clone());
            let (account, token, received) = (account.clone(), token.clone(), received.clone());
            tokio::spawn(async move {
                if let Some(neurons) = embed(&client, &address, &account, &token).await {
                    received.lock().unwrap().push(neurons);
                }
            })
        })
        .collect();
    while received.lock().unwrap().len() < 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(server); // SIGKILL, mid-load.
    for request in requests {
        request.await.unwrap();
    }
    let received = received.lock().unwrap().clone();
    let cost = received[0];
    let told: f64 = received.iter().sum();
    assert!(received.len() < 200, "the kill came before the load ended");

    let server = Server::start(&db);
    let ledger = ledger_total(&client, &server.address, &account, &token).await;
    let unanswered = (200 - received.len()) as f64;
    assert!(
        ledger >= told - 1e-9,
        "every cost a client was told is in the ledger: {ledger} < {told}"
    );
    assert!(
        ledger <= told + unanswered * cost + 1e-9,
        "the ledger holds no more than the requests sent: {ledger}"
    );
    // The day's totals go on from there.
    let more = embed(&client, &server.address, &account, &token)
        .await
        .unwrap();
    let after = ledger_total(&client, &server.address, &account, &token).await;
    assert!(
        (after - (ledger + more)).abs() < 1e-9,
        "{after} vs {ledger} + {more}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(db.parent().unwrap());
}

/// The batch `id`'s row, read from the database the server writes.
async fn batch_row(db: &Path, id: &str) -> ember_store::Batch {
    let stores = ember_store::SqliteStore::open(db).unwrap();
    stores.batches.batch(id).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_killed_mid_batch_runs_every_request_exactly_once_after_restart() {
    let db = temp_db("batch-kill");
    let (account, token) = paid_account(&db);
    let client = reqwest::Client::new();
    let requests: Vec<_> = (0..150)
        .map(|i| serde_json::json!({"text": format!("queued sentence {i}"), "external_reference": i.to_string()}))
        .collect();
    let run = |address: &str| {
        format!("http://{address}/client/v4/accounts/{account}/ai/run/{MINILM}?queueRequest=true")
    };

    let queue = |address: &str, body: serde_json::Value| {
        let request = client.post(run(address)).bearer_auth(&token).json(&body);
        async move {
            request
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };

    let server = Server::start(&db);
    let queued = queue(&server.address, serde_json::json!({ "requests": requests })).await;
    let id = queued["result"]["request_id"].as_str().unwrap().to_string();
    while batch_row(&db, &id).await.finished < 10 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(server); // SIGKILL, mid-batch.
    let cut = batch_row(&db, &id).await;
    assert!(cut.finished < 150, "the kill came before the batch ended");

    let server = Server::start(&db);
    let done = loop {
        let polled = queue(&server.address, serde_json::json!({ "request_id": id })).await;
        if polled["result"]["responses"].is_array() {
            break polled["result"].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let responses = done["responses"].as_array().unwrap();
    assert_eq!(responses.len(), 150);
    for (i, response) in responses.iter().enumerate() {
        assert_eq!(response["success"], true, "{response}");
        assert_eq!(response["external_reference"], i.to_string());
        assert_eq!(response["result"]["shape"], serde_json::json!([1, 384]));
    }
    // Exactly one charge per request: the ledger counts 150 requests of the model, and their
    // neurons are the batch's.
    let usage: serde_json::Value = client
        .get(format!(
            "http://{}/client/v4/accounts/{account}/ai/usage",
            server.address
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = usage["result"].as_array().unwrap();
    let requests: u64 = rows
        .iter()
        .map(|row| row["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(requests, 150, "{usage}");
    let batch = batch_row(&db, &id).await;
    assert!(
        (ledger_total(&client, &server.address, &account, &token).await - batch.neurons).abs()
            < 1e-9
    );
    let listed = admin(&db, &["batch", "list"]);
    assert!(
        listed.contains(&id) && listed.contains("done") && listed.contains("150/150"),
        "{listed}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(db.parent().unwrap());
}
