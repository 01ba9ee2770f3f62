//! The log-mel front end: 16 kHz samples → Whisper's `[n_mels, frames]` features, computed the
//! way faster-whisper's `FeatureExtractor` does (which the CTranslate2 models were run with).
//!
//! 160 zero samples are appended, the signal is reflect-padded by `n_fft / 2` on both sides,
//! framed every 160 samples under a periodic Hann window of 400, and the power spectrum of each
//! frame goes through Slaney-normalised mel filters (librosa's `mel(sr=16000, n_fft=400)`). The last
//! frame is dropped, so a clip of `n` samples gives `n / 160 + 1` frames, of which `n / 160` are
//! content. Then `log10(max(x, 1e-10))`, clamped to 8 below the maximum of the whole clip, and
//! `(x + 4) / 4`. A 30 s window shorter than 3000 frames is padded with zeros by `window` (zero
//! features, as faster-whisper pads them, not the features of silent audio).

use candle_core::{Device, Tensor};

pub(crate) const SAMPLE_RATE: usize = 16_000;
pub(crate) const N_FFT: usize = 400;
pub(crate) const HOP: usize = 160;
/// Frames in one 30 s window, the encoder's input length.
pub(crate) const WINDOW_FRAMES: usize = 3000;
/// Bins of the one-sided spectrum of a 400-sample frame.
const BINS: usize = N_FFT / 2 + 1;
/// Frames transformed per matrix product: bounds the framed copy of the signal (~5 MB).
const CHUNK_FRAMES: usize = 3000;

/// The front end of one model: its mel filters and the DFT basis, built once at load.
pub(crate) struct LogMel {
    n_mels: usize,
    /// `[n_mels, BINS]` filters, transposed to `[BINS, n_mels]` for the product.
    filters_t: Tensor,
    /// `[N_FFT, 2 * BINS]`: the windowed cosines then sines of every bin. The DFT runs as one
    /// matrix product on gemm's threads; 400 points has no power-of-two FFT, and the product
    /// costs ~0.3 GFLOP per 30 s of audio.
    basis: Tensor,
}

impl LogMel {
    pub(crate) fn new(n_mels: usize) -> candle_core::Result<LogMel> {
        let filters = mel_filters(n_mels);
        let filters_t = Tensor::from_vec(filters, (n_mels, BINS), &Device::Cpu)?
            .t()?
            .contiguous()?;
        let mut basis = vec![0f32; N_FFT * 2 * BINS];
        for n in 0..N_FFT {
            // np.hanning(401)[:-1]: the periodic Hann window.
            let window = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos();
            for k in 0..BINS {
                // Reduce n·k mod N first so the angle stays exact for large products.
                let angle = 2.0 * std::f64::consts::PI * ((n * k) % N_FFT) as f64 / N_FFT as f64;
                basis[n * 2 * BINS + k] = (window * angle.cos()) as f32;
                basis[n * 2 * BINS + BINS + k] = (window * angle.sin()) as f32;
            }
        }
        let basis = Tensor::from_vec(basis, (N_FFT, 2 * BINS), &Device::Cpu)?;
        Ok(LogMel {
            n_mels,
            filters_t,
            basis,
        })
    }

    /// The normalised log-mel features of a whole clip, `[n_mels, samples / 160 + 1]`.
    pub(crate) fn features(&self, samples: &[f32]) -> candle_core::Result<Tensor> {
        let mut signal = samples.to_vec();
        signal.extend(std::iter::repeat_n(0.0, HOP));
        let pad = N_FFT / 2;
        let padded: Vec<f32> = (0..signal.len() + 2 * pad)
            .map(|i| signal[reflect(i as isize - pad as isize, signal.len())])
            .collect();
        // numpy's frame count, less the last frame that the extractor drops.
        let frames = (padded.len() - N_FFT) / HOP;
        let mut chunks = Vec::new();
        for first in (0..frames).step_by(CHUNK_FRAMES) {
            let count = CHUNK_FRAMES.min(frames - first);
            let mut framed = Vec::with_capacity(count * N_FFT);
            for f in first..first + count {
                framed.extend_from_slice(&padded[f * HOP..f * HOP + N_FFT]);
            }
            let framed = Tensor::from_vec(framed, (count, N_FFT), &Device::Cpu)?;
            let spectrum = framed.matmul(&self.basis)?;
            let power =
                (spectrum.narrow(1, 0, BINS)?.sqr()? + spectrum.narrow(1, BINS, BINS)?.sqr()?)?;
            chunks.push(power.matmul(&self.filters_t)?);
        }
        let mel = Tensor::cat(&chunks, 0)?;
        let log = mel
            .clamp(1e-10f32, f32::MAX)?
            .log()?
            .affine(1.0 / std::f64::consts::LN_10, 0.0)?;
        let max = log.max_all()?.to_scalar::<f32>()?;
        let log = log.clamp(max - 8.0, f32::MAX)?.affine(0.25, 1.0)?;
        log.t()?.contiguous()
    }

    /// Frames `start..start + len` of `features`, zero-padded to a 30 s window: `[1, n_mels, 3000]`.
    pub(crate) fn window(
        &self,
        features: &Tensor,
        start: usize,
        len: usize,
    ) -> candle_core::Result<Tensor> {
        let content = features.narrow(1, start, len)?;
        let window = if len < WINDOW_FRAMES {
            let zeros = Tensor::zeros(
                (self.n_mels, WINDOW_FRAMES - len),
                content.dtype(),
                &Device::Cpu,
            )?;
            Tensor::cat(&[&content, &zeros], 1)?
        } else {
            content.contiguous()?
        };
        window.unsqueeze(0)
    }
}

/// numpy's `reflect` padding index (the edge sample is not repeated), for any offset.
fn reflect(i: isize, len: usize) -> usize {
    if len == 1 {
        return 0;
    }
    let period = 2 * (len as isize - 1);
    let i = i.rem_euclid(period);
    (if i < len as isize { i } else { period - i }) as usize
}

/// Slaney-style mel filters for 16 kHz and a 400-point FFT, `[n_mels, 201]` row-major, as
/// librosa's `filters.mel(sr=16000, n_fft=400, n_mels=n_mels)` (computed in f64, stored in f32).
pub(crate) fn mel_filters(n_mels: usize) -> Vec<f32> {
    // Slaney's scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let log_step = 6.4f64.ln() / 27.0;
    let hz_to_mel = |hz: f64| {
        if hz >= min_log_hz {
            min_log_mel + (hz / min_log_hz).ln() / log_step
        } else {
            hz / f_sp
        }
    };
    let mel_to_hz = |mel: f64| {
        if mel >= min_log_mel {
            min_log_hz * (log_step * (mel - min_log_mel)).exp()
        } else {
            f_sp * mel
        }
    };
    let max_mel = hz_to_mel(SAMPLE_RATE as f64 / 2.0);
    let points: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(max_mel * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut filters = vec![0f32; n_mels * BINS];
    for m in 0..n_mels {
        let (low, center, high) = (points[m], points[m + 1], points[m + 2]);
        let norm = 2.0 / (high - low);
        for k in 0..BINS {
            let freq = k as f64 * SAMPLE_RATE as f64 / N_FFT as f64;
            let rising = (freq - low) / (center - low);
            let falling = (high - freq) / (high - center);
            filters[m * BINS + k] = (rising.min(falling).max(0.0) * norm) as f32;
        }
    }
    filters
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of librosa 0.11's `filters.mel(sr=16000, n_fft=400, n_mels=80 | 128)`: (row, first
    /// non-zero bin, its values), as numpy printed them.
    #[allow(clippy::excessive_precision)]
    const LIBROSA_80: &[(usize, usize, &[f32])] = &[
        (0, 1, &[0.024862595]),
        (1, 1, &[0.0019908219, 0.022871772]),
        (40, 42, &[0.0054111048, 0.014735566, 0.0065181898]),
        (
            79,
            186,
            &[
                0.00036674167,
                0.00083307002,
                0.0012993984,
                0.0017657268,
                0.0022320549,
                0.0026983833,
                0.0031647119,
                0.0031413133,
                0.0026925541,
                0.0022437952,
                0.001795036,
                0.0013462771,
                0.00089751801,
                0.000448759,
            ],
        ),
    ];
    #[allow(clippy::excessive_precision)]
    const LIBROSA_128: &[(usize, usize, &[f32])] = &[
        (0, 1, &[0.012373987]),
        (
            127,
            191,
            &[
                0.00047569509,
                0.0016171717,
                0.0027586485,
                0.0039001252,
                0.0050416016,
                0.0044571208,
                0.0033428406,
                0.0022285604,
                0.0011142802,
            ],
        ),
    ];

    fn check(n_mels: usize, rows: &[(usize, usize, &[f32])], total: f64) {
        let filters = mel_filters(n_mels);
        for &(row, first, values) in rows {
            let row_values = &filters[row * BINS..(row + 1) * BINS];
            for (k, &v) in row_values.iter().enumerate() {
                let expected = k
                    .checked_sub(first)
                    .and_then(|i| values.get(i))
                    .copied()
                    .unwrap_or(0.0);
                assert!(
                    (v - expected).abs() <= 1e-7,
                    "{n_mels} mels, row {row}, bin {k}: {v} vs librosa {expected}"
                );
            }
        }
        let sum: f64 = filters.iter().map(|&v| v as f64).sum();
        assert!((sum - total).abs() < 1e-5, "sum {sum} vs librosa {total}");
    }

    #[test]
    fn mel_filters_match_librosa() {
        check(80, LIBROSA_80, 1.9990241527557373);
        check(128, LIBROSA_128, 3.190985679626465);
    }

    #[test]
    fn reflect_padding_matches_numpy() {
        // np.pad([0, 1, 2, 3], 5, mode="reflect") = [1 2 3 2 1 | 0 1 2 3 | 2 1 0 1 2]
        let got: Vec<usize> = (-5..9).map(|i| reflect(i, 4)).collect();
        assert_eq!(got, [1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2]);
    }

    /// faster-whisper's `FeatureExtractor` on `tests/fixtures/whisper/short.wav`, recorded in
    /// the fixture by `scripts/reference/whisper.py`: frame count, maximum and three frames.
    #[test]
    fn features_match_faster_whisper() {
        #[derive(serde::Deserialize)]
        struct Reference {
            n_frames: usize,
            max: f32,
            frames: std::collections::BTreeMap<usize, Vec<f32>>,
        }
        #[derive(serde::Deserialize)]
        struct Fixture {
            mel: Reference,
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/whisper");
        let fixture: Fixture =
            serde_json::from_str(&std::fs::read_to_string(dir.join("tiny-en.json")).unwrap())
                .unwrap();
        let wav = std::fs::read(dir.join("short.wav")).unwrap();
        // sox writes a 44-byte header before the 16-bit samples.
        let samples: Vec<f32> = wav[44..]
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
            .collect();
        let features = LogMel::new(80).unwrap().features(&samples).unwrap();
        let reference = fixture.mel;
        assert_eq!(features.dim(1).unwrap(), reference.n_frames);
        let max = features.max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(
            (max - reference.max).abs() < 1e-5,
            "max {max} vs {}",
            reference.max
        );
        for (frame, expected) in reference.frames {
            let got = features
                .narrow(1, frame, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for (bin, (g, e)) in got.iter().zip(&expected).enumerate() {
                // f32 spectra by a different transform: ~1e-6 apart, more in near-silent bins.
                assert!((g - e).abs() < 2e-4, "frame {frame} bin {bin}: {g} vs {e}");
            }
        }
    }

    #[test]
    fn frame_count_and_range() {
        let mel = LogMel::new(80).unwrap();
        let samples: Vec<f32> = (0..16_000).map(|i| (i as f32 * 0.05).sin() * 0.1).collect();
        let features = mel.features(&samples).unwrap();
        assert_eq!(features.dims(), [80, 101]);
        let max = features.max_all().unwrap().to_scalar::<f32>().unwrap();
        let min = features.min_all().unwrap().to_scalar::<f32>().unwrap();
        // The floor sits 8 (in log10) below the maximum: at most 2 after the scaling.
        assert!(max - min <= 2.0 + 1e-6, "{min}..{max}");
    }
}
