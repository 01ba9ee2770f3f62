//! `ApiError` and the one exhaustive mapping from every failure to an HTTP status, a Workers AI
//! error code and a name, rendered as the REST envelope, the binding's error object or OpenAI's
//! `{"error": {message, type, param, code}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ember_core::InferError;
use serde_json::{Value, json};

/// Everything a request can fail with.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    Infer(InferError),
    /// No route matches the path.
    NoRoute,
    /// The path has a route, but not for this method.
    MethodNotAllowed,
    /// Missing or wrong API token.
    Unauthorized,
    /// The token's account is not the account the path names.
    Forbidden,
    /// The caller's requests-per-minute limit for the task (or model) is reached.
    RateLimited {
        retry_after_secs: u64,
    },
    /// A free account's daily allocation of Neurons is spent; it resets at 00:00 UTC.
    AllocationUsed {
        daily_free_neurons: f64,
        retry_after_secs: u64,
    },
    /// A header or the body the route needs is missing (names what).
    Incomplete(String),
    /// An object the path names (a gateway, a log) does not exist; says which.
    NotFound(String),
    /// An object to create exists already; says which.
    Conflict(String),
    /// A gateway's own rate limit (`rate_limiting_limit` per interval) is reached.
    GatewayRateLimited {
        retry_after_secs: u64,
    },
    /// An upstream provider behind a gateway could not be reached (says which).
    Upstream(String),
    /// A gateway's guardrails blocked the prompt, or (`response`) the model's answer.
    GuardrailBlocked {
        response: bool,
    },
    /// A gateway's DLP policies blocked the request, or (`response`) the model's answer.
    DlpBlocked {
        response: bool,
    },
    /// A request names a LoRA adapter for a model that takes none (names the model).
    LoraUnsupported(String),
    /// A finetune is used before both of its files were uploaded.
    FinetuneIncomplete,
}

impl From<InferError> for ApiError {
    fn from(error: InferError) -> ApiError {
        ApiError::Infer(error)
    }
}

/// Status, Workers AI internal code and error name for a failure.
pub struct ErrorKind {
    pub status: StatusCode,
    pub code: u32,
    pub name: &'static str,
}

impl ApiError {
    pub fn kind(&self) -> ErrorKind {
        let (status, code, name) = match self {
            // Cloudflare answers both with 7000; only the OpenAI routes tell them apart.
            ApiError::NoRoute | ApiError::MethodNotAllowed => {
                (StatusCode::BAD_REQUEST, 7000, "NoRoute")
            }
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, 10000, "AuthenticationError"),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, 10000, "AuthenticationError"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, 3021, "RateLimitError"),
            ApiError::AllocationUsed { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, 3036, "AccountLimited")
            }
            ApiError::Incomplete(_) => (StatusCode::BAD_REQUEST, 3003, "IncompleteRequest"),
            // Cloudflare's code for an object identifier that routes nowhere.
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, 7003, "NotFound"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, 7004, "Conflict"),
            ApiError::GatewayRateLimited { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, 2003, "GatewayRateLimited")
            }
            ApiError::Upstream(_) => (StatusCode::BAD_GATEWAY, 2005, "UpstreamError"),
            // Cloudflare documents the codes, not the status; a DLP block answers 400.
            ApiError::GuardrailBlocked { response: false } => {
                (StatusCode::BAD_REQUEST, 2016, "GuardrailBlocked")
            }
            ApiError::GuardrailBlocked { response: true } => {
                (StatusCode::BAD_REQUEST, 2017, "GuardrailBlocked")
            }
            ApiError::DlpBlocked { response: false } => {
                (StatusCode::BAD_REQUEST, 2029, "DlpBlocked")
            }
            ApiError::DlpBlocked { response: true } => {
                (StatusCode::BAD_REQUEST, 2030, "DlpBlocked")
            }
            ApiError::LoraUnsupported(_) => {
                (StatusCode::METHOD_NOT_ALLOWED, 5005, "LoRaUnsupported")
            }
            ApiError::FinetuneIncomplete => (StatusCode::BAD_REQUEST, 3039, "FinetuneMissingFiles"),
            ApiError::Infer(error) => match error {
                InferError::NoSuchModel(_) | InferError::NotInstalled { .. } => {
                    (StatusCode::BAD_REQUEST, 5007, "InvalidModel")
                }
                InferError::InvalidInput { .. } => (StatusCode::BAD_REQUEST, 5006, "InvalidInput"),
                InferError::InvalidData(_) => (StatusCode::BAD_REQUEST, 5004, "InvalidData"),
                InferError::ModelInputRejected(_) => {
                    (StatusCode::BAD_REQUEST, 3030, "InvalidModelInput")
                }
                InferError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, 3006, "RequestTooLarge"),
                InferError::Timeout => (StatusCode::REQUEST_TIMEOUT, 3007, "TimeoutError"),
                InferError::Aborted => (StatusCode::REQUEST_TIMEOUT, 3008, "AbortError"),
                InferError::Overloaded => (StatusCode::TOO_MANY_REQUESTS, 3040, "OutOfCapacity"),
                InferError::LoadFailed { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, 3000, "ModelLoadError")
                }
                InferError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, 3000, "AiError"),
            },
        };
        ErrorKind { status, code, name }
    }

    /// The message a client sees. Internal details stay in the log.
    pub fn message(&self) -> String {
        match self {
            ApiError::NoRoute | ApiError::MethodNotAllowed => "No route for that URI".into(),
            ApiError::Unauthorized | ApiError::Forbidden => "Authentication error".into(),
            ApiError::RateLimited { .. } => {
                "rate limiting: inference request per min rate reached".into()
            }
            ApiError::AllocationUsed {
                daily_free_neurons, ..
            } => format!(
                "You have used up your daily free allocation of {} neurons. Please upgrade to Cloudflare's Workers Paid plan if you would like to continue usage.",
                thousands(*daily_free_neurons)
            ),
            ApiError::Incomplete(what) => format!("Request is missing headers or body: {what}"),
            ApiError::NotFound(what) | ApiError::Conflict(what) | ApiError::Upstream(what) => {
                what.clone()
            }
            ApiError::GatewayRateLimited { .. } => {
                "Rate limited: the gateway's rate limit is reached".into()
            }
            ApiError::GuardrailBlocked { response: false } => {
                "Prompt blocked due to security configurations".into()
            }
            ApiError::GuardrailBlocked { response: true } => {
                "Response blocked due to security configurations".into()
            }
            ApiError::DlpBlocked { response: false } => {
                "Request content blocked due to DLP policy violations".into()
            }
            ApiError::DlpBlocked { response: true } => {
                "Response content blocked due to DLP policy violations".into()
            }
            ApiError::LoraUnsupported(model) => {
                format!("The model `{model}` does not support LoRa inference")
            }
            // Workers AI's words, though the files it asks for are PEFT's adapter_* ones.
            ApiError::FinetuneIncomplete => {
                "Finetune is missing required files (model.safetensors and config.json)".into()
            }
            ApiError::Infer(InferError::Internal(_)) => "AiError: Unknown internal error".into(),
            ApiError::Infer(InferError::LoadFailed { model, .. }) => {
                format!("AiError: model {model} could not be loaded; see the server log")
            }
            ApiError::Infer(InferError::InvalidInput { .. }) => {
                format!("AiError: {}", self.describe())
            }
            ApiError::Infer(error) => error.to_string(),
        }
    }

    fn describe(&self) -> String {
        match self {
            ApiError::Infer(error) => error.to_string(),
            other => other.message(),
        }
    }

    /// The REST API's `{result: null, success: false, errors, messages}` response.
    pub fn rest_response(&self) -> Response {
        let kind = self.kind();
        let body = json!({
            "result": null,
            "success": false,
            "errors": [{ "code": kind.code, "message": self.message() }],
            "messages": [],
        });
        self.with_headers((kind.status, axum::Json(body)).into_response())
    }

    /// The Worker binding's `{internalCode, message, name, description}` response.
    pub fn binding_response(&self) -> Response {
        let kind = self.kind();
        let description = self.message();
        let body = json!({
            "internalCode": kind.code,
            "message": format!("{}: {description}", kind.name),
            "name": kind.name,
            "description": description,
        });
        self.with_headers((kind.status, axum::Json(body)).into_response())
    }

    /// The OpenAI API's `{"error": {message, type, param, code}}` response (`sdk_status`).
    pub fn openai_response(&self) -> Response {
        let status = self.sdk_status();
        self.with_headers((status, axum::Json(self.openai_body())).into_response())
    }

    /// The status the OpenAI and Anthropic SDKs expect: `kind()`'s, but 404 for unknown models
    /// and routes (they raise `NotFoundError`) and 405 for a wrong method.
    fn sdk_status(&self) -> StatusCode {
        match self {
            ApiError::NoRoute
            | ApiError::NotFound(_)
            | ApiError::Infer(InferError::NoSuchModel(_) | InferError::NotInstalled { .. }) => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            _ => self.kind().status,
        }
    }

    /// The `{"error": ...}` object of `openai_response`. `code` is OpenAI's where it has one,
    /// otherwise the Workers AI code as a string; `param` is the offending field in OpenAI's
    /// notation (`messages[0].content`).
    pub fn openai_body(&self) -> Value {
        let workers_code = Some(self.kind().code.to_string());
        let (kind, code) = match self {
            ApiError::NoRoute | ApiError::MethodNotAllowed => ("invalid_request_error", None),
            ApiError::Unauthorized | ApiError::Forbidden => {
                ("authentication_error", Some("invalid_api_key".into()))
            }
            ApiError::RateLimited { .. } | ApiError::GatewayRateLimited { .. } => {
                ("rate_limit_error", Some("rate_limit_exceeded".into()))
            }
            ApiError::NotFound(_) | ApiError::Conflict(_) => {
                ("invalid_request_error", workers_code)
            }
            ApiError::Upstream(_) => ("server_error", workers_code),
            ApiError::AllocationUsed { .. } => {
                ("insufficient_quota", Some("insufficient_quota".into()))
            }
            ApiError::Incomplete(_)
            | ApiError::GuardrailBlocked { .. }
            | ApiError::DlpBlocked { .. }
            | ApiError::LoraUnsupported(_)
            | ApiError::FinetuneIncomplete => ("invalid_request_error", workers_code),
            ApiError::Infer(error) => match error {
                InferError::NoSuchModel(_) | InferError::NotInstalled { .. } => {
                    ("invalid_request_error", Some("model_not_found".into()))
                }
                InferError::InvalidInput { .. }
                | InferError::InvalidData(_)
                | InferError::ModelInputRejected(_)
                | InferError::TooLarge => ("invalid_request_error", workers_code),
                InferError::Overloaded => ("rate_limit_error", workers_code),
                InferError::Timeout
                | InferError::Aborted
                | InferError::LoadFailed { .. }
                | InferError::Internal(_) => ("server_error", workers_code),
            },
        };
        let (message, param) = match self {
            ApiError::Infer(InferError::InvalidInput { field, problem }) => {
                match openai_param(field) {
                    Some(param) => (format!("Invalid '{param}': {problem}"), Some(param)),
                    None => (problem.clone(), None),
                }
            }
            ApiError::Infer(InferError::NoSuchModel(model)) => (
                format!("The model `{model}` does not exist or you do not have access to it."),
                None,
            ),
            other => (other.message(), None),
        };
        json!({ "error": { "message": message, "type": kind, "param": param, "code": code } })
    }

    /// Anthropic's `{type: "error", error: {type, message}}` response (the Messages API), with
    /// `sdk_status`.
    pub fn anthropic_response(&self) -> Response {
        let status = self.sdk_status();
        self.with_headers((status, axum::Json(self.anthropic_body())).into_response())
    }

    /// The body of `anthropic_response`; its `type` follows the status as Anthropic's does.
    pub fn anthropic_body(&self) -> Value {
        let kind = match self.sdk_status().as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            500..=599 => "api_error",
            _ => "invalid_request_error",
        };
        let message = match self {
            ApiError::Infer(InferError::InvalidInput { field, problem }) => {
                format!("{}: {problem}", openai_param(field).unwrap_or_default())
            }
            other => other.message(),
        };
        json!({ "type": "error", "error": { "type": kind, "message": message } })
    }

    /// Refusals for load or limits tell the client when to come back.
    fn with_headers(&self, mut response: Response) -> Response {
        let retry_after = match self {
            ApiError::Infer(InferError::Overloaded) => Some(1),
            ApiError::RateLimited { retry_after_secs }
            | ApiError::GatewayRateLimited { retry_after_secs }
            | ApiError::AllocationUsed {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// `10000` as `10,000`, as the documented 3036 message writes the allocation.
fn thousands(neurons: f64) -> String {
    if neurons.fract() != 0.0 {
        return neurons.to_string();
    }
    let digits = format!("{:.0}", neurons.max(0.0));
    let mut grouped = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// The Workers AI-style `{"errors": [...]}` event a stream ends with when it fails after its
/// headers went out.
pub fn stream_error_event(error: &ApiError) -> String {
    let kind = error.kind();
    let body = json!({ "errors": [{ "code": kind.code, "message": error.message() }] });
    format!("event: error\ndata: {body}\n\n")
}

/// The OpenAI-style event a stream ends with when it fails after its headers went out (the
/// `openai` SDKs raise the `error` object of any event that has one).
pub fn openai_stream_error_event(error: &ApiError) -> String {
    format!("event: error\ndata: {}\n\n", error.openai_body())
}

/// A JSON pointer (`/messages/0/content`) in OpenAI's parameter notation (`messages[0].content`);
/// `None` for the whole body.
fn openai_param(pointer: &str) -> Option<String> {
    let mut param = String::new();
    for segment in pointer.split('/').filter(|s| !s.is_empty()) {
        if segment.bytes().all(|b| b.is_ascii_digit()) {
            param.push_str(&format!("[{segment}]"));
        } else {
            if !param.is_empty() {
                param.push('.');
            }
            param.push_str(segment);
        }
    }
    (!param.is_empty()).then_some(param)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_codes_and_statuses() {
        let cases = [
            (
                ApiError::Infer(InferError::NoSuchModel("x".into())),
                400,
                5007,
            ),
            (
                ApiError::Infer(InferError::invalid("/prompt", "bad")),
                400,
                5006,
            ),
            (ApiError::Infer(InferError::TooLarge), 413, 3006),
            (ApiError::Infer(InferError::Timeout), 408, 3007),
            (ApiError::Infer(InferError::Aborted), 408, 3008),
            (ApiError::Infer(InferError::Overloaded), 429, 3040),
            (ApiError::NoRoute, 400, 7000),
            (ApiError::Unauthorized, 401, 10000),
            (ApiError::Forbidden, 403, 10000),
            (
                ApiError::RateLimited {
                    retry_after_secs: 7,
                },
                429,
                3021,
            ),
            (
                ApiError::AllocationUsed {
                    daily_free_neurons: 10_000.0,
                    retry_after_secs: 7,
                },
                429,
                3036,
            ),
        ];
        for (error, status, code) in cases {
            let kind = error.kind();
            assert_eq!(
                (kind.status.as_u16(), kind.code),
                (status, code),
                "{error:?}"
            );
        }
    }

    #[test]
    fn openai_errors_name_the_param_in_openai_notation() {
        let error = ApiError::Infer(InferError::invalid(
            "/messages/0/content",
            "expected string",
        ));
        assert_eq!(
            error.openai_body(),
            json!({"error": {
                "message": "Invalid 'messages[0].content': expected string",
                "type": "invalid_request_error",
                "param": "messages[0].content",
                "code": "5006",
            }})
        );
        let whole_body = ApiError::Infer(InferError::invalid("/", "not JSON"));
        assert_eq!(whole_body.openai_body()["error"]["param"], Value::Null);
        let cases = [
            (ApiError::Infer(InferError::NoSuchModel("m".into())), 404),
            (ApiError::NoRoute, 404),
            (ApiError::MethodNotAllowed, 405),
            (ApiError::Unauthorized, 401),
            (ApiError::Infer(InferError::Overloaded), 429),
            (ApiError::Infer(InferError::Internal("x".into())), 500),
        ];
        for (error, status) in cases {
            assert_eq!(
                error.openai_response().status().as_u16(),
                status,
                "{error:?}"
            );
        }
    }

    #[test]
    fn limits_carry_the_documented_messages_and_retry_after() {
        let used = ApiError::AllocationUsed {
            daily_free_neurons: 10_000.0,
            retry_after_secs: 3600,
        };
        assert_eq!(
            used.message(),
            "You have used up your daily free allocation of 10,000 neurons. Please upgrade to Cloudflare's Workers Paid plan if you would like to continue usage."
        );
        assert_eq!(used.rest_response().headers()[header::RETRY_AFTER], "3600");
        let limited = ApiError::RateLimited {
            retry_after_secs: 12,
        };
        assert_eq!(
            limited.binding_response().headers()[header::RETRY_AFTER],
            "12"
        );
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(5.0), "5");
        assert_eq!(thousands(0.25), "0.25");
    }

    #[test]
    fn internal_details_are_not_shown() {
        let error = ApiError::Infer(InferError::Internal("secret path /root/x".into()));
        assert!(!error.message().contains("secret"));
    }

    #[test]
    fn invalid_input_names_the_field() {
        let error = ApiError::Infer(InferError::invalid(
            "/messages/0/role",
            "expected string, got number",
        ));
        assert_eq!(
            error.message(),
            "AiError: Bad input at '/messages/0/role': expected string, got number"
        );
    }
}
