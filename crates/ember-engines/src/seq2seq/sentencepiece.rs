//! M2M100's tokenizer from the files its Hub folders ship, `sentencepiece.bpe.model` (the pieces,
//! their merge order and the text normalization) and `vocab.json` (fairseq's id of each piece),
//! as a `tokenizers` tokenizer that gives transformers' `M2M100Tokenizer` ids: sentencepiece
//! pieces looked up in `vocab.json` (<unk> when absent), the language tokens `__xx__` after the
//! vocabulary. Checked against `M2M100Tokenizer` (`tests/architectures.rs`, fixtures from
//! `scripts/reference/m2m100_tokenizer.py`).

use anyhow::{Context, bail, ensure};
use prost::Message;
use std::collections::HashMap;
use std::path::Path;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Precompiled, Replace, Sequence, Strip};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{AddedToken, NormalizerWrapper, Tokenizer};

/// fairseq's M2M100 language codes in the order of their tokens (`FAIRSEQ_LANGUAGE_CODES["m2m100"]`
/// in transformers): `__af__` is the first id after the vocabulary.
const LANGUAGES: [&str; 100] = [
    "af", "am", "ar", "ast", "az", "ba", "be", "bg", "bn", "br", "bs", "ca", "ceb", "cs", "cy",
    "da", "de", "el", "en", "es", "et", "fa", "ff", "fi", "fr", "fy", "ga", "gd", "gl", "gu", "ha",
    "he", "hi", "hr", "ht", "hu", "hy", "id", "ig", "ilo", "is", "it", "ja", "jv", "ka", "kk",
    "km", "kn", "ko", "lb", "lg", "ln", "lo", "lt", "lv", "mg", "mk", "ml", "mn", "mr", "ms", "my",
    "ne", "nl", "no", "ns", "oc", "or", "pa", "pl", "ps", "pt", "ro", "ru", "sd", "si", "sk", "sl",
    "so", "sq", "sr", "ss", "su", "sv", "sw", "ta", "th", "tl", "tn", "tr", "uk", "ur", "uz", "vi",
    "wo", "xh", "yi", "yo", "zh", "zu",
];

/// The special tokens fairseq puts first in every dictionary.
const SPECIAL: [&str; 4] = ["<s>", "<pad>", "</s>", "<unk>"];

/// sentencepiece's word-boundary mark.
const SPACE: char = '▁';

/// The fields of sentencepiece's `ModelProto` (sentencepiece_model.proto) the conversion reads.
#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(message, repeated, tag = "1")]
    pieces: Vec<SentencePiece>,
    #[prost(message, optional, tag = "2")]
    trainer_spec: Option<TrainerSpec>,
    #[prost(message, optional, tag = "3")]
    normalizer_spec: Option<NormalizerSpec>,
}

#[derive(Clone, PartialEq, Message)]
struct SentencePiece {
    #[prost(string, optional, tag = "1")]
    piece: Option<String>,
    /// 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    #[prost(int32, optional, tag = "3")]
    kind: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
struct TrainerSpec {
    /// 1 unigram, 2 BPE, 3 word, 4 char.
    #[prost(int32, optional, tag = "3")]
    model_type: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
struct NormalizerSpec {
    #[prost(bytes = "vec", optional, tag = "2")]
    precompiled_charsmap: Option<Vec<u8>>,
    #[prost(bool, optional, tag = "3")]
    add_dummy_prefix: Option<bool>,
    #[prost(bool, optional, tag = "4")]
    remove_extra_whitespaces: Option<bool>,
}

const NORMAL_PIECE: i32 = 1;
const USER_DEFINED_PIECE: i32 = 4;
const BPE_MODEL: i32 = 2;

/// Builds M2M100's tokenizer from a folder's `sentencepiece.bpe.model` and `vocab.json`.
pub fn m2m100_tokenizer(dir: &Path) -> anyhow::Result<Tokenizer> {
    let spm_path = dir.join("sentencepiece.bpe.model");
    let bytes = std::fs::read(&spm_path).with_context(|| format!("{}", spm_path.display()))?;
    let model = ModelProto::decode(bytes.as_slice())
        .with_context(|| format!("{} is no sentencepiece model", spm_path.display()))?;
    let vocab_path = dir.join("vocab.json");
    let vocab: HashMap<String, u32> = serde_json::from_slice(
        &std::fs::read(&vocab_path).with_context(|| format!("{}", vocab_path.display()))?,
    )
    .with_context(|| format!("{}", vocab_path.display()))?;
    from_parts(&model, vocab)
}

fn from_parts(model: &ModelProto, vocab: HashMap<String, u32>) -> anyhow::Result<Tokenizer> {
    let model_type = model.trainer_spec.as_ref().and_then(|t| t.model_type);
    ensure!(
        model_type == Some(BPE_MODEL),
        "the sentencepiece model is not BPE (model type {model_type:?})"
    );
    for (id, token) in SPECIAL.iter().enumerate() {
        ensure!(
            vocab.get(*token) == Some(&(id as u32)),
            "vocab.json: {token} is not id {id}"
        );
    }
    let size = u32::try_from(vocab.len())?;
    ensure!(
        vocab.values().all(|&id| id < size),
        "vocab.json: the ids are not 0..{size}"
    );

    let bpe = BPE::builder()
        .vocab_and_merges(
            vocab
                .clone()
                .into_iter()
                .collect::<tokenizers::models::bpe::Vocab>(),
            merges(model, &vocab),
        )
        .unk_token("<unk>".into())
        .fuse_unk(true)
        .build()
        .map_err(|e| anyhow::anyhow!("building the BPE model: {e}"))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_normalizer(Some(normalizer(model)?))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let prepend = match model
        .normalizer_spec
        .as_ref()
        .and_then(|n| n.add_dummy_prefix)
    {
        Some(false) => PrependScheme::Never,
        _ => PrependScheme::Always,
    };
    tokenizer.with_pre_tokenizer(Some(Metaspace::new(SPACE, prepend, true)));
    tokenizer.with_decoder(Some(Metaspace::new(SPACE, prepend, true)));
    tokenizer
        .add_special_tokens(SPECIAL.iter().map(|t| AddedToken::from(*t, true)))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Added tokens take the next free ids, in order: `__af__` = the vocabulary's size, and so on.
    tokenizer
        .add_special_tokens(
            LANGUAGES
                .iter()
                .map(|code| AddedToken::from(format!("__{code}__"), true)),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if tokenizer.token_to_id("__af__") != Some(size) {
        bail!("the language tokens did not get the ids after vocab.json's");
    }
    Ok(tokenizer)
}

/// The merges that rebuild sentencepiece's BPE: every split of a piece into two pieces, ranked by
/// the merged piece's sentencepiece id (its merge order) and then by the halves' ids, kept where
/// all three have a `vocab.json` id (a piece without one would become <unk> anyway).
fn merges(model: &ModelProto, vocab: &HashMap<String, u32>) -> Vec<(String, String)> {
    let spm_ids: HashMap<&str, usize> = model
        .pieces
        .iter()
        .enumerate()
        .filter_map(|(id, p)| Some((p.piece.as_deref()?, id)))
        .collect();
    let mut ranked = Vec::new();
    for (merged_id, piece) in model.pieces.iter().enumerate() {
        let kind = piece.kind.unwrap_or(NORMAL_PIECE);
        let Some(merged) = piece.piece.as_deref() else {
            continue;
        };
        if !matches!(kind, NORMAL_PIECE | USER_DEFINED_PIECE) || !vocab.contains_key(merged) {
            continue;
        }
        for (split, _) in merged.char_indices().skip(1) {
            let (left, right) = merged.split_at(split);
            if let (Some(&l), Some(&r)) = (spm_ids.get(left), spm_ids.get(right))
                && vocab.contains_key(left)
                && vocab.contains_key(right)
            {
                ranked.push((merged_id, l, r, left.to_string(), right.to_string()));
            }
        }
    }
    ranked.sort_by_key(|&(merged, left, right, ..)| (merged, left, right));
    ranked
        .into_iter()
        .map(|(.., left, right)| (left, right))
        .collect()
}

/// sentencepiece's normalization: its precompiled character map (NFKC and the like), then
/// `remove_extra_whitespaces` (no space at either end, one between words).
fn normalizer(model: &ModelProto) -> anyhow::Result<NormalizerWrapper> {
    let spec = model.normalizer_spec.clone().unwrap_or_default();
    let mut steps: Vec<NormalizerWrapper> = Vec::new();
    if let Some(charsmap) = spec.precompiled_charsmap.filter(|c| !c.is_empty()) {
        let precompiled = Precompiled::from(&charsmap)
            .map_err(|e| anyhow::anyhow!("the precompiled character map: {e}"))?;
        steps.push(precompiled.into());
    }
    if spec.remove_extra_whitespaces.unwrap_or(true) {
        steps.push(Strip::new(true, true).into());
        let runs = Replace::new(ReplacePattern::Regex(" {2,}".into()), " ")
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        steps.push(runs.into());
    }
    Ok(Sequence::new(steps).into())
}
