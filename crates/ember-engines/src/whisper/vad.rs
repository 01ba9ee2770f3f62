//! Silero VAD as faster-whisper 1.2.1 runs it for `vad_filter`: `silero_vad_v6.onnx` on ONNX
//! Runtime giving a speech probability per 512-sample window, and `get_speech_timestamps` turning
//! those into padded speech chunks (sample ranges) with `VadOptions`' defaults.
//!
//! The model reads each window with the 64 samples before it (zeros before the first) and carries
//! an LSTM state from window to window: a call on many windows is one sequence, so the windows go
//! in batches of 10000 with the state passed on, as faster-whisper feeds them.

use crate::onnx;
use anyhow::{Context, ensure};
use ort::session::Session;
use ort::value::Tensor;
use std::path::Path;
use std::sync::Mutex;

/// The model's file in a Whisper model folder (the name faster-whisper ships it under).
pub const FILE: &str = "silero_vad_v6.onnx";
/// The rate the model and the timestamps are in (Whisper's).
const SAMPLE_RATE: f64 = super::mel::SAMPLE_RATE as f64;
/// Samples per probability.
pub const WINDOW: usize = 512;
/// Samples of the previous window each window is read with.
const CONTEXT: usize = 64;
/// Windows per model call (faster-whisper's `encoder_batch_size`).
const BATCH: usize = 10_000;
/// The LSTM state's size (`h` and `c` are `[1, 1, 128]`).
const STATE: usize = 128;

/// faster-whisper's `VadOptions`; `Default` is its defaults, what `vad_filter=True` uses.
#[derive(Debug, Clone, PartialEq)]
pub struct VadOptions {
    /// A window with a probability at or above this is speech.
    pub threshold: f64,
    /// Speech ends at a window below this; `None`: `threshold - 0.15`, at least 0.01.
    pub neg_threshold: Option<f64>,
    /// Chunks of speech this short or shorter are dropped.
    pub min_speech_duration_ms: u32,
    /// Longer speech is split, at a silence of more than 98 ms if there was one.
    pub max_speech_duration_s: f64,
    /// Silence this long ends a chunk of speech.
    pub min_silence_duration_ms: u32,
    /// Padding added to each side of a chunk (half the gap when two chunks are closer).
    pub speech_pad_ms: u32,
}

impl Default for VadOptions {
    fn default() -> VadOptions {
        VadOptions {
            threshold: 0.5,
            neg_threshold: None,
            min_speech_duration_ms: 0,
            max_speech_duration_s: f64::INFINITY,
            min_silence_duration_ms: 2000,
            speech_pad_ms: 400,
        }
    }
}

/// A stretch of speech: samples `start..end` of the audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeechChunk {
    pub start: usize,
    pub end: usize,
}

/// The loaded model. One call runs at a time (ONNX Runtime sessions run with `&mut`).
pub struct SileroVad {
    session: Mutex<Session>,
}

impl SileroVad {
    /// Opens the model file, on one thread as faster-whisper does (the model is small).
    pub fn load(path: &Path) -> anyhow::Result<SileroVad> {
        let session = onnx::session(path, 1)?;
        onnx::check_inputs(&session, &["input", "h", "c"], path)?;
        Ok(SileroVad {
            session: Mutex::new(session),
        })
    }

    /// The speech chunks of 16 kHz mono samples: faster-whisper's `get_speech_timestamps`.
    pub fn speech_timestamps(
        &self,
        samples: &[f32],
        options: &VadOptions,
    ) -> anyhow::Result<Vec<SpeechChunk>> {
        let probabilities = self.probabilities(samples)?;
        Ok(speech_timestamps(&probabilities, samples.len(), options))
    }

    /// The speech probability of each window of `samples` zero-padded to whole windows, with a
    /// whole window of zeros added when they already are whole (`np.pad` by `512 - len % 512`).
    pub fn probabilities(&self, samples: &[f32]) -> anyhow::Result<Vec<f32>> {
        let windows = samples.len() / WINDOW + 1;
        let mut padded = samples.to_vec();
        padded.resize(windows * WINDOW, 0.0);
        // faster-whisper takes the contexts as a view of the audio and zeroes the last one, which
        // zeroes the last 64 samples of the audio the last window reads as well.
        let tail = padded.len() - CONTEXT;
        padded[tail..].fill(0.0);

        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let (mut h, mut c) = (vec![0.0f32; STATE], vec![0.0f32; STATE]);
        let mut probabilities = Vec::with_capacity(windows);
        for first in (0..windows).step_by(BATCH) {
            let rows = BATCH.min(windows - first);
            // Each row: the window's context (zeros for the first), then the window.
            let mut input = Vec::with_capacity(rows * (CONTEXT + WINDOW));
            for i in first..first + rows {
                match i {
                    0 => input.extend([0.0; CONTEXT]),
                    _ => input.extend_from_slice(&padded[i * WINDOW - CONTEXT..i * WINDOW]),
                }
                input.extend_from_slice(&padded[i * WINDOW..(i + 1) * WINDOW]);
            }
            let inputs = ort::inputs![
                "input" => Tensor::from_array(([rows, CONTEXT + WINDOW], input))?,
                "h" => Tensor::from_array(([1, 1, STATE], h))?,
                "c" => Tensor::from_array(([1, 1, STATE], c))?,
            ];
            let outputs = session.run(inputs).context("running the Silero VAD")?;
            let extract = |name: &str| -> anyhow::Result<Vec<f32>> {
                let (_, values) = outputs[name]
                    .try_extract_tensor::<f32>()
                    .with_context(|| format!("the Silero VAD's output {name}"))?;
                Ok(values.to_vec())
            };
            let batch_probabilities = extract("speech_probs")?;
            ensure!(
                batch_probabilities.len() == rows,
                "the Silero VAD gave {} probabilities for {rows} windows",
                batch_probabilities.len()
            );
            probabilities.extend(batch_probabilities);
            h = extract("hn")?;
            c = extract("cn")?;
        }
        Ok(probabilities)
    }
}

/// `get_speech_timestamps` after the model: speech from a window at or above the threshold until
/// `min_silence_duration_ms` below the lower threshold, split when longer than
/// `max_speech_duration_s`, then padded by `speech_pad_ms`. `samples` is the audio's length.
pub fn speech_timestamps(
    probabilities: &[f32],
    samples: usize,
    options: &VadOptions,
) -> Vec<SpeechChunk> {
    let ms = |ms: u32| SAMPLE_RATE * f64::from(ms) / 1000.0;
    let min_speech_samples = ms(options.min_speech_duration_ms);
    let speech_pad_samples = ms(options.speech_pad_ms);
    let max_speech_samples =
        SAMPLE_RATE * options.max_speech_duration_s - WINDOW as f64 - 2.0 * speech_pad_samples;
    let min_silence_samples = ms(options.min_silence_duration_ms);
    let min_silence_samples_at_max_speech = SAMPLE_RATE * 98.0 / 1000.0;
    // The probabilities are float32 and the thresholds Python floats: NumPy 2 compares them in
    // float32.
    let threshold = options.threshold as f32;
    let neg_threshold = options
        .neg_threshold
        .unwrap_or((options.threshold - 0.15).max(0.01)) as f32;

    // A line-for-line port; as there, 0 stands for "not set" in `temp_end`, `prev_end` and
    // `next_start` (none of them is ever set to the first window). Python's ints go negative
    // where usize cannot: lengths are compared as f64.
    let span = |from: usize, to: usize| to as f64 - from as f64;
    let mut speeches: Vec<SpeechChunk> = Vec::new();
    // The start of the speech being read, while there is one (Python's `triggered`).
    let mut current: Option<usize> = None;
    let mut temp_end = 0;
    let (mut prev_end, mut next_start) = (0, 0);
    for (i, &probability) in probabilities.iter().enumerate() {
        let at = WINDOW * i;
        if probability >= threshold && temp_end != 0 {
            temp_end = 0;
            if next_start < prev_end {
                next_start = at;
            }
        }
        let Some(start) = current else {
            if probability >= threshold {
                current = Some(at);
            }
            continue;
        };
        if span(start, at) > max_speech_samples {
            if prev_end != 0 {
                speeches.push(SpeechChunk {
                    start,
                    end: prev_end,
                });
                // Silence was reached and no speech has come since: not in speech any more.
                current = (next_start >= prev_end).then_some(next_start);
                (prev_end, next_start, temp_end) = (0, 0, 0);
            } else {
                speeches.push(SpeechChunk { start, end: at });
                current = None;
                (prev_end, next_start, temp_end) = (0, 0, 0);
                continue;
            }
        }
        let Some(start) = current else { continue };
        if probability < neg_threshold {
            if temp_end == 0 {
                temp_end = at;
            }
            // Only a silence this long is a place to split over-long speech.
            if span(temp_end, at) > min_silence_samples_at_max_speech {
                prev_end = temp_end;
            }
            if span(temp_end, at) < min_silence_samples {
                continue;
            }
            if span(start, temp_end) > min_speech_samples {
                speeches.push(SpeechChunk {
                    start,
                    end: temp_end,
                });
            }
            current = None;
            (prev_end, next_start, temp_end) = (0, 0, 0);
        }
    }
    if let Some(start) = current
        && span(start, samples) > min_speech_samples
    {
        speeches.push(SpeechChunk {
            start,
            end: samples,
        });
    }
    pad(&mut speeches, samples, speech_pad_samples);
    speeches
}

/// Widens each chunk by `pad` samples (within the audio), or by half the gap to its neighbour
/// when the gap is under twice that.
fn pad(speeches: &mut [SpeechChunk], samples: usize, pad: f64) {
    let widen = |end: usize| (end as f64 + pad).min(samples as f64) as usize;
    let narrow = |start: usize| (start as f64 - pad).max(0.0) as usize;
    let count = speeches.len();
    for i in 0..count {
        if i == 0 {
            speeches[0].start = narrow(speeches[0].start);
        }
        if i + 1 == count {
            speeches[i].end = widen(speeches[i].end);
            continue;
        }
        // Never negative: a chunk starts after the previous one ends.
        let silence = speeches[i + 1].start.saturating_sub(speeches[i].end);
        if (silence as f64) < 2.0 * pad {
            speeches[i].end += silence / 2;
            speeches[i + 1].start -= silence / 2;
        } else {
            speeches[i].end = widen(speeches[i].end);
            speeches[i + 1].start = narrow(speeches[i + 1].start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Probabilities for `pattern`, one window per character: `#` speech, `~` between the two
    /// thresholds, `.` silence.
    fn probabilities(pattern: &str) -> Vec<f32> {
        pattern
            .chars()
            .map(|c| match c {
                '#' => 0.9,
                '~' => 0.4,
                _ => 0.1,
            })
            .collect()
    }

    fn chunks(pattern: &str, options: &VadOptions) -> Vec<(usize, usize)> {
        let samples = pattern.len() * WINDOW;
        speech_timestamps(&probabilities(pattern), samples, options)
            .iter()
            .map(|c| (c.start / WINDOW, c.end / WINDOW))
            .collect()
    }

    /// Windows as the unit: silence of 3 windows ends speech, no padding.
    fn in_windows() -> VadOptions {
        VadOptions {
            min_silence_duration_ms: 3 * 32,
            speech_pad_ms: 0,
            ..VadOptions::default()
        }
    }

    #[test]
    fn speech_ends_after_the_minimum_silence() {
        let o = in_windows();
        // Silence counts from its first window, so the fourth silent window ends the speech;
        // two do not, and a window between the thresholds neither starts nor ends it.
        assert_eq!(chunks("..##..#~..........", &o), [(2, 8)]);
        assert_eq!(chunks("..~~~~~~", &o), []);
        // Speech still going at the end runs to the end of the audio.
        assert_eq!(chunks("..##.....###", &o), [(2, 4), (9, 12)]);
    }

    #[test]
    fn chunks_are_padded_or_meet_halfway() {
        let o = VadOptions {
            speech_pad_ms: 3 * 32,
            ..in_windows()
        };
        // Speech ends on the fourth silent window. A gap of 7 windows is padded on both sides
        // (by 3), one of 4 split in the middle; the last chunk runs to the end.
        assert_eq!(
            chunks(".##.......##....##..", &o),
            [(0, 6), (7, 14), (14, 20)]
        );
    }

    #[test]
    fn long_speech_is_split_at_a_silence() {
        let o = VadOptions {
            max_speech_duration_s: 10.0 * WINDOW as f64 / SAMPLE_RATE,
            min_silence_duration_ms: 100 * 32,
            speech_pad_ms: 0,
            ..VadOptions::default()
        };
        // Past 9 windows (10 less one window, no padding): cut where a silence of more than
        // 98 ms (over 3 windows) began, the next chunk starting where speech came back; without
        // one, cut at the window that went past, which starts nothing.
        assert_eq!(chunks("#####.....#####", &o), [(0, 5), (10, 15)]);
        assert_eq!(chunks("###############", &o), [(0, 10), (11, 15)]);
    }
}
