//! Settings for `ember serve` and friends: built-in defaults, then an optional TOML config file,
//! then environment variables and flags (clap merges those two; a flag beats its variable).
//! The API token is a secret: it is never printed.

use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";

/// The config file's shape. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub db: Option<PathBuf>,
    pub api_token: Option<String>,
    pub catalog: Option<PathBuf>,
    pub request_timeout_secs: Option<u64>,
    pub shutdown_grace_secs: Option<u64>,
    /// Requested model id → catalog model id that serves it.
    #[serde(default)]
    pub aliases: HashMap<String, String>,
}

impl FileConfig {
    pub fn load(path: Option<&Path>) -> anyhow::Result<FileConfig> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }
}

/// Parses `FROM=TO` alias arguments.
pub fn parse_alias(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((from, to)) if !from.trim().is_empty() && !to.trim().is_empty() => {
            Ok((from.trim().to_string(), to.trim().to_string()))
        }
        _ => Err(format!(
            "alias '{text}' must look like FROM=TO, e.g. @cf/meta/llama-3.1-8b-instruct=@hf/qwen/qwen2.5-coder-0.5b-instruct"
        )),
    }
}

/// `~/.local/share/ember/ember.db`.
pub fn default_db() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local")
        .join("share")
        .join("ember")
        .join("ember.db")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_parse() {
        assert_eq!(
            parse_alias("@cf/a/b=@hf/c/d"),
            Ok(("@cf/a/b".into(), "@hf/c/d".into()))
        );
        assert!(parse_alias("@cf/a/b").is_err());
        assert!(parse_alias("=x").is_err());
    }

    #[test]
    fn config_file_keys() {
        let config: FileConfig = toml::from_str(
            "listen = \"0.0.0.0:9000\"\napi_token = \"s\"\n[aliases]\n\"@cf/meta/llama-3.1-8b-instruct\" = \"@hf/qwen/qwen2.5-coder-0.5b-instruct\"\n",
        )
        .unwrap();
        assert_eq!(config.listen.unwrap().port(), 9000);
        assert_eq!(config.aliases.len(), 1);
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err());
    }
}
