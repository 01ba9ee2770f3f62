//! Ember's engines: the code that runs model weights. Text generation on llama.cpp (`llm`), text
//! embeddings on candle (`embed`). `load` picks the engine a catalog entry names and starts it.
//! This is the only crate with kernel dependencies.

pub mod embed;
pub mod llm;

use ember_core::InferError;
use ember_core::catalog::{Engine, ModelSpec};
use ember_core::metrics::ModelMetrics;
use ember_core::runner::{LoadedModel, ModelWorker};
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
        Engine::CandleBert | Engine::CandleGemma3Embedding => {
            let file_bytes = ember_core::installed::files_bytes(spec, dir);
            let (spec, dir) = (spec.clone(), dir.to_path_buf());
            let worker = ModelWorker::embeddings(&spec.id.clone(), file_bytes, move || {
                embed::load(&spec, &dir)
            })?;
            Ok(LoadedModel::Embeddings(worker))
        }
    }
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
