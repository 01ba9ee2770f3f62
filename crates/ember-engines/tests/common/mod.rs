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

/// What decode steps of 1, 2, 4, 8 and 16 rows cost Qwen2.5-Coder-0.5B on a 2-core x86 machine
/// (`llm/draft.rs`), given to speculative engines in tests so that whether drafts pay does not
/// depend on how busy the machine is while they run.
#[allow(dead_code)] // Not every test binary that includes this module drafts.
pub const QWEN_STEP_SECONDS: [f64; 5] = [0.016, 0.036, 0.048, 0.065, 0.079];
