//! CLIP's text side as Stable Diffusion uses it: the tokenizer built from a diffusers folder's
//! `tokenizer/vocab.json` and `merges.txt` (as transformers' CLIPTokenizer builds it: NFC,
//! whitespace runs to one space, lowercase, CLIP's word pattern, byte-level BPE with `</w>` word
//! ends, `<|startoftext|>` … `<|endoftext|>` around, padded with `<|endoftext|>` to 77 tokens), and
//! the text encoder of `text_encoder/` (transformers' CLIPTextModel: pre-norm layers under a causal
//! mask), whose last hidden state conditions the UNet.

use crate::transformer::{Activation, Attention, FeedForward};
use anyhow::{Context, Result, anyhow};
use candle_core::{Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, embedding, layer_norm};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use tokenizers::Tokenizer;

/// Tokens the text encoder reads: prompts are cut or padded to this.
pub const CONTEXT_TOKENS: usize = 77;
const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";
/// CLIP's pre-tokenizer: its special tokens, English contractions, letter runs, single digits
/// and runs of other non-space characters.
const WORD_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    eos: u32,
}

impl ClipTokenizer {
    /// Reads `vocab.json` and `merges.txt` from `dir`.
    pub fn load(dir: &Path) -> Result<ClipTokenizer> {
        let vocab_text = std::fs::read_to_string(dir.join("vocab.json"))
            .with_context(|| format!("reading {}", dir.join("vocab.json").display()))?;
        let vocab: BTreeMap<String, u32> = serde_json::from_str(&vocab_text)?;
        let merges_text = std::fs::read_to_string(dir.join("merges.txt"))
            .with_context(|| format!("reading {}", dir.join("merges.txt").display()))?;
        let merges: Vec<&str> = merges_text
            .lines()
            .filter(|line| !line.starts_with("#version") && !line.trim().is_empty())
            .collect();
        let id = |token: &str| {
            vocab
                .get(token)
                .copied()
                .ok_or_else(|| anyhow!("vocab.json has no {token}"))
        };
        let (bos, eos) = (id(BOS)?, id(EOS)?);
        let special = |content: &str, id: u32| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": true, "special": true})
        };
        let definition = json!({
            "version": "1.0",
            "added_tokens": [special(BOS, bos), special(EOS, eos)],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
                {"type": "Lowercase"},
            ]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": WORD_PATTERN}, "behavior": "Removed",
                 "invert": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                 "use_regex": false},
            ]},
            "post_processor": {"type": "RobertaProcessing", "sep": [EOS, eos], "cls": [BOS, bos],
                               "trim_offsets": false, "add_prefix_space": false},
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                        "use_regex": false},
            "model": {"type": "BPE", "dropout": null, "unk_token": EOS,
                      "continuing_subword_prefix": "", "end_of_word_suffix": "</w>",
                      "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": merges},
        });
        let tokenizer = Tokenizer::from_bytes(definition.to_string().as_bytes())
            .map_err(|e| anyhow!("building the CLIP tokenizer: {e}"))?;
        Ok(ClipTokenizer { tokenizer, eos })
    }

    /// `text`'s ids with the start and end tokens, cut to `CONTEXT_TOKENS` (the end token kept).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow!("tokenizing: {e}"))?;
        let mut ids = encoding.get_ids().to_vec();
        if ids.len() > CONTEXT_TOKENS {
            ids.truncate(CONTEXT_TOKENS - 1);
            ids.push(self.eos);
        }
        Ok(ids)
    }

    /// `encode`, padded with the end token to `CONTEXT_TOKENS`.
    pub fn encode_padded(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode(text)?;
        ids.resize(CONTEXT_TOKENS, self.eos);
        Ok(ids)
    }
}

/// The parts of the text encoder's `config.json` it is built from.
#[derive(serde::Deserialize)]
struct TextConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    max_position_embeddings: usize,
    #[serde(default = "quick_gelu")]
    hidden_act: String,
    #[serde(default = "layer_norm_eps")]
    layer_norm_eps: f64,
}

fn quick_gelu() -> String {
    "quick_gelu".into()
}

fn layer_norm_eps() -> f64 {
    1e-5
}

struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    mlp: FeedForward,
}

pub struct ClipTextEncoder {
    token_embedding: Embedding,
    /// `[positions, hidden]`.
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    activation: Activation,
}

impl ClipTextEncoder {
    /// Loads `config.json` and `model.safetensors` from `dir` (transformers' CLIPTextModel).
    pub fn load(dir: &Path) -> Result<ClipTextEncoder> {
        let config: TextConfig = super::read_json(&dir.join("config.json"))?;
        let vb = super::weights(&dir.join("model.safetensors"))?;
        // transformers 4 saves CLIPTextModel under `text_model.` (as the Hub's SD folders have
        // it); transformers 5 without.
        let vb = match vb.contains_tensor("text_model.final_layer_norm.weight") {
            true => vb.pp("text_model"),
            false => vb,
        };
        let dim = config.hidden_size;
        let eps = config.layer_norm_eps;
        let embeddings = vb.pp("embeddings");
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let vb = vb.pp(format!("encoder.layers.{i}"));
                Ok(EncoderLayer {
                    layer_norm1: layer_norm(dim, eps, vb.pp("layer_norm1"))?,
                    self_attn: Attention::load(
                        vb.pp("self_attn"),
                        dim,
                        config.num_attention_heads,
                    )?,
                    layer_norm2: layer_norm(dim, eps, vb.pp("layer_norm2"))?,
                    mlp: FeedForward::load(&vb.pp("mlp"), dim, config.intermediate_size)?,
                })
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(ClipTextEncoder {
            token_embedding: embedding(config.vocab_size, dim, embeddings.pp("token_embedding"))?,
            position_embedding: embeddings.get(
                (config.max_position_embeddings, dim),
                "position_embedding.weight",
            )?,
            layers,
            final_layer_norm: layer_norm(dim, eps, vb.pp("final_layer_norm"))?,
            activation: Activation::parse(&config.hidden_act).map_err(|e| anyhow!(e))?,
        })
    }

    /// The last hidden state (`[1, tokens, hidden]`) of `ids`.
    pub fn forward(&self, ids: &[u32]) -> candle_core::Result<Tensor> {
        let tokens = ids.len();
        let ids = Tensor::new(ids, &Device::Cpu)?.unsqueeze(0)?;
        let positions = self.position_embedding.narrow(0, 0, tokens)?;
        let mut x = self
            .token_embedding
            .forward(&ids)?
            .broadcast_add(&positions)?;
        let causal: Vec<f32> = (0..tokens)
            .flat_map(|i| (0..tokens).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(causal, (tokens, tokens), &Device::Cpu)?;
        for layer in &self.layers {
            let normed = layer.layer_norm1.forward(&x)?;
            let (keys, values) = layer.self_attn.keys_values(&normed)?;
            let attended = layer
                .self_attn
                .attend_masked(&normed, &keys, &values, Some(&mask))?;
            x = (x + attended)?;
            let fed = layer
                .mlp
                .forward(&layer.layer_norm2.forward(&x)?, self.activation)?;
            x = (x + fed)?;
        }
        self.final_layer_norm.forward(&x)
    }
}
