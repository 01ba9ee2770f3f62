//! What a finetune must be before an engine applies it: the LoRA adapter PEFT writes
//! (`adapter_config.json` and `adapter_model.safetensors`), of a rank Ember accepts, kept in the
//! model home under the finetune's id, for a base model that takes adapters.

use crate::InferError;
use crate::catalog::{Catalog, Engine, ModelSpec};
use crate::tasks::Lora;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The highest rank accepted (Workers AI's limit).
pub const MAX_RANK: usize = 32;

/// PEFT's `adapter_config.json`: the keys that decide how the adapter applies.
#[derive(Debug, Deserialize)]
pub struct AdapterConfig {
    pub r: usize,
    pub lora_alpha: f64,
    /// rsLoRA scales by `lora_alpha / sqrt(r)` instead of `lora_alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    rank_pattern: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    alpha_pattern: BTreeMap<String, serde_json::Value>,
}

/// Reads an `adapter_config.json`, refusing what cannot be applied (its problem names the key).
pub fn read_config(bytes: &[u8]) -> Result<AdapterConfig, String> {
    let config: AdapterConfig = serde_json::from_slice(bytes)
        .map_err(|e| format!("{CONFIG_FILE} is not a PEFT LoRA config: {e}"))?;
    if config.r == 0 || config.r > MAX_RANK {
        return Err(format!(
            "{CONFIG_FILE}: rank (r) {} is not between 1 and {MAX_RANK}",
            config.r
        ));
    }
    if config.use_dora {
        return Err(format!(
            "{CONFIG_FILE}: use_dora: DoRA adapters are not supported"
        ));
    }
    if !config.rank_pattern.is_empty() || !config.alpha_pattern.is_empty() {
        return Err(format!(
            "{CONFIG_FILE}: per-module rank_pattern and alpha_pattern are not supported"
        ));
    }
    Ok(config)
}

/// Checks that `bytes` are a whole safetensors file (its header and every tensor's bytes).
pub fn check_weights(bytes: &[u8]) -> Result<(), String> {
    safetensors::SafeTensors::deserialize(bytes)
        .map(|_| ())
        .map_err(|e| format!("{WEIGHTS_FILE} is not a readable safetensors file: {e}"))
}

/// Where finetune `id`'s files live in the model home.
pub fn folder(home: &Path, id: &str) -> PathBuf {
    home.join("finetunes").join(id)
}

/// Checks and keeps an uploaded file of finetune `id` (`file_name` is `CONFIG_FILE` or
/// `WEIGHTS_FILE`): what can be checked without the base model is checked here, the shapes when
/// a request first applies the adapter. Written aside and renamed, so a request never reads half
/// a file; adapters converted from the earlier files go.
pub fn keep_file(home: &Path, id: &str, file_name: &str, bytes: &[u8]) -> Result<(), InferError> {
    let checked = match file_name {
        CONFIG_FILE => read_config(bytes).map(|_| ()),
        WEIGHTS_FILE => check_weights(bytes),
        other => {
            let problem = format!("must be {CONFIG_FILE} or {WEIGHTS_FILE}, not {other}");
            return Err(InferError::invalid("/file_name", problem));
        }
    };
    checked.map_err(|problem| InferError::invalid("/file", problem))?;
    let folder = folder(home, id);
    let io = |e: std::io::Error| InferError::Internal(format!("{}: {e}", folder.display()));
    std::fs::create_dir_all(&folder).map_err(io)?;
    let part = folder.join(format!("{file_name}.part"));
    std::fs::write(&part, bytes).map_err(io)?;
    std::fs::rename(&part, folder.join(file_name)).map_err(io)?;
    for entry in std::fs::read_dir(&folder).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == "gguf") {
            std::fs::remove_file(path).map_err(io)?;
        }
    }
    Ok(())
}

/// Removes finetune `id`'s files. An engine keeps the adapters it loaded from them.
pub fn remove_files(home: &Path, id: &str) -> std::io::Result<()> {
    match std::fs::remove_dir_all(folder(home, id)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The finetune's adapter, when both of its files are there.
pub fn uploaded(home: &Path, id: &str) -> Option<Lora> {
    let folder = folder(home, id);
    [CONFIG_FILE, WEIGHTS_FILE]
        .iter()
        .all(|file| folder.join(file).is_file())
        .then(|| Lora {
            id: id.to_string(),
            folder,
        })
}

/// Whether a request to `model` (as the client named it, before any alias), served by
/// `served`, may carry a LoRA adapter: the serving model runs on llama.cpp, and a Workers AI
/// `@cf` id must be one Workers AI documents as a LoRA base (`lora = "true"` in the catalog).
pub fn takes_lora(catalog: &Catalog, model: &str, served: &ModelSpec) -> bool {
    let documented = || {
        catalog
            .get(model)
            .is_some_and(|spec| spec.properties.get("lora").is_some_and(|v| v == "true"))
    };
    served.engine == Engine::LlamaCpp && (!model.starts_with("@cf/") || documented())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_refused_by_the_key_that_cannot_apply() {
        let config = |json: &str| read_config(json.as_bytes()).map(|c| c.r);
        assert_eq!(config(r#"{"r": 8, "lora_alpha": 16}"#), Ok(8));
        assert!(
            config(r#"{"r": 64, "lora_alpha": 16}"#)
                .unwrap_err()
                .contains("rank (r) 64")
        );
        assert!(config(r#"{"lora_alpha": 16}"#).unwrap_err().contains("`r`"));
        assert!(
            config(r#"{"r": 8, "lora_alpha": 16, "use_dora": true}"#)
                .unwrap_err()
                .contains("use_dora")
        );
        assert!(check_weights(b"\x08\x00\x00\x00\x00\x00\x00\x00{}").is_err());
    }
}
