//! Ember's engines: the code that runs model weights. Text generation on llama.cpp (`llm`), text
//! embeddings (`embed`), classification and reranking (`encoders`), translation and
//! summarization (`seq2seq`), speech recognition (`speech`: `audio` decoding, `whisper`) and
//! image classification and object detection (`vision`) and image generation (`diffusion`) on
//! candle, text-to-speech (`synthesis`: `tts` voices) and the stand-in object detector
//! (`vision::centernet`) on ONNX Runtime. `load` picks the engine a catalog entry names and starts it. This is the only crate
//! with kernel dependencies.

pub mod audio;
pub mod diffusion;
pub mod embed;
pub mod encoders;
pub mod llm;
mod onnx;
mod onnx_proto;
pub mod seq2seq;
pub mod speech;
pub mod synthesis;
mod transformer;
pub mod tts;
pub mod vision;
pub mod whisper;

use ember_core::InferError;
use ember_core::catalog::{Engine, ModelSpec};
use ember_core::metrics::ModelMetrics;
use ember_core::runner::{LoadedModel, ModelWorker, Runner};
use ember_core::tasks::TaskRequest;
use std::path::Path;
use std::sync::Arc;

/// Loads a model from its folder and starts its engine; returns once it is ready.
pub fn load(
    spec: &ModelSpec,
    dir: &Path,
    llm_settings: &llm::LlmSettings,
    metrics: ModelMetrics,
) -> Result<LoadedModel, InferError> {
    match spec.engine {
        Engine::LlamaCpp => {
            let engine = llm::load(spec, dir, llm_settings, metrics)?;
            Ok(LoadedModel::TextGeneration(Arc::new(engine)))
        }
        Engine::CandleBert | Engine::CandleGemma3Embedding => on_worker(spec, dir, embed::load),
        Engine::CandleSequenceClassifier => {
            on_worker(spec, dir, |_, dir| encoders::SequenceClassifier::load(dir))
        }
        Engine::CandleCrossEncoder => {
            on_worker(spec, dir, |_, dir| encoders::CrossEncoder::load(dir))
        }
        Engine::CandleSeq2seq => on_worker(spec, dir, |_, dir| seq2seq::Seq2Seq::load(dir)),
        Engine::CandleWhisper => on_worker(spec, dir, |_, dir| speech::SpeechRecognizer::load(dir)),
        Engine::OnnxVoice => on_worker(spec, dir, |_, dir| synthesis::SpeechSynthesizer::load(dir)),
        Engine::CandleImageClassifier => on_worker(spec, dir, |spec, dir| {
            vision::ImageClassifier::load(&spec.architecture, dir)
        }),
        Engine::CandleObjectDetector => on_worker(spec, dir, |_, dir| {
            vision::detector::ObjectDetector::load(dir)
        }),
        Engine::OnnxObjectDetector => {
            on_worker(spec, dir, |_, dir| vision::centernet::CenterNet::load(dir))
        }
        Engine::CandleDiffusion => {
            let scheduler = match spec.properties.get("scheduler").map(String::as_str) {
                Some("lcm") => diffusion::scheduler::SchedulerKind::Lcm,
                _ => diffusion::scheduler::SchedulerKind::Ddim,
            };
            let decoder = match spec.properties.get("decoder").map(String::as_str) {
                Some("taesd") => diffusion::DecoderKind::Tiny,
                _ => diffusion::DecoderKind::Autoencoder,
            };
            on_worker(spec, dir, move |_, dir| {
                diffusion::ImageGenerator::load(dir, scheduler, decoder, metrics)
            })
        }
        Engine::StandIn => Err(InferError::Internal(format!(
            "{} is a stand-in and loads nothing of its own",
            spec.id
        ))),
    }
}

/// Starts a worker thread that loads the model with `build` and serves its requests.
fn on_worker<R, F>(spec: &ModelSpec, dir: &Path, build: F) -> Result<LoadedModel, InferError>
where
    R: Runner + 'static,
    F: FnOnce(&ModelSpec, &Path) -> Result<R, InferError> + Send + 'static,
{
    let file_bytes = ember_core::installed::files_bytes(spec, dir);
    let (spec, dir) = (spec.clone(), dir.to_path_buf());
    let worker = ModelWorker::start(&spec.id.clone(), file_bytes, move || build(&spec, &dir))?;
    Ok(LoadedModel::Worker(worker))
}

/// The error for a request of a task the engine does not run (a bug of the caller).
pub(crate) fn wrong_task(request: &TaskRequest) -> InferError {
    InferError::Internal(format!(
        "this engine runs no {} requests",
        request.task().display_name()
    ))
}

/// `MemAvailable` from /proc/meminfo, or 8 GiB where that cannot be read.
pub fn available_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(8 << 30, |kib| kib * 1024)
}

/// CPU threads the engines compute with: `EMBER_THREADS`, or every available core.
pub fn cpu_threads() -> usize {
    std::env::var("EMBER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
