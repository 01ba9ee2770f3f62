//! Text-to-speech in Workers AI's shapes: MeloTTS's `{prompt, lang}` answered `{audio: <base64
//! MP3>}`, and, for models whose catalog entry has `speech = "aura"`, Deepgram Aura's `{text, speaker,
//! encoding, container, sample_rate, bit_rate}` answered with the audio itself.

use super::{Answer, Incoming, nonempty_string, optional_integer, string_at_most};
use base64::Engine as _;
use ember_core::catalog::ModelSpec;
use ember_core::tasks::text_to_speech::{
    AudioFormat, MAX_TEXT_CHARS, SpeechSynthesisOutput, SpeechSynthesisRequest,
};
use ember_core::InferError;
use serde_json::{Map, Value, json};

/// Aura's speakers; a local voice speaks for all of them.
const AURA_SPEAKERS: [&str; 12] = [
    "angus", "asteria", "arcas", "orion", "orpheus", "athena", "luna", "zeus", "perseus", "helios",
    "hera", "stella",
];

/// MeloTTS's languages.
const MELO_LANGUAGES: [&str; 6] = ["en", "es", "fr", "zh", "jp", "kr"];

/// Whether `spec` takes Aura's input and answers with the audio itself.
pub fn speaks_aura(spec: &ModelSpec) -> bool {
    spec.properties
        .get("speech")
        .is_some_and(|shape| shape == "aura")
}

pub fn parse(incoming: Incoming<'_>) -> Result<SpeechSynthesisRequest, InferError> {
    let object = incoming.object()?;
    match speaks_aura(incoming.target.requested) {
        true => parse_aura(object),
        false => parse_melo(object),
    }
}

fn text(object: &Map<String, Value>, field: &str) -> Result<String, InferError> {
    let value = object
        .get(field)
        .ok_or_else(|| InferError::invalid("/", format!("required properties are '{field}'")))?;
    string_at_most(value, &format!("/{field}"), MAX_TEXT_CHARS)
}

fn parse_melo(object: &Map<String, Value>) -> Result<SpeechSynthesisRequest, InferError> {
    let language = match object.get("lang") {
        None | Some(Value::Null) => "en".to_string(),
        Some(value) => {
            let lang = nonempty_string(value, "/lang")?.to_ascii_lowercase();
            if !MELO_LANGUAGES.contains(&lang.as_str()) {
                return Err(InferError::invalid(
                    "/lang",
                    format!("'{lang}' is not one of {}", MELO_LANGUAGES.join(", ")),
                ));
            }
            lang
        }
    };
    Ok(SpeechSynthesisRequest {
        text: text(object, "prompt")?,
        speaker: None,
        language: Some(language),
        format: AudioFormat::Mp3,
        sample_rate: None,
        bit_rate: None,
        base64_json: true,
    })
}

fn parse_aura(object: &Map<String, Value>) -> Result<SpeechSynthesisRequest, InferError> {
    let choice = |field: &str| match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => nonempty_string(value, &format!("/{field}")).map(Some),
    };
    let speaker = choice("speaker")?.unwrap_or_else(|| "angus".into());
    if !AURA_SPEAKERS.contains(&speaker.as_str()) {
        return Err(InferError::invalid(
            "/speaker",
            format!("'{speaker}' is not one of {}", AURA_SPEAKERS.join(", ")),
        ));
    }
    let encoding = choice("encoding")?.unwrap_or_else(|| "mp3".into());
    let container = choice("container")?;
    let format = match (encoding.as_str(), container.as_deref()) {
        ("mp3", None | Some("none")) => AudioFormat::Mp3,
        ("linear16", None | Some("wav")) => AudioFormat::Wav,
        ("linear16", Some("none")) => AudioFormat::Linear16,
        ("mulaw", None | Some("wav")) => AudioFormat::MulawWav,
        ("mulaw", Some("none")) => AudioFormat::Mulaw,
        ("alaw", None | Some("wav")) => AudioFormat::AlawWav,
        ("alaw", Some("none")) => AudioFormat::Alaw,
        ("flac", None | Some("none")) => AudioFormat::Flac,
        ("opus", None | Some("ogg")) => AudioFormat::OggOpus,
        ("aac", _) => {
            return Err(InferError::invalid(
                "/encoding",
                "aac is not supported by this version of Ember",
            ));
        }
        ("mp3" | "linear16" | "mulaw" | "alaw" | "flac" | "opus", Some(container)) => {
            return Err(InferError::invalid(
                "/container",
                format!("'{container}' does not hold {encoding}"),
            ));
        }
        (other, _) => {
            return Err(InferError::invalid(
                "/encoding",
                format!("'{other}' is not one of linear16, flac, mulaw, alaw, mp3, opus, aac"),
            ));
        }
    };
    Ok(SpeechSynthesisRequest {
        text: text(object, "text")?,
        speaker: Some(speaker),
        language: None,
        format,
        sample_rate: optional_integer(object, "sample_rate", 8_000, 48_000)?.map(|n| n as u32),
        bit_rate: optional_integer(object, "bit_rate", 4_000, 320_000)?.map(|n| n as u32),
        base64_json: false,
    })
}

/// The input and output JSON Schema: Aura's shape, or MeloTTS's.
pub fn schema(spec: &ModelSpec) -> &'static str {
    match speaks_aura(spec) {
        true => include_str!("../../schemas/text-to-speech-aura.json"),
        false => include_str!("../../schemas/text-to-speech.json"),
    }
}

pub fn result(output: &SpeechSynthesisOutput) -> Answer {
    match output.base64_json {
        true => Answer::Json(
            json!({ "audio": base64::engine::general_purpose::STANDARD.encode(&output.audio) }),
        ),
        false => Answer::Binary {
            bytes: output.audio.clone(),
            content_type: output.content_type.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{field_of, input_for};

    fn parse_for(model: &str, input: Value) -> Result<SpeechSynthesisRequest, InferError> {
        parse(input_for(model, &input))
    }

    #[test]
    fn each_model_takes_its_own_shape() {
        let melo = parse_for(
            "@cf/myshell-ai/melotts",
            json!({"prompt": "Hi", "lang": "FR"}),
        )
        .unwrap();
        assert_eq!((melo.format, melo.base64_json), (AudioFormat::Mp3, true));
        assert_eq!(melo.language.as_deref(), Some("fr"));
        let aura = parse_for(
            "@cf/deepgram/aura-1",
            json!({"text": "Hi", "speaker": "luna", "encoding": "linear16", "container": "none", "sample_rate": 16000}),
        )
        .unwrap();
        assert_eq!(
            (aura.format, aura.base64_json),
            (AudioFormat::Linear16, false)
        );
        assert_eq!(aura.sample_rate, Some(16000));
        let opus = parse_for(
            "@cf/deepgram/aura-1",
            json!({"text": "Hi", "encoding": "opus"}),
        )
        .unwrap();
        assert_eq!(opus.format, AudioFormat::OggOpus);
    }

    #[test]
    fn errors_name_the_field() {
        for (model, input, field) in [
            ("@cf/myshell-ai/melotts", json!({"text": "Hi"}), "/"),
            ("@cf/myshell-ai/melotts", json!({"prompt": ""}), "/prompt"),
            (
                "@cf/myshell-ai/melotts",
                json!({"prompt": "x".repeat(2001)}),
                "/prompt",
            ),
            (
                "@cf/myshell-ai/melotts",
                json!({"prompt": "Hi", "lang": "klingon"}),
                "/lang",
            ),
            (
                "@cf/deepgram/aura-1",
                json!({"text": "Hi", "speaker": "bob"}),
                "/speaker",
            ),
            (
                "@cf/deepgram/aura-1",
                json!({"text": "Hi", "encoding": "wma"}),
                "/encoding",
            ),
            (
                "@cf/deepgram/aura-1",
                json!({"text": "Hi", "encoding": "aac"}),
                "/encoding",
            ),
            (
                "@cf/deepgram/aura-1",
                json!({"text": "Hi", "encoding": "mp3", "container": "wav"}),
                "/container",
            ),
            (
                "@cf/deepgram/aura-1",
                json!({"text": "Hi", "sample_rate": 100}),
                "/sample_rate",
            ),
            ("@cf/deepgram/aura-1", json!({"text": 4}), "/text"),
        ] {
            let error = parse_for(model, input.clone()).unwrap_err();
            assert_eq!(field_of(error), field, "{input}");
        }
    }
}
