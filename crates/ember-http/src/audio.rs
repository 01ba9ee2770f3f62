//! OpenAI's audio routes. `POST /v1/audio/transcriptions` and `/v1/audio/translations`: a
//! multipart upload (`file`, `model`, `language`, `prompt`, `response_format`,
//! `timestamp_granularities[]`, `temperature`) run as Workers AI speech recognition, answered as
//! `json`, `text`, `srt`, `vtt` or `verbose_json`; `whisper-1` names `@cf/openai/whisper`.
//! `POST /v1/audio/speech`: `{model, input, voice, response_format, speed}` run as text-to-speech,
//! answered with the audio; `tts-1` and `tts-1-hd` name `@cf/myshell-ai/melotts`.

use crate::error::ApiError;
use crate::openai::invalid;
use crate::run::{self, Call};
use crate::wire::speech_recognition::vtt;
use crate::{AppState, openai};
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use ember_core::InferError;
use ember_core::catalog::{ModelSpec, Task};
use ember_core::tasks::speech_recognition::{
    SpeechRecognitionOutput, SpeechRecognitionRequest, TranscribeSettings,
};
use ember_core::tasks::text_to_speech::{AudioFormat, MAX_TEXT_CHARS, SpeechSynthesisRequest};
use ember_core::tasks::{TaskOutput, TaskRequest};
use serde_json::{Value, json};

pub async fn transcriptions(call: Call, request: Request) -> Response {
    recognize(call, request, false).await
}

pub async fn translations(call: Call, request: Request) -> Response {
    recognize(call, request, true).await
}

/// How the answer is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Text,
    Srt,
    Vtt,
    VerboseJson,
}

/// The upload, read and checked.
struct Upload {
    audio: Vec<u8>,
    content_type: Option<String>,
    model: String,
    settings: TranscribeSettings,
    format: Format,
    /// `timestamp_granularities[]` holds `word`: verbose answers list the words.
    words: bool,
}

async fn recognize(mut call: Call, request: Request, translate: bool) -> Response {
    let headers = request.headers().clone();
    let upload = match read_upload(&call.state, request, translate).await {
        Ok(upload) => upload,
        Err(error) => return call.fail(error),
    };
    call.name_model(upload.model.clone());
    let spec = match openai::resolve_for(&call.state, &upload.model, Task::SpeechRecognition) {
        Ok(spec) => spec.clone(),
        Err(error) => return call.fail(error),
    };
    let input_bytes = upload.audio.len();
    let (format, words) = (upload.format, upload.words);
    let request = TaskRequest::SpeechRecognition(SpeechRecognitionRequest {
        audio: upload.audio,
        content_type: upload.content_type,
        settings: upload.settings,
        detailed: true,
    });
    let options = run::run_options(&call.state, &headers, None);
    run::run_task_route(
        call,
        &spec,
        request,
        input_bytes,
        options,
        |_, output, _| {
            let TaskOutput::SpeechRecognition(output) = output else {
                return None;
            };
            Some(answer(&output, format, words, translate))
        },
    )
    .await
}

pub async fn speech(mut call: Call, headers: HeaderMap, body: Body) -> Response {
    let body = match run::read_request(&mut call, body).await {
        Ok(body) => body,
        Err(error) => return call.fail(error),
    };
    let (spec, request) = match parse_speech(&call.state, &body) {
        Ok(parsed) => parsed,
        Err(error) => return call.fail(error),
    };
    let options = run::run_options(&call.state, &headers, None);
    let input_bytes = body.to_string().len();
    run::run_task_route(
        call,
        &spec,
        request,
        input_bytes,
        options,
        |_, output, _| {
            let TaskOutput::TextToSpeech(spoken) = output else {
                return None;
            };
            let content_type = HeaderValue::from_str(&spoken.content_type).ok()?;
            let mut response = spoken.audio.into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, content_type);
            Some(response)
        },
    )
    .await
}

/// `{model, input, voice, response_format?, speed?}`: `voice` names a speaker of the voice model
/// (OpenAI's voice names are spoken by its first).
fn parse_speech(state: &AppState, body: &Value) -> Result<(ModelSpec, TaskRequest), ApiError> {
    let object = openai::as_object(body)?;
    let model = match object.get("model") {
        Some(Value::String(model)) if !model.is_empty() => model,
        _ => return Err(invalid("/model", "is required")),
    };
    let spec = openai::resolve_for(state, model, Task::TextToSpeech)?.clone();
    let text = match object.get("input") {
        Some(Value::String(text)) if !text.is_empty() => text.clone(),
        _ => return Err(invalid("/input", "is required: the text to speak")),
    };
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(invalid(
            "/input",
            format!("must be at most {MAX_TEXT_CHARS} characters"),
        ));
    }
    let speaker = match object.get("voice") {
        Some(Value::String(voice)) if !voice.is_empty() => Some(voice.clone()),
        _ => return Err(invalid("/voice", "is required")),
    };
    let format = match object.get("response_format").and_then(Value::as_str) {
        None | Some("mp3") => AudioFormat::Mp3,
        Some("opus") => AudioFormat::OggOpus,
        Some("flac") => AudioFormat::Flac,
        Some("wav") => AudioFormat::Wav,
        Some("pcm") => AudioFormat::Linear16,
        Some("aac") => {
            return Err(invalid(
                "/response_format",
                "aac is not supported by this version of Ember",
            ));
        }
        Some(other) => {
            return Err(invalid(
                "/response_format",
                format!("'{other}' is not one of mp3, opus, flac, wav, pcm"),
            ));
        }
    };
    if let Some(speed) = object.get("speed").filter(|s| !s.is_null())
        && speed.as_f64() != Some(1.0)
    {
        return Err(invalid("/speed", "only 1 is supported"));
    }
    let request = SpeechSynthesisRequest {
        text,
        speaker,
        language: None,
        format,
        // OpenAI's `pcm` is 24 kHz; the other formats carry their rate.
        sample_rate: (format == AudioFormat::Linear16).then_some(24_000),
        bit_rate: None,
        base64_json: false,
    };
    Ok((spec, TaskRequest::TextToSpeech(request)))
}

async fn read_upload(
    state: &AppState,
    request: Request,
    translate: bool,
) -> Result<Upload, ApiError> {
    let mut multipart = Multipart::from_request(request, state).await.map_err(|e| {
        ApiError::Incomplete(format!("a multipart/form-data body ({})", e.body_text()))
    })?;
    let mut file = None;
    let mut text_fields: Vec<(String, String)> = Vec::new();
    loop {
        let field = multipart.next_field().await.map_err(|e| {
            let too_large = e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE;
            match too_large {
                true => ApiError::Infer(InferError::TooLarge),
                false => invalid(
                    "/file",
                    format!("the upload could not be read: {}", e.body_text()),
                ),
            }
        })?;
        let Some(field) = field else { break };
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" {
            let hint = field
                .content_type()
                .map(str::to_string)
                .or_else(|| field.file_name().and_then(extension));
            let bytes = field
                .bytes()
                .await
                .map_err(|e| invalid("/file", format!("could not be read: {}", e.body_text())))?;
            file = Some((bytes.to_vec(), hint));
        } else {
            let value = field
                .text()
                .await
                .map_err(|e| invalid(&format!("/{name}"), e.body_text()))?;
            text_fields.push((name, value));
        }
    }
    let Some((audio, content_type)) = file.filter(|(bytes, _)| !bytes.is_empty()) else {
        return Err(invalid("/file", "is required: the audio file"));
    };
    let field = |name: &str| {
        text_fields
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let model = field("model")
        .filter(|model| !model.is_empty())
        .ok_or_else(|| invalid("/model", "is required"))?
        .to_string();
    let format = match field("response_format").unwrap_or("json") {
        "json" => Format::Json,
        "text" => Format::Text,
        "srt" => Format::Srt,
        "vtt" => Format::Vtt,
        "verbose_json" => Format::VerboseJson,
        other => {
            return Err(invalid(
                "/response_format",
                format!("'{other}' is not one of json, text, srt, vtt, verbose_json"),
            ));
        }
    };
    let mut words = false;
    for (key, value) in &text_fields {
        if key == "timestamp_granularities[]" || key == "timestamp_granularities" {
            match value.as_str() {
                "word" => words = true,
                "segment" => {}
                other => {
                    return Err(invalid(
                        "/timestamp_granularities",
                        format!("'{other}' is not one of word, segment"),
                    ));
                }
            }
        }
    }
    if let Some(temperature) = field("temperature") {
        // Whisper's fallback starts from 0 and warms up on its own, as OpenAI's temperature 0 does.
        if temperature.parse::<f64>().ok() != Some(0.0) {
            return Err(invalid("/temperature", "only 0 is supported"));
        }
    }
    let language = match (translate, field("language")) {
        (_, None | Some("")) => None,
        (true, Some(_)) => return Err(invalid("/language", "is not taken by translations")),
        (false, Some(code))
            if (2..=3).contains(&code.len()) && code.chars().all(|c| c.is_ascii_alphabetic()) =>
        {
            Some(code.to_ascii_lowercase())
        }
        (false, Some(code)) => {
            return Err(invalid(
                "/language",
                format!("'{code}' is not an ISO 639-1 code"),
            ));
        }
    };
    let settings = TranscribeSettings {
        translate,
        language,
        initial_prompt: field("prompt")
            .filter(|p| !p.is_empty())
            .map(str::to_string),
        // OpenAI's whisper-1 decodes greedily with temperature fallback.
        beam_size: 1,
        ..TranscribeSettings::default()
    };
    Ok(Upload {
        audio,
        content_type,
        model,
        settings,
        format,
        words,
    })
}

/// A file name's extension, as a decoder hint.
fn extension(name: &str) -> Option<String> {
    name.rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
}

fn answer(
    output: &SpeechRecognitionOutput,
    format: Format,
    words: bool,
    translate: bool,
) -> Response {
    let text = output.text();
    // OpenAI bills transcription by the second and reports it so.
    let usage = json!({ "type": "duration", "seconds": output.duration.ceil() as u64 });
    match format {
        Format::Json => axum::Json(json!({ "text": text, "usage": usage })).into_response(),
        Format::Text => plain(format!("{text}\n"), "text/plain; charset=utf-8"),
        Format::Vtt => plain(vtt(output), "text/vtt; charset=utf-8"),
        Format::Srt => plain(srt(output), "application/x-subrip; charset=utf-8"),
        Format::VerboseJson => {
            let segments: Vec<Value> = output
                .segments
                .iter()
                .enumerate()
                .map(|(id, segment)| {
                    json!({
                        "id": id,
                        "seek": (segment.start * 100.0).round() as u64,
                        "start": segment.start,
                        "end": segment.end,
                        "text": segment.text,
                        "tokens": [],
                        "temperature": segment.temperature,
                        "avg_logprob": segment.avg_logprob,
                        "compression_ratio": segment.compression_ratio,
                        "no_speech_prob": segment.no_speech_prob,
                    })
                })
                .collect();
            let mut body = json!({
                "task": if translate { "translate" } else { "transcribe" },
                "language": language_name(&output.language),
                "duration": output.duration,
                "text": text,
                "segments": segments,
                "usage": usage,
            });
            if words {
                body["words"] = output
                    .words()
                    .map(|w| json!({ "word": w.word.trim(), "start": w.start, "end": w.end }))
                    .collect();
            }
            axum::Json(body).into_response()
        }
    }
}

fn plain(body: String, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// SubRip subtitles, one numbered cue per segment.
fn srt(output: &SpeechRecognitionOutput) -> String {
    let time = |seconds: f64| {
        let millis = (seconds.max(0.0) * 1000.0).round() as u64;
        format!(
            "{:02}:{:02}:{:02},{:03}",
            millis / 3_600_000,
            millis / 60_000 % 60,
            millis / 1000 % 60,
            millis % 1000
        )
    };
    output
        .segments
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "{}\n{} --> {}\n{}\n\n",
                i + 1,
                time(s.start),
                time(s.end),
                s.text.trim()
            )
        })
        .collect()
}

/// Whisper's languages by code, as OpenAI's verbose answers name them.
const LANGUAGES: &str = "en:english,zh:chinese,de:german,es:spanish,ru:russian,ko:korean,\
fr:french,ja:japanese,pt:portuguese,tr:turkish,pl:polish,ca:catalan,nl:dutch,ar:arabic,\
sv:swedish,it:italian,id:indonesian,hi:hindi,fi:finnish,vi:vietnamese,he:hebrew,uk:ukrainian,\
el:greek,ms:malay,cs:czech,ro:romanian,da:danish,hu:hungarian,ta:tamil,no:norwegian,th:thai,\
ur:urdu,hr:croatian,bg:bulgarian,lt:lithuanian,la:latin,mi:maori,ml:malayalam,cy:welsh,\
sk:slovak,te:telugu,fa:persian,lv:latvian,bn:bengali,sr:serbian,az:azerbaijani,sl:slovenian,\
kn:kannada,et:estonian,mk:macedonian,br:breton,eu:basque,is:icelandic,hy:armenian,ne:nepali,\
mn:mongolian,bs:bosnian,kk:kazakh,sq:albanian,sw:swahili,gl:galician,mr:marathi,pa:punjabi,\
si:sinhala,km:khmer,sn:shona,yo:yoruba,so:somali,af:afrikaans,oc:occitan,ka:georgian,\
be:belarusian,tg:tajik,sd:sindhi,gu:gujarati,am:amharic,yi:yiddish,lo:lao,uz:uzbek,fo:faroese,\
ht:haitian creole,ps:pashto,tk:turkmen,nn:nynorsk,mt:maltese,sa:sanskrit,lb:luxembourgish,\
my:myanmar,bo:tibetan,tl:tagalog,mg:malagasy,as:assamese,tt:tatar,haw:hawaiian,ln:lingala,\
ha:hausa,ba:bashkir,jw:javanese,su:sundanese,yue:cantonese";

fn language_name(code: &str) -> &str {
    LANGUAGES
        .split(',')
        .filter_map(|pair| pair.split_once(':'))
        .find(|(c, _)| *c == code)
        .map_or(code, |(_, name)| name)
}
