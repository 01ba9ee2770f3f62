//! Upstream providers a gateway forwards to besides Ember's own models, behind the `Provider`
//! trait: OpenAI and any OpenAI-compatible server (another Ember, llama-server, vLLM, a cloud
//! API), named in the server's configuration with a base URL and a key.
//! `/v1/{account}/{gateway}/{provider}/{path}` posts the body to `{base_url}/{path}` and passes
//! the answer back as it comes, a stream chunk by chunk. The key goes only to its upstream: never
//! logged, never in an answer.

use crate::AppState;
use crate::error::ApiError;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use ember_core::InferError;
use futures::StreamExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;

/// An upstream a gateway forwards to. A kind of provider that is not OpenAI-compatible is one
/// more implementation, added to the server's list.
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// Its name in provider URLs and universal steps.
    fn name(&self) -> &str;

    /// Sends `body` to the provider's `path` and answers what it answered, streamed as it comes.
    fn forward<'a>(
        &'a self,
        path: &'a str,
        headers: &'a HeaderMap,
        body: Bytes,
    ) -> Pin<Box<dyn Future<Output = Result<Response, ApiError>> + Send + 'a>>;
}

/// An OpenAI-compatible upstream: its base URL and API key.
pub struct OpenAiCompatible {
    name: String,
    base_url: String,
    api_key: Option<String>,
}

impl OpenAiCompatible {
    pub fn new(name: &str, base_url: &str, api_key: Option<String>) -> OpenAiCompatible {
        OpenAiCompatible {
            name: name.to_string(),
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key: api_key.filter(|key| !key.is_empty()),
        }
    }
}

/// Shows whether a key is set, never the key.
impl std::fmt::Debug for OpenAiCompatible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiCompatible")
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

impl Provider for OpenAiCompatible {
    fn name(&self) -> &str {
        &self.name
    }

    fn forward<'a>(
        &'a self,
        path: &'a str,
        headers: &'a HeaderMap,
        body: Bytes,
    ) -> Pin<Box<dyn Future<Output = Result<Response, ApiError>> + Send + 'a>> {
        Box::pin(async move {
            let mut request = client()
                .post(format!("{}/{path}", self.base_url))
                .body(body);
            if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
                request = request.header(header::CONTENT_TYPE, content_type);
            }
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key);
            }
            let upstream = request.send().await.map_err(|error| {
                // reqwest's message names the URL, never the key.
                tracing::warn!(provider = self.name, %error, "upstream provider failed");
                ApiError::Upstream(format!("provider '{}' could not be reached", self.name))
            })?;
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
            Ok(response)
        })
    }
}

/// `POST /v1/{account}/{gateway}/{provider}/{*path}` for a configured provider.
pub(crate) async fn forward(
    State(state): State<AppState>,
    Path((_account, _gateway, name, path)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(provider) = state.config.providers.iter().find(|p| p.name() == name) else {
        let error = InferError::invalid("provider", format!("unknown provider '{name}'"));
        return ApiError::Infer(error).rest_response();
    };
    let body = match axum::body::to_bytes(body, state.config.max_body_bytes).await {
        Ok(body) => body,
        Err(_) => return ApiError::Infer(InferError::TooLarge).rest_response(),
    };
    match provider.forward(&path, &headers, body).await {
        Ok(response) => response,
        Err(error) => error.rest_response(),
    }
}
