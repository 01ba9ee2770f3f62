//! WAV files: mono 16-bit PCM, or G.711 bytes (which need the extended format chunk and a `fact`
//! chunk, as every non-PCM WAV does).

/// WAVE format tags.
pub(super) const ALAW: u16 = 6;
pub(super) const MULAW: u16 = 7;
const PCM: u16 = 1;

/// A WAV file of 16-bit samples.
pub(super) fn pcm16(samples: &[i16], rate: u32) -> Vec<u8> {
    let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut fmt = format(PCM, rate, 2, 16);
    // PCM's format chunk has no extension size.
    fmt.truncate(16);
    riff(&[(b"fmt ", &fmt), (b"data", &data)])
}

/// A WAV file of 8-bit G.711 codes in `format` (`MULAW` or `ALAW`).
pub(super) fn g711(codes: &[u8], rate: u32, format_tag: u16) -> Vec<u8> {
    let fact = u32::try_from(codes.len()).unwrap_or(u32::MAX).to_le_bytes();
    riff(&[
        (b"fmt ", &format(format_tag, rate, 1, 8)),
        (b"fact", &fact),
        (b"data", codes),
    ])
}

/// WAVEFORMATEX for one channel, with a zero extension size.
fn format(tag: u16, rate: u32, block_align: u16, bits: u16) -> Vec<u8> {
    let mut fmt = Vec::with_capacity(18);
    fmt.extend(tag.to_le_bytes());
    fmt.extend(1u16.to_le_bytes());
    fmt.extend(rate.to_le_bytes());
    fmt.extend((rate * u32::from(block_align)).to_le_bytes());
    fmt.extend(block_align.to_le_bytes());
    fmt.extend(bits.to_le_bytes());
    fmt.extend(0u16.to_le_bytes());
    fmt
}

/// A RIFF WAVE file of these chunks, each padded to an even length as RIFF requires.
fn riff(chunks: &[(&[u8; 4], &[u8])]) -> Vec<u8> {
    let mut body = b"WAVE".to_vec();
    for (id, data) in chunks {
        body.extend_from_slice(*id);
        body.extend(u32::try_from(data.len()).unwrap_or(u32::MAX).to_le_bytes());
        body.extend_from_slice(data);
        if data.len() % 2 == 1 {
            body.push(0);
        }
    }
    let mut file = b"RIFF".to_vec();
    file.extend(u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    file.extend(body);
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcm_header() {
        let file = pcm16(&[1, -2], 24_000);
        assert_eq!(file.len(), 44 + 4);
        assert_eq!(&file[..4], b"RIFF");
        assert_eq!(u32::from_le_bytes(file[4..8].try_into().unwrap()), 40);
        assert_eq!(&file[8..16], b"WAVEfmt ");
        assert_eq!(u32::from_le_bytes(file[16..20].try_into().unwrap()), 16);
        assert_eq!(u32::from_le_bytes(file[28..32].try_into().unwrap()), 48_000);
        assert_eq!(&file[36..40], b"data");
        assert_eq!(&file[44..], [1, 0, 0xfe, 0xff]);
    }

    #[test]
    fn g711_has_fact_and_pads_odd_data() {
        let file = g711(&[0xff, 0x7f, 0x00], 8_000, MULAW);
        // RIFF(12) + fmt(8 + 18) + fact(8 + 4) + data(8 + 3 + 1 pad).
        assert_eq!(file.len(), 12 + 26 + 12 + 12);
        assert_eq!(u16::from_le_bytes([file[20], file[21]]), MULAW);
        assert_eq!(&file[38..42], b"fact");
        assert_eq!(u32::from_le_bytes(file[46..50].try_into().unwrap()), 3);
        assert_eq!(&file[50..54], b"data");
        assert_eq!(u32::from_le_bytes(file[54..58].try_into().unwrap()), 3);
        assert_eq!(file.last(), Some(&0));
    }
}
