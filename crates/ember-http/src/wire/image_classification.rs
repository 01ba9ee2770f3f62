//! Image classification in Workers AI's JSON: the image as the raw body, a byte array, base64 or
//! `{body, contentType}`; out `[{label, score}, ...]`, most likely first.

use super::as_object;
use super::binary::{BinaryBody, bytes_field};
use ember_core::InferError;
use ember_core::tasks::image_classification::{
    ImageClassificationOutput, ImageClassificationRequest,
};
use serde_json::Value;

/// Parses `{image}` or a binary body. The bytes are decoded on the model's thread.
pub fn parse(
    input: &Value,
    body: Option<BinaryBody>,
) -> Result<ImageClassificationRequest, InferError> {
    let (image, _content_type) = bytes_field(as_object(input)?, "image", body)?;
    Ok(ImageClassificationRequest { image })
}

/// The result: `[{label, score}, ...]`.
pub fn result(output: &ImageClassificationOutput) -> Value {
    super::classification::label_scores(&output.labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::field_of;
    use serde_json::json;

    #[test]
    fn inputs_and_errors() {
        let bytes = parse(&json!({"image": [137, 80, 78, 71]}), None).unwrap();
        assert_eq!(bytes.image, [137, 80, 78, 71]);
        let body = BinaryBody {
            bytes: vec![1, 2],
            content_type: "image/png".into(),
        };
        assert_eq!(parse(&json!({}), Some(body)).unwrap().image, [1, 2]);
        for (input, field) in [
            (json!({}), "/"),
            (json!({"image": []}), "/image"),
            (json!({"image": [256]}), "/image/0"),
            (json!({"image": 3}), "/image"),
            (json!([1, 2]), "/"),
        ] {
            assert_eq!(field_of(parse(&input, None).unwrap_err()), field, "{input}");
        }
        assert!(matches!(
            parse(&json!({"image": "not base64!"}), None),
            Err(InferError::InvalidData(field)) if field == "/image"
        ));
    }
}
