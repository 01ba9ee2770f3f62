//! Kokoro-82M (StyleTTS 2 with an iSTFTNet decoder) exported to ONNX, as kokoro-onnx runs it:
//! phonemes mapped one character at a time through `vocab.json` (characters it lacks dropped),
//! padded with id 0 at both ends; the voice is a pack of style vectors, one row per input length,
//! and the row for `n` phonemes is the style; 24 kHz out.

use super::{npy, only_file};
use crate::onnx;
use anyhow::{Context, bail, ensure};
use ort::session::Session;
use ort::value::Tensor;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

pub(super) const SAMPLE_RATE: u32 = 24_000;
/// The espeak-ng voice that reads text by default, kokoro-onnx's: Kokoro's vocabulary is the IPA
/// espeak-ng writes, whichever language its voice packs were made for.
pub(super) const ESPEAK_VOICE: &str = "en-us";
/// The style vector's width, the model's `style` input.
const STYLE: usize = 256;

pub(super) struct Kokoro {
    session: Mutex<Session>,
    vocab: HashMap<char, i64>,
    /// Voice name and its style rows (`rows × STYLE`), sorted by name.
    voices: Vec<(String, Vec<f32>)>,
    /// Rows in every pack: the longest input is one row shorter, so that its row exists.
    rows: usize,
}

impl Kokoro {
    /// Loads the model (the folder's one `.onnx`), `vocab.json` and the voice pack (its `.npz`).
    pub(super) fn load(dir: &Path, threads: usize) -> anyhow::Result<Kokoro> {
        let vocab = read_vocab(&dir.join("vocab.json"))?;
        let pack = only_file(dir, ".npz")?;
        let mut voices = Vec::new();
        let mut rows = None;
        for (name, array) in npy::read_npz(&pack)? {
            // (rows, 1, 256) as published; (rows, 256) is the same data.
            let (&width, lead) = array.shape.split_last().context("an empty shape")?;
            ensure!(
                width == STYLE && lead.len() <= 2 && lead.iter().skip(1).all(|&d| d == 1),
                "{}: voice `{name}` has shape {:?}, not (rows, 1, {STYLE})",
                pack.display(),
                array.shape
            );
            let n = lead.first().copied().unwrap_or(1);
            ensure!(
                *rows.get_or_insert(n) == n,
                "{}: voice packs of different lengths",
                pack.display()
            );
            voices.push((name, array.data));
        }
        let rows = rows.with_context(|| format!("{} holds no voices", pack.display()))?;
        ensure!(rows >= 2, "{}: voice packs of {rows} rows", pack.display());

        let model = only_file(dir, ".onnx")?;
        let session = onnx::session(&model, threads)?;
        onnx::check_inputs(&session, &["tokens", "style", "speed"], &model)?;
        Ok(Kokoro {
            session: Mutex::new(session),
            vocab,
            voices,
            rows,
        })
    }

    pub(super) fn speakers(&self) -> Vec<String> {
        self.voices.iter().map(|(name, _)| name.clone()).collect()
    }

    /// The index of the voice named `name` (the first by name without one).
    pub(super) fn voice(&self, name: Option<&str>) -> anyhow::Result<usize> {
        match name {
            None => Ok(0),
            Some(name) => self
                .voices
                .iter()
                .position(|(n, _)| n == name)
                .with_context(|| {
                    format!("no voice `{name}` (voices: {})", self.speakers().join(", "))
                }),
        }
    }

    /// Phoneme characters per call: a pack has a row for each input length below its size.
    pub(super) fn max_phonemes(&self) -> usize {
        self.rows - 1
    }

    /// The model's input for a piece of phonemes: `0 (id)* 0`.
    pub(super) fn ids(&self, phonemes: &str) -> Vec<i64> {
        let mut ids = vec![0];
        ids.extend(phonemes.chars().filter_map(|c| self.vocab.get(&c)));
        ids.push(0);
        ids
    }

    /// The audio for one input, at 24 kHz.
    pub(super) fn infer(&self, ids: &[i64], voice: usize, speed: f32) -> anyhow::Result<Vec<f32>> {
        // kokoro-onnx's choice of row: the number of phonemes, without the two pads.
        let row = (ids.len() - 2).min(self.rows - 1);
        let style = self.voices[voice].1[row * STYLE..(row + 1) * STYLE].to_vec();
        let inputs = ort::inputs![
            "tokens" => Tensor::from_array(([1, ids.len()], ids.to_vec()))?,
            "style" => Tensor::from_array(([1, STYLE], style))?,
            "speed" => Tensor::from_array(([1], vec![speed]))?,
        ];
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session.run(inputs).context("running the Kokoro model")?;
        let (_, audio) = outputs[0]
            .try_extract_tensor::<f32>()
            .context("the Kokoro model's output")?;
        Ok(audio.to_vec())
    }
}

/// `vocab.json`: phoneme → id, at the top level or under `vocab` (kokoro-onnx's config.json).
fn read_vocab(path: &Path) -> anyhow::Result<HashMap<char, i64>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if let Some(inner) = json.get_mut("vocab") {
        json = inner.take();
    }
    let map: HashMap<String, i64> = serde_json::from_value(json)
        .with_context(|| format!("{} is not a phoneme → id map", path.display()))?;
    let mut vocab = HashMap::with_capacity(map.len());
    for (phoneme, id) in map {
        let mut chars = phoneme.chars();
        let (Some(c), None) = (chars.next(), chars.next()) else {
            bail!(
                "{}: phoneme `{phoneme}` is not one character",
                path.display()
            );
        };
        vocab.insert(c, id);
    }
    Ok(vocab)
}
