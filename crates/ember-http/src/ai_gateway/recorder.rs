//! What a gateway keeps of a request once its answer is whole: the answer in the cache (a stream
//! once it has ended) and the log with its usage and cost; and a cached answer sent again.

use super::header_text;
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ember_ai_gateway::{CachePlan, RequestOptions};
use ember_store::{CachedResponse, Gateway, GatewayLog, gateway_cache_key};
use futures::StreamExt;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The headers a cached response keeps; the rest are made again for each request.
const CACHED_HEADERS: [&str; 2] = ["content-type", crate::run::SERVED_BY_HEADER];
/// Kept beside them, never sent: the tokens the answer took (`in out`), for a hit's log.
const CACHED_USAGE: &str = "ember-usage";

/// The tokens a cached answer took when it ran.
pub(super) fn cached_usage(hit: &CachedResponse) -> Option<(u32, u32)> {
    let (_, usage) = hit.headers.iter().find(|(name, _)| name == CACHED_USAGE)?;
    let (tokens_in, tokens_out) = usage.split_once(' ')?;
    Some((tokens_in.parse().ok()?, tokens_out.parse().ok()?))
}

/// A kept response, sent again: a stream event by event.
pub(super) fn replay(hit: &CachedResponse) -> Response {
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
    for (name, value) in hit.headers.iter().filter(|(name, _)| name != CACHED_USAGE) {
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
pub(super) fn mark(headers: &mut HeaderMap, log_id: &str, cacheable: bool, hit: bool) {
    if let Ok(value) = HeaderValue::from_str(log_id) {
        headers.insert("cf-aig-log-id", value);
    }
    if cacheable {
        let status = if hit { "HIT" } else { "MISS" };
        headers.insert("cf-aig-cache-status", HeaderValue::from_static(status));
    }
}

/// Writes a gateway request's log and keeps its response in the cache, once it is whole.
pub(super) struct Recorder {
    pub(super) state: AppState,
    gateway: Gateway,
    options: RequestOptions,
    /// Where the response is kept (a successful one, on a cacheable request).
    pub(super) plan: Option<CachePlan>,
    /// Whether the request could be cached at all (for `cf-aig-cache-status`).
    pub(super) plan_was_made: bool,
    pub(super) log: GatewayLog,
    started: Instant,
    /// Dynamic-route budgets the request passed, charged its cost at the end.
    pub(super) budgets: Vec<ember_ai_gateway::Budget>,
    /// The guardrails of a streamed request, which judge its answer once it has ended.
    pub(super) guarding: Option<super::guarding::Guarding>,
}

impl Recorder {
    pub(super) fn new(
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
            budgets: Vec::new(),
            guarding: None,
        }
    }

    /// Passes a stream on as it comes, keeping a copy; at its end (or when the client goes)
    /// the log is written, and a stream that ended is cached.
    pub(super) fn tee(
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
    pub(super) async fn finish(
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
            budgets,
            ..
        } = self;
        if let Some(usage) = usage {
            (log.tokens_in, log.tokens_out) = (usage.prompt_tokens, usage.completion_tokens);
        } else if let Some((tokens_in, tokens_out)) =
            upstream_usage(&body).filter(|_| (log.tokens_in, log.tokens_out) == (0, 0))
        {
            (log.tokens_in, log.tokens_out) = (tokens_in, tokens_out);
        }
        if let Some(plan) = &plan {
            let usage = (
                CACHED_USAGE.to_string(),
                format!("{} {}", log.tokens_in, log.tokens_out),
            );
            let cached = CachedResponse {
                gateway_key: gateway_cache_key(&gateway.account_id, &gateway.id),
                status: status.as_u16(),
                headers: CACHED_HEADERS
                    .iter()
                    .filter_map(|name| Some((name.to_string(), header_text(headers, name)?)))
                    .chain(std::iter::once(usage))
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
        if !log.cached
            && let Err(error) = state.ai_gateway.charge(&budgets, log.cost).await
        {
            tracing::warn!(%error, "could not charge a route's budget");
        }
        // Counted whether or not the gateway keeps logs.
        state
            .ember
            .metrics()
            .gateway_request(&ember_core::metrics::GatewayRequest {
                gateway: &gateway_cache_key(&gateway.account_id, &gateway.id),
                provider: &log.provider,
                model: &log.model,
                cached: log.cached,
                success: log.success,
                seconds: started.elapsed().as_secs_f64(),
                tokens_in: log.tokens_in,
                tokens_out: log.tokens_out,
                cost: log.cost,
            });
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
        let ended = self.ended;
        runtime.spawn(async move {
            if let Some(mut guarding) = recorder.guarding.take() {
                if ended {
                    guarding.log_streamed_answer(&recorder.state, &body).await;
                }
                recorder.log.guardrails = guarding.found();
            }
            recorder.finish(status, &headers, body, usage).await;
        });
    }
}

/// The tokens an upstream provider's OpenAI-shaped answer reports (`usage`), for its log.
fn upstream_usage(body: &[u8]) -> Option<(u32, u32)> {
    let answer: Value = serde_json::from_slice(body).ok()?;
    let usage = answer.get("usage")?;
    let count = |key: &str| usage.get(key)?.as_u64().and_then(|n| u32::try_from(n).ok());
    Some((count("prompt_tokens")?, count("completion_tokens")?))
}
