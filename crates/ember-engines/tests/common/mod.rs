//! What the LLM test binaries share: loading a catalog model from the model cache.

use ember_core::metrics::ModelMetrics;
use ember_core::{Catalog, InferError, installed};
use ember_engines::llm::{self, LlmEngine, LlmSettings};

/// Loads `model` with `settings`; panics with the command that installs it when it is missing.
pub fn load_llm(
    model: &str,
    settings: &LlmSettings,
    metrics: ModelMetrics,
) -> Result<LlmEngine, InferError> {
    let catalog = Catalog::builtin().unwrap();
    let spec = catalog.get(model).unwrap();
    let dir = installed::model_dir(&installed::default_home(), spec);
    assert!(
        installed::is_installed(spec, &dir),
        "run `ember models pull {model}` first"
    );
    llm::load(spec, &dir, settings, metrics)
}
