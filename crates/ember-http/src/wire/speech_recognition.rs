//! Speech recognition in Workers AI's JSON: the audio as the raw body, a byte array, base64 or
//! `{body, contentType}`, with whisper-large-v3-turbo's decoding settings (accepted by every
//! Whisper model here); out `{text, word_count, words, vtt}`, or for models whose catalog entry
//! has `transcription = "segments"` (turbo) `{transcription_info, text, word_count, segments,
//! vtt}`.

use super::{Incoming, nonempty_string, optional_bool, optional_integer, optional_number};
use ember_core::InferError;
use ember_core::catalog::ModelSpec;
use ember_core::tasks::speech_recognition::{
    SpeechRecognitionOutput, SpeechRecognitionRequest, TimedWord, TranscribeSettings,
};
use serde_json::{Value, json};

/// Parses the input for its target: the requested model decides the answer's shape.
pub fn parse(incoming: Incoming<'_>) -> Result<SpeechRecognitionRequest, InferError> {
    let detailed = answers_segments(incoming.target.requested);
    let input = incoming.with_bytes("audio")?;
    let object = input.object;
    let defaults = TranscribeSettings {
        // Greedy unless asked: the contract gives turbo a beam of 5 and the others no setting.
        beam_size: if detailed { 5 } else { 1 },
        ..TranscribeSettings::default()
    };
    let translate = match object.get("task") {
        None | Some(Value::Null) => false,
        Some(task) if task == "transcribe" => false,
        Some(task) if task == "translate" => true,
        Some(_) => {
            return Err(InferError::invalid(
                "/task",
                "must be 'transcribe' or 'translate'",
            ));
        }
    };
    let language = match object.get("language") {
        None | Some(Value::Null) => None,
        Some(value) => {
            let code = nonempty_string(value, "/language")?.to_ascii_lowercase();
            if !(2..=3).contains(&code.len()) || !code.chars().all(|c| c.is_ascii_lowercase()) {
                return Err(InferError::invalid(
                    "/language",
                    format!("'{code}' is not an ISO 639-1 language code"),
                ));
            }
            Some(code)
        }
    };
    let optional_text = |key: &str| match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => nonempty_string(value, &format!("/{key}")).map(Some),
    };
    let settings = TranscribeSettings {
        translate,
        language,
        initial_prompt: optional_text("initial_prompt")?,
        prefix: optional_text("prefix")?,
        beam_size: optional_integer(object, "beam_size", 1, 10)?
            .map_or(defaults.beam_size, |n| n as u32),
        condition_on_previous_text: optional_bool(object, "condition_on_previous_text")?
            .unwrap_or(defaults.condition_on_previous_text),
        no_speech_threshold: optional_number(object, "no_speech_threshold", 0.0, 1.0)?
            .unwrap_or(defaults.no_speech_threshold),
        compression_ratio_threshold: optional_number(
            object,
            "compression_ratio_threshold",
            0.0,
            100.0,
        )?
        .unwrap_or(defaults.compression_ratio_threshold),
        log_prob_threshold: optional_number(object, "log_prob_threshold", -100.0, 0.0)?
            .unwrap_or(defaults.log_prob_threshold),
        vad_filter: optional_bool(object, "vad_filter")?.unwrap_or(defaults.vad_filter),
    };
    Ok(SpeechRecognitionRequest {
        audio: input.bytes,
        content_type: input.content_type,
        settings,
        detailed,
    })
}

/// Whether `spec` answers in whisper-large-v3-turbo's shape (its catalog property
/// `transcription = "segments"`).
pub fn answers_segments(spec: &ModelSpec) -> bool {
    spec.properties
        .get("transcription")
        .is_some_and(|shape| shape == "segments")
}

/// The input and output JSON Schema: turbo's shape, or the others'.
pub fn schema(spec: &ModelSpec) -> &'static str {
    match answers_segments(spec) {
        true => include_str!("../../schemas/automatic-speech-recognition-segments.json"),
        false => include_str!("../../schemas/automatic-speech-recognition.json"),
    }
}

pub fn result(output: &SpeechRecognitionOutput) -> Value {
    let text = output.text();
    let word_count = output.words().count();
    let vtt = vtt(output);
    if !output.detailed {
        let words: Vec<Value> = output.words().map(word).collect();
        return json!({ "text": text, "word_count": word_count, "words": words, "vtt": vtt });
    }
    let segments: Vec<Value> = output
        .segments
        .iter()
        .map(|segment| {
            json!({
                "start": segment.start,
                "end": segment.end,
                "text": segment.text.trim(),
                "temperature": segment.temperature,
                "avg_logprob": segment.avg_logprob,
                "compression_ratio": segment.compression_ratio,
                "no_speech_prob": segment.no_speech_prob,
                "words": segment.words.iter().map(word).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "transcription_info": {
            "language": output.language,
            "language_probability": output.language_probability,
            "duration": output.duration,
            "duration_after_vad": output.duration_after_vad,
        },
        "text": text,
        "word_count": word_count,
        "segments": segments,
        "vtt": vtt,
    })
}

fn word(word: &TimedWord) -> Value {
    json!({ "word": word.word.trim(), "start": word.start, "end": word.end })
}

/// The transcription as WebVTT subtitles, one cue per segment.
pub fn vtt(output: &SpeechRecognitionOutput) -> String {
    let mut vtt = String::from("WEBVTT\n\n");
    for segment in &output.segments {
        vtt.push_str(&format!(
            "{} --> {}\n{}\n\n",
            timestamp(segment.start),
            timestamp(segment.end),
            segment.text.trim()
        ));
    }
    vtt
}

/// `hh:mm:ss.mmm`.
fn timestamp(seconds: f64) -> String {
    let millis = (seconds.max(0.0) * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        millis / 3_600_000,
        millis / 60_000 % 60,
        millis / 1000 % 60,
        millis % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{field_of, input_for};
    use ember_core::tasks::speech_recognition::TranscriptSegment;

    fn parse_for(model: &str, input: Value) -> Result<SpeechRecognitionRequest, InferError> {
        parse(input_for(model, &input))
    }

    #[test]
    fn settings_and_shape_follow_the_model() {
        let plain = parse_for("@cf/openai/whisper", json!({"audio": [1, 2]})).unwrap();
        assert!(!plain.detailed);
        assert_eq!(plain.settings.beam_size, 1);
        let turbo = parse_for(
            "@cf/openai/whisper-large-v3-turbo",
            json!({"audio": "AQI=", "task": "translate", "language": "FR", "beam_size": 2}),
        )
        .unwrap();
        assert!(turbo.detailed);
        assert_eq!(turbo.audio, vec![1, 2]);
        assert!(turbo.settings.translate);
        assert_eq!(turbo.settings.language.as_deref(), Some("fr"));
        assert_eq!(turbo.settings.beam_size, 2);
    }

    #[test]
    fn errors_name_the_field() {
        for (input, field) in [
            (json!({}), "/"),
            (json!({"audio": [1], "task": "sing"}), "/task"),
            (json!({"audio": [1], "language": "french"}), "/language"),
            (json!({"audio": [1], "beam_size": 0}), "/beam_size"),
            (
                json!({"audio": [1], "no_speech_threshold": 2}),
                "/no_speech_threshold",
            ),
            (
                json!({"audio": [1], "initial_prompt": 4}),
                "/initial_prompt",
            ),
            (json!({"audio": [1], "vad_filter": "yes"}), "/vad_filter"),
            (json!("audio"), "/"),
        ] {
            let error = parse_for("@cf/openai/whisper", input.clone()).unwrap_err();
            assert_eq!(field_of(error), field, "{input}");
        }
    }

    #[test]
    fn both_shapes_and_subtitles() {
        let segment = TranscriptSegment {
            start: 0.0,
            end: 61.5,
            text: " Hello world.".into(),
            temperature: 0.0,
            avg_logprob: -0.2,
            compression_ratio: 1.1,
            no_speech_prob: 0.01,
            words: vec![
                TimedWord {
                    word: " Hello".into(),
                    start: 0.0,
                    end: 0.5,
                },
                TimedWord {
                    word: " world.".into(),
                    start: 0.5,
                    end: 1.0,
                },
            ],
        };
        let mut output = SpeechRecognitionOutput {
            language: "en".into(),
            language_probability: 0.99,
            duration: 62.0,
            duration_after_vad: 62.0,
            segments: vec![segment],
            detailed: false,
        };
        let plain = result(&output);
        assert_eq!(plain["text"], "Hello world.");
        assert_eq!(plain["word_count"], 2);
        assert_eq!(
            plain["words"][1],
            json!({"word": "world.", "start": 0.5, "end": 1.0})
        );
        assert_eq!(
            plain["vtt"],
            "WEBVTT\n\n00:00:00.000 --> 00:01:01.500\nHello world.\n\n"
        );
        output.detailed = true;
        let detailed = result(&output);
        assert_eq!(detailed["transcription_info"]["language"], "en");
        assert_eq!(detailed["segments"][0]["text"], "Hello world.");
        assert_eq!(detailed["segments"][0]["words"][0]["word"], "Hello");
    }
}
