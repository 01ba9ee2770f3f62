//! Translation in Workers AI's JSON: `{text, source_lang?, target_lang}` or `{requests: [...]}`
//! in, `{translated_text}` (an array of them for `requests`) out; languages by ISO 639-1 code or
//! English name.

use super::{Incoming, bounded_string, type_mismatch};
use ember_core::InferError;
use ember_core::catalog::ModelSpec;
use ember_core::tasks::translation::{
    MAX_REQUESTS, NAMED_LANGUAGES, TranslationItem, TranslationOutput, TranslationRequest,
    supported_languages,
};
use serde_json::{Map, Value, json};

/// `{translated_text}`, or an array of them for a batch.
pub fn result(output: &TranslationOutput) -> Value {
    let mut results = output.texts.iter().map(|t| json!({ "translated_text": t }));
    match output.batch {
        true => results.collect(),
        false => results.next().unwrap_or(Value::Null),
    }
}

/// Parses a single translation or a `requests` batch for `spec`, whose `languages` property
/// (comma-separated codes) limits the languages; without it, the named languages are accepted.
pub fn parse(incoming: Incoming<'_>) -> Result<TranslationRequest, InferError> {
    let spec = incoming.target.served;
    let object = incoming.object()?;
    let supported = supported_languages(spec);
    let Some(requests) = object.get("requests") else {
        return Ok(TranslationRequest {
            items: vec![parse_item(object, "", &supported)?],
            batch: false,
        });
    };
    let Value::Array(requests) = requests else {
        return Err(type_mismatch("/requests", "array", requests));
    };
    if requests.is_empty() || requests.len() > MAX_REQUESTS {
        return Err(InferError::invalid(
            "/requests",
            format!(
                "must hold 1 to {MAX_REQUESTS} requests, got {}",
                requests.len()
            ),
        ));
    }
    let items = requests
        .iter()
        .enumerate()
        .map(|(i, request)| {
            let at = format!("/requests/{i}");
            let object = request
                .as_object()
                .ok_or_else(|| type_mismatch(&at, "object", request))?;
            parse_item(object, &at, &supported)
        })
        .collect::<Result<_, _>>()?;
    Ok(TranslationRequest { items, batch: true })
}

fn parse_item(
    object: &Map<String, Value>,
    at: &str,
    supported: &[&str],
) -> Result<TranslationItem, InferError> {
    let (Some(text), Some(target)) = (object.get("text"), object.get("target_lang")) else {
        return Err(InferError::invalid(
            if at.is_empty() { "/" } else { at },
            "required properties are 'text,target_lang'",
        ));
    };
    let source_lang = match object.get("source_lang") {
        None | Some(Value::Null) => "en".to_string(),
        Some(source) => language(source, &format!("{at}/source_lang"), supported)?,
    };
    Ok(TranslationItem {
        text: bounded_string(text, &format!("{at}/text"))?,
        source_lang,
        target_lang: language(target, &format!("{at}/target_lang"), supported)?,
    })
}

/// A language by ISO code or English name (any case), as the code the model knows.
fn language(value: &Value, at: &str, supported: &[&str]) -> Result<String, InferError> {
    let Value::String(given) = value else {
        return Err(type_mismatch(at, "string", value));
    };
    let wanted = given.trim().to_lowercase();
    let code = NAMED_LANGUAGES
        .iter()
        .find(|(name, _)| *name == wanted)
        .map_or(wanted.as_str(), |(_, code)| code);
    match supported.contains(&code) {
        true => Ok(code.to_string()),
        false => Err(InferError::invalid(
            at,
            format!(
                "'{given}' is not a language this model translates; use one of {}",
                supported.join(", ")
            ),
        )),
    }
}

/// The input and output JSON Schema.
pub fn schema(_: &ModelSpec) -> &'static str {
    include_str!("../../schemas/translation.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{field_of, input_for};
    use ember_core::tasks::Usage;

    const M2M100: &str = "@cf/meta/m2m100-1.2b";

    #[test]
    fn languages_by_name_or_code() {
        let request = parse(input_for(M2M100, &json!({"text": "hi", "target_lang": "French"}))).unwrap();
        assert_eq!(
            request.items,
            vec![TranslationItem {
                text: "hi".into(),
                source_lang: "en".into(),
                target_lang: "fr".into()
            }]
        );
        assert!(!request.batch);
        let batch = parse(input_for(
            M2M100,
            &json!({"requests": [{"text": "a", "source_lang": "de", "target_lang": "es"}]}),
        ))
        .unwrap();
        assert!(batch.batch);
        assert_eq!(batch.items[0].source_lang, "de");
    }

    #[test]
    fn errors_name_the_field() {
        for (input, field) in [
            (json!({"text": "a"}), "/"),
            (json!({"text": "", "target_lang": "fr"}), "/text"),
            (
                json!({"text": "a", "target_lang": "klingon"}),
                "/target_lang",
            ),
            (json!({"text": "a", "target_lang": 3}), "/target_lang"),
            (
                json!({"text": "a", "source_lang": "xx", "target_lang": "fr"}),
                "/source_lang",
            ),
            (json!({"requests": []}), "/requests"),
            (json!({"requests": [{"text": "a"}]}), "/requests/0"),
            (json!({"requests": ["a"]}), "/requests/0"),
            (
                json!({"requests": [{"text": "a", "target_lang": "x"}]}),
                "/requests/0/target_lang",
            ),
        ] {
            assert_eq!(
                field_of(parse(input_for(M2M100, &input)).unwrap_err()),
                field,
                "{input}"
            );
        }
    }

    #[test]
    fn one_result_or_an_array() {
        let output = TranslationOutput {
            texts: vec!["bonjour".into()],
            batch: false,
            usage: Usage::default(),
        };
        assert_eq!(result(&output), json!({"translated_text": "bonjour"}));
        let batch = TranslationOutput {
            batch: true,
            ..output
        };
        assert_eq!(result(&batch), json!([{"translated_text": "bonjour"}]));
    }
}
