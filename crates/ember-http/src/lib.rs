//! Ember's HTTP face, the only layer that speaks wire formats: the Workers AI REST routes, the
//! Worker binding protocol (native and through wrangler's proxy), the OpenAI-compatible API (with
//! its audio uploads), AI Gateway (its layer in front of the routes, and its API), the catalog
//! routes, the usage route, health and `/metrics`.
//! Every route but `/health` and generated images runs for a caller `ember_access` authenticated;
//! every response carries `cf-ai-req-id`; every run is admitted by `ember_access` through its
//! meter and settled once, by the metering layer, in the request log and ledger.

mod ai_gateway;
mod audio;
mod batch;
mod catalog;
mod error;
mod finetunes;
mod images;
mod messages;
mod metering;
mod openai;
mod rerank;
mod responses;
mod run;
mod sse;
mod usage;
pub mod wire;

pub use ai_gateway::{OpenAiCompatible, Provider};
pub use batch::{BatchSettings, Batches, process as process_batches};
pub use error::ApiError;
pub use images::GeneratedImages;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ember_access::{Access, AccessError};
use ember_ai_gateway::AiGateway;
use ember_core::Ember;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Largest request body accepted (Workers AI refuses payloads of 10 MB and more).
pub const MAX_BODY_BYTES: usize = 10_000_000;

/// Server settings that shape request handling.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Longest a non-streamed run may take.
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    /// Upstreams AI Gateway forwards to besides the local models.
    pub providers: Vec<Arc<dyn Provider>>,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            request_timeout: Duration::from_secs(600),
            max_body_bytes: MAX_BODY_BYTES,
            providers: Vec::new(),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub ember: Arc<Ember>,
    pub access: Arc<Access>,
    pub ai_gateway: Arc<AiGateway>,
    pub config: Arc<HttpConfig>,
    /// Turns true when in-flight runs must stop (shutdown grace period over).
    pub abort: watch::Receiver<bool>,
    /// Images generated for OpenAI clients that asked for URLs.
    pub generated_images: Arc<GeneratedImages>,
    /// The async batch queue's settings and its processor's view of interactive load.
    pub batches: Arc<Batches>,
}

/// Resolves once in-flight runs must stop; never, if the shutdown side has gone away.
pub(crate) async fn aborted(mut abort: watch::Receiver<bool>) {
    if abort.wait_for(|abort| *abort).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The current request's id, set by the middleware before any handler runs, and where its run
/// reports what it used.
#[derive(Debug, Clone)]
pub struct RequestId {
    pub id: String,
    pub report: RunReport,
}

/// A successful run's usage, set once when it settles (for a stream, at its end).
pub type RunReport = Arc<std::sync::OnceLock<ember_core::tasks::Usage>>;

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route(
            "/client/v4/accounts/{account_id}/ai/run/{*model}",
            post(run::rest_run)
                .get(run::rest_run_other)
                .patch(run::rest_run_other),
        )
        .route(
            "/client/v4/accounts/{account_id}/ai/models/search",
            get(catalog::rest_search),
        )
        .route(
            "/client/v4/accounts/{account_id}/ai/models/schema",
            get(catalog::rest_schema),
        )
        .route("/run", post(run::binding_run))
        .route("/ai-gateway/run", post(run::binding_run))
        .route("/ai-api/models/search", get(catalog::binding_search))
        .route(
            "/client/v4/accounts/{account_id}/ai/usage",
            get(usage::rest_usage),
        )
        .route(
            "/v1/{account_id}/{gateway_id}/workers-ai/{*model}",
            post(run::gateway_run),
        )
        .route("/metrics", get(metrics));
    let routes = ai_gateway::routes(openai::routes(finetunes::routes(api)))
        // Multipart uploads are read by axum's extractor, which applies this limit.
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone());
    // The stack around the routes, outermost first: authentication, then AI Gateway, which may
    // send one request to the routes more than once (retries, a universal request's steps),
    // then limits and metering, once per pass.
    let api = tower::ServiceBuilder::new()
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(ai_gateway::GatewayLayer::new(state.clone()))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metering::layer,
        ))
        .service(routes);
    Router::new()
        .route("/health", get(health))
        // Outside authentication: the unguessable id is the key, as with OpenAI's image URLs.
        .route("/v1/images/generated/{file}", get(images::generated))
        .fallback_service(api)
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

/// Liveness, the models that can run, and the loaded ones with how often each was loaded again
/// after its engine panicked.
async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let ember = &state.ember;
    let loaded: Vec<serde_json::Value> = ember
        .loaded_models()
        .into_iter()
        .map(|id| serde_json::json!({ "restarts": ember.metrics().restarts(&id), "model": id }))
        .collect();
    axum::Json(serde_json::json!({
        "status": "ok",
        "models": ember.catalog().models().iter().filter(|m| ember.is_installed(m)).map(|m| &m.id).collect::<Vec<_>>(),
        "loaded": loaded,
    }))
}

/// Prometheus scrape target (OpenMetrics text).
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.ember.metrics().encode(),
    )
}

async fn no_route(uri: Uri) -> Response {
    run::Form::of_path(uri.path()).error(&ApiError::NoRoute)
}

async fn method_not_allowed(uri: Uri) -> Response {
    run::Form::of_path(uri.path()).error(&ApiError::MethodNotAllowed)
}

/// Gives every request an id and every response the `cf-ai-req-id` header.
async fn request_id(mut request: Request, next: Next) -> Response {
    let id = uuid::Uuid::new_v4().to_string();
    request.extensions_mut().insert(RequestId {
        id: id.clone(),
        report: RunReport::default(),
    });
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("cf-ai-req-id", value);
    }
    response
}

/// Finds the caller: the account of the `Authorization: Bearer <token>`, which must be the
/// account a `/client/v4/accounts/{id}/` path names (or the local account in the open dev mode).
async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        // Anthropic's SDKs send the key as `x-api-key`.
        .or_else(|| {
            request
                .headers()
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
        })
        // A WebSockets API client authenticates with its AI Gateway token only.
        .or_else(|| {
            request
                .headers()
                .get("cf-aig-authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
        .map(str::trim);
    let path = request.uri().path();
    let path_account = path
        .strip_prefix("/client/v4/accounts/")
        .and_then(|rest| rest.split('/').next())
        .or(ai_gateway::provider_url(path).map(|(account, ..)| account))
        .or(ai_gateway::universal_url(path.trim_end_matches('/')).map(|(account, _)| account));
    match state.access.authenticate(bearer, path_account).await {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(error) => {
            let api_error = match error {
                AccessError::WrongAccount => ApiError::Forbidden,
                AccessError::Unauthenticated(refusal) => {
                    tracing::info!(?refusal, path, "refused a request");
                    ApiError::Unauthorized
                }
                other => ApiError::Infer(ember_core::InferError::Internal(other.to_string())),
            };
            run::Form::of_path(path).error(&api_error)
        }
    }
}
