//! Image-to-text in Workers AI's JSON: the image as the raw body, a byte array, base64 or
//! `{body, contentType}`, with `prompt`, `max_tokens` and the sampling settings; out
//! `{description}`.

use super::text_generation::sampling;
use super::{Incoming, bounded_string, optional_bool, optional_integer};
use ember_core::InferError;
use ember_core::catalog::ModelSpec;
use ember_core::tasks::image_to_text::{
    DEFAULT_MAX_TOKENS, DEFAULT_PROMPT, ImageToTextOutput, ImageToTextRequest,
};
use serde_json::{Value, json};

/// Most `max_tokens` accepted.
const MAX_TOKENS: u64 = 4096;

/// Parses `{image, prompt?, raw?, max_tokens?, temperature?, top_p?, top_k?, seed?, *_penalty?}`
/// or a binary body.
pub fn parse(incoming: Incoming<'_>) -> Result<ImageToTextRequest, InferError> {
    let input = incoming.with_bytes("image")?;
    let object = input.object;
    // Raw mode sends the prompt without the chat template, which is where the image goes.
    if optional_bool(object, "raw")? == Some(true) {
        return Err(InferError::invalid(
            "/raw",
            "is not supported by this version of Ember",
        ));
    }
    let prompt = match object.get("prompt") {
        None | Some(Value::Null) => DEFAULT_PROMPT.to_string(),
        Some(value) => bounded_string(value, "/prompt")?,
    };
    let max_tokens = optional_integer(object, "max_tokens", 1, MAX_TOKENS)?
        .map_or(DEFAULT_MAX_TOKENS, |n| n as u32);
    Ok(ImageToTextRequest {
        image: input.bytes,
        prompt,
        max_tokens,
        sampling: sampling(object)?,
    })
}

pub fn result(output: &ImageToTextOutput) -> Value {
    json!({ "description": output.description })
}

/// The input and output JSON Schema.
pub fn schema(_: &ModelSpec) -> &'static str {
    include_str!("../../schemas/image-to-text.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::binary::BinaryBody;
    use crate::wire::{field_of, input_for};

    const LLAVA: &str = "@cf/llava-hf/llava-1.5-7b-hf";

    #[test]
    fn inputs_and_errors() {
        let request = parse(input_for(LLAVA, &json!({"image": [1, 2], "prompt": "What is it?", "max_tokens": 9, "temperature": 0}))).unwrap();
        assert_eq!(
            (request.image, request.prompt.as_str(), request.max_tokens),
            (vec![1, 2], "What is it?", 9)
        );
        assert_eq!(request.sampling.temperature, 0.0);
        let body = BinaryBody {
            bytes: vec![7],
            content_type: "image/png".into(),
        };
        let defaults = parse(input_for(LLAVA, &json!({})).with_body(body)).unwrap();
        assert_eq!(
            (defaults.prompt.as_str(), defaults.max_tokens),
            (DEFAULT_PROMPT, DEFAULT_MAX_TOKENS)
        );
        for (input, field) in [
            (json!({}), "/"),
            (json!({"image": []}), "/image"),
            (json!({"image": [1], "prompt": ""}), "/prompt"),
            (json!({"image": [1], "prompt": 3}), "/prompt"),
            (json!({"image": [1], "max_tokens": 0}), "/max_tokens"),
            (json!({"image": [1], "temperature": -1}), "/temperature"),
            (json!({"image": [1], "raw": true}), "/raw"),
        ] {
            assert_eq!(
                field_of(parse(input_for(LLAVA, &input)).unwrap_err()),
                field,
                "{input}"
            );
        }
    }

    #[test]
    fn answers_a_description() {
        let output = ImageToTextOutput {
            description: "A cat.".into(),
            usage: Default::default(),
        };
        assert_eq!(result(&output), json!({"description": "A cat."}));
    }
}
