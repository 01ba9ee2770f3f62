//! Speech to bytes: the encodings Deepgram's Aura and MeloTTS answer in, at the asked sample rate
//! (converted with `audio`'s band-limited resampler).
//!
//! Left out: AAC (Aura's `aac`), for want of a maintained encoder crate (the pure-Rust ones are
//! decoders; fdk-aac's licence is not open source by the FSF's reading).

mod flac;
mod g711;
mod mp3;
mod ogg_opus;
mod wav;

use super::Pcm;
use crate::audio::resample::Resampler;
use anyhow::{bail, ensure};

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// MPEG-1/2 Layer III (LAME, constant bit rate, mono).
    Mp3,
    /// 16-bit little-endian PCM in a WAV container (Aura's `linear16` with container `wav`).
    Wav,
    /// 16-bit little-endian PCM, no header (container `none`).
    Linear16,
    /// G.711 µ-law bytes, no header.
    Mulaw,
    /// G.711 A-law bytes, no header.
    Alaw,
    /// G.711 µ-law in a WAV container.
    MulawWav,
    /// G.711 A-law in a WAV container.
    AlawWav,
    /// FLAC, 16 bits.
    Flac,
    /// Opus in an Ogg container (RFC 7845).
    Opus,
}

/// The lowest and highest sample rates any encoding accepts.
const RATES: std::ops::RangeInclusive<u32> = 8_000..=48_000;

impl Encoding {
    /// The rate used when none is asked for: the voice's own where the format allows it;
    /// G.711 is telephone audio (8 kHz), Opus codes at 48 kHz.
    fn default_rate(self, voice_rate: u32) -> u32 {
        match self {
            Encoding::Mulaw | Encoding::Alaw | Encoding::MulawWav | Encoding::AlawWav => 8_000,
            Encoding::Opus => 48_000,
            Encoding::Mp3 if !mp3::RATES.contains(&voice_rate) => 24_000,
            _ => voice_rate,
        }
    }

    fn mime_type(self) -> &'static str {
        match self {
            Encoding::Mp3 => "audio/mpeg",
            Encoding::Wav | Encoding::MulawWav | Encoding::AlawWav => "audio/wav",
            // `audio/L16` would promise big-endian samples (RFC 2586).
            Encoding::Linear16 => "application/octet-stream",
            Encoding::Mulaw => "audio/PCMU",
            Encoding::Alaw => "audio/PCMA",
            Encoding::Flac => "audio/flac",
            Encoding::Opus => "audio/ogg",
        }
    }
}

/// Encodes `pcm` at `sample_rate` (default: see `Encoding`) and, for MP3 and Opus, `bit_rate` in
/// bits per second (default 48,000 for MP3 and 12,000 for Opus, Aura's). Returns the bytes and
/// their MIME type.
pub fn encode(
    pcm: &Pcm,
    encoding: Encoding,
    sample_rate: Option<u32>,
    bit_rate: Option<u32>,
) -> anyhow::Result<(Vec<u8>, &'static str)> {
    ensure!(pcm.sample_rate > 0, "audio at 0 Hz");
    let rate = sample_rate.unwrap_or_else(|| encoding.default_rate(pcm.sample_rate));
    ensure!(
        RATES.contains(&rate),
        "sample rate {rate} Hz is outside {}..={} Hz",
        RATES.start(),
        RATES.end()
    );
    if bit_rate.is_some() && !matches!(encoding, Encoding::Mp3 | Encoding::Opus) {
        bail!("a bit rate applies only to mp3 and opus");
    }
    let samples = resample(pcm, rate);
    let bytes = match encoding {
        Encoding::Mp3 => mp3::encode(&to_i16(&samples), rate, bit_rate.unwrap_or(48_000))?,
        Encoding::Wav => wav::pcm16(&to_i16(&samples), rate),
        Encoding::Linear16 => to_i16(&samples)
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect(),
        Encoding::Mulaw => g711::mulaw(&to_i16(&samples)),
        Encoding::Alaw => g711::alaw(&to_i16(&samples)),
        Encoding::MulawWav => wav::g711(&g711::mulaw(&to_i16(&samples)), rate, wav::MULAW),
        Encoding::AlawWav => wav::g711(&g711::alaw(&to_i16(&samples)), rate, wav::ALAW),
        Encoding::Flac => flac::encode(&to_i16(&samples), rate)?,
        Encoding::Opus => ogg_opus::encode(&samples, rate, bit_rate.unwrap_or(12_000))?,
    };
    Ok((bytes, encoding.mime_type()))
}

fn resample(pcm: &Pcm, rate: u32) -> Vec<f32> {
    if rate == pcm.sample_rate {
        return pcm.samples.clone();
    }
    let mut resampler = Resampler::new(pcm.sample_rate, rate);
    resampler.push(pcm.samples.iter().copied());
    resampler.finish()
}

/// 16-bit samples, clipped: the models' output may overshoot full scale a little.
fn to_i16(samples: &[f32]) -> Vec<i16> {
    samples
        .iter()
        .map(|&s| (s.clamp(-1.0, 1.0) * 32_767.0).round() as i16)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_and_rounds_to_i16() {
        assert_eq!(
            to_i16(&[0.0, 1.0, -1.0, 2.0, -3.0, 0.5]),
            vec![0, 32_767, -32_767, 32_767, -32_767, 16_384]
        );
    }

    #[test]
    fn raw_pcm_and_defaults() {
        let pcm = Pcm {
            samples: vec![0.0, 0.5, -0.5],
            sample_rate: 22_050,
        };
        let (bytes, mime) = encode(&pcm, Encoding::Linear16, None, None).unwrap();
        assert_eq!(bytes, [0, 0, 0, 64, 0, 192]);
        assert_eq!(mime, "application/octet-stream");
        assert!(encode(&pcm, Encoding::Wav, Some(4_000), None).is_err());
        assert!(encode(&pcm, Encoding::Flac, None, Some(64_000)).is_err());
        // G.711 defaults to 8 kHz: 3 samples at 22.05 kHz are 2 (rounded up) at 8 kHz.
        let (bytes, _) = encode(&pcm, Encoding::Mulaw, None, None).unwrap();
        assert_eq!(bytes.len(), 2);
    }
}
