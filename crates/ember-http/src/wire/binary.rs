//! Binary inputs as Workers AI takes them: the raw request body (`application/octet-stream`,
//! `audio/*`, `image/*`, in REST and in the binding's ReadableStream form), an array of byte
//! values (`{"audio": [82, 73, ...]}`), a base64 string (optionally a `data:` URL), or the
//! binding's `{body, contentType}` object holding one of those.

use ember_core::InferError;
use serde_json::Value;

/// A request body that is not JSON: the bytes and the content type they came with.
#[derive(Debug, Clone, PartialEq)]
pub struct BinaryBody {
    pub bytes: Vec<u8>,
    pub content_type: String,
}

/// Whether a body with this `content-type` is JSON (absent, `application/json`, or `text/plain`,
/// which curl and fetch send for strings) rather than bytes for a binary input.
pub fn is_json(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return true;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence.is_empty()
        || essence == "application/json"
        || essence == "text/plain"
        || essence.ends_with("+json")
}

/// The bytes of the binary input `field` of `object`: the raw body when the request was one,
/// else the field as a byte array, base64 string or `{body, contentType}`. Returns the bytes and
/// the content type the caller gave, if any. Errors name the field.
pub fn bytes_field(
    object: &serde_json::Map<String, Value>,
    field: &str,
    body: Option<BinaryBody>,
) -> Result<(Vec<u8>, Option<String>), InferError> {
    let at = format!("/{field}");
    if let Some(body) = body {
        if object.contains_key(field) {
            return Err(InferError::invalid(
                &at,
                "was sent both as the request body and as a field",
            ));
        }
        return Ok((body.bytes, Some(body.content_type)));
    }
    match object.get(field) {
        None | Some(Value::Null) => Err(InferError::invalid(
            "/",
            format!("required properties are '{field}' (or the raw bytes as the request body)"),
        )),
        Some(Value::Object(wrapped)) => {
            let content_type = wrapped
                .get("contentType")
                .and_then(Value::as_str)
                .map(str::to_string);
            let body = wrapped.get("body").ok_or_else(|| {
                InferError::invalid(&at, "expected {\"body\": ..., \"contentType\": ...}")
            })?;
            Ok((bytes(body, &format!("{at}/body"))?, content_type))
        }
        Some(value) => Ok((bytes(value, &at)?, None)),
    }
}

/// A byte array or a base64 string (a `data:<type>;base64,` prefix is allowed), never empty.
pub fn bytes(value: &Value, at: &str) -> Result<Vec<u8>, InferError> {
    let bytes = match value {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_u64()
                    .and_then(|n| u8::try_from(n).ok())
                    .ok_or_else(|| {
                        InferError::invalid(format!("{at}/{i}"), "expected a byte value 0 to 255")
                    })
            })
            .collect::<Result<Vec<u8>, _>>()?,
        Value::String(text) => {
            use base64::Engine as _;
            let encoded = match text.split_once(";base64,") {
                Some((prefix, data)) if prefix.starts_with("data:") => data,
                _ => text.as_str(),
            };
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| InferError::InvalidData(at.to_string()))?
        }
        other => {
            return Err(InferError::invalid(
                at,
                format!(
                    "expected an array of bytes or a base64 string, got {}",
                    super::kind(other)
                ),
            ));
        }
    };
    if bytes.is_empty() {
        return Err(InferError::invalid(at, "must not be empty"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::field_of;
    use serde_json::json;

    fn object(value: Value) -> serde_json::Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn every_form_gives_the_same_bytes() {
        let raw = BinaryBody {
            bytes: vec![1, 2, 255],
            content_type: "audio/wav".into(),
        };
        for (input, body) in [
            (json!({}), Some(raw.clone())),
            (json!({"audio": [1, 2, 255]}), None),
            (json!({"audio": "AQL/"}), None),
            (json!({"audio": "data:audio/wav;base64,AQL/"}), None),
            (
                json!({"audio": {"body": [1, 2, 255], "contentType": "audio/wav"}}),
                None,
            ),
        ] {
            let (bytes, _) = bytes_field(&object(input.clone()), "audio", body).unwrap();
            assert_eq!(bytes, vec![1, 2, 255], "{input}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        for (input, field) in [
            (json!({}), "/"),
            (json!({"audio": []}), "/audio"),
            (json!({"audio": [1, 256]}), "/audio/1"),
            (json!({"audio": [1, -1]}), "/audio/1"),
            (json!({"audio": 3}), "/audio"),
            (json!({"audio": {"contentType": "audio/wav"}}), "/audio"),
        ] {
            let error = bytes_field(&object(input.clone()), "audio", None).unwrap_err();
            assert_eq!(field_of(error), field, "{input}");
        }
        let error = bytes_field(&object(json!({"audio": "not base64!"})), "audio", None);
        assert!(matches!(error, Err(InferError::InvalidData(at)) if at == "/audio"));
    }

    #[test]
    fn json_content_types() {
        for json in [
            None,
            Some("application/json; charset=utf-8"),
            Some("text/plain"),
        ] {
            assert!(is_json(json), "{json:?}");
        }
        for binary in ["application/octet-stream", "audio/wav", "image/png"] {
            assert!(!is_json(Some(binary)), "{binary}");
        }
    }
}
