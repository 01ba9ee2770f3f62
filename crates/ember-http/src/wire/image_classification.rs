//! Image classification in Workers AI's JSON: the image as the raw body, a byte array, base64 or
//! `{body, contentType}`; out `[{label, score}, ...]`, most likely first.

use super::Incoming;
use ember_core::InferError;
use ember_core::catalog::ModelSpec;
use ember_core::tasks::image_classification::{
    ImageClassificationOutput, ImageClassificationRequest,
};
use serde_json::Value;

/// Parses `{image}` or a binary body. The bytes are decoded on the model's thread.
pub fn parse(incoming: Incoming<'_>) -> Result<ImageClassificationRequest, InferError> {
    let image = incoming.with_bytes("image")?.bytes;
    Ok(ImageClassificationRequest { image })
}

/// The result: `[{label, score}, ...]`.
pub fn result(output: &ImageClassificationOutput) -> Value {
    super::classification::label_scores(&output.labels)
}

/// The input and output JSON Schema.
pub fn schema(_: &ModelSpec) -> &'static str {
    include_str!("../../schemas/image-classification.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::binary::BinaryBody;
    use crate::wire::{field_of, input_for};

    const MODEL: &str = "@cf/microsoft/resnet-50";
    use serde_json::json;

    #[test]
    fn inputs_and_errors() {
        let bytes = parse(input_for(MODEL, &json!({"image": [137, 80, 78, 71]}))).unwrap();
        assert_eq!(bytes.image, [137, 80, 78, 71]);
        let body = BinaryBody {
            bytes: vec![1, 2],
            content_type: "image/png".into(),
        };
        assert_eq!(parse(input_for(MODEL, &json!({})).with_body(body)).unwrap().image, [1, 2]);
        for (input, field) in [
            (json!({}), "/"),
            (json!({"image": []}), "/image"),
            (json!({"image": [256]}), "/image/0"),
            (json!({"image": 3}), "/image"),
            (json!([1, 2]), "/"),
        ] {
            assert_eq!(field_of(parse(input_for(MODEL, &input)).unwrap_err()), field, "{input}");
        }
        assert!(matches!(
            parse(input_for(MODEL, &json!({"image": "not base64!"}))),
            Err(InferError::InvalidData(field)) if field == "/image"
        ));
    }
}
