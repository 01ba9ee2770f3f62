//! Sequence-to-sequence generation on candle: summarization with BART (bart-large-cnn) and
//! translation with M2M100 (m2m100-1.2b), one encoder-decoder in [`model`] with a switch on
//! `config.json`'s `model_type`, and the decoding strategies in [`search`].
//!
//! BART: Lewis et al., "BART: Denoising Sequence-to-Sequence Pre-training for Natural Language
//! Generation, Translation, and Comprehension" (<https://arxiv.org/abs/1910.13461>). M2M100: Fan
//! et al., "Beyond English-Centric Multilingual Machine Translation"
//! (<https://arxiv.org/abs/2010.11125>).
//!
//! A request goes through what transformers' tokenizer and `generate` do:
//!
//! 1. Source ids: `prefix + content + </s>`, the content cut so the whole fits the position
//!    table. The prefix is `<s>` (BART's `bos_token_id`) or the source language token `__xx__`
//!    (M2M100, as `M2M100Tokenizer` with `src_lang`). The tokenizer's own post-processor is not
//!    used, so a `tokenizer.json` with or without one gives the same ids.
//! 2. Encode once; decode from `decoder_start_token_id` with greedy or beam search, with the
//!    model's generation settings (`generation_config.json`, else `config.json`). For M2M100 the
//!    target language token is forced as the first generated token (`forced_bos_token_id`).
//! 3. Text: the generated tokens without special tokens, decoded by the tokenizer.
//!
//! M2M100's Hub folders ship `sentencepiece.bpe.model` + `vocab.json` and no `tokenizer.json`:
//! `sentencepiece.rs` builds the same tokenizer from them (a `tokenizer.json` with `vocab.json`'s
//! ids and the language tokens `__xx__` at vocabulary size + language index also serves).

mod model;
mod search;
mod sentencepiece;

pub use search::{EarlyStopping, GenerationSettings};
pub use sentencepiece::m2m100_tokenizer;

use crate::embed::load_safetensors;
use candle_core::Tensor;
use ember_core::InferError;
use ember_core::tasks::summarization::SummarizationOutput;
use ember_core::tasks::translation::{self, TranslationOutput};
use ember_core::tasks::{TaskOutput, TaskRequest, Usage};
use model::{Arch, Model};
use search::Search;
use std::collections::HashMap;
use std::path::Path;
use tokenizers::Tokenizer;

/// A loaded BART or M2M100 model with its tokenizer and generation settings.
pub struct Seq2Seq {
    model: Model,
    arch: Arch,
    tokenizer: Tokenizer,
    settings: GenerationSettings,
    bos_token_id: u32,
    pad_token_id: u32,
    /// M2M100 language codes and their token ids (`__en__` → ("en", id)), in id order.
    languages: Vec<(String, u32)>,
    /// Most tokens of a source text, special tokens included, and most decoder positions.
    max_positions: usize,
}

/// The generation fields of `generation_config.json` or `config.json`, with transformers'
/// `GenerationConfig` defaults.
#[derive(serde::Deserialize)]
struct GenerationFields {
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default)]
    decoder_start_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: Option<OneOrMany>,
    #[serde(default)]
    forced_bos_token_id: Option<u32>,
    #[serde(default)]
    forced_eos_token_id: Option<OneOrMany>,
    #[serde(default)]
    max_length: Option<usize>,
    #[serde(default)]
    min_length: Option<usize>,
    #[serde(default)]
    no_repeat_ngram_size: Option<usize>,
    #[serde(default)]
    num_beams: Option<usize>,
    #[serde(default)]
    length_penalty: Option<f32>,
    #[serde(default)]
    early_stopping: Option<serde_json::Value>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<u32> {
        match self {
            OneOrMany::One(id) => vec![id],
            OneOrMany::Many(ids) => ids,
        }
    }
}

impl Seq2Seq {
    /// Loads a model folder: `config.json` (its `model_type`, "bart" or "m2m_100", picks the
    /// architecture), `model.safetensors` (or a sharded `model.safetensors.index.json`),
    /// `tokenizer.json` (or M2M100's `sentencepiece.bpe.model` + `vocab.json`), and
    /// `generation_config.json` when present.
    pub fn load(dir: &Path) -> Result<Seq2Seq, InferError> {
        let failed = |reason: String| InferError::LoadFailed {
            model: dir.display().to_string(),
            reason,
        };
        let config_text = read(&dir.join("config.json")).map_err(failed)?;
        let config_json: serde_json::Value =
            serde_json::from_str(&config_text).map_err(|e| failed(format!("config.json: {e}")))?;
        let arch = match config_json.get("model_type").and_then(|v| v.as_str()) {
            Some("bart") => Arch::Bart,
            Some("m2m_100") => Arch::M2m100,
            other => {
                return Err(failed(format!(
                    "config.json: model_type {other:?} is not a supported seq2seq model (bart, m2m_100)"
                )));
            }
        };
        let config: model::Config = serde_json::from_value(config_json.clone())
            .map_err(|e| failed(format!("config.json: {e}")))?;
        let tensors = load_weights(dir).map_err(failed)?;
        let model = Model::load(arch, &config, tensors).map_err(failed)?;

        let generation_path = dir.join("generation_config.json");
        let generation_json = if generation_path.is_file() {
            serde_json::from_str(&read(&generation_path).map_err(failed)?)
                .map_err(|e| failed(format!("generation_config.json: {e}")))?
        } else {
            config_json
        };
        let fields: GenerationFields = serde_json::from_value(generation_json)
            .map_err(|e| failed(format!("generation settings: {e}")))?;
        let bos_token_id = fields.bos_token_id.unwrap_or(0);
        let settings = settings_from(fields).map_err(failed)?;

        let path = dir.join("tokenizer.json");
        let mut tokenizer = if !path.is_file() && dir.join("sentencepiece.bpe.model").is_file() {
            sentencepiece::m2m100_tokenizer(dir).map_err(|e| failed(format!("{e:#}")))?
        } else {
            Tokenizer::from_file(&path)
                .map_err(|e| failed(format!("cannot read {}: {e}", path.display())))?
        };
        // Truncation is done on the ids (the content is cut, the special tokens kept).
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| failed(format!("cannot turn off truncation: {e}")))?;
        let languages = match arch {
            Arch::Bart => Vec::new(),
            Arch::M2m100 => language_tokens(&tokenizer),
        };
        if arch == Arch::M2m100 && languages.is_empty() {
            return Err(failed(
                "tokenizer.json has no language tokens (__en__, __fr__, ...)".into(),
            ));
        }
        tracing::debug!(folder = %dir.display(), ?arch, ?settings, languages = languages.len(), "seq2seq model loaded");
        Ok(Seq2Seq {
            model,
            arch,
            tokenizer,
            settings,
            bos_token_id,
            pad_token_id: config.pad_token_id,
            languages,
            max_positions: config.max_position_embeddings,
        })
    }

    /// Language codes the model knows, in token-id order (empty for BART).
    pub fn languages(&self) -> Vec<String> {
        self.languages
            .iter()
            .map(|(code, _)| code.clone())
            .collect()
    }

    /// The generation settings loaded with the model; `max_length - 1` is the model's own
    /// default for `max_new_tokens`.
    pub fn settings(&self) -> &GenerationSettings {
        &self.settings
    }

    /// Changes the generation settings (e.g. `num_beams = 1` for greedy search).
    pub fn settings_mut(&mut self) -> &mut GenerationSettings {
        &mut self.settings
    }

    /// Generates for one source text. `source_lang`/`target_lang` are M2M100 language codes
    /// (ignored for BART; for M2M100 the source defaults to "en" and the target is required).
    /// Returns the text, the input token count and the generated token count.
    pub fn generate(
        &mut self,
        text: &str,
        source_lang: Option<&str>,
        target_lang: Option<&str>,
        max_new_tokens: usize,
    ) -> Result<(String, u32, u32), InferError> {
        let source = self.source_ids(text, source_lang)?;
        let sequence = self.generate_ids(&source, target_lang, max_new_tokens)?;
        let generated = &sequence[1..];
        let special = self.special_ids();
        let content: Vec<u32> = generated
            .iter()
            .copied()
            .filter(|id| !special.contains(id))
            .collect();
        let text = self
            .tokenizer
            .decode(&content, true)
            .map_err(|e| InferError::Internal(format!("tokenizer failed: {e}")))?;
        Ok((text, source.len() as u32, generated.len() as u32))
    }

    /// The encoder's input for a text: `prefix + content + </s>`, cut to the position table.
    pub fn source_ids(
        &self,
        text: &str,
        source_lang: Option<&str>,
    ) -> Result<Vec<u32>, InferError> {
        let prefix = match self.arch {
            Arch::Bart => self.bos_token_id,
            Arch::M2m100 => self.language_id("/source_lang", source_lang.or(Some("en")))?,
        };
        let encoding = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| InferError::Internal(format!("tokenizer failed: {e}")))?;
        let mut ids = Vec::with_capacity(encoding.len() + 2);
        ids.push(prefix);
        ids.extend(
            encoding
                .get_ids()
                .iter()
                .take(self.max_positions.saturating_sub(2)),
        );
        ids.push(self.settings.eos_token_ids.first().copied().unwrap_or(2));
        Ok(ids)
    }

    /// The encoder's last hidden state for source ids, one row per token.
    pub fn encode(&self, source_ids: &[u32]) -> Result<Vec<Vec<f32>>, InferError> {
        self.check_ids(source_ids)?;
        self.model
            .encode(source_ids)
            .and_then(|h| h.squeeze(0)?.to_vec2::<f32>())
            .map_err(internal)
    }

    /// The decoder's next-token logits after each of `decoder_ids`, fed one at a time through
    /// the same cached path generation uses.
    pub fn decoder_logits(
        &self,
        source_ids: &[u32],
        decoder_ids: &[u32],
    ) -> Result<Vec<Vec<f32>>, InferError> {
        self.check_ids(source_ids)?;
        self.check_ids(decoder_ids)?;
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let encoder_out = self.model.encode(source_ids)?;
            let mut state = self.model.start(&encoder_out, 1)?;
            decoder_ids
                .iter()
                .map(|&id| {
                    self.model
                        .step(&[id], &mut state)?
                        .squeeze(0)?
                        .to_vec1::<f32>()
                })
                .collect()
        };
        run().map_err(internal)
    }

    /// The whole decoder sequence (start token first) generated for source ids, with the
    /// model's search (greedy when `num_beams` is 1, else beam search).
    pub fn generate_ids(
        &self,
        source_ids: &[u32],
        target_lang: Option<&str>,
        max_new_tokens: usize,
    ) -> Result<Vec<u32>, InferError> {
        self.check_ids(source_ids)?;
        let forced_bos = match self.arch {
            Arch::Bart => self.settings.forced_bos_token_id,
            Arch::M2m100 => Some(self.language_id("/target_lang", target_lang)?),
        };
        // As transformers with `max_new_tokens`: the decoder may grow by that many tokens past
        // its start token, within the position table.
        let max_length = max_new_tokens.saturating_add(1).min(self.max_positions);
        let start = self.settings.decoder_start_token_id;
        if max_length <= 1 {
            return Ok(vec![start]);
        }
        let search = Search {
            settings: &self.settings,
            forced_bos,
            max_length,
        };
        let run = || -> candle_core::Result<Vec<u32>> {
            let encoder_out = self.model.encode(source_ids)?;
            if self.settings.num_beams > 1 {
                search.beam(&self.model, &encoder_out)
            } else {
                search.greedy(&self.model, &encoder_out)
            }
        };
        run().map_err(internal)
    }

    fn language_id(&self, field: &str, code: Option<&str>) -> Result<u32, InferError> {
        let code = code.ok_or_else(|| InferError::invalid(field, "a language code is required"))?;
        self.languages
            .iter()
            .find(|(known, _)| known == code)
            .map(|(_, id)| *id)
            .ok_or_else(|| InferError::invalid(field, format!("unknown language code {code:?}")))
    }

    /// Ids that never appear in the output text: start, end, padding, BOS and language tokens.
    fn special_ids(&self) -> Vec<u32> {
        let s = &self.settings;
        let mut ids = vec![
            s.decoder_start_token_id,
            self.bos_token_id,
            self.pad_token_id,
        ];
        ids.extend(&s.eos_token_ids);
        ids.extend(s.forced_bos_token_id);
        ids.extend(self.languages.iter().map(|(_, id)| *id));
        ids
    }

    /// Ids must index the embedding table and the source must fit the position table.
    fn check_ids(&self, ids: &[u32]) -> Result<(), InferError> {
        let vocab = self.model.vocab_size();
        if ids.is_empty() || ids.len() > self.max_positions {
            return Err(InferError::invalid(
                "/input_ids",
                format!("between 1 and {} tokens are accepted", self.max_positions),
            ));
        }
        match ids.iter().find(|&&id| id as usize >= vocab) {
            Some(id) => Err(InferError::invalid(
                "/input_ids",
                format!("token id {id} is outside the vocabulary of {vocab}"),
            )),
            None => Ok(()),
        }
    }
}

fn internal(error: candle_core::Error) -> InferError {
    InferError::Internal(format!("seq2seq engine: {error}"))
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The checkpoint's tensors: `model.safetensors`, or every shard named by
/// `model.safetensors.index.json`.
fn load_weights(dir: &Path) -> Result<HashMap<String, Tensor>, String> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return load_safetensors(&single);
    }
    let index_path = dir.join("model.safetensors.index.json");
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let index: Index = serde_json::from_str(&read(&index_path)?)
        .map_err(|e| format!("{}: {e}", index_path.display()))?;
    let mut shards: Vec<&String> = index.weight_map.values().collect();
    shards.sort();
    shards.dedup();
    let mut tensors = HashMap::new();
    for shard in shards {
        if shard.contains('/') || shard.contains("..") {
            return Err(format!("{}: bad shard name {shard}", index_path.display()));
        }
        tensors.extend(load_safetensors(&dir.join(shard))?);
    }
    Ok(tensors)
}

/// Builds the settings, falling back to transformers' `GenerationConfig` defaults.
fn settings_from(f: GenerationFields) -> Result<GenerationSettings, String> {
    let eos_token_ids = f.eos_token_id.map_or_else(|| vec![2], OneOrMany::into_vec);
    let early_stopping = match f.early_stopping {
        None | Some(serde_json::Value::Bool(false)) => EarlyStopping::Heuristic,
        Some(serde_json::Value::Bool(true)) => EarlyStopping::Done,
        Some(serde_json::Value::String(s)) if s == "never" => EarlyStopping::Never,
        Some(other) => return Err(format!("unsupported early_stopping {other}")),
    };
    Ok(GenerationSettings {
        decoder_start_token_id: f
            .decoder_start_token_id
            .or(eos_token_ids.first().copied())
            .unwrap_or(2),
        forced_bos_token_id: f.forced_bos_token_id,
        forced_eos_token_ids: f
            .forced_eos_token_id
            .map_or_else(Vec::new, OneOrMany::into_vec),
        eos_token_ids,
        max_length: f.max_length.unwrap_or(20),
        min_length: f.min_length.unwrap_or(0),
        no_repeat_ngram_size: f.no_repeat_ngram_size.unwrap_or(0),
        num_beams: f.num_beams.unwrap_or(1).max(1),
        length_penalty: f.length_penalty.unwrap_or(1.0),
        early_stopping,
    })
}

/// The language tokens `__xx__` of a tokenizer (two or three lowercase letters), in id order.
fn language_tokens(tokenizer: &Tokenizer) -> Vec<(String, u32)> {
    let mut languages: Vec<(String, u32)> = tokenizer
        .get_vocab(true)
        .into_iter()
        .filter_map(|(token, id)| {
            let code = token.strip_prefix("__")?.strip_suffix("__")?;
            let valid =
                (2..=3).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_lowercase());
            valid.then(|| (code.to_string(), id))
        })
        .collect();
    languages.sort_by_key(|(_, id)| *id);
    languages
}

/// Translation (M2M100) and summarization (BART): one source text at a time.
impl ember_core::runner::Runner for Seq2Seq {
    fn run(&mut self, request: TaskRequest) -> Result<TaskOutput, InferError> {
        match request {
            TaskRequest::Translation(request) => {
                let mut texts = Vec::with_capacity(request.items.len());
                let (mut input_tokens, mut output_tokens) = (0, 0);
                for item in &request.items {
                    let (text, used_in, used_out) = self.generate(
                        &item.text,
                        Some(&item.source_lang),
                        Some(&item.target_lang),
                        translation::most_tokens_for(&item.text) as usize,
                    )?;
                    texts.push(text);
                    input_tokens += used_in;
                    output_tokens += used_out;
                }
                Ok(TaskOutput::Translation(TranslationOutput {
                    texts,
                    batch: request.batch,
                    usage: Usage::new(input_tokens, output_tokens),
                }))
            }
            TaskRequest::Summarization(request) => {
                let (summary, input_tokens, output_tokens) =
                    self.generate(&request.input_text, None, None, request.max_length as usize)?;
                Ok(TaskOutput::Summarization(SummarizationOutput {
                    summary,
                    usage: Usage::new(input_tokens, output_tokens),
                }))
            }
            other => Err(crate::wrong_task(&other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_defaults_and_lists() {
        let fields: GenerationFields = serde_json::from_str(
            r#"{"eos_token_id": [2, 7], "forced_eos_token_id": 2, "early_stopping": "never"}"#,
        )
        .unwrap();
        let s = settings_from(fields).unwrap();
        assert_eq!(s.eos_token_ids, vec![2, 7]);
        assert_eq!(s.forced_eos_token_ids, vec![2]);
        assert_eq!(s.decoder_start_token_id, 2);
        assert_eq!((s.max_length, s.min_length, s.num_beams), (20, 0, 1));
        assert_eq!(s.early_stopping, EarlyStopping::Never);
        let bad: GenerationFields = serde_json::from_str(r#"{"early_stopping": 3}"#).unwrap();
        assert!(settings_from(bad).is_err());
    }
}
