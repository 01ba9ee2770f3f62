//! MP3 by LAME (`mp3lame-encoder`, which builds LAME from its vendored source): mono, constant
//! bit rate, with the LAME tag in the first frame so decoders trim the encoder's delay and
//! padding and the file plays exactly as long as the speech.

use anyhow::{Context, anyhow};
use mp3lame_encoder::{Bitrate, Builder, FlushGap, Mode, MonoPcm, Quality};
use std::num::NonZeroU32;

/// The rates MPEG-1, 2 and 2.5 Layer III define.
pub(super) const RATES: [u32; 9] = [
    8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000,
];

pub(super) fn encode(samples: &[i16], rate: u32, bit_rate: u32) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(
        RATES.contains(&rate),
        "MP3 has no {rate} Hz (rates: {RATES:?})"
    );
    let bitrate = bitrate(bit_rate)?;
    let mut builder = Builder::new().context("LAME could not allocate an encoder")?;
    let lame = |e| anyhow!("LAME: {e}");
    builder.set_num_channels(1).map_err(lame)?;
    builder.set_sample_rate(rate).map_err(lame)?;
    // The same rate out: LAME would otherwise pick one for the bit rate and resample.
    builder
        .set_output_sample_rate(NonZeroU32::new(rate))
        .map_err(lame)?;
    builder.set_mode(Mode::Mono).map_err(lame)?;
    builder.set_brate(bitrate).map_err(lame)?;
    builder.set_quality(Quality::Good).map_err(lame)?;
    let mut encoder = builder
        .build()
        .map_err(|e| anyhow!("LAME rejects {bit_rate} bit/s at {rate} Hz: {e}"))?;
    let mut out = Vec::with_capacity(mp3lame_encoder::max_required_buffer_size(samples.len()));
    encoder
        .encode_to_vec(MonoPcm(samples), &mut out)
        .map_err(|e| anyhow!("LAME: {e}"))?;
    // The last frames need at most 7,200 bytes (LAME's documented bound).
    out.reserve(7_200);
    encoder
        .flush_to_vec::<FlushGap>(&mut out)
        .map_err(|e| anyhow!("LAME: {e}"))?;
    // The first frame was left blank for the tag, which needs the whole stream's counts.
    let mut tag = Vec::with_capacity(encoder.lame_tag_size());
    if encoder.lame_tag_encode_to_vec(&mut tag).is_some() && tag.len() <= out.len() {
        out[..tag.len()].copy_from_slice(&tag);
    }
    Ok(out)
}

fn bitrate(bits_per_second: u32) -> anyhow::Result<Bitrate> {
    Ok(match bits_per_second {
        8_000 => Bitrate::Kbps8,
        16_000 => Bitrate::Kbps16,
        24_000 => Bitrate::Kbps24,
        32_000 => Bitrate::Kbps32,
        40_000 => Bitrate::Kbps40,
        48_000 => Bitrate::Kbps48,
        64_000 => Bitrate::Kbps64,
        80_000 => Bitrate::Kbps80,
        96_000 => Bitrate::Kbps96,
        112_000 => Bitrate::Kbps112,
        128_000 => Bitrate::Kbps128,
        160_000 => Bitrate::Kbps160,
        192_000 => Bitrate::Kbps192,
        224_000 => Bitrate::Kbps224,
        256_000 => Bitrate::Kbps256,
        320_000 => Bitrate::Kbps320,
        other => {
            anyhow::bail!("MP3 has no bit rate of {other} bit/s (8000 to 320000 in MP3's steps)")
        }
    })
}
