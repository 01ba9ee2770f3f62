//! Ember's engines: the code that runs model weights. Text generation on llama.cpp (`llm`), text
//! embeddings on candle (`embed`). `load` picks the engine a catalog entry names and starts the
//! model's worker thread. This is the only crate with kernel dependencies.

pub mod embed;
pub mod llm;

use ember_core::InferError;
use ember_core::catalog::{Engine, ModelSpec};
use ember_core::runner::ModelWorker;
use std::path::Path;

/// Loads a model from its folder onto a new worker thread; returns once it is ready.
pub fn load(spec: &ModelSpec, dir: &Path) -> Result<ModelWorker, InferError> {
    let (spec, dir) = (spec.clone(), dir.to_path_buf());
    match spec.engine {
        Engine::LlamaCpp => {
            ModelWorker::text_generation(&spec.id.clone(), move || llm::load(&spec, &dir))
        }
        Engine::CandleBert | Engine::CandleGemma3Embedding => {
            ModelWorker::embeddings(&spec.id.clone(), move || embed::load(&spec, &dir))
        }
    }
}
