//! The harness the HTTP test files share: one `Ember` per test binary with the real default
//! models from the model cache, an in-process router, and readers for replies and SSE bodies.

// Each test binary uses its own part of the harness.
#![allow(dead_code)]

pub mod fake;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, header};
use ember_access::clock::{Clock, SystemClock};
use ember_access::{Access, AccessConfig, credentials};
use ember_ai_gateway::AiGateway;
use ember_http::{AppState, HttpConfig};
use ember_store::{Account, Plan, SqliteStore, Stores};
use http_body_util::BodyExt;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use tokio::sync::watch;
use tower::ServiceExt;

pub const SMOL: &str = "@hf/huggingfacetb/smollm2-135m-instruct";
pub const QWEN: &str = "@hf/qwen/qwen2.5-coder-0.5b-instruct";
pub const MINILM: &str = "@hf/sentence-transformers/all-minilm-l6-v2";
pub const ALIAS: &str = "@cf/meta/llama-3.1-8b-instruct";

/// One `Ember` for all tests in a test binary, so each model loads once.
pub fn ember() -> Arc<ember_core::Ember> {
    static EMBER: OnceLock<Arc<ember_core::Ember>> = OnceLock::new();
    EMBER
        .get_or_init(|| {
            let aliases = HashMap::from([(ALIAS.to_string(), SMOL.to_string())]);
            // One sequence per model: tests running in parallel queue instead of sharing
            // batches, so their greedy outputs do not depend on each other (batch shapes move
            // logits by rounding; see crates/ember-engines/tests/generation_reference.rs).
            let engine = engine_config(1);
            let ember = ember::open_ember(
                &ember_core::installed::default_home(),
                None,
                aliases,
                &engine,
            )
            .unwrap();
            for id in [SMOL, QWEN, MINILM] {
                let spec = ember.resolve(id).unwrap();
                assert!(
                    ember.is_installed(spec),
                    "{id} is not installed: run `ember models pull --defaults`"
                );
            }
            Arc::new(ember)
        })
        .clone()
}

pub fn engine_config(max_sequences: u32) -> ember::config::EngineConfig {
    ember::config::EngineOptions {
        max_sequences: Some(max_sequences),
        kv_cells: Some(8192),
        ..Default::default()
    }
    .resolve()
}

pub struct App {
    pub router: Router,
    /// What the router serves, for tests that start the batch processor on it.
    pub state: AppState,
    pub store: Stores,
    pub abort: watch::Sender<bool>,
}

/// A router over a fresh in-memory store, with the access settings and clock.
pub fn app_with(config: HttpConfig, access: AccessConfig, clock: Arc<dyn Clock>) -> App {
    app_on(ember(), config, access, clock)
}

/// A router over `ember` (real models or the fake kit's) and a fresh in-memory store.
pub fn app_on(
    ember: Arc<ember_core::Ember>,
    config: HttpConfig,
    access: AccessConfig,
    clock: Arc<dyn Clock>,
) -> App {
    let store = SqliteStore::in_memory().unwrap();
    let (abort, abort_rx) = watch::channel(false);
    let state = AppState {
        ember,
        access: Arc::new(Access::new(store.clone(), clock.clone(), access)),
        ai_gateway: Arc::new(AiGateway::new(store.clone(), clock)),
        config: Arc::new(config),
        abort: abort_rx,
        generated_images: Default::default(),
        batches: Default::default(),
    };
    App {
        router: ember_http::router(state.clone()),
        state,
        store,
        abort,
    }
}

/// The dev-mode app: no accounts, so no token needed.
pub fn app() -> App {
    app_with_http(HttpConfig::default())
}

/// The dev-mode app with these HTTP settings.
pub fn app_with_http(config: HttpConfig) -> App {
    app_with(config, AccessConfig::default(), Arc::new(SystemClock))
}

/// Waits until `model`'s one sequence is free again after a test dropped a stream: a run that
/// needs it completes. A test binary must not exit while a model thread is inside llama.cpp,
/// whose static destructors run at exit.
pub async fn wait_until_model_is_free(model: &str) {
    let input = serde_json::json!({"prompt": "x", "raw": true, "max_tokens": 1});
    let ember = ember();
    let target = ember.target(model).unwrap();
    let input =
        ember_http::wire::parse(ember_http::wire::Incoming::new(target, &input, None)).unwrap();
    let run = ember
        .run(target, input, &ember_core::RunOptions::default())
        .await
        .unwrap();
    assert!(matches!(run.output, ember_core::RunOutput::Completion(_)));
}

/// A new account on `app`'s store, with a token for it.
pub async fn account(app: &App, plan: Plan, allocation: f64) -> (Account, String) {
    let accounts = app.store.accounts.as_ref();
    let account = credentials::create_account(accounts, "team", plan, allocation, 0)
        .await
        .unwrap();
    let token = credentials::issue_token(accounts, &account.id, "t", None, 0)
        .await
        .unwrap()
        .bearer;
    (account, token)
}

/// `Authorization: Bearer <token>` on a request.
pub fn with_token(mut request: Request<Body>, token: &str) -> Request<Body> {
    request.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    request
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// Asserts a REST error envelope with this status and code.
    pub fn rest_error(&self, status: u16, code: u64) -> String {
        assert_eq!(self.status.as_u16(), status, "{:?}", self.body);
        let body = self.json();
        assert_eq!(body["success"], false);
        assert_eq!(body["result"], Value::Null);
        assert_eq!(body["errors"][0]["code"], code, "{body}");
        body["errors"][0]["message"].as_str().unwrap().to_string()
    }

    /// Asserts a binding error object with this status and code.
    pub fn binding_error(&self, status: u16, code: u64) -> Value {
        assert_eq!(self.status.as_u16(), status, "{:?}", self.body);
        let body = self.json();
        assert_eq!(body["internalCode"], code, "{body}");
        assert!(
            body["name"].is_string()
                && body["description"].is_string()
                && body["message"].is_string()
        );
        body
    }
}

pub async fn send(app: &App, request: Request<Body>) -> Reply {
    let response = app.router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(
        !headers.get("cf-ai-req-id").unwrap().is_empty(),
        "every response carries cf-ai-req-id"
    );
    Reply {
        status,
        headers,
        body,
    }
}

pub fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap()
}

/// A binding request (`env.AI.run(model, inputs)`) as workerd sends it.
pub fn binding_request(path: &str, model: &str, inputs: Value) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .header("cf-consn-model-id", model)
        .header("cf-consn-sdk-version", "2.0.0")
        .body(Body::from(
            serde_json::json!({"inputs": inputs, "options": {}}).to_string(),
        ))
        .unwrap()
}

pub fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

/// Parses an SSE body into its `data:` payloads, checking the framing on the way.
pub fn sse_events(body: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(body).expect("the stream is valid UTF-8");
    assert!(text.ends_with("\n\n"), "events end with a blank line");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|event| {
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"))
                .to_string()
        })
        .collect()
}

pub async fn serve_on_socket(
    router: Router,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (address, server)
}

/// Installs the catalog model `id` into the model cache `home` from generated fixture files:
/// each of its catalog files from the first of `folders` that has it, with a manifest, so that it
/// counts as installed (the files are the fixture's, not the Hub's).
pub fn install_fixture(home: &std::path::Path, id: &str, folders: &[std::path::PathBuf]) {
    use ember_core::installed::{self, InstallManifest, InstalledFile};
    let catalog = ember_core::Catalog::builtin().unwrap();
    let spec = catalog.get(id).unwrap();
    let dir = installed::model_dir(home, spec);
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = std::collections::BTreeMap::new();
    for file in &spec.files {
        let source = folders
            .iter()
            .map(|folder| folder.join(&file.path))
            .find(|path| path.is_file())
            .unwrap_or_else(|| panic!("no fixture has {}", file.path));
        let target = dir.join(&file.path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        let size =
            std::fs::copy(&source, &target).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        let sha256 = String::new();
        files.insert(file.path.clone(), InstalledFile { sha256, size });
    }
    let manifest = InstallManifest {
        model: id.into(),
        source: "fixture".into(),
        files,
    };
    installed::write_manifest(&dir, &manifest).unwrap();
}
