//! Object detection in Workers AI's JSON: the image as the raw body, a byte array, base64 or
//! `{body, contentType}`; out `[{score, label, box: {xmin, ymin, xmax, ymax}}, ...]`, most likely
//! first, the box in whole pixels (truncated, as transformers' object-detection pipeline does).

use super::Incoming;
use ember_core::InferError;
use ember_core::catalog::ModelSpec;
use ember_core::tasks::object_detection::{ObjectDetectionOutput, ObjectDetectionRequest};
use serde_json::{Value, json};

/// Parses `{image}` or a binary body. The bytes are decoded on the model's thread.
pub fn parse(incoming: Incoming<'_>) -> Result<ObjectDetectionRequest, InferError> {
    let image = incoming.with_bytes("image")?.bytes;
    Ok(ObjectDetectionRequest { image })
}

/// The result: `[{score, label, box}, ...]`.
pub fn result(output: &ObjectDetectionOutput) -> Value {
    output
        .objects
        .iter()
        .map(|object| {
            let b = object.bounding_box;
            json!({
                "score": object.score,
                "label": object.label,
                "box": {
                    "xmin": b.xmin as i64,
                    "ymin": b.ymin as i64,
                    "xmax": b.xmax as i64,
                    "ymax": b.ymax as i64,
                },
            })
        })
        .collect()
}

/// The input and output JSON Schema.
pub fn schema(_: &ModelSpec) -> &'static str {
    include_str!("../../schemas/object-detection.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{field_of, input_for};

    const MODEL: &str = "@cf/facebook/detr-resnet-50";
    use ember_core::tasks::object_detection::{BoundingBox, DetectedObject};

    #[test]
    fn inputs_errors_and_answer() {
        assert_eq!(
            parse(input_for(MODEL, &json!({"image": [1, 2]}))).unwrap().image,
            [1, 2]
        );
        for (input, field) in [(json!({}), "/"), (json!({"image": []}), "/image")] {
            assert_eq!(field_of(parse(input_for(MODEL, &input)).unwrap_err()), field, "{input}");
        }
        let output = ObjectDetectionOutput {
            objects: vec![DetectedObject {
                label: "cat".into(),
                score: 0.5,
                bounding_box: BoundingBox {
                    xmin: -0.4,
                    ymin: 10.9,
                    xmax: 200.2,
                    ymax: 99.99,
                },
            }],
        };
        assert_eq!(
            result(&output),
            json!([{"score": 0.5, "label": "cat", "box": {"xmin": 0, "ymin": 10, "xmax": 200, "ymax": 99}}])
        );
    }
}
