//! AI Gateway in front of the routes, as one tower layer inside authentication: a request that
//! names a gateway (a provider URL `/v1/{account}/{gateway}/{provider}/...`, the universal
//! endpoint `/v1/{account}/{gateway}`, a `cf-aig-gateway-id` header, or the binding's
//! `options.gateway`) is held to the gateway's rate limit, answered from its cache when an
//! identical one was kept, and otherwise sent on to the routes: again on a 5xx or a timeout as
//! its retries allow, and to the next step of a universal request when one fails (`steps.rs`);
//! a `dynamic/<route>` request follows its route's graph (`dynamic.rs`).
//! The gateway's guardrails judge the prompt before it runs and the answer after (`guarding.rs`),
//! and its DLP scans both for sensitive data (`scanning.rs`); a stream whose answer either must
//! judge first is read whole (guardrails: on the gateway's own endpoints only, otherwise it is
//! judged at its end for the log). What it answered is cached and logged (`recorder.rs`); a
//! stream is passed on chunk by chunk and kept when it ends. The gateway and log routes are in
//! `routes.rs`, the options' wire forms in `options.rs`, the upstream providers in
//! `providers.rs`, the WebSockets API in `websocket.rs`.

mod dynamic;
mod guarding;
mod options;
mod providers;
mod recorder;
mod routes;
mod scanning;
mod steps;
mod websocket;

pub use providers::{OpenAiCompatible, Provider};
pub(crate) use routes::{binding_helper, iso_time, routes};

use crate::error::ApiError;
use crate::run::Form;
use crate::{AppState, RequestId};
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::response::Response;
use ember_access::Caller;
use ember_ai_gateway::{AiGatewayError, CachePlan, RequestOptions};
use ember_core::InferError;
use ember_store::{Gateway, GatewayLog};
use guarding::Guarding;
use recorder::{Recorder, mark, replay};
use scanning::Scanning;
use serde_json::Value;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;
use steps::Step;
use tower::{Layer, Service, ServiceExt};

/// The provider Ember serves itself.
const LOCAL_PROVIDER: &str = "workers-ai";

/// The layer: wraps the routes, which it may call more than once per request.
#[derive(Clone)]
pub(crate) struct GatewayLayer {
    state: AppState,
}

impl GatewayLayer {
    pub(crate) fn new(state: AppState) -> GatewayLayer {
        GatewayLayer { state }
    }
}

impl<S> Layer<S> for GatewayLayer {
    type Service = GatewayService<S>;

    fn layer(&self, routes: S) -> GatewayService<S> {
        GatewayService {
            state: self.state.clone(),
            routes,
        }
    }
}

#[derive(Clone)]
pub(crate) struct GatewayService<S> {
    state: AppState,
    routes: S,
}

impl<S> Service<Request> for GatewayService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.routes.poll_ready(context)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The clone that was polled ready serves this call; a fresh one stays for the next.
        let fresh = self.routes.clone();
        let routes = std::mem::replace(&mut self.routes, fresh);
        let state = self.state.clone();
        Box::pin(async move { Ok(handle(state, routes, request).await) })
    }
}

/// Sends a request to the routes.
async fn send<S>(routes: S, request: Request) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    match routes.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// How a request names its gateway.
enum Entry {
    /// `/v1/{account}/{gateway}/{provider}/...`.
    ProviderUrl { gateway: String },
    /// `/v1/{account}/{gateway}`, or the binding's `/ai-gateway/universal/run/{gateway}`: a step
    /// or an array of steps.
    Universal { gateway: String },
    /// `cf-aig-gateway-id` on a REST or OpenAI route.
    Header { gateway: String },
    /// `options.gateway` in a binding request's body (`/ai-gateway/run`, also through wrangler).
    Binding,
}

/// The provider URL's parts: account, gateway, provider and the path after it. The OpenAI
/// routes under `/v1/` (`chat/completions`, `audio/...`, `images/...`) are not provider URLs.
pub(crate) fn provider_url(path: &str) -> Option<(&str, &str, &str, &str)> {
    let mut parts = path.strip_prefix("/v1/")?.splitn(4, '/');
    let (account, gateway, provider) = (parts.next()?, parts.next()?, parts.next()?);
    let rest = parts.next().unwrap_or_default();
    let openai = crate::openai::is_route_under_v1(&path["/v1".len()..]);
    (!openai && !provider.is_empty()).then_some((account, gateway, provider, rest))
}

/// The universal endpoint's account and gateway.
pub(crate) fn universal_url(path: &str) -> Option<(&str, &str)> {
    let (account, gateway) = path.strip_prefix("/v1/")?.split_once('/')?;
    let plain = |part: &str| !part.is_empty() && !part.contains('/');
    let openai = crate::openai::is_route_under_v1(&path["/v1".len()..]);
    (plain(account) && plain(gateway) && !openai).then_some((account, gateway))
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
    if let Some((_, gateway)) = universal_url(path) {
        return Some(Entry::Universal {
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
    // `env.AI.gateway(id).run(...)`: a universal request for the caller's gateway `id`.
    if let Some(gateway) = binding_path.strip_prefix("/ai-gateway/universal/run/") {
        return Some(Entry::Universal {
            gateway: gateway.to_string(),
        });
    }
    (binding_path == "/ai-gateway/run").then_some(Entry::Binding)
}

/// Requests that name no gateway pass straight to the routes.
async fn handle<S>(state: AppState, routes: S, request: Request) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    if request.method() == Method::GET && websocket::is_upgrade(request.headers()) {
        let path = request.uri().path().trim_end_matches('/');
        if universal_url(path).is_some() {
            return open_websocket(state, routes, request).await;
        }
    }
    let Some(entry) = entry_of(&request) else {
        return send(routes, request).await;
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
    match prepare(&state, parts.clone(), &bytes, entry, form).await {
        Ok(prepared) => through(state, routes, prepared).await,
        // A binding request whose body is not JSON (a stream input) carries no gateway.
        Err(None) => send(routes, Request::from_parts(parts, Body::from(bytes))).await,
        Err(Some(error)) => form.error(&error),
    }
}

/// `handle`, for the WebSockets API's messages. `handle` opens WebSockets, whose messages come
/// back to it: naming the future's type here (boxed, `Send`) ends that cycle for the compiler.
fn handle_boxed<S>(
    state: AppState,
    routes: S,
    request: Request,
) -> futures::future::BoxFuture<'static, Response>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    Box::pin(handle(state, routes, request))
}

/// Opens the WebSockets API's connection on the universal endpoint; its messages come back
/// through `handle` as universal requests of the same path (`websocket.rs`).
async fn open_websocket<S>(state: AppState, routes: S, request: Request) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    use axum::extract::FromRequestParts;
    use axum::response::IntoResponse;
    let (mut parts, _) = request.into_parts();
    let upgrade =
        match axum::extract::WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
            Ok(upgrade) => upgrade,
            Err(rejection) => return rejection.into_response(),
        };
    let path = parts.uri.path().trim_end_matches('/').to_string();
    if let Ok(uri) = path.parse() {
        parts.uri = uri;
    }
    upgrade.on_upgrade(move |socket| websocket::serve(socket, state, routes, parts))
}

/// A request on its way through a gateway.
struct Prepared {
    form: Form,
    universal: bool,
    /// Sent to the gateway's own endpoints (a provider URL, the universal endpoint).
    on_endpoint: bool,
    gateway: Gateway,
    options: RequestOptions,
    plan: Option<CachePlan>,
    log: GatewayLog,
    /// What to send to the routes, in order until one answers (one step unless universal).
    steps: Vec<Step>,
    /// The route a `dynamic/<name>` request follows (its one step is the request as sent).
    dynamic: Option<dynamic::Dynamic>,
    guarding: Option<Guarding>,
    scanning: Option<Scanning>,
}

/// Finds the gateway, reads the options and lays out the steps; `Err(None)` lets the request
/// pass without a gateway.
async fn prepare(
    state: &AppState,
    parts: Parts,
    body: &Bytes,
    entry: Entry,
    form: Form,
) -> Result<Prepared, Option<ApiError>> {
    let caller = parts
        .extensions
        .get::<Caller>()
        .ok_or_else(|| Some(internal("the gateway layer ran before authentication")))?
        .clone();
    let json: Option<Value> = serde_json::from_slice(body).ok();
    // What makes two requests the same, besides their body: the route (the binding's is the
    // same whether it came straight or through wrangler's proxy).
    let route = match entry {
        Entry::Binding => "binding".to_string(),
        _ => format!("{} {}", parts.method, parts.uri.path()),
    };
    let universal = matches!(entry, Entry::Universal { .. });
    let on_endpoint = universal || matches!(entry, Entry::ProviderUrl { .. });
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
        Entry::ProviderUrl { gateway }
        | Entry::Universal { gateway }
        | Entry::Header { gateway } => {
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
    let path = parts.uri.path();
    let path_account = provider_url(path)
        .map(|(account, ..)| account)
        .or(universal_url(path).map(|(account, _)| account));
    if let Some(path_account) = path_account {
        check_provider_url(state, &caller, &gateway, path_account, &parts.headers).await?;
    }
    let retries = options
        .retries
        .over(ember_ai_gateway::retry_defaults(&gateway));
    let steps = if universal {
        let providers = &state.config.providers;
        // The binding's universal path names no account: the caller's.
        let account = path_account.unwrap_or(account);
        steps::universal(
            &parts,
            account,
            &gateway.id,
            json.as_ref(),
            &options,
            retries,
            providers,
        )
        .map_err(Some)?
    } else {
        vec![Step::whole(parts.clone(), body.clone(), &options, retries)]
    };
    ai_gateway
        .admit(&gateway)
        .await
        .map_err(|e| Some(gateway_error(e)))?;
    let model = model_of(&parts, json.as_ref());
    let dynamic = match model.strip_prefix("dynamic/").filter(|_| !universal) {
        Some(name) => {
            let (route, graph) = ai_gateway
                .deployed_graph(&gateway, name)
                .await
                .map_err(|e| Some(gateway_error(e)))?;
            let metadata = options.metadata.as_deref();
            Some(dynamic::Dynamic::new(
                route,
                graph,
                metadata,
                &parts,
                json.as_ref(),
            ))
        }
        None => None,
    };
    let mut fingerprint = format!("{route}\n{model}\n").into_bytes();
    fingerprint.extend(fingerprint_body);
    let plan = ai_gateway.cache_plan(&gateway, &options, &fingerprint);
    let log = GatewayLog {
        id: uuid::Uuid::new_v4().simple().to_string(),
        account_id: account.clone(),
        gateway_id: gateway.id.clone(),
        created_at_ms: ai_gateway.now_ms(),
        // `compat` serves the local models under `workers-ai/` names.
        provider: match provider_url(path) {
            Some((_, _, provider, _)) if provider != "compat" => provider.to_string(),
            _ => LOCAL_PROVIDER.to_string(),
        },
        model,
        path: path.to_string(),
        custom_cost: options.custom_cost.is_some(),
        metadata: options.metadata.clone(),
        event_id: options.event_id.clone(),
        request_content_type: header_text(&parts.headers, header::CONTENT_TYPE.as_str()),
        request_size: body.len() as u64,
        request_body: Some(body.to_vec()),
        ..GatewayLog::default()
    };
    let guarding = Guarding::new(gateway.guardrails.as_deref(), json.as_ref(), &caller);
    let scanning = Scanning::new(gateway.dlp.as_deref(), body);
    Ok(Prepared {
        form,
        guarding,
        scanning,
        dynamic,
        universal,
        on_endpoint,
        gateway,
        options,
        plan,
        log,
        steps,
    })
}

/// Answers from the cache, or runs the steps and keeps what answered.
async fn through<S>(state: AppState, routes: S, prepared: Prepared) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let started = Instant::now();
    let Prepared {
        form,
        dynamic,
        universal,
        on_endpoint,
        gateway,
        options,
        plan,
        mut log,
        steps,
        mut guarding,
        mut scanning,
    } = prepared;
    if let Some(plan) = &plan {
        match state.ai_gateway.cached(plan).await {
            Ok(Some(hit)) => {
                log.cached = true;
                log.success = true;
                if let Some((tokens_in, tokens_out)) = recorder::cached_usage(&hit) {
                    (log.tokens_in, log.tokens_out) = (tokens_in, tokens_out);
                }
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
    if let Some(scanning) = scanning.as_mut()
        && let Err(error) = scanning.check_request()
    {
        log.dlp = scanning.found();
        let recorder = Recorder::new(state, gateway, options, None, log, started);
        return refuse(recorder, form, &error).await;
    }
    if let Some(guarding) = guarding.as_mut()
        && let Err(error) = guarding.check_prompt(&state).await
    {
        log.guardrails = guarding.found();
        let recorder = Recorder::new(state, gateway, options, None, log, started);
        return refuse(recorder, form, &error).await;
    }
    let report = steps
        .first()
        .and_then(|step| step.parts.extensions.get::<RequestId>())
        .map(|r| r.report.clone());
    let (served, budgets) = match &dynamic {
        Some(dynamic) => {
            let whole = steps.into_iter().next().expect("a request has its step");
            dynamic::walk(&state, routes, whole, dynamic, form).await
        }
        None => (steps::run(routes, steps, form).await, Vec::new()),
    };
    (log.step, log.attempts) = (served.step as u32, served.attempts);
    let retargeted = universal || dynamic.is_some();
    if retargeted {
        // The log names what served: its provider and model.
        log.provider = served.provider.clone();
        log.model = served.model.clone();
    }
    log.model_type = log.model_type.or_else(|| {
        let spec = state.ember.resolve(&log.model).ok()?;
        Some(spec.task.display_name().to_string())
    });
    log.dlp = scanning.as_ref().and_then(Scanning::found);
    let response = served.response;
    let plan = plan.filter(|_| response.status() == axum::http::StatusCode::OK);
    let mut recorder = Recorder::new(state, gateway, options, plan, log, started);
    recorder.budgets = budgets;
    // A stream whose answer is scanned is read whole first, and so is one whose answer the
    // guardrails judge on the gateway's own endpoints.
    let buffered = scanning.as_ref().is_some_and(Scanning::scans_answers)
        || on_endpoint && guarding.as_ref().is_some_and(Guarding::judges_answers);
    let streamed = !buffered
        && header_text(response.headers(), header::CONTENT_TYPE.as_str())
            .is_some_and(|t| t.starts_with("text/event-stream"));
    let (mut head, body) = response.into_parts();
    mark(
        &mut head.headers,
        &recorder.log.id,
        recorder.plan_was_made,
        false,
    );
    if universal {
        head.headers.insert("cf-aig-step", served.step.into());
    }
    if retargeted {
        // What served, which the request did not name.
        for (name, value) in [
            ("cf-aig-provider", &served.provider),
            ("cf-aig-model", &served.model),
        ] {
            if let Ok(value) = axum::http::HeaderValue::from_str(value) {
                head.headers.insert(name, value);
            }
        }
    }
    if streamed {
        scanning::mark(&mut head.headers, recorder.log.dlp.as_deref());
        recorder.guarding = guarding;
        let body = recorder.tee(head.status, head.headers.clone(), body, report);
        return Response::from_parts(head, body);
    }
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    if let Some(guarding) = guarding.as_mut() {
        let checked = match head.status.is_success() {
            true => guarding.check_response(&recorder.state, &bytes).await,
            false => Ok(()),
        };
        recorder.log.guardrails = guarding.found();
        if let Err(error) = checked {
            // A blocked answer is not kept.
            recorder.plan = None;
            return refuse(recorder, form, &error).await;
        }
    }
    if let Some(scanning) = scanning.as_mut() {
        let checked = match head.status.is_success() {
            true => scanning.check_answer(&bytes),
            false => Ok(()),
        };
        recorder.log.dlp = scanning.found();
        if let Err(error) = checked {
            recorder.plan = None;
            return refuse(recorder, form, &error).await;
        }
    }
    scanning::mark(&mut head.headers, recorder.log.dlp.as_deref());
    let response = Response::from_parts(head, Body::from(bytes.clone()));
    let usage = report.and_then(|r| r.get().copied());
    recorder
        .finish(response.status(), response.headers(), bytes.to_vec(), usage)
        .await;
    response
}

/// Answers a request the guardrails or DLP blocked, and logs it.
async fn refuse(recorder: Recorder, form: Form, error: &ApiError) -> Response {
    let mut response = form.error(error);
    mark(response.headers_mut(), &recorder.log.id, false, false);
    scanning::mark(response.headers_mut(), recorder.log.dlp.as_deref());
    let body = error.message().into_bytes();
    recorder
        .finish(response.status(), response.headers(), body, None)
        .await;
    response
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

fn internal(detail: impl ToString) -> ApiError {
    ApiError::Infer(InferError::Internal(detail.to_string()))
}

/// A 400 naming the offending field.
fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Infer(InferError::invalid(field, message))
}

pub(crate) fn gateway_error(error: AiGatewayError) -> ApiError {
    match error {
        AiGatewayError::NotFound(_) => ApiError::NotFound(error.to_string()),
        AiGatewayError::Exists(_) => ApiError::Conflict(error.to_string()),
        AiGatewayError::Invalid { field, message } => invalid(&field, message),
        AiGatewayError::RateLimited { retry_after_secs } => {
            ApiError::GatewayRateLimited { retry_after_secs }
        }
        AiGatewayError::Store(error) => internal(error.to_string()),
    }
}
