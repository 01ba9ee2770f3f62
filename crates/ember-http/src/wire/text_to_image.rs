//! Text-to-image in Workers AI's shape for its Stable Diffusion models: `{prompt, negative_prompt,
//! height, width, num_steps, guidance, strength, seed, image | image_b64, mask}` answered with the
//! PNG itself (`image/png`).

use super::binary::bytes;
use super::{Incoming, Answer, as_object, optional_integer, optional_number, string_at_most, type_mismatch};
use ember_core::InferError;
use ember_core::catalog::ModelSpec;
use ember_core::tasks::text_to_image::{
    DEFAULT_GUIDANCE, MAX_PROMPT_CHARS, MAX_SIDE, MAX_STEPS, MIN_SIDE, SIDE_MULTIPLE,
    TextToImageOutput, TextToImageRequest,
};
use serde_json::{Map, Value};

/// Largest guidance scale accepted.
const MAX_GUIDANCE: f64 = 30.0;

/// Parses a request's input; a binary body is refused.
pub fn parse(incoming: Incoming<'_>) -> Result<TextToImageRequest, InferError> {
    from_json(incoming.json()?)
}

/// Parses the model input.
pub fn from_json(input: &Value) -> Result<TextToImageRequest, InferError> {
    let object = as_object(input)?;
    let prompt = match object.get("prompt") {
        None | Some(Value::Null) => {
            return Err(InferError::invalid("/", "required properties are 'prompt'"));
        }
        Some(value) => string_at_most(value, "/prompt", MAX_PROMPT_CHARS)?,
    };
    let negative_prompt = match object.get("negative_prompt") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) if text.is_empty() => None,
        Some(value) => Some(string_at_most(value, "/negative_prompt", MAX_PROMPT_CHARS)?),
    };
    let image = match (object.get("image"), object.get("image_b64")) {
        (Some(_), Some(_)) => {
            return Err(InferError::invalid(
                "/image_b64",
                "give the starting image as image or as image_b64, not both",
            ));
        }
        (Some(value), None) => Some(image_bytes(value, "/image")?),
        (None, Some(Value::String(_))) => Some(bytes(&object["image_b64"], "/image_b64")?),
        (None, Some(other)) => return Err(type_mismatch("/image_b64", "string", other)),
        (None, None) => None,
    };
    let mask = object
        .get("mask")
        .map(|value| image_bytes(value, "/mask"))
        .transpose()?;
    Ok(TextToImageRequest {
        prompt,
        negative_prompt,
        width: side(object, "width")?,
        height: side(object, "height")?,
        steps: optional_integer(object, "num_steps", 1, u64::from(MAX_STEPS))?
            .map(|steps| steps as u32),
        guidance: optional_number(object, "guidance", 0.0, MAX_GUIDANCE)?
            .unwrap_or(DEFAULT_GUIDANCE),
        strength: optional_number(object, "strength", 0.0, 1.0)?.unwrap_or(1.0),
        seed: optional_integer(object, "seed", 0, u64::MAX)?,
        image,
        mask,
        count: 1,
    })
}

/// The PNG itself (a Workers AI request asks for one).
pub fn result(output: &TextToImageOutput) -> Answer {
    Answer::Binary {
        bytes: output.pngs.first().cloned().unwrap_or_default(),
        content_type: "image/png".into(),
    }
}

/// An image field: a byte array (as the typed binding sends it) or base64.
fn image_bytes(value: &Value, at: &str) -> Result<Vec<u8>, InferError> {
    match value {
        Value::Null => Err(InferError::invalid(at, "must not be null")),
        value => bytes(value, at),
    }
}

/// `width` or `height`: `MIN_SIDE` to `MAX_SIDE` pixels, a multiple of `SIDE_MULTIPLE`.
fn side(object: &Map<String, Value>, key: &str) -> Result<Option<u32>, InferError> {
    let side = optional_integer(object, key, u64::from(MIN_SIDE), u64::from(MAX_SIDE))?;
    match side {
        Some(pixels) if pixels % u64::from(SIDE_MULTIPLE) != 0 => Err(InferError::invalid(
            format!("/{key}"),
            format!("must be a multiple of {SIDE_MULTIPLE}, got {pixels}"),
        )),
        side => Ok(side.map(|pixels| pixels as u32)),
    }
}

/// The input and output JSON Schema.
pub fn schema(_: &ModelSpec) -> &'static str {
    include_str!("../../schemas/text-to-image.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::field_of;
    use serde_json::json;

    #[test]
    fn reads_every_field() {
        let request = from_json(&json!({
            "prompt": "a cat", "negative_prompt": "blurry", "width": 512, "height": 768,
            "num_steps": 8, "guidance": 2, "strength": 0.5, "seed": 7,
            "image": [137, 80], "mask": "iVA=",
        }))
        .unwrap();
        assert_eq!(request.prompt, "a cat");
        assert_eq!(request.negative_prompt.as_deref(), Some("blurry"));
        assert_eq!((request.width, request.height), (Some(512), Some(768)));
        assert_eq!(request.steps, Some(8));
        assert_eq!((request.guidance, request.strength), (2.0, 0.5));
        assert_eq!(request.seed, Some(7));
        assert_eq!(request.image.as_deref(), Some(&[137, 80][..]));
        assert_eq!(request.mask.as_deref(), Some(&[137, 80][..]));
        let defaults = from_json(&json!({"prompt": "a cat", "image_b64": "iVA="})).unwrap();
        assert_eq!((defaults.guidance, defaults.strength), (7.5, 1.0));
        assert_eq!(defaults.image.as_deref(), Some(&[137, 80][..]));
        assert_eq!(
            (defaults.width, defaults.steps, defaults.seed),
            (None, None, None)
        );
    }

    #[test]
    fn errors_name_the_field() {
        for (input, field) in [
            (json!({}), "/"),
            (json!("a cat"), "/"),
            (json!({"prompt": ""}), "/prompt"),
            (json!({"prompt": "x".repeat(2049)}), "/prompt"),
            (json!({"prompt": "a", "width": 500}), "/width"),
            (json!({"prompt": "a", "height": 128}), "/height"),
            (json!({"prompt": "a", "height": 4096}), "/height"),
            (json!({"prompt": "a", "num_steps": 21}), "/num_steps"),
            (json!({"prompt": "a", "num_steps": 0}), "/num_steps"),
            (json!({"prompt": "a", "strength": 1.5}), "/strength"),
            (json!({"prompt": "a", "guidance": -1}), "/guidance"),
            (json!({"prompt": "a", "seed": -1}), "/seed"),
            (json!({"prompt": "a", "image": [1, 300]}), "/image/1"),
            (json!({"prompt": "a", "image": []}), "/image"),
            (json!({"prompt": "a", "image_b64": 3}), "/image_b64"),
            (
                json!({"prompt": "a", "image": [1], "image_b64": "AQ=="}),
                "/image_b64",
            ),
            (json!({"prompt": "a", "mask": null}), "/mask"),
        ] {
            assert_eq!(field_of(from_json(&input).unwrap_err()), field, "{input}");
        }
    }
}
