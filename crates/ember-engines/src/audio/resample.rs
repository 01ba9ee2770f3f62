//! Band-limited resampling of the mono signal to the model's rate, with rubato's FFT resampler,
//! fed as the decoder produces audio so that only the resampled signal is ever held whole.
//!
//! The ratio is fixed, which is the FFT resampler's case: it filters in the frequency domain with
//! a windowed-sinc low-pass (Blackman-Harris², as long as one FFT block) and is exact for any
//! pair of integer rates. Downsampling removes everything above the new Nyquist frequency instead
//! of folding it back (aliasing), which the tests measure.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler as _, WindowFunction};

/// Input frames per FFT block, at least: 44.1 → 16 kHz gets 2,646 taps, a low-pass flat to
/// 7.8 kHz and more than 130 dB down from 8 kHz on.
const MIN_BLOCK: usize = 2048;

/// A mono signal being resampled from one rate to another, block by block.
pub(crate) struct Resampler {
    /// None when the rates are equal.
    fft: Option<Fft<f32>>,
    /// Input not yet processed: less than one block.
    pending: Vec<f32>,
    input_frames: usize,
    output: Vec<f32>,
    /// One block's output, before the filter's delay is dropped from the start of the signal.
    block_out: Vec<f32>,
    /// Output frames still to drop: the filter's delay (its first output precedes the signal).
    delay_left: usize,
}

impl Resampler {
    /// From `from` Hz to `to` Hz; both non-zero.
    pub(crate) fn new(from: u32, to: u32) -> Resampler {
        let (from, to) = (from as usize, to as usize);
        // A block is a whole number of the rates' smallest common blocks, and an even number of
        // them: an odd-length filter is centred between two samples, and the resampler's delay
        // compensation (whole samples) would then shift the output by a fraction of one.
        let smallest = from / gcd(from, to);
        let block = MIN_BLOCK.div_ceil(smallest).next_multiple_of(2) * smallest;
        let fft = (from != to).then(|| {
            Fft::<f32>::new_custom(
                from,
                to,
                block,
                1,
                1,
                WindowFunction::BlackmanHarris2,
                FixedSync::Input,
            )
            .expect("non-zero rates and block size")
        });
        let (block_out, delay_left) = fft.as_ref().map_or((Vec::new(), 0), |fft| {
            (vec![0.0; fft.output_frames_max()], fft.output_delay())
        });
        Resampler {
            fft,
            pending: Vec::new(),
            input_frames: 0,
            output: Vec::new(),
            block_out,
            delay_left,
        }
    }

    /// Appends samples at the source rate; whole blocks are resampled at once.
    pub(crate) fn push(&mut self, samples: impl IntoIterator<Item = f32>) {
        let before = self.pending.len();
        self.pending.extend(samples);
        self.input_frames += self.pending.len() - before;
        let Some(fft) = &self.fft else {
            self.output.append(&mut self.pending);
            return;
        };
        let block = fft.input_frames_next();
        let mut done = 0;
        while self.pending.len() - done >= block {
            self.process(done, None);
            done += block;
        }
        self.pending.drain(..done);
    }

    /// The whole signal at the new rate, as long as the input was (rounded up).
    pub(crate) fn finish(mut self) -> Vec<f32> {
        let Some(fft) = &self.fft else {
            return self.output;
        };
        let expected = (fft.resample_ratio() * self.input_frames as f64).ceil() as usize;
        // The last partial block, then silence until the filter has given out the signal's end.
        let mut partial = self.pending.len();
        while self.output.len() < expected {
            self.process(0, Some(partial));
            partial = 0;
        }
        self.output.truncate(expected);
        self.output
    }

    /// Resamples one block of `pending` from `offset` (`partial` frames of it, if given; the
    /// rest is silence) onto `output`.
    fn process(&mut self, offset: usize, partial: Option<usize>) {
        let fft = self.fft.as_mut().expect("only called when resampling");
        let input = InterleavedSlice::new(&self.pending, 1, self.pending.len()).expect("mono");
        let frames_out = self.block_out.len();
        let mut out = InterleavedSlice::new_mut(&mut self.block_out, 1, frames_out).expect("mono");
        let indexing = Indexing {
            input_offset: offset,
            partial_len: partial,
            ..Indexing::default()
        };
        let (_, produced) = fft
            .process_into_buffer(&input, &mut out, Some(&indexing))
            .expect("buffers sized by the resampler itself");
        let dropped = self.delay_left.min(produced);
        self.delay_left -= dropped;
        self.output
            .extend_from_slice(&self.block_out[dropped..produced]);
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::TAU;

    /// A half-scale sine, computed in f64 (an f32 phase is too coarse for a 100 dB measurement).
    fn sine(freq: f64, rate: u32, frames: usize) -> Vec<f32> {
        (0..frames)
            .map(|i| ((TAU * freq * i as f64 / f64::from(rate)).sin() * 0.5) as f32)
            .collect()
    }

    fn resample(samples: Vec<f32>, from: u32, to: u32) -> Vec<f32> {
        let mut resampler = Resampler::new(from, to);
        resampler.push(samples);
        resampler.finish()
    }

    /// RMS of the middle 80% (away from the clip's edges, where the filter sees silence).
    fn rms(samples: &[f32]) -> f64 {
        let body = &samples[samples.len() / 10..samples.len() * 9 / 10];
        (body.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / body.len() as f64).sqrt()
    }

    /// One second of a sine at `freq` resampled from `from` to 16 kHz: its SNR against the same
    /// sine sampled at 16 kHz directly (any change of frequency, delay or level is error).
    fn snr_db(freq: f64, from: u32) -> f64 {
        let out = resample(sine(freq, from, from as usize), from, 16_000);
        assert_eq!(out.len(), 16_000, "{from} Hz");
        let ideal = sine(freq, 16_000, 16_000);
        let error: Vec<f32> = out.iter().zip(&ideal).map(|(a, b)| a - b).collect();
        20.0 * (rms(&ideal) / rms(&error)).log10()
    }

    /// Level of a resampled sine relative to its input, in dB.
    fn gain_db(freq: f64, from: u32) -> f64 {
        let out = resample(sine(freq, from, from as usize), from, 16_000);
        20.0 * (rms(&out) * 2f64.sqrt() / 0.5).log10()
    }

    #[test]
    fn a_1khz_sine_keeps_its_frequency_phase_and_level() {
        for from in [44_100, 48_000, 22_050, 8_000, 11_025] {
            let snr = snr_db(1000.0, from);
            eprintln!("1 kHz, {from} -> 16 kHz: SNR {snr:.1} dB");
            assert!(
                snr > 90.0,
                "1 kHz sine after {from} -> 16 kHz: SNR {snr:.1} dB"
            );
        }
    }

    #[test]
    fn the_passband_is_flat_and_nothing_above_8khz_aliases() {
        for freq in [100.0, 1_000.0, 4_000.0, 7_500.0] {
            let gain = gain_db(freq, 44_100);
            eprintln!("{freq} Hz, 44.1 -> 16 kHz: {gain:.3} dB");
            assert!(gain.abs() < 0.05, "{freq} Hz passes at {gain:.2} dB");
        }
        // Above 8 kHz a tone has no place at 16 kHz; without the low-pass, 10 kHz would fold to
        // 6 kHz at full level.
        for freq in [8_200.0, 9_000.0, 10_000.0, 15_000.0, 20_000.0] {
            let gain = gain_db(freq, 44_100);
            eprintln!("{freq} Hz, 44.1 -> 16 kHz: {gain:.1} dB");
            assert!(gain < -120.0, "{freq} Hz aliases at {gain:.1} dB");
        }
    }

    #[test]
    fn pieces_of_any_size_resample_like_the_whole() {
        let input = sine(440.0, 44_100, 30_000);
        let whole = resample(input.clone(), 44_100, 16_000);
        let mut resampler = Resampler::new(44_100, 16_000);
        let mut rest = &input[..];
        for size in [1, 1151, 4096, 7, 10_000].iter().cycle() {
            let (piece, tail) = rest.split_at((*size).min(rest.len()));
            resampler.push(piece.iter().copied());
            rest = tail;
            if rest.is_empty() {
                break;
            }
        }
        assert_eq!(resampler.finish(), whole);
        // Shorter than one block, and equal rates.
        assert_eq!(resample(vec![0.5; 10], 44_100, 16_000).len(), 4);
        assert_eq!(resample(input.clone(), 16_000, 16_000), input);
    }
}
