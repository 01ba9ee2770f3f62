//! A `dynamic/<route>` request: its route's deployed graph walked from the start, conditions and
//! splits deciding the way, rate elements counting per key, and each model element sending the
//! request (its model put in) until one answers; a failed model goes on to its fallback.

use super::LOCAL_PROVIDER;
use super::steps::{self, Served, Step};
use crate::AppState;
use crate::error::ApiError;
use crate::run::Form;
use axum::body::Bytes;
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::response::Response;
use ember_ai_gateway::routing::{self, Element, Limit, RouteGraph};
use ember_ai_gateway::{AiGatewayError, Budget};
use ember_core::InferError;
use ember_store::Route;
use serde_json::{Map, Value};
use std::convert::Infallible;
use std::time::Duration;
use tower::Service;

/// A request that names a dynamic route, with what its conditions may read.
pub(super) struct Dynamic {
    pub(super) route: Route,
    pub(super) graph: RouteGraph,
    /// `{metadata, headers, body}`.
    pub(super) context: Value,
}

impl Dynamic {
    pub(super) fn new(
        route: Route,
        graph: RouteGraph,
        metadata: Option<&str>,
        parts: &axum::http::request::Parts,
        body: Option<&Value>,
    ) -> Dynamic {
        let metadata = metadata
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or(Value::Object(Map::new()));
        let headers: Map<String, Value> = parts
            .headers
            .iter()
            .filter_map(|(name, value)| {
                Some((
                    name.to_string(),
                    Value::String(value.to_str().ok()?.to_string()),
                ))
            })
            .collect();
        let context = serde_json::json!({
            "metadata": metadata,
            "headers": headers,
            "body": body.cloned().unwrap_or(Value::Null),
        });
        Dynamic {
            route,
            graph,
            context,
        }
    }
}

/// Walks the graph; the answer is the first model's that succeeds, else the last failure. Also
/// returns the budgets the request passed, which its cost is charged to when it ends.
pub(super) async fn walk<S>(
    state: &AppState,
    routes: S,
    whole: Step,
    dynamic: &Dynamic,
    form: Form,
) -> (Served, Vec<Budget>)
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut budgets = Vec::new();
    let served = walk_to_answer(state, routes, whole, dynamic, form, &mut budgets).await;
    (served, budgets)
}

async fn walk_to_answer<S>(
    state: &AppState,
    routes: S,
    whole: Step,
    dynamic: &Dynamic,
    form: Form,
    budgets: &mut Vec<Budget>,
) -> Served
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let refuse = |error: ApiError, attempts| Served {
        response: form.error(&error),
        step: 0,
        attempts,
        provider: LOCAL_PROVIDER.into(),
        model: String::new(),
    };
    let mut at = dynamic.graph.start().to_string();
    let mut attempts = 0;
    let mut failed: Option<Served> = None;
    let ended = |failed: Option<Served>, attempts| {
        failed
            .map(|served| Served { attempts, ..served })
            .unwrap_or_else(|| {
                let message = format!("route {} ended before reaching a model", dynamic.route.name);
                refuse(
                    ApiError::Infer(InferError::invalid("model", message)),
                    attempts,
                )
            })
    };
    loop {
        let Some(element) = dynamic.graph.element(&at) else {
            return ended(failed, attempts);
        };
        at = match element {
            Element::Start { next } => next.clone(),
            Element::Conditional {
                conditions,
                then,
                otherwise,
            } => match routing::holds(conditions, &dynamic.context) {
                true => then.clone(),
                false => otherwise.clone(),
            },
            Element::Percentage {
                branches,
                otherwise,
            } => match routing::split(branches, otherwise.as_ref(), rand::random::<f64>()) {
                Some(next) => next.clone(),
                None => return ended(failed, attempts),
            },
            Element::Rate {
                key,
                limit,
                interval_secs,
                technique,
                success,
                fallback,
            } => {
                let value = match routing::field(&dynamic.context, key) {
                    Some(Value::String(text)) => text.clone(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                let ai_gateway = &state.ai_gateway;
                let (route, interval, technique) = (&dynamic.route, *interval_secs, *technique);
                let counted = match *limit {
                    Limit::Requests(requests) => {
                        let counted = ai_gateway
                            .admit_to_route(route, &at, &value, requests, interval, technique);
                        counted.await
                    }
                    Limit::Dollars(dollars) => {
                        let budget = ai_gateway
                            .within_budget(route, &at, &value, dollars, interval, technique);
                        budget.await.map(|budget| budgets.push(budget))
                    }
                };
                match (counted, fallback) {
                    (Ok(()), _) => success.clone(),
                    (Err(AiGatewayError::RateLimited { .. }), Some(fallback)) => fallback.clone(),
                    (Err(error), _) => return refuse(super::gateway_error(error), attempts),
                }
            }
            Element::Model {
                provider,
                model,
                timeout_ms,
                retries,
                fallback,
            } => {
                let place = (
                    dynamic.route.account_id.as_str(),
                    dynamic.route.gateway_id.as_str(),
                );
                let step = match model_step(&whole, place, provider, model, *timeout_ms, *retries) {
                    Ok(step) => step,
                    Err(error) => return refuse(error, attempts),
                };
                let served = steps::run(routes.clone(), vec![step], form).await;
                attempts += served.attempts;
                if !steps::failed(&served.response) {
                    return Served { attempts, ..served };
                }
                failed = Some(served);
                match fallback {
                    Some(fallback) => fallback.clone(),
                    None => return ended(failed, attempts),
                }
            }
            Element::End => return ended(failed, attempts),
        };
    }
}

/// The request as a model element sends it, under the same gateway: a binding request with the
/// element's model in its header; an OpenAI-shaped one with it in the body's `model`, to the
/// provider's URL for the same endpoint; a REST run to the model's own provider URL.
fn model_step(
    whole: &Step,
    (account, gateway): (&str, &str),
    provider: &str,
    model: &str,
    timeout_ms: Option<u64>,
    retries: u8,
) -> Result<Step, ApiError> {
    let mut parts = whole.parts.clone();
    let path = parts.uri.path().to_string();
    let mut body = whole.body.clone();
    let local_only = || {
        ApiError::Infer(InferError::invalid(
            "model",
            format!("a Workers AI request goes only to workers-ai models, not to {provider}"),
        ))
    };
    let openai_endpoint = match super::provider_url(&path) {
        Some((.., LOCAL_PROVIDER, rest)) => rest.strip_prefix("v1/"),
        Some((.., "compat", rest)) => Some(rest),
        Some(_) => None,
        None if path.contains("/ai/run/") => None,
        None => path.rfind("/v1/").map(|at| &path[at + "/v1/".len()..]),
    };
    let uri = if parts.headers.contains_key("cf-consn-model-id") {
        if provider != LOCAL_PROVIDER {
            return Err(local_only());
        }
        let value = HeaderValue::from_str(model)
            .map_err(|_| ApiError::Infer(InferError::invalid("model", "is not a model id")))?;
        parts.headers.insert("cf-consn-model-id", value);
        path
    } else if let Some(endpoint) = openai_endpoint {
        let mut json: Value = serde_json::from_slice(&body)
            .map_err(|_| ApiError::Incomplete("a JSON body naming the model".into()))?;
        json["model"] = Value::String(model.to_string());
        body = Bytes::from(json.to_string());
        match provider {
            LOCAL_PROVIDER => format!("/v1/{account}/{gateway}/workers-ai/v1/{endpoint}"),
            other => format!("/v1/{account}/{gateway}/{other}/{endpoint}"),
        }
    } else if provider == LOCAL_PROVIDER {
        format!("/v1/{account}/{gateway}/workers-ai/{model}")
    } else {
        return Err(local_only());
    };
    parts.uri = uri
        .parse()
        .map_err(|_| ApiError::Infer(InferError::invalid("model", "is not a path")))?;
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Ok(Step {
        parts,
        body,
        retries: ember_ai_gateway::Retries {
            max_attempts: retries.saturating_add(1),
            ..whole.retries
        },
        timeout: timeout_ms.map(Duration::from_millis).or(whole.timeout),
        provider: provider.to_string(),
        model: model.to_string(),
    })
}
