//! Text-to-speech: ONNX voices (Piper's VITS, Kokoro-82M) on ONNX Runtime, fed phonemes by
//! espeak-ng, and the encoders for the formats Workers AI's speech models answer in (`encode`).
//!
//! `Voice::load` reads a model folder; `Voice::synthesize` speaks a text sentence by sentence,
//! each in one model call (or several, for a sentence longer than the model takes), with a short
//! silence between sentences, as Piper does. Synchronous and CPU-bound: call it from a model
//! worker thread; one call runs at a time per voice.

mod encode;
mod kokoro;
mod npy;
mod phonemes;
mod piper;
mod text;

pub use encode::{Encoding, encode};

use anyhow::{Context, bail, ensure};
use std::path::{Path, PathBuf};

/// Silence between sentences (Piper's default `sentence_silence`).
const SENTENCE_SILENCE_SECONDS: f32 = 0.2;
/// The speeds a voice is asked for: beyond these the models mumble or drawl.
const SPEEDS: std::ops::RangeInclusive<f32> = 0.25..=4.0;

/// Mono audio: samples nominally in [-1, 1] at `sample_rate` Hz.
#[derive(Debug, Clone, PartialEq)]
pub struct Pcm {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
}

/// How to speak. `Default`: the model's first speaker, normal speed, its own language and noise.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthesisOptions {
    /// A name from `Voice::speakers`; `None` for the first.
    pub speaker: Option<String>,
    /// 1 is the voice's own pace; 2 speaks twice as fast (0.25 to 4).
    pub speed: f32,
    /// The espeak-ng voice that reads the text (`en-us`, `fr-fr`, `cmn`); `None` for the
    /// model's (a Piper voice's config; `en-us` for Kokoro).
    pub language: Option<String>,
    /// Piper's noise on the audio (`None`: the voice's config, usually 0.667); 0 with `noise_w`
    /// 0 makes the output deterministic. Kokoro draws no noise and ignores both.
    pub noise_scale: Option<f32>,
    /// Piper's noise on phoneme durations (`None`: the voice's config, usually 0.8).
    pub noise_w: Option<f32>,
}

impl Default for SynthesisOptions {
    fn default() -> SynthesisOptions {
        SynthesisOptions {
            speaker: None,
            speed: 1.0,
            language: None,
            noise_scale: None,
            noise_w: None,
        }
    }
}

/// A loaded voice model. `synthesize` takes `&self`: the model runs one call at a time.
pub struct Voice {
    model: Model,
}

enum Model {
    Piper(piper::Piper),
    Kokoro(kokoro::Kokoro),
}

impl Voice {
    /// Loads a model folder: a Piper voice (`<name>.onnx` and `<name>.onnx.json`) or Kokoro
    /// (`vocab.json`, a voice pack `.npz` and the model `.onnx`). Needs ONNX Runtime (see
    /// `scripts/install-deps.sh`); runs on as many threads as the machine has cores.
    pub fn load(dir: &Path) -> anyhow::Result<Voice> {
        let threads = crate::cpu_threads();
        let model = if let Ok(config) = only_file(dir, ".onnx.json") {
            Model::Piper(piper::Piper::load(&config, threads)?)
        } else if dir.join("vocab.json").is_file() {
            Model::Kokoro(kokoro::Kokoro::load(dir, threads)?)
        } else {
            bail!(
                "{} holds no voice: a Piper voice has <name>.onnx and <name>.onnx.json, \
                 Kokoro has vocab.json, a voice pack .npz and the model .onnx",
                dir.display()
            );
        };
        Ok(Voice { model })
    }

    /// The rate of the audio `synthesize` returns.
    pub fn sample_rate(&self) -> u32 {
        match &self.model {
            Model::Piper(piper) => piper.sample_rate,
            Model::Kokoro(_) => kokoro::SAMPLE_RATE,
        }
    }

    /// The speakers `SynthesisOptions::speaker` may name, the default first: a Piper voice's
    /// speaker map (or its one speaker, named after its dataset), Kokoro's voice pack names.
    pub fn speakers(&self) -> Vec<String> {
        match &self.model {
            Model::Piper(piper) => piper.speakers(),
            Model::Kokoro(kokoro) => kokoro.speakers(),
        }
    }

    /// The model inputs `synthesize` runs for `text`, by sentence and then by call.
    pub fn phoneme_ids(
        &self,
        text: &str,
        options: &SynthesisOptions,
    ) -> anyhow::Result<Vec<Vec<Vec<i64>>>> {
        let language = options.language.as_deref().unwrap_or(match &self.model {
            Model::Piper(piper) => &piper.espeak_voice,
            Model::Kokoro(_) => kokoro::ESPEAK_VOICE,
        });
        let max_phonemes = match &self.model {
            Model::Piper(_) => piper::MAX_PHONEMES,
            Model::Kokoro(kokoro) => kokoro.max_phonemes(),
        };
        let mut sentences = Vec::new();
        for clauses in text::sentences(text) {
            let phonemes = phonemes::sentence(&clauses, language)?;
            let calls: Vec<Vec<i64>> = text::pieces(&phonemes, max_phonemes)
                .iter()
                .map(|piece| match &self.model {
                    Model::Piper(piper) => piper.ids(piece),
                    Model::Kokoro(kokoro) => kokoro.ids(piece),
                })
                .collect();
            if !calls.is_empty() {
                sentences.push(calls);
            }
        }
        Ok(sentences)
    }

    /// Speaks `text`: the sentences' audio with `SENTENCE_SILENCE_SECONDS` between them.
    pub fn synthesize(&self, text: &str, options: &SynthesisOptions) -> anyhow::Result<Pcm> {
        ensure!(
            SPEEDS.contains(&options.speed),
            "speed {} is outside {}..={}",
            options.speed,
            SPEEDS.start(),
            SPEEDS.end()
        );
        let speaker = options.speaker.as_deref();
        // The speaker is resolved (and checked) before any work.
        let calls = match &self.model {
            Model::Piper(piper) => Calls::Piper(
                piper,
                piper::Call {
                    speaker: piper.speaker_id(speaker)?,
                    speed: options.speed,
                    noise_scale: options.noise_scale,
                    noise_w: options.noise_w,
                },
            ),
            Model::Kokoro(kokoro) => Calls::Kokoro(kokoro, kokoro.voice(speaker)?, options.speed),
        };
        let sentences = self.phoneme_ids(text, options)?;
        ensure!(
            !sentences.is_empty(),
            "the text has nothing espeak-ng can read aloud"
        );
        let sample_rate = self.sample_rate();
        let silence = (SENTENCE_SILENCE_SECONDS * sample_rate as f32) as usize;
        let mut samples = Vec::new();
        for (i, sentence) in sentences.iter().enumerate() {
            if i > 0 {
                samples.resize(samples.len() + silence, 0.0);
            }
            for ids in sentence {
                samples.extend(calls.infer(ids)?);
            }
        }
        Ok(Pcm {
            samples,
            sample_rate,
        })
    }
}

/// A request's model calls: the model with the speaker and speed it speaks with.
enum Calls<'v> {
    Piper(&'v piper::Piper, piper::Call),
    /// The voice's index and the speed.
    Kokoro(&'v kokoro::Kokoro, usize, f32),
}

impl Calls<'_> {
    fn infer(&self, ids: &[i64]) -> anyhow::Result<Vec<f32>> {
        match self {
            Calls::Piper(piper, call) => piper.infer(ids, call),
            Calls::Kokoro(kokoro, voice, speed) => kokoro.infer(ids, *voice, *speed),
        }
    }
}

/// The one file in `dir` whose name ends in `suffix`.
fn only_file(dir: &Path, suffix: &str) -> anyhow::Result<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() && path.to_string_lossy().ends_with(suffix) {
            found.push(path);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("{} has no *{suffix} file", dir.display()),
        _ => bail!("{} has several *{suffix} files", dir.display()),
    }
}
