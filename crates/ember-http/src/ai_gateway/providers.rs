//! Upstream providers a gateway forwards to besides Ember's own models: OpenAI and any
//! OpenAI-compatible server (another Ember, llama-server, vLLM, a cloud API), named in the
//! server's configuration with a base URL and a key. `/v1/{account}/{gateway}/{provider}/{path}`
//! posts the body to `{base_url}/{path}` and passes the answer back as it comes, a stream chunk by
//! chunk. The key goes only to its upstream: never logged, never in an answer.

use crate::AppState;
use crate::error::ApiError;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use ember_core::InferError;
use futures::StreamExt;
use std::sync::OnceLock;

/// An upstream: its name in provider URLs, where it is, and its API key.
#[derive(Clone)]
pub struct Provider {
    pub name: String,
    pub base_url: String,
    api_key: Option<String>,
}

impl Provider {
    pub fn new(name: &str, base_url: &str, api_key: Option<String>) -> Provider {
        Provider {
            name: name.to_string(),
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key: api_key.filter(|key| !key.is_empty()),
        }
    }
}

/// Shows whether a key is set, never the key.
impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "(set)"))
            .finish()
    }
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(reqwest::Client::new)
}

/// `POST /v1/{account}/{gateway}/{provider}/{*path}` for a configured provider.
pub(crate) async fn forward(
    State(state): State<AppState>,
    Path((_account, _gateway, name, path)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(provider) = state.config.providers.iter().find(|p| p.name == name) else {
        let error = InferError::invalid("provider", format!("unknown provider '{name}'"));
        return ApiError::Infer(error).rest_response();
    };
    let body = match axum::body::to_bytes(body, state.config.max_body_bytes).await {
        Ok(body) => body,
        Err(_) => return ApiError::Infer(InferError::TooLarge).rest_response(),
    };
    let mut request = client()
        .post(format!("{}/{path}", provider.base_url))
        .body(body);
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    if let Some(key) = &provider.api_key {
        request = request.bearer_auth(key);
    }
    let upstream = match request.send().await {
        Ok(upstream) => upstream,
        Err(error) => {
            // reqwest's message names the URL, never the key.
            tracing::warn!(provider = name, %error, "upstream provider failed");
            return ApiError::Upstream(format!("provider '{name}' could not be reached"))
                .rest_response();
        }
    };
    let status =
        StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = upstream
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
    let stream = upstream
        .bytes_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other));
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    response
}
