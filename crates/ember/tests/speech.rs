//! Speech recognition on the real Whisper models through the routes: tiny.en from the raw body,
//! byte arrays and base64 on REST, base on the binding's stream form under the turbo id it stands
//! in for, `vad_filter`, every audio container the decoder reads, and garbage audio refused. Transcripts are compared with
//! faster-whisper's on the same clip (`scripts/reference/whisper.py`); the engine test
//! (`ember-engines/tests/whisper_reference.rs`) checks tokens and timings in detail.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use serde_json::{Value, json};
use std::path::PathBuf;

const RUN: &str = "/client/v4/accounts/local/ai/run/";
const TINY_EN: &str = "@cf/openai/whisper-tiny-en";
const BASE: &str = "@cf/openai/whisper";
const TURBO: &str = "@cf/openai/whisper-large-v3-turbo";

fn fixture(path: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../ember-engines/tests/fixtures")
        .join(path);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// faster-whisper's greedy transcript of `short.wav` on a model (`tiny-en` or `base`), and its
/// word timings.
fn reference(model: &str) -> (String, Vec<(String, f64, f64)>) {
    let reference: Value =
        serde_json::from_slice(&fixture(&format!("whisper/{model}.json"))).unwrap();
    let case = reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|case| case["clip"] == "short.wav" && case["beam_size"] == 1)
        .unwrap();
    let segments = case["segments"].as_array().unwrap();
    let text: String = segments
        .iter()
        .map(|s| s["text"].as_str().unwrap())
        .collect();
    let words = segments
        .iter()
        .flat_map(|s| s["words"].as_array().unwrap())
        .map(|w| {
            let word = w["word"].as_str().unwrap().trim().to_string();
            (
                word,
                w["start"].as_f64().unwrap(),
                w["end"].as_f64().unwrap(),
            )
        })
        .collect();
    (text.trim().to_string(), words)
}

fn raw(model: &str, content_type: &str, bytes: Vec<u8>) -> Request<Body> {
    Request::post(format!("{RUN}{model}"))
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(bytes))
        .unwrap()
}

async fn transcribe(app: &App, request: Request<Body>) -> (Value, String) {
    let reply = send(app, request).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let served_by = reply.header("x-ember-model").to_string();
    (reply.json()["result"].clone(), served_by)
}

#[tokio::test(flavor = "multi_thread")]
async fn tiny_en_transcribes_as_faster_whisper_does_in_every_input_form() {
    use base64::Engine as _;
    let app = app();
    let (text, words) = reference("tiny-en");
    let wav = fixture("whisper/short.wav");
    let base64 = base64::engine::general_purpose::STANDARD.encode(&wav);
    let requests = [
        raw(TINY_EN, "audio/wav", wav.clone()),
        post(
            &format!("{RUN}{TINY_EN}"),
            json!({ "audio": wav.clone() }).to_string(),
        ),
        post(
            &format!("{RUN}{TINY_EN}"),
            json!({ "audio": base64 }).to_string(),
        ),
    ];
    for request in requests {
        let (result, served_by) = transcribe(&app, request).await;
        assert_eq!(served_by, TINY_EN);
        assert_eq!(result["text"], text.as_str(), "{result}");
        assert_eq!(result["word_count"], words.len());
        let got = result["words"].as_array().unwrap();
        assert_eq!(got.len(), words.len());
        // faster-whisper's word timings to within 0.1 s (its DTW on float32 CTranslate2 versus
        // ours on candle: the same alignment up to rounding of the attention weights).
        for (got, (word, start, end)) in got.iter().zip(&words) {
            assert_eq!(got["word"], word.as_str());
            assert!(
                (got["start"].as_f64().unwrap() - start).abs() <= 0.1,
                "{got}"
            );
            assert!((got["end"].as_f64().unwrap() - end).abs() <= 0.1, "{got}");
        }
        assert!(
            result["vtt"]
                .as_str()
                .unwrap()
                .starts_with("WEBVTT\n\n00:00:00.000 --> ")
        );
    }
    // The binding's stream form, on the turbo id that base stands in for.
    let (text, _) = reference("base");
    let stream = Request::post(
        "/run?version=3&userInputs=%7B%22language%22%3A%22en%22%2C%22beam_size%22%3A1%7D",
    )
    .header(header::CONTENT_TYPE, "audio/wav")
    .header("cf-consn-model-id", TURBO)
    .body(Body::from(wav))
    .unwrap();
    let reply = send(&app, stream).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.header("x-ember-model"), BASE);
    let result = reply.json();
    assert_eq!(result["text"], text.as_str());
    assert_eq!(result["transcription_info"]["language"], "en");
    let duration = result["transcription_info"]["duration"].as_f64().unwrap();
    for segment in result["segments"].as_array().unwrap() {
        let (start, end) = (
            segment["start"].as_f64().unwrap(),
            segment["end"].as_f64().unwrap(),
        );
        assert!(
            0.0 <= start && start <= end && end <= duration + 0.01,
            "{segment}"
        );
    }
}

/// The 16-bit PCM in a WAV file's `data` chunk.
fn pcm(wav: &[u8]) -> &[u8] {
    let mut at = 12;
    loop {
        let len = u32::from_le_bytes(wav[at + 4..at + 8].try_into().unwrap()) as usize;
        if &wav[at..at + 4] == b"data" {
            return &wav[at + 8..at + 8 + len];
        }
        at += 8 + len + len % 2;
    }
}

/// A 16 kHz mono 16-bit WAV file of `pcm`.
fn wav(pcm: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(44 + pcm.len());
    let len = pcm.len() as u32;
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&[1, 0, 1, 0]);
    out.extend_from_slice(&16_000u32.to_le_bytes());
    out.extend_from_slice(&32_000u32.to_le_bytes());
    out.extend_from_slice(&[2, 0, 16, 0]);
    out.extend_from_slice(b"data");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(pcm);
    out
}

/// `vad_filter` on the turbo id (served by base, beam 5): the clips with silences between them
/// from `whisper/vad.json`, sent as one WAV, give faster-whisper's text with its times on the
/// whole audio and its duration after VAD (the engine test checks every token and word); silence
/// alone gives no text.
#[tokio::test(flavor = "multi_thread")]
async fn vad_filter_transcribes_only_the_speech() {
    use base64::Engine as _;
    let app = app();
    let reference: Value = serde_json::from_slice(&fixture("whisper/vad.json")).unwrap();
    let build = |audio: &Value| {
        let mut samples = Vec::new();
        for part in audio.as_array().unwrap() {
            match (part["clip"].as_str(), part["silence"].as_f64()) {
                (Some(clip), _) => {
                    samples.extend_from_slice(pcm(&fixture(&format!("whisper/{clip}"))))
                }
                (_, Some(seconds)) => {
                    samples.resize(samples.len() + 2 * (seconds * 16_000.0).round() as usize, 0)
                }
                _ => panic!("{part}"),
            }
        }
        base64::engine::general_purpose::STANDARD.encode(wav(&samples))
    };
    let case = |model: &str| {
        reference["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["model"] == model)
            .unwrap()
            .clone()
    };
    let case = case("cf--openai--whisper");
    assert_eq!(case["beam_size"], 5);
    let input = json!({"audio": build(&case["audio"]), "vad_filter": true});
    let (result, served_by) =
        transcribe(&app, post(&format!("{RUN}{TURBO}"), input.to_string())).await;
    assert_eq!(served_by, BASE);
    let segments = case["segments"].as_array().unwrap();
    let text: String = segments
        .iter()
        .map(|s| s["text"].as_str().unwrap())
        .collect();
    assert_eq!(result["text"], text.trim(), "{result}");
    let info = &result["transcription_info"];
    let close = |ours: &Value, theirs: &Value, tolerance: f64| {
        (ours.as_f64().unwrap() - theirs.as_f64().unwrap()).abs() <= tolerance
    };
    assert!(close(&info["duration"], &case["duration"], 1e-6), "{info}");
    assert!(
        close(
            &info["duration_after_vad"],
            &case["duration_after_vad"],
            0.01
        ),
        "{info}"
    );
    let got = result["segments"].as_array().unwrap();
    assert_eq!(got.len(), segments.len());
    for (ours, theirs) in got.iter().zip(segments) {
        for key in ["start", "end"] {
            assert!(close(&ours[key], &theirs[key], 0.2), "{ours} vs {theirs}");
        }
    }

    let silence = json!({"audio": build(&json!([{"silence": 3.0}])), "vad_filter": true});
    let (result, _) = transcribe(&app, post(&format!("{RUN}{TURBO}"), silence.to_string())).await;
    assert_eq!(result["text"], "", "{result}");
    assert_eq!(result["transcription_info"]["duration_after_vad"], 0.0);
}

/// The audio fixtures say "Ember turns this sentence into text." (espeak-ng, fast), and each
/// container reaches Whisper base. The samples themselves are checked against ffmpeg's decodes in
/// `ember-engines/tests/audio_decode.rs`. faster-whisper (decoding with ffmpeg) hears the lossless
/// and high-rate files as "and returns this sentence into text.", the 48 kbit/s MP3 as "and return
/// with M2010." and the Opus file as "and becomes this sentence interesting.": for those two only
/// some words are asked for.
#[tokio::test(flavor = "multi_thread")]
async fn every_container_is_heard() {
    let app = app();
    for (file, content_type, words) in [
        ("speech.flac", "audio/flac", &["sentence", "text"][..]),
        ("speech.ogg", "audio/ogg", &["sentence", "text"]),
        ("speech.m4a", "audio/mp4", &["sentence", "text"]),
        ("speech_vorbis.webm", "audio/webm", &["sentence", "text"]),
        ("speech.opus", "audio/ogg", &["sentence"]),
        ("speech_opus.webm", "audio/webm", &["sentence"]),
        ("speech.mp3", "audio/mpeg", &["and", "return"]),
        // A wrong content type is only a hint: the bytes decide.
        (
            "speech.m4a",
            "application/octet-stream",
            &["sentence", "text"],
        ),
    ] {
        let request = raw(BASE, content_type, fixture(&format!("audio/{file}")));
        let (result, _) = transcribe(&app, request).await;
        let text = result["text"].as_str().unwrap().to_lowercase();
        assert!(words.iter().all(|w| text.contains(w)), "{file}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_audio_is_refused_naming_the_field() {
    let app = app();
    let mut truncated = fixture("audio/speech.mp3");
    truncated.truncate(40);
    for bytes in [
        vec![0x13, 0x37, 0x00, 0xff, 0x42],
        b"RIFF\x00\x00\x00\x00WAVEfmt ".to_vec(),
        truncated,
    ] {
        let reply = send(&app, raw(TINY_EN, "audio/wav", bytes)).await;
        let message = reply.rest_error(400, 5006);
        assert!(message.contains("/audio"), "{message}");
    }
    // English-only: no translation.
    let input = json!({"audio": fixture("whisper/short.wav"), "task": "translate"});
    let reply = send(&app, post(&format!("{RUN}{TINY_EN}"), input.to_string())).await;
    assert!(reply.rest_error(400, 5006).contains("/task"));
    // Still serving.
    transcribe(
        &app,
        raw(TINY_EN, "audio/wav", fixture("whisper/short.wav")),
    )
    .await;
}

/// Text-to-speech on the real Piper voice, heard back by Whisper: MeloTTS's base64 MP3 and Aura's
/// audio bytes in each encoding decode to speech that says the text.
#[tokio::test(flavor = "multi_thread")]
async fn spoken_text_is_heard_back() {
    use base64::Engine as _;
    let app = app();
    let sentence = "The quick brown fox jumps over the lazy dog.";
    let reply = send(
        &app,
        post(
            &format!("{RUN}@cf/myshell-ai/melotts"),
            json!({ "prompt": sentence }).to_string(),
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(
        reply.header("x-ember-model"),
        "@hf/rhasspy/piper-en-us-joe-medium"
    );
    let audio = reply.json()["result"]["audio"]
        .as_str()
        .unwrap()
        .to_string();
    let mut spoken = vec![(
        "audio/mpeg".to_string(),
        base64::engine::general_purpose::STANDARD
            .decode(audio)
            .unwrap(),
    )];
    for encoding in [
        json!({"encoding": "mp3"}),
        json!({"encoding": "linear16", "container": "wav", "sample_rate": 16000}),
        json!({"encoding": "flac"}),
        json!({"encoding": "opus"}),
    ] {
        let mut input = json!({ "text": sentence, "speaker": "luna" });
        input
            .as_object_mut()
            .unwrap()
            .extend(encoding.as_object().unwrap().clone());
        let reply = send(
            &app,
            post(&format!("{RUN}@cf/deepgram/aura-1"), input.to_string()),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{input}: {:?}", reply.body);
        spoken.push((
            reply.header("content-type").to_string(),
            reply.body.to_vec(),
        ));
    }
    // Piper draws noise on each synthesis (as its users get it), so tiny.en may mishear a word
    // now and then ("quit brown fox"); 7 of the 9 words must come back.
    let words: Vec<String> = sentence
        .trim_end_matches('.')
        .split(' ')
        .map(str::to_lowercase)
        .collect();
    for (content_type, audio) in spoken {
        let (result, _) = transcribe(&app, raw(TINY_EN, &content_type, audio)).await;
        let heard = result["text"].as_str().unwrap().to_lowercase();
        let heard_words: Vec<&str> = heard
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        let found = words
            .iter()
            .filter(|w| heard_words.contains(&w.as_str()))
            .count();
        assert!(found >= 7, "{content_type}: {heard}");
    }
}
