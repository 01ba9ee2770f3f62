//! OpenAI's image generation, `POST /v1/images/generations`: `{prompt, model, n, size,
//! response_format, ...}` run as a text-to-image request, answered `{created, data: [{b64_json}]}`
//! or `{created, data: [{url}]}`. URLs point at `GET /v1/images/generated/{id}.png` on this server,
//! which keeps each image in memory for an hour (as OpenAI's URLs last), or until newer images
//! push it out; the unguessable id is the only key, as with OpenAI's signed URLs.

use crate::error::ApiError;
use crate::openai::{self, invalid};
use crate::run::{self, Call};
use crate::{AppState, wire};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use ember_core::InferError;
use ember_core::catalog::{ModelSpec, Task};
use ember_core::tasks::text_to_image::{MAX_IMAGES, TextToImageRequest};
use ember_core::tasks::{TaskOutput, TaskRequest};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a generated image stays at its URL.
const KEPT_FOR: Duration = Duration::from_secs(3600);
/// Most bytes of images kept; the oldest go first.
const KEPT_BYTES: usize = 256 << 20;

/// Generated images served at their URLs, oldest first.
#[derive(Default)]
pub struct GeneratedImages {
    images: Mutex<VecDeque<Kept>>,
}

struct Kept {
    id: String,
    png: Vec<u8>,
    at: Instant,
}

impl GeneratedImages {
    /// Keeps `png` and returns its id.
    fn keep(&self, png: Vec<u8>) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut images = self.images.lock().unwrap_or_else(|e| e.into_inner());
        images.push_back(Kept {
            id: id.clone(),
            png,
            at: Instant::now(),
        });
        let mut bytes: usize = images.iter().map(|kept| kept.png.len()).sum();
        while let Some(oldest) = images.front() {
            if bytes <= KEPT_BYTES && oldest.at.elapsed() < KEPT_FOR {
                break;
            }
            bytes -= oldest.png.len();
            images.pop_front();
        }
        id
    }

    fn get(&self, id: &str) -> Option<Vec<u8>> {
        let images = self.images.lock().unwrap_or_else(|e| e.into_inner());
        images
            .iter()
            .find(|kept| kept.id == id && kept.at.elapsed() < KEPT_FOR)
            .map(|kept| kept.png.clone())
    }
}

pub async fn generations(call: Call, headers: HeaderMap, body: Body) -> Response {
    let state = call.state.clone();
    let images = state.generated_images.clone();
    let base_url = base_url(&headers);
    let parse = |body: &Value| {
        let (spec, request, as_url) = parse_generation(&state, body)?;
        Ok((spec, TaskRequest::TextToImage(request), as_url))
    };
    run::task_route(call, &headers, body, parse, |_, output, usage, as_url| {
        let TaskOutput::TextToImage(generated) = output else {
            return None;
        };
        let data: Vec<Value> = generated
            .pngs
            .into_iter()
            .map(|png| match as_url {
                true => json!({"url": format!("{base_url}/v1/images/generated/{}.png", images.keep(png))}),
                false => json!({"b64_json": base64::engine::general_purpose::STANDARD.encode(png)}),
            })
            .collect();
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Some(json!({
            "created": created,
            "data": data,
            "size": format!("{}x{}", generated.width, generated.height),
            "output_format": "png",
            "usage": {"neurons": usage.neurons},
        }))
    })
    .await
}

/// `GET /v1/images/generated/{id}.png`.
pub async fn generated(State(state): State<AppState>, Path(file): Path<String>) -> Response {
    let png = file
        .strip_suffix(".png")
        .and_then(|id| state.generated_images.get(id));
    match png {
        Some(png) => ([(header::CONTENT_TYPE, "image/png")], png).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "no such image (images are kept for an hour)",
        )
            .into_response(),
    }
}

/// The model, the request, and whether images go out as URLs (OpenAI's default) rather than
/// base64.
fn parse_generation(
    state: &AppState,
    body: &Value,
) -> Result<(ModelSpec, TextToImageRequest, bool), ApiError> {
    let object = openai::as_object(body)?;
    let spec = openai::resolve_model(state, object, Task::TextToImage)?.clone();
    let mut input = serde_json::Map::new();
    for (from, to) in [
        ("prompt", "prompt"),
        ("negative_prompt", "negative_prompt"),
        ("seed", "seed"),
        ("guidance", "guidance"),
        ("num_steps", "num_steps"),
        ("steps", "num_steps"),
    ] {
        if let Some(value) = object.get(from).filter(|v| !v.is_null()) {
            input.insert(to.into(), value.clone());
        }
    }
    match object.get("size").and_then(Value::as_str) {
        None | Some("auto") => {}
        Some(size) => {
            let (width, height) = size
                .split_once('x')
                .and_then(|(w, h)| Some((w.parse::<u64>().ok()?, h.parse::<u64>().ok()?)))
                .ok_or_else(|| invalid("/size", "expected WIDTHxHEIGHT, e.g. 512x512, or auto"))?;
            input.insert("width".into(), json!(width));
            input.insert("height".into(), json!(height));
        }
    }
    let mut request =
        wire::text_to_image::from_json(&Value::Object(input)).map_err(|error| match error {
            // Both come from `size`.
            InferError::InvalidInput { field, problem }
                if field == "/width" || field == "/height" =>
            {
                invalid("/size", format!("{}: {problem}", &field[1..]))
            }
            error => ApiError::from(error),
        })?;
    request.count = match object.get("n") {
        None | Some(Value::Null) => 1,
        Some(n) => n
            .as_u64()
            .filter(|n| (1..=u64::from(MAX_IMAGES)).contains(n))
            .ok_or_else(|| invalid("/n", format!("must be an integer from 1 to {MAX_IMAGES}")))?
            as u32,
    };
    let as_url = match object.get("response_format").and_then(Value::as_str) {
        None | Some("url") => true,
        Some("b64_json") => false,
        Some(_) => return Err(invalid("/response_format", "must be 'url' or 'b64_json'")),
    };
    if let Some(format) = object.get("output_format").and_then(Value::as_str)
        && format != "png"
    {
        return Err(invalid("/output_format", "Ember generates png only"));
    }
    Ok((spec, request, as_url))
}

/// This server's address as the client reached it, for image URLs.
pub(crate) fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|proto| proto.to_str().ok())
        .unwrap_or("http");
    format!("{scheme}://{host}")
}
