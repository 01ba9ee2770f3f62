//! Finetunes (LoRA adapters) as Workers AI serves them: `POST/GET .../ai/finetunes`, the asset
//! upload `POST .../ai/finetunes/{id}/finetune-assets` (multipart `file_name` + `file`, as
//! wrangler's `ai finetune create` and the `cloudflare` SDK send them), `GET .../finetunes/public`,
//! and Ember's `DELETE .../finetunes/{id}`; and `lora` on a text generation request, resolved to
//! the caller's finetune for the model it names.

use crate::AppState;
use crate::ai_gateway::iso_time;
use crate::error::ApiError;
use crate::run::rest_result;
use crate::wire;
use axum::Extension;
use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::response::Response;
use axum::routing::{get, post};
use ember_access::Caller;
use ember_core::InferError;
use ember_core::ember::Target;
use ember_core::finetunes::{self, CONFIG_FILE, WEIGHTS_FILE};
use ember_core::tasks::TaskInput;
use ember_store::Finetune;
use serde_json::{Value, json};

/// Largest adapter file accepted (Workers AI's limit for an adapter).
const MAX_ASSET_BYTES: usize = 500 << 20;

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let base = "/client/v4/accounts/{account_id}/ai/finetunes";
    router
        .route(base, post(create).get(list))
        .route(&format!("{base}/"), post(create).get(list))
        .route(&format!("{base}/public"), get(public))
        .route(
            &format!("{base}/{{finetune_id}}"),
            axum::routing::delete(delete),
        )
        .route(
            &format!("{base}/{{finetune_id}}/finetune-assets"),
            post(upload).layer(DefaultBodyLimit::max(MAX_ASSET_BYTES)),
        )
        .route(
            &format!("{base}/{{finetune_id}}/finetune-assets/"),
            post(upload).layer(DefaultBodyLimit::max(MAX_ASSET_BYTES)),
        )
}

fn invalid(field: &str, problem: impl Into<String>) -> ApiError {
    ApiError::Infer(InferError::invalid(field, problem))
}

fn internal(error: impl std::fmt::Display) -> ApiError {
    ApiError::Infer(InferError::Internal(error.to_string()))
}

fn finetune_json(finetune: &Finetune) -> Value {
    json!({
        "id": finetune.id,
        "name": finetune.name,
        "model": finetune.model,
        "description": finetune.description,
        "public": false,
        "created_at": iso_time(finetune.created_at_ms),
        "modified_at": iso_time(finetune.modified_at_ms),
    })
}

fn answer(result: Result<Value, ApiError>) -> Response {
    match result {
        Ok(result) => rest_result(result),
        Err(error) => error.rest_response(),
    }
}

/// `{model, name, description}` → the new finetune.
async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Response {
    answer(create_finetune(&state, &caller, &body).await)
}

async fn create_finetune(
    state: &AppState,
    caller: &Caller,
    body: &[u8],
) -> Result<Value, ApiError> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| invalid("/", format!("the body is not JSON: {e}")))?;
    let required = |key: &str| match body.get(key) {
        Some(Value::String(text)) if !text.is_empty() => Ok(text.clone()),
        _ => Err(invalid(
            &format!("/{key}"),
            "is required: a non-empty string",
        )),
    };
    let (model, name) = (required("model")?, required("name")?);
    // wrangler sends an empty one.
    let description = match body.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.clone()).filter(|t| !t.is_empty()),
        Some(_) => return Err(invalid("/description", "must be a string")),
    };
    let target = state.ember.target(&model).map_err(ApiError::Infer)?;
    if !finetunes::takes_lora(state.ember.catalog(), &model, target.served) {
        return Err(ApiError::LoraUnsupported(model));
    }
    let now = state.access.now_ms();
    let finetune = Finetune {
        id: uuid::Uuid::new_v4().to_string(),
        account_id: caller.account.id.clone(),
        model,
        name,
        description,
        created_at_ms: now,
        modified_at_ms: now,
    };
    let store = &state.access.stores().finetunes;
    if !store.create_finetune(&finetune).await.map_err(internal)? {
        return Err(ApiError::Conflict(format!(
            "a finetune named {} exists already",
            finetune.name
        )));
    }
    Ok(finetune_json(&finetune))
}

async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Response {
    let listed = state
        .access
        .stores()
        .finetunes
        .finetunes(&caller.account.id)
        .await
        .map(|list| Value::Array(list.iter().map(finetune_json).collect()))
        .map_err(internal);
    answer(listed)
}

/// Cloudflare's public finetunes; a local server has none.
async fn public() -> Response {
    rest_result(json!([]))
}

/// Deletes the finetune and its files. Requests already running with its adapter finish with it
/// (the engine keeps what it loaded).
async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
) -> Response {
    let deleted = async {
        let store = &state.access.stores().finetunes;
        if !store
            .delete_finetune(&caller.account.id, &id)
            .await
            .map_err(internal)?
        {
            return Err(not_found(&id));
        }
        finetunes::remove_files(state.ember.home(), &id).map_err(internal)?;
        Ok(json!({ "id": id }))
    };
    answer(deleted.await)
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no finetune {id}"))
}

/// Multipart `file_name` (`adapter_config.json` or `adapter_model.safetensors`) and `file`.
async fn upload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    request: Request,
) -> Response {
    let uploaded = async {
        let store = &state.access.stores().finetunes;
        let finetune = store
            .finetune(&caller.account.id, &id)
            .await
            .map_err(internal)?
            .filter(|finetune| finetune.id == id)
            .ok_or_else(|| not_found(&id))?;
        let (file_name, bytes) = read_asset(&state, request).await?;
        let home = state.ember.home().to_path_buf();
        let finetune_id = finetune.id.clone();
        let name = file_name.clone();
        tokio::task::spawn_blocking(move || {
            finetunes::keep_file(&home, &finetune_id, &name, &bytes)
        })
        .await
        .map_err(internal)??;
        store
            .touch_finetune(&caller.account.id, &finetune.id, state.access.now_ms())
            .await
            .map_err(internal)?;
        Ok(json!({ "finetune_id": finetune.id, "file_name": file_name }))
    };
    answer(uploaded.await)
}

async fn read_asset(state: &AppState, request: Request) -> Result<(String, Vec<u8>), ApiError> {
    let mut multipart = Multipart::from_request(request, state).await.map_err(|e| {
        ApiError::Incomplete(format!("a multipart/form-data body ({})", e.body_text()))
    })?;
    let (mut file_name, mut file) = (None, None);
    while let Some(field) = multipart.next_field().await.map_err(|e| {
        match e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            true => ApiError::Infer(InferError::TooLarge),
            false => invalid(
                "/file",
                format!("the upload could not be read: {}", e.body_text()),
            ),
        }
    })? {
        match field.name().unwrap_or_default() {
            "file_name" => {
                file_name = Some(field.text().await.map_err(|e| {
                    invalid(
                        "/file_name",
                        format!("could not be read: {}", e.body_text()),
                    )
                })?)
            }
            "file" => {
                file = Some(field.bytes().await.map_err(|e| {
                    invalid("/file", format!("could not be read: {}", e.body_text()))
                })?)
            }
            _ => {}
        }
    }
    let file_name = file_name.ok_or_else(|| {
        invalid(
            "/file_name",
            format!("is required: {CONFIG_FILE} or {WEIGHTS_FILE}"),
        )
    })?;
    let file = file
        .filter(|bytes| !bytes.is_empty())
        .ok_or_else(|| invalid("/file", "is required: the file's bytes"))?;
    Ok((file_name, file.to_vec()))
}

/// Resolves a text generation request's `lora` (a finetune's id or name) to the caller's
/// finetune for the model the request names, and sets its adapter on the request.
pub(crate) async fn apply_lora(
    state: &AppState,
    account_id: &str,
    model: &str,
    target: Target<'_>,
    input: &Value,
    task_input: &mut TaskInput,
) -> Result<(), ApiError> {
    let TaskInput::TextGeneration(request) = task_input else {
        return Ok(());
    };
    let Some(name) = wire::text_generation::lora(input)? else {
        return Ok(());
    };
    if !finetunes::takes_lora(state.ember.catalog(), model, target.served) {
        return Err(ApiError::LoraUnsupported(model.to_string()));
    }
    let finetune = state
        .access
        .stores()
        .finetunes
        .finetune(account_id, &name)
        .await
        .map_err(internal)?
        .ok_or_else(|| invalid("/lora", format!("no finetune {name} in this account")))?;
    if finetune.model != model {
        return Err(invalid(
            "/lora",
            format!("finetune {name} is for {}, not {model}", finetune.model),
        ));
    }
    let lora = finetunes::uploaded(state.ember.home(), &finetune.id)
        .ok_or(ApiError::FinetuneIncomplete)?;
    request.lora = Some(lora);
    Ok(())
}
