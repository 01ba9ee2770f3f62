//! AI Gateway in front of the run routes, as one middleware layer: a request that names a
//! gateway (a provider URL `/v1/{account}/{gateway}/workers-ai/...`, a `cf-aig-gateway-id`
//! header, or the binding's `options.gateway`) is held to the gateway's rate limit, answered
//! from its cache when an identical one was kept, and logged with what it used; the route behind
//! it runs as for any request. A stream is passed on chunk by chunk and cached and logged when it
//! ends. The gateway and log routes are in `routes.rs`, the options' wire forms in `options.rs`.

mod options;
mod routes;

pub(crate) use routes::{binding_helper, routes};

use crate::error::ApiError;
use crate::run::{Form, SERVED_BY_HEADER};
use crate::{AppState, RequestId};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ember_access::Caller;
use ember_ai_gateway::{AiGatewayError, CachePlan, RequestOptions};
use ember_core::InferError;
use ember_store::{CachedResponse, Gateway, GatewayLog, gateway_cache_key};
use futures::StreamExt;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The provider Ember serves itself; other providers are not wired yet.
const LOCAL_PROVIDER: &str = "workers-ai";

/// The headers a cached response keeps; the rest are made again for each request.
const CACHED_HEADERS: [&str; 2] = ["content-type", SERVED_BY_HEADER];

/// How a request names its gateway.
enum Entry {
    /// `/v1/{account}/{gateway}/{workers-ai|compat}/...`.
    ProviderUrl { gateway: String },
    /// `cf-aig-gateway-id` on a REST or OpenAI route.
    Header { gateway: String },
    /// `options.gateway` in a binding request's body (`/ai-gateway/run`, also through wrangler).
    Binding,
}

/// The provider URL's parts: account, gateway, provider and the path after it.
pub(crate) fn provider_url(path: &str) -> Option<(&str, &str, &str, &str)> {
    let mut parts = path.strip_prefix("/v1/")?.splitn(4, '/');
    let (account, gateway, provider) = (parts.next()?, parts.next()?, parts.next()?);
    let rest = parts.next().unwrap_or_default();
    matches!(provider, "workers-ai" | "compat").then_some((account, gateway, provider, rest))
}

fn entry_of(request: &Request) -> Option<Entry> {
    if request.method() != Method::POST {
        return None;
    }
    let path = request.uri().path();
    if let Some((_, gateway, ..)) = provider_url(path) {
        return Some(Entry::ProviderUrl {
            gateway: gateway.to_string(),
        });
    }
    let headers = request.headers();
    if let Some(gateway) = headers.get("cf-aig-gateway-id") {
        return Some(Entry::Header {
            gateway: String::from_utf8_lossy(gateway.as_bytes()).into_owned(),
        });
    }
    let forwarded = headers
        .get("x-forwarded")
        .and_then(|v| v.to_str().ok())
        .and_then(|url| url.parse::<axum::http::Uri>().ok());
    let binding_path = match &forwarded {
        Some(url) if path.ends_with("/ai/run/proxy") => url.path(),
        _ => path,
    };
    (binding_path == "/ai-gateway/run").then_some(Entry::Binding)
}

/// The layer: requests that name no gateway pass straight through.
pub(crate) async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(entry) = entry_of(&request) else {
        return next.run(request).await;
    };
    let form = match entry {
        Entry::Binding => Form::Binding,
        _ => Form::of_path(request.uri().path()),
    };
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, state.config.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(_) => return form.error(&ApiError::Infer(InferError::TooLarge)),
    };
    match prepare(&state, &parts, &bytes, entry, form).await {
        Ok(prepared) => through(state, prepared, parts, bytes, next).await,
        // A binding request whose body is not JSON (a stream input) carries no gateway.
        Err(None) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(Some(error)) => form.error(&error),
    }
}

/// A request on its way through a gateway.
struct Prepared {
    form: Form,
    gateway: Gateway,
    options: RequestOptions,
    plan: Option<CachePlan>,
    log: GatewayLog,
}

/// Finds the gateway and reads the options; `Err(None)` lets the request pass without one.
async fn prepare(
    state: &AppState,
    parts: &Parts,
    body: &Bytes,
    entry: Entry,
    form: Form,
) -> Result<Prepared, Option<ApiError>> {
    let caller = parts
        .extensions
        .get::<Caller>()
        .ok_or_else(|| Some(internal("the gateway layer ran before authentication")))?;
    let json: Option<Value> = serde_json::from_slice(body).ok();
    // What makes two requests the same, besides their model and body: the route (the binding's
    // is the same whether it came straight or through wrangler's proxy).
    let route = match entry {
        Entry::Binding => "binding".to_string(),
        _ => format!("{} {}", parts.method, parts.uri.path()),
    };
    let (gateway_id, options, fingerprint_body) = match entry {
        Entry::Binding => {
            let Some(mut envelope) = json.clone() else {
                return Err(None);
            };
            let gateway_options = envelope
                .get_mut("options")
                .and_then(|options| options.as_object_mut()?.remove("gateway"));
            let Some(gateway_options) = gateway_options else {
                return Err(None);
            };
            let (id, options) = options::from_binding(&gateway_options).map_err(Some)?;
            // The gateway's own options do not make two requests different.
            (id, options, envelope.to_string().into_bytes())
        }
        Entry::ProviderUrl { gateway } | Entry::Header { gateway } => {
            let options = options::from_headers(&parts.headers).map_err(Some)?;
            (gateway, options, body.to_vec())
        }
    };
    let ai_gateway = &state.ai_gateway;
    let account = &caller.account.id;
    let gateway = ai_gateway
        .open(account, &gateway_id)
        .await
        .map_err(|e| Some(gateway_error(e)))?;
    if let Some((path_account, ..)) = provider_url(parts.uri.path()) {
        check_provider_url(state, caller, &gateway, path_account, &parts.headers).await?;
    }
    ai_gateway
        .admit(&gateway)
        .await
        .map_err(|e| Some(gateway_error(e)))?;
    let model = model_of(parts, json.as_ref());
    let mut fingerprint = format!("{route}\n{model}\n").into_bytes();
    fingerprint.extend(fingerprint_body);
    let plan = ai_gateway.cache_plan(&gateway, &options, &fingerprint);
    let log = GatewayLog {
        id: uuid::Uuid::new_v4().simple().to_string(),
        account_id: account.clone(),
        gateway_id: gateway.id.clone(),
        created_at_ms: ai_gateway.now_ms(),
        provider: LOCAL_PROVIDER.to_string(),
        model_type: state
            .ember
            .resolve(&model)
            .ok()
            .map(|spec| spec.task.display_name().to_string()),
        model,
        path: parts.uri.path().to_string(),
        custom_cost: options.custom_cost.is_some(),
        metadata: options.metadata.clone(),
        event_id: options.event_id.clone(),
        request_content_type: header_text(&parts.headers, header::CONTENT_TYPE.as_str()),
        request_size: body.len() as u64,
        request_body: Some(body.to_vec()),
        ..GatewayLog::default()
    };
    Ok(Prepared {
        form,
        gateway,
        options,
        plan,
        log,
    })
}

/// A provider URL names its account, which must be the caller's, and a gateway with
/// authentication on also wants `cf-aig-authorization` (both waived in the open dev mode).
async fn check_provider_url(
    state: &AppState,
    caller: &Caller,
    gateway: &Gateway,
    path_account: &str,
    headers: &HeaderMap,
) -> Result<(), Option<ApiError>> {
    let open = state
        .access
        .is_open()
        .await
        .map_err(|e| Some(internal(e.to_string())))?;
    if open {
        return Ok(());
    }
    if path_account != caller.account.id {
        return Err(Some(ApiError::Forbidden));
    }
    if gateway.authentication {
        let token = headers
            .get("cf-aig-authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if state
            .access
            .authenticate(token, Some(path_account))
            .await
            .is_err()
        {
            return Err(Some(ApiError::Unauthorized));
        }
    }
    Ok(())
}

/// The model a request names: in its path (REST and provider URLs), the binding's header, or
/// the OpenAI body (`workers-ai/` prefix of the compat route dropped).
fn model_of(parts: &Parts, json: Option<&Value>) -> String {
    let path = parts.uri.path();
    let in_path = path
        .split_once("/ai/run/")
        .map(|(_, model)| model)
        .or_else(|| {
            provider_url(path)
                .filter(|(_, _, provider, rest)| {
                    *provider == LOCAL_PROVIDER && !rest.starts_with("v1/")
                })
                .map(|(.., rest)| rest)
        });
    if let Some(model) = in_path.filter(|model| *model != "proxy") {
        // Clients may encode the model's slashes (`@cf%2Fmeta%2F...`), as the SDKs do.
        return percent_encoding::percent_decode_str(model)
            .decode_utf8_lossy()
            .into_owned();
    }
    if let Some(model) = header_text(&parts.headers, "cf-consn-model-id") {
        return model;
    }
    let model = json
        .and_then(|body| body.get("model"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    model
        .strip_prefix("workers-ai/")
        .unwrap_or(model)
        .to_string()
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

fn internal(detail: impl Into<String>) -> ApiError {
    ApiError::Infer(InferError::Internal(detail.into()))
}

pub(crate) fn gateway_error(error: AiGatewayError) -> ApiError {
    match error {
        AiGatewayError::NotFound(_) => ApiError::NotFound(error.to_string()),
        AiGatewayError::Exists(_) => ApiError::Conflict(error.to_string()),
        AiGatewayError::Invalid { field, message } => {
            ApiError::Infer(InferError::invalid(&field, message))
        }
        AiGatewayError::RateLimited { retry_after_secs } => {
            ApiError::GatewayRateLimited { retry_after_secs }
        }
        AiGatewayError::Store(error) => internal(error.to_string()),
    }
}

/// Answers from the cache, or runs the request and keeps what it answered.
async fn through(
    state: AppState,
    prepared: Prepared,
    parts: Parts,
    body: Bytes,
    next: Next,
) -> Response {
    let started = Instant::now();
    let Prepared {
        form,
        gateway,
        options,
        plan,
        mut log,
    } = prepared;
    if let Some(plan) = &plan {
        match state.ai_gateway.cached(plan).await {
            Ok(Some(hit)) => {
                log.cached = true;
                log.success = true;
                let mut response = replay(&hit);
                mark(response.headers_mut(), &log.id, true, true);
                let recorder = Recorder::new(state, gateway, options, None, log, started);
                let body = hit.body.clone();
                recorder
                    .finish(response.status(), response.headers(), body, None)
                    .await;
                return response;
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "the response cache could not be read"),
        }
    }
    let report = parts
        .extensions
        .get::<RequestId>()
        .map(|r| r.report.clone());
    let request = Request::from_parts(parts, Body::from(body));
    let timeout = options.request_timeout_ms.map(Duration::from_millis);
    let response = match timeout {
        Some(limit) => match tokio::time::timeout(limit, next.run(request)).await {
            Ok(response) => response,
            Err(_) => form.error(&ApiError::Infer(InferError::Timeout)),
        },
        None => next.run(request).await,
    };
    let plan = plan.filter(|_| response.status() == StatusCode::OK);
    let recorder = Recorder::new(state, gateway, options, plan, log, started);
    let streamed = header_text(response.headers(), header::CONTENT_TYPE.as_str())
        .is_some_and(|t| t.starts_with("text/event-stream"));
    let (mut head, body) = response.into_parts();
    mark(
        &mut head.headers,
        &recorder.log.id,
        recorder.plan_was_made,
        false,
    );
    if streamed {
        let body = recorder.tee(head.status, head.headers.clone(), body, report);
        return Response::from_parts(head, body);
    }
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let response = Response::from_parts(head, Body::from(bytes.clone()));
    let usage = report.and_then(|r| r.get().copied());
    recorder
        .finish(response.status(), response.headers(), bytes.to_vec(), usage)
        .await;
    response
}

/// A kept response, sent again: a stream event by event.
fn replay(hit: &CachedResponse) -> Response {
    let status = StatusCode::from_u16(hit.status).unwrap_or(StatusCode::OK);
    let body = if hit
        .headers
        .iter()
        .any(|(name, value)| name == "content-type" && value.starts_with("text/event-stream"))
    {
        let events: Vec<Result<Bytes, std::io::Error>> = hit
            .body
            .split_inclusive(|&b| b == b'\n')
            .map(|line| Ok(Bytes::copy_from_slice(line)))
            .collect();
        Body::from_stream(futures::stream::iter(events))
    } else {
        Body::from(hit.body.clone())
    };
    let mut response = (status, body).into_response();
    for (name, value) in &hit.headers {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::try_from(name.as_str()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// Names the log and, when the request could be cached, whether it was.
fn mark(headers: &mut HeaderMap, log_id: &str, cacheable: bool, hit: bool) {
    if let Ok(value) = HeaderValue::from_str(log_id) {
        headers.insert("cf-aig-log-id", value);
    }
    if cacheable {
        let status = if hit { "HIT" } else { "MISS" };
        headers.insert("cf-aig-cache-status", HeaderValue::from_static(status));
    }
}

/// Writes a gateway request's log and keeps its response in the cache, once it is whole.
struct Recorder {
    state: AppState,
    gateway: Gateway,
    options: RequestOptions,
    /// Where the response is kept (a successful one, on a cacheable request).
    plan: Option<CachePlan>,
    /// Whether the request could be cached at all (for `cf-aig-cache-status`).
    plan_was_made: bool,
    log: GatewayLog,
    started: Instant,
}

impl Recorder {
    fn new(
        state: AppState,
        gateway: Gateway,
        options: RequestOptions,
        plan: Option<CachePlan>,
        log: GatewayLog,
        started: Instant,
    ) -> Recorder {
        let plan_was_made = plan.is_some() || log.cached;
        Recorder {
            state,
            gateway,
            options,
            plan,
            plan_was_made,
            log,
            started,
        }
    }

    /// Passes a stream on as it comes, keeping a copy; at its end (or when the client goes)
    /// the log is written, and a stream that ended is cached.
    fn tee(
        self,
        status: StatusCode,
        headers: HeaderMap,
        body: Body,
        report: Option<crate::RunReport>,
    ) -> Body {
        let copy = Arc::new(Mutex::new(Vec::new()));
        let finisher = StreamEnd {
            recorder: Some(self),
            status,
            headers,
            copy: copy.clone(),
            report,
            ended: false,
        };
        let finisher = Arc::new(Mutex::new(finisher));
        let at_end = finisher.clone();
        let chunks = body.into_data_stream().map(move |chunk| {
            if let Ok(bytes) = &chunk {
                copy.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(bytes);
            }
            // Held by the stream: dropped (and finished) with it if the client goes.
            let _ = &finisher;
            chunk
        });
        let end = futures::stream::once(async move {
            at_end.lock().unwrap_or_else(|e| e.into_inner()).ended = true;
        })
        .filter_map(|()| async { None });
        Body::from_stream(chunks.chain(end))
    }

    /// Keeps the response (if planned) and writes the log.
    async fn finish(
        self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Vec<u8>,
        usage: Option<ember_core::tasks::Usage>,
    ) {
        let Recorder {
            state,
            gateway,
            options,
            plan,
            mut log,
            started,
            ..
        } = self;
        if let Some(plan) = &plan {
            let cached = CachedResponse {
                gateway_key: gateway_cache_key(&gateway.account_id, &gateway.id),
                status: status.as_u16(),
                headers: CACHED_HEADERS
                    .iter()
                    .filter_map(|name| Some((name.to_string(), header_text(headers, name)?)))
                    .collect(),
                body: body.clone(),
            };
            if let Err(error) = state.ai_gateway.keep(plan, &cached).await {
                tracing::warn!(%error, "could not cache a response");
            }
        }
        log.duration_ms = started.elapsed().as_millis() as u64;
        log.status_code = status.as_u16();
        log.success = status.is_success();
        log.response_content_type = header_text(headers, header::CONTENT_TYPE.as_str());
        log.response_size = body.len() as u64;
        log.response_body = Some(body);
        if let Some(usage) = usage {
            (log.tokens_in, log.tokens_out) = (usage.prompt_tokens, usage.completion_tokens);
        }
        let neurons = usage.map_or(0.0, |u| u.neurons);
        log.cost = if log.cached {
            0.0
        } else {
            ember_ai_gateway::options::cost(
                neurons,
                log.tokens_in,
                log.tokens_out,
                options.custom_cost,
            )
        };
        if let Err(error) = state.ai_gateway.log(&gateway, &options, log).await {
            tracing::error!(%error, "could not write a gateway log");
        }
    }
}

/// The end of a teed stream: finishes its recorder once, when the stream is dropped.
struct StreamEnd {
    recorder: Option<Recorder>,
    status: StatusCode,
    headers: HeaderMap,
    copy: Arc<Mutex<Vec<u8>>>,
    report: Option<crate::RunReport>,
    /// The stream ran to its end (else the client went away and nothing is cached).
    ended: bool,
}

impl Drop for StreamEnd {
    fn drop(&mut self) {
        let Some(mut recorder) = self.recorder.take() else {
            return;
        };
        if !self.ended {
            recorder.plan = None;
        }
        let body = std::mem::take(&mut *self.copy.lock().unwrap_or_else(|e| e.into_inner()));
        let usage = self.report.as_ref().and_then(|r| r.get().copied());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (status, headers) = (self.status, std::mem::take(&mut self.headers));
        runtime.spawn(async move {
            recorder.finish(status, &headers, body, usage).await;
        });
    }
}
