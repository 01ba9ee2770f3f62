//! `ApiError` and the one exhaustive mapping from every failure to an HTTP status, a Workers AI
//! error code and a name, rendered either as the REST envelope or as the binding's error object.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ember_core::InferError;
use serde_json::json;

/// Everything a request can fail with.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    Infer(InferError),
    /// No route matches the method and path.
    NoRoute,
    /// Missing or wrong API token.
    Unauthorized,
    /// A header or the body the route needs is missing (names what).
    Incomplete(String),
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
            ApiError::NoRoute => (StatusCode::BAD_REQUEST, 7000, "NoRoute"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, 10000, "AuthenticationError"),
            ApiError::Incomplete(_) => (StatusCode::BAD_REQUEST, 3003, "IncompleteRequest"),
            ApiError::Infer(error) => match error {
                InferError::NoSuchModel(_) | InferError::NotInstalled(_) => {
                    (StatusCode::BAD_REQUEST, 5007, "InvalidModel")
                }
                InferError::InvalidInput { .. } => (StatusCode::BAD_REQUEST, 5006, "InvalidInput"),
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
            ApiError::NoRoute => "No route for that URI".into(),
            ApiError::Unauthorized => "Authentication error".into(),
            ApiError::Incomplete(what) => format!("Request is missing headers or body: {what}"),
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

    /// Overload answers tell the client when to come back.
    fn with_headers(&self, mut response: Response) -> Response {
        if matches!(self, ApiError::Infer(InferError::Overloaded)) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The OpenAI-style `{"error": ...}` a stream ends with when it fails after its headers went out.
pub fn stream_error_event(error: &ApiError) -> String {
    let kind = error.kind();
    let body = json!({ "errors": [{ "code": kind.code, "message": error.message() }] });
    format!("event: error\ndata: {body}\n\n")
}

/// Rejections and errors answered outside a model run use the REST form.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.rest_response()
    }
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
