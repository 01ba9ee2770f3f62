//! The fake runner kit: an `Ember` over the built-in catalog whose every non-generation model is
//! a small deterministic runner, installed in a temporary model cache, so that envelope,
//! validation and error tests of every route run without real models. A text containing
//! `PANIC` makes a runner panic, as an engine bug would; one containing `SLOW` takes a second.

use ember_core::catalog::{Engine, ModelSpec};
use ember_core::installed::{self, InstallManifest, InstalledFile};
use ember_core::runner::{LoadedModel, ModelWorker, Runner};
use ember_core::tasks::classification::{ClassificationOutput, LabelScore};
use ember_core::tasks::image_classification::ImageClassificationOutput;
use ember_core::tasks::image_to_text::ImageToTextOutput;
use ember_core::tasks::object_detection::ObjectDetectionOutput;
use ember_core::tasks::reranking::RerankOutput;
use ember_core::tasks::speech_recognition::{
    SpeechRecognitionOutput, TimedWord, TranscriptSegment,
};
use ember_core::tasks::summarization::SummarizationOutput;
use ember_core::tasks::text_to_image::TextToImageOutput;
use ember_core::tasks::text_to_speech::{AudioFormat, SpeechSynthesisOutput};
use ember_core::tasks::translation::TranslationOutput;
use ember_core::tasks::{EmbeddingsOutput, TaskOutput, TaskRequest, Usage};
use ember_core::{Catalog, Ember, InferError, MemoryLimits};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

/// Text that makes a fake runner panic.
pub const PANIC: &str = "PANIC";

/// Text that makes a fake runner take a second, long enough for its client to leave.
pub const SLOW: &str = "SLOW";

/// Models the kit installs: one per task that runs on a worker thread.
pub const FAKE_MODELS: [&str; 8] = [
    "@hf/sentence-transformers/all-minilm-l6-v2",
    "@cf/huggingface/distilbert-sst-2-int8",
    "@cf/baai/bge-reranker-base",
    "@cf/meta/m2m100-1.2b",
    "@cf/facebook/bart-large-cnn",
    "@cf/openai/whisper-tiny-en",
    "@cf/openai/whisper-large-v3-turbo",
    "@hf/rhasspy/piper-en-us-joe-medium",
];

/// An `Ember` whose `FAKE_MODELS` are installed (empty files) and served by fake runners; its
/// model cache is a fresh temporary folder.
pub fn fake_ember() -> Arc<Ember> {
    let home = std::env::temp_dir().join(format!("ember-fake-{}", uuid_like()));
    let catalog = Catalog::builtin().unwrap();
    for id in FAKE_MODELS {
        install(&home, catalog.get(id).unwrap());
    }
    let ember = Ember::new(
        catalog,
        HashMap::new(),
        home,
        Arc::new(|spec: &ModelSpec, _dir: &std::path::Path, _metrics| {
            assert_ne!(spec.engine, Engine::LlamaCpp, "the kit fakes no LLM");
            let worker = ModelWorker::start(&spec.id, 1, || Ok(FakeRunner))?;
            Ok(LoadedModel::Worker(worker))
        }),
        MemoryLimits { budget: u64::MAX },
    )
    .unwrap();
    Arc::new(ember)
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// Writes the model's files (empty) and a manifest, so it counts as installed.
fn install(home: &std::path::Path, spec: &ModelSpec) {
    let dir: PathBuf = installed::model_dir(home, spec);
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = BTreeMap::new();
    for file in &spec.files {
        std::fs::write(dir.join(&file.path), b"").unwrap();
        files.insert(
            file.path.clone(),
            InstalledFile {
                sha256: String::new(),
                size: 0,
            },
        );
    }
    let manifest = InstallManifest {
        model: spec.id.clone(),
        source: "fake".into(),
        files,
    };
    installed::write_manifest(&dir, &manifest).unwrap();
}

/// Deterministic answers: a text's length is its token count; classification is POSITIVE for
/// "good"; reranking scores by shared words; translation tags the text; summarization keeps the
/// first sentence; speech recognition "hears" the audio bytes as UTF-8 text, a word a second,
/// speech synthesis "says" the text as its UTF-8 bytes, labelled with the format asked for, and
/// image classification and image-to-text see how many bytes the image has.
struct FakeRunner;

fn tokens(text: &str) -> u32 {
    text.split_whitespace().count() as u32
}

fn check(text: &str) {
    assert!(!text.contains(PANIC), "the fake engine was told to panic");
    if text.contains(SLOW) {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

impl Runner for FakeRunner {
    fn run(&mut self, request: TaskRequest) -> Result<TaskOutput, InferError> {
        Ok(match request {
            TaskRequest::TextEmbeddings(request) => {
                request.texts.iter().for_each(|t| check(t));
                TaskOutput::TextEmbeddings(EmbeddingsOutput {
                    vectors: request
                        .texts
                        .iter()
                        .map(|t| vec![t.len() as f32, 1.0])
                        .collect(),
                    token_counts: request.texts.iter().map(|t| tokens(t)).collect(),
                    pooling: request.pooling,
                })
            }
            TaskRequest::TextClassification(request) => {
                check(&request.text);
                let positive = if request.text.contains("good") {
                    0.75
                } else {
                    0.25
                };
                TaskOutput::TextClassification(ClassificationOutput {
                    labels: vec![
                        LabelScore {
                            label: "NEGATIVE".into(),
                            score: 1.0 - positive,
                        },
                        LabelScore {
                            label: "POSITIVE".into(),
                            score: positive,
                        },
                    ],
                    input_tokens: tokens(&request.text),
                })
            }
            TaskRequest::Reranking(request) => {
                check(&request.query);
                let scores: Vec<f32> = request
                    .contexts
                    .iter()
                    .map(|c| {
                        let shared = c.split_whitespace().filter(|w| request.query.contains(w));
                        shared.count() as f32
                    })
                    .collect();
                let used = tokens(&request.query)
                    + request.contexts.iter().map(|c| tokens(c)).sum::<u32>();
                TaskOutput::Reranking(RerankOutput::new(&scores, request.top_k, used))
            }
            TaskRequest::Translation(request) => {
                let texts: Vec<String> = request
                    .items
                    .iter()
                    .map(|item| {
                        check(&item.text);
                        format!("[{}] {}", item.target_lang, item.text)
                    })
                    .collect();
                let used: u32 = request.items.iter().map(|i| tokens(&i.text)).sum();
                TaskOutput::Translation(TranslationOutput {
                    texts,
                    batch: request.batch,
                    usage: Usage::new(used, used + 1),
                })
            }
            TaskRequest::Summarization(request) => {
                check(&request.input_text);
                let summary = request.input_text.split('.').next().unwrap_or_default();
                TaskOutput::Summarization(SummarizationOutput {
                    summary: summary.to_string(),
                    usage: Usage::new(tokens(&request.input_text), tokens(summary)),
                })
            }
            TaskRequest::SpeechRecognition(request) => {
                let text = String::from_utf8_lossy(&request.audio).to_string();
                check(&text);
                let words: Vec<TimedWord> = text
                    .split_whitespace()
                    .enumerate()
                    .map(|(i, word)| TimedWord {
                        word: format!(" {word}"),
                        start: i as f64,
                        end: i as f64 + 1.0,
                    })
                    .collect();
                let duration = words.len() as f64;
                TaskOutput::SpeechRecognition(SpeechRecognitionOutput {
                    language: request.settings.language.unwrap_or("en".into()),
                    language_probability: 1.0,
                    duration,
                    duration_after_vad: duration,
                    segments: vec![TranscriptSegment {
                        start: 0.0,
                        end: duration,
                        text: format!(" {text}"),
                        temperature: 0.0,
                        avg_logprob: -0.1,
                        compression_ratio: 1.0,
                        no_speech_prob: 0.0,
                        words,
                    }],
                    detailed: request.detailed,
                })
            }
            TaskRequest::TextToSpeech(request) => {
                check(&request.text);
                let content_type = match request.format {
                    AudioFormat::Mp3 => "audio/mpeg",
                    AudioFormat::Wav | AudioFormat::MulawWav | AudioFormat::AlawWav => "audio/wav",
                    AudioFormat::Flac => "audio/flac",
                    AudioFormat::OggOpus => "audio/ogg",
                    AudioFormat::Linear16 | AudioFormat::Mulaw | AudioFormat::Alaw => {
                        "application/octet-stream"
                    }
                };
                let characters = request.text.chars().count() as u32;
                TaskOutput::TextToSpeech(SpeechSynthesisOutput {
                    audio: request.text.into_bytes(),
                    content_type: content_type.into(),
                    duration: f64::from(characters) / 10.0,
                    characters,
                    base64_json: request.base64_json,
                })
            }
            TaskRequest::ImageClassification(request) => {
                TaskOutput::ImageClassification(ImageClassificationOutput {
                    labels: vec![LabelScore {
                        label: format!("{} bytes", request.image.len()),
                        score: 1.0,
                    }],
                })
            }
            TaskRequest::ObjectDetection(_) => {
                TaskOutput::ObjectDetection(ObjectDetectionOutput { objects: vec![] })
            }
            TaskRequest::ImageToText(request) => TaskOutput::ImageToText(ImageToTextOutput {
                description: format!("{} bytes", request.image.len()),
                usage: Usage::new(1, 1),
            }),
            TaskRequest::TextToImage(request) => TaskOutput::TextToImage(TextToImageOutput {
                pngs: vec![request.prompt.into_bytes(); request.count as usize],
                width: 256,
                height: 256,
                steps: 1,
            }),
        })
    }
}
