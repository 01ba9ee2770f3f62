//! Piper voices: VITS models exported to ONNX with a `<name>.onnx.json` beside them (sample
//! rate, espeak-ng voice, phoneme ids, default noise and speed, speakers).
//!
//! Phonemes become ids as Piper does: NFD code points (an accented vowel is its base and its
//! combining mark), `^ _ (id _)* $` with `_` the pad, code points the map lacks dropped. VITS
//! draws noise inside the graph (`RandomNormalLike`), scaled by `noise_scale` (the audio) and
//! `noise_w` (the durations): with both 0 the output is deterministic. Each call's audio is scaled
//! to a peak of 1, as Piper does by default (`normalize_audio`): the models' raw level is low
//! (peaks around 0.4).

use crate::onnx;
use anyhow::{Context, bail, ensure};
use ort::session::Session;
use ort::value::Tensor;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use unicode_normalization::UnicodeNormalization;

/// Phoneme characters per model call. VITS has no hard input limit, but its attention is
/// quadratic in the input; a longer sentence is spoken in pieces.
pub(super) const MAX_PHONEMES: usize = 500;

#[derive(Deserialize)]
struct Config {
    audio: AudioConfig,
    espeak: Option<EspeakConfig>,
    phoneme_type: Option<String>,
    inference: Option<Inference>,
    phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default)]
    speaker_id_map: HashMap<String, i64>,
    dataset: Option<String>,
}

#[derive(Deserialize)]
struct AudioConfig {
    sample_rate: u32,
}

#[derive(Deserialize)]
struct EspeakConfig {
    voice: String,
}

#[derive(Deserialize, Clone, Copy)]
struct Inference {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

/// Piper's own defaults, for configs without `inference`.
const DEFAULT_INFERENCE: Inference = Inference {
    noise_scale: 0.667,
    length_scale: 1.0,
    noise_w: 0.8,
};

pub(super) struct Piper {
    session: Mutex<Session>,
    pub(super) sample_rate: u32,
    pub(super) espeak_voice: String,
    ids: HashMap<char, Vec<i64>>,
    bos: Vec<i64>,
    pad: Vec<i64>,
    eos: Vec<i64>,
    inference: Inference,
    /// Speaker names by id; one name (the dataset's) for a single-speaker voice.
    speakers: Vec<(String, i64)>,
    /// Multi-speaker models take the speaker id as input `sid`.
    has_sid: bool,
}

/// Piper's knobs for one call.
pub(super) struct Call {
    pub(super) speaker: i64,
    pub(super) speed: f32,
    pub(super) noise_scale: Option<f32>,
    pub(super) noise_w: Option<f32>,
}

impl Piper {
    /// Loads `config` (`<model>.onnx.json`) and the model beside it.
    pub(super) fn load(config: &Path, threads: usize) -> anyhow::Result<Piper> {
        let text = std::fs::read_to_string(config)
            .with_context(|| format!("reading {}", config.display()))?;
        let config_json: Config = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a Piper voice config", config.display()))?;
        if let Some(kind) = &config_json.phoneme_type {
            ensure!(
                kind == "espeak",
                "{}: phoneme_type `{kind}` is not supported (only espeak)",
                config.display()
            );
        }
        let mut ids = HashMap::with_capacity(config_json.phoneme_id_map.len());
        for (phoneme, id) in config_json.phoneme_id_map {
            let mut chars = phoneme.chars();
            let (Some(c), None) = (chars.next(), chars.next()) else {
                bail!(
                    "{}: phoneme `{phoneme}` is not one character",
                    config.display()
                );
            };
            ids.insert(c, id);
        }
        let special = |c: char| {
            ids.get(&c)
                .cloned()
                .with_context(|| format!("{}: no id for `{c}`", config.display()))
        };
        let (bos, pad, eos) = (special('^')?, special('_')?, special('$')?);

        let model = config.with_extension("");
        let session = onnx::session(&model, threads)?;
        onnx::check_inputs(&session, &["input", "input_lengths", "scales"], &model)?;
        let has_sid = session.inputs().iter().any(|i| i.name() == "sid");
        let mut speakers: Vec<(String, i64)> = config_json.speaker_id_map.into_iter().collect();
        speakers.sort_by_key(|&(_, id)| id);
        if speakers.is_empty() {
            let name = config_json.dataset.unwrap_or_else(|| "default".into());
            speakers.push((name, 0));
        }
        Ok(Piper {
            session: Mutex::new(session),
            sample_rate: config_json.audio.sample_rate,
            espeak_voice: config_json
                .espeak
                .map_or_else(|| "en-us".into(), |e| e.voice),
            ids,
            bos,
            pad,
            eos,
            inference: config_json.inference.unwrap_or(DEFAULT_INFERENCE),
            speakers,
            has_sid,
        })
    }

    pub(super) fn speakers(&self) -> Vec<String> {
        self.speakers.iter().map(|(name, _)| name.clone()).collect()
    }

    /// The id of the speaker named `name` (the first one without a name).
    pub(super) fn speaker_id(&self, name: Option<&str>) -> anyhow::Result<i64> {
        match name {
            None => Ok(self.speakers[0].1),
            Some(name) => self
                .speakers
                .iter()
                .find(|(n, _)| n == name)
                .map(|&(_, id)| id)
                .with_context(|| {
                    format!(
                        "no speaker `{name}` (speakers: {})",
                        self.speakers().join(", ")
                    )
                }),
        }
    }

    /// The model's input for a piece of phonemes: `^ _ (id _)* $`.
    pub(super) fn ids(&self, phonemes: &str) -> Vec<i64> {
        let mut ids = self.bos.clone();
        ids.extend(&self.pad);
        for c in phonemes.nfd() {
            if let Some(id) = self.ids.get(&c) {
                ids.extend(id);
                ids.extend(&self.pad);
            }
        }
        ids.extend(&self.eos);
        ids
    }

    /// The audio for one input, at `sample_rate`.
    pub(super) fn infer(&self, ids: &[i64], call: &Call) -> anyhow::Result<Vec<f32>> {
        let len = ids.len();
        let scales = vec![
            call.noise_scale.unwrap_or(self.inference.noise_scale),
            self.inference.length_scale / call.speed,
            call.noise_w.unwrap_or(self.inference.noise_w),
        ];
        let mut inputs = ort::inputs![
            "input" => Tensor::from_array(([1, len], ids.to_vec()))?,
            "input_lengths" => Tensor::from_array(([1], vec![i64::try_from(len)?]))?,
            "scales" => Tensor::from_array(([3], scales))?,
        ];
        if self.has_sid {
            let sid = Tensor::from_array(([1], vec![call.speaker]))?;
            inputs.push(("sid".into(), sid.into()));
        }
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session.run(inputs).context("running the Piper model")?;
        let (_, audio) = outputs[0]
            .try_extract_tensor::<f32>()
            .context("the Piper model's output")?;
        let peak = audio.iter().fold(0.0f32, |peak, s| peak.max(s.abs()));
        // Piper's floor: a silent call stays silent instead of amplifying numerical noise.
        if peak < 1e-8 {
            return Ok(vec![0.0; audio.len()]);
        }
        Ok(audio.iter().map(|s| s / peak).collect())
    }
}
