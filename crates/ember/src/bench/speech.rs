//! `ember bench speech`: Ember's Whisper against faster-whisper (PyPI, CTranslate2) on the same
//! weights and cores, interleaved in one run. Rows: the real-time factor of one long clip, and the
//! aggregate audio seconds transcribed per second when `--concurrency` clips arrive at once. Ember
//! runs through its serving worker (the one `ember serve` uses, audio decoding included);
//! faster-whisper through `scripts/bench/faster_whisper_driver.py` (`driver.rs`). Never part of
//! `cargo test`.

use super::driver::{Driver, repo_file};
use super::report::{self, Row, median};
use anyhow::{Result, bail, ensure};
use clap::Args;
use ember_core::ModelSpec;
use ember_core::catalog::Engine;
use ember_core::runner::ModelWorker;
use ember_core::tasks::speech_recognition::{SpeechRecognitionRequest, TranscribeSettings};
use ember_core::tasks::{TaskOutput, TaskRequest};
use ember_engines::audio::{self, DecodeOptions};
use ember_engines::tts::{Encoding, Pcm};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The recording the clips are made of: 44 s of read speech, 16 kHz mono (the Whisper fixtures').
const RECORDING: &str = "crates/ember-engines/tests/fixtures/whisper/long.wav";
/// Workers AI's default beam, on both sides.
const BEAM_SIZE: u32 = 5;

#[derive(Args)]
pub struct SpeechBench {
    /// Catalog id of a Whisper model installed in the CTranslate2 layout (faster-whisper reads
    /// the same folder).
    #[arg(long, default_value = "@cf/openai/whisper")]
    model: String,
    /// Timed rounds per side, alternating between the two after one warm-up each; the median is
    /// reported.
    #[arg(long, default_value_t = 3)]
    repetitions: u32,
    /// Clips sent at once in the throughput rows.
    #[arg(long, default_value_t = 8)]
    concurrency: u32,
    /// Length of the long clip: the recording repeated up to this many seconds.
    #[arg(long, default_value_t = 180)]
    clip_seconds: u32,
    /// Python with faster-whisper installed (default: scripts/bench/faster-whisper.sh installs it
    /// once into ~/.cache/ember/bench-venv).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "speech.json")]
    out: PathBuf,
}

impl SpeechBench {
    pub fn run(&self, env: &super::Env) -> Result<()> {
        super::warn_if_debug_build();
        let spec = super::catalog_spec(env, &self.model)?;
        ensure!(
            spec.engine == Engine::CandleWhisper,
            "{} is not a Whisper model",
            spec.id
        );
        let dir = super::installed_dir(env, spec)?;
        ensure!(
            dir.join("model.bin").is_file(),
            "{} holds no CTranslate2 model.bin for faster-whisper",
            dir.display()
        );
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let load_average = super::load_average();

        let work = std::env::temp_dir().join(format!("ember-bench-speech-{}", std::process::id()));
        std::fs::create_dir_all(&work)?;
        let recording = repo_file(RECORDING)?;
        let long_clip = work.join("long.wav");
        let long_seconds = write_repeated(&recording, self.clip_seconds, &long_clip)?;
        let recording_seconds = write_repeated(&recording, 0, &work.join("recording.wav"))?;

        let mut faster_whisper = FasterWhisper::start(self.python.clone(), &dir, threads)?;
        let ember = EmberWhisper::load(env, spec, &dir)?;

        let single = Workload {
            clips: vec![long_clip],
            concurrency: 1,
            audio_seconds: long_seconds,
        };
        let many = Workload {
            clips: vec![recording; self.concurrency as usize],
            concurrency: self.concurrency,
            audio_seconds: recording_seconds * f64::from(self.concurrency),
        };
        let mut rows = Vec::new();
        let mut transcripts = Vec::new();
        for (name, workload) in [
            ("one long clip".to_string(), &single),
            (format!("{} clips at once", self.concurrency), &many),
        ] {
            eprintln!("== {name}: warm-up");
            faster_whisper.transcribe(workload)?;
            ember.transcribe(env, workload)?;
            let (mut ember_times, mut anchor_times) = (Vec::new(), Vec::new());
            let (mut ember_text, mut anchor_text) = (Vec::new(), Vec::new());
            for round in 0..self.repetitions {
                // ABBA order: neither side always runs on a machine the other just warmed.
                for ember_turn in [round % 2 == 1, round % 2 == 0] {
                    if ember_turn {
                        let (seconds, texts) = ember.transcribe(env, workload)?;
                        eprintln!("   ember {seconds:.1} s");
                        ember_times.push(seconds);
                        ember_text = texts;
                    } else {
                        let (seconds, texts) = faster_whisper.transcribe(workload)?;
                        eprintln!("   faster-whisper {seconds:.1} s");
                        anchor_times.push(seconds);
                        anchor_text = texts;
                    }
                }
            }
            let speed = |times: &[f64]| median(times).map(|s| workload.audio_seconds / s);
            let metric = match workload.concurrency {
                1 => format!("{name}, {long_seconds:.0} s (real-time factor)"),
                _ => format!("{name} (audio seconds per second)"),
            };
            let goal = if workload.concurrency == 1 {
                ">= 1.2"
            } else {
                ">= 2"
            };
            rows.push(Row::new(
                &spec.id,
                metric,
                "x",
                speed(&ember_times),
                speed(&anchor_times),
                goal,
            ));
            transcripts.push(serde_json::json!({
                "workload": name,
                "ember_seconds": ember_times,
                "faster_whisper_seconds": anchor_times,
                "same_text": ember_text == anchor_text,
                "ember_text": ember_text.first(),
                "faster_whisper_text": anchor_text.first(),
            }));
        }
        println!();
        report::print_table(&rows, "faster-whisper");
        let json = serde_json::json!({
            "settings": {
                "model": spec.id,
                "threads": threads,
                "repetitions": self.repetitions,
                "concurrency": self.concurrency,
                "long_clip_seconds": long_seconds,
                "beam_size": BEAM_SIZE,
                "faster_whisper": "1.2.1, compute_type float32, num_workers 1",
                "ember": env!("CARGO_PKG_VERSION"),
                "optimized_build": !cfg!(debug_assertions),
                "load_average_at_start": load_average,
            },
            "rows": rows,
            "transcripts": transcripts,
        });
        report::write_json(&self.out, &json)?;
        std::fs::remove_dir_all(&work)?;
        Ok(())
    }
}

/// The clips of one timed run, all sent at once up to `concurrency`.
struct Workload {
    clips: Vec<PathBuf>,
    concurrency: u32,
    audio_seconds: f64,
}

/// Writes `recording` repeated until it lasts at least `seconds` (once when 0) as a 16 kHz WAV at
/// `to`; returns its length in seconds.
fn write_repeated(recording: &Path, seconds: u32, to: &Path) -> Result<f64> {
    const RATE: u32 = 16_000;
    let bytes = std::fs::read(recording)?;
    let options = DecodeOptions {
        target_rate: RATE,
        max_seconds: 3600.0,
        hint: Some("wav"),
    };
    let once = audio::decode_to_mono(&bytes, &options)?;
    let mut samples = once.clone();
    while samples.len() < seconds as usize * RATE as usize {
        samples.extend_from_slice(&once);
    }
    let length = samples.len() as f64 / f64::from(RATE);
    let pcm = Pcm {
        samples,
        sample_rate: RATE,
    };
    let (wav, _) = ember_engines::tts::encode(&pcm, Encoding::Wav, None, None)?;
    std::fs::write(to, wav)?;
    Ok(length)
}

/// Ember's side: the model's serving worker, as `ember serve` starts it.
struct EmberWhisper {
    worker: ModelWorker,
}

impl EmberWhisper {
    fn load(env: &super::Env, spec: &ModelSpec, dir: &Path) -> Result<EmberWhisper> {
        let worker = super::serving_worker(env, spec, dir)?;
        Ok(EmberWhisper { worker })
    }

    /// Sends every clip at once; returns the seconds until the last answer and the texts.
    fn transcribe(&self, env: &super::Env, workload: &Workload) -> Result<(f64, Vec<String>)> {
        let mut requests = Vec::new();
        for clip in &workload.clips {
            requests.push(TaskRequest::SpeechRecognition(SpeechRecognitionRequest {
                audio: std::fs::read(clip)?,
                content_type: Some("audio/wav".into()),
                // No language: detected on multilingual checkpoints, English on `.en` ones (both
                // engines do so).
                settings: TranscribeSettings {
                    beam_size: BEAM_SIZE,
                    ..TranscribeSettings::default()
                },
                detailed: false,
            }));
        }
        let start = Instant::now();
        let outputs = env
            .runtime
            .block_on(super::all_at_once(&self.worker, requests))?;
        let seconds = start.elapsed().as_secs_f64();
        let mut texts = Vec::new();
        for output in outputs {
            let TaskOutput::SpeechRecognition(output) = output? else {
                bail!("Whisper answered with another task's output");
            };
            texts.push(output.text());
        }
        Ok((seconds, texts))
    }
}

/// faster-whisper's side: the driver process with the model loaded.
struct FasterWhisper {
    driver: Driver,
}

#[derive(Deserialize)]
struct DriverAnswer {
    seconds: f64,
    texts: Vec<String>,
}

impl FasterWhisper {
    fn start(python: Option<PathBuf>, dir: &Path, threads: usize) -> Result<FasterWhisper> {
        let python = match python {
            Some(python) => python,
            None => super::setup_script("faster-whisper.sh")?,
        };
        let threads = threads.to_string();
        let args = [
            "--model-dir".as_ref(),
            dir.as_os_str(),
            "--threads".as_ref(),
            threads.as_ref(),
        ];
        let driver = Driver::start(&python, "faster_whisper_driver.py", &args)?;
        Ok(FasterWhisper { driver })
    }

    fn transcribe(&mut self, workload: &Workload) -> Result<(f64, Vec<String>)> {
        let answer: DriverAnswer = self.driver.ask(&serde_json::json!({
            "clips": workload.clips,
            "concurrency": workload.concurrency,
            "beam_size": BEAM_SIZE,
        }))?;
        Ok((answer.seconds, answer.texts))
    }
}
