//! Opus in Ogg (RFC 7845) by libopus (`opus`): 20 ms frames of the voice setting, the headers
//! on pages of their own, a page a second, and the end-trim granule so players stop where the
//! speech does.

use anyhow::{Context, anyhow, ensure};
use ogg::writing::{PacketWriteEndInfo, PacketWriter};
use opus::{Application, Bitrate, Channels};

/// The rates libopus encodes at.
const RATES: [u32; 5] = [8_000, 12_000, 16_000, 24_000, 48_000];
/// Ogg Opus counts time in 48 kHz samples whatever the coded rate.
const GRANULE_RATE: u32 = 48_000;
const FRAMES_PER_PAGE: usize = 50;
/// The stream's serial number: one stream per file, so any number; fixed for reproducible files.
const SERIAL: u32 = 0x4f70_7573;

pub(super) fn encode(samples: &[f32], rate: u32, bit_rate: u32) -> anyhow::Result<Vec<u8>> {
    ensure!(
        RATES.contains(&rate),
        "Opus has no {rate} Hz (rates: {RATES:?})"
    );
    let opus_error = |e: opus::Error| anyhow!("libopus: {e}");
    let mut encoder =
        opus::Encoder::new(rate, Channels::Mono, Application::Voip).map_err(opus_error)?;
    encoder
        .set_bitrate(Bitrate::Bits(i32::try_from(bit_rate)?))
        .map_err(|e| anyhow!("Opus rejects {bit_rate} bit/s: {e}"))?;
    let lookahead = usize::try_from(encoder.get_lookahead().map_err(opus_error)?)?;
    let scale = u64::from(GRANULE_RATE / rate);
    let frame = rate as usize / 50;

    // The encoder's lookahead delays the signal: encode that much more (silence) so the end is
    // coded, and tell decoders to skip it at the start (pre-skip).
    let mut padded = samples.to_vec();
    let coded = (samples.len() + lookahead).div_ceil(frame).max(1) * frame;
    padded.resize(coded, 0.0);

    let mut writer = PacketWriter::new(Vec::new());
    let pre_skip = u16::try_from(lookahead as u64 * scale).context("Opus pre-skip")?;
    writer.write_packet(head(pre_skip, rate), SERIAL, PacketWriteEndInfo::EndPage, 0)?;
    writer.write_packet(tags(), SERIAL, PacketWriteEndInfo::EndPage, 0)?;
    let frames = padded.len() / frame;
    let mut packet = vec![0; 4_000];
    for (i, chunk) in padded.chunks_exact(frame).enumerate() {
        let len = encoder
            .encode_float(chunk, &mut packet)
            .map_err(opus_error)?;
        let last = i + 1 == frames;
        let granule = if last {
            // End trimming: the last page's granule counts only real samples.
            u64::from(pre_skip) + samples.len() as u64 * scale
        } else {
            ((i + 1) * frame) as u64 * scale
        };
        let end = if last {
            PacketWriteEndInfo::EndStream
        } else if (i + 1) % FRAMES_PER_PAGE == 0 {
            PacketWriteEndInfo::EndPage
        } else {
            PacketWriteEndInfo::NormalPacket
        };
        writer.write_packet(packet[..len].to_vec(), SERIAL, end, granule)?;
    }
    Ok(writer.into_inner())
}

/// The identification header: version 1, mono, pre-skip, the input's rate, no gain, family 0.
fn head(pre_skip: u16, rate: u32) -> Vec<u8> {
    let mut head = b"OpusHead".to_vec();
    head.push(1);
    head.push(1);
    head.extend(pre_skip.to_le_bytes());
    head.extend(rate.to_le_bytes());
    head.extend(0i16.to_le_bytes());
    head.push(0);
    head
}

/// The comment header: libopus's version as the vendor, no comments.
fn tags() -> Vec<u8> {
    let vendor = opus::version();
    let mut tags = b"OpusTags".to_vec();
    tags.extend(u32::try_from(vendor.len()).unwrap_or(0).to_le_bytes());
    tags.extend(vendor.as_bytes());
    tags.extend(0u32.to_le_bytes());
    tags
}
