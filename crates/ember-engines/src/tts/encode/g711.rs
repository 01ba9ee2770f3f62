//! G.711 companding of 16-bit samples into 8-bit codes, as the ITU reference (and Sun's g711.c,
//! which Python's audioop and SoX use) does: µ-law on the top 14 bits, A-law on the top 13.

/// Where each of the 8 segments ends, in the 14-bit (µ-law) and 13-bit (A-law) domains.
const MULAW_SEGMENT_ENDS: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
const ALAW_SEGMENT_ENDS: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];

pub(super) fn mulaw(samples: &[i16]) -> Vec<u8> {
    samples.iter().map(|&s| mulaw_code(s)).collect()
}

pub(super) fn alaw(samples: &[i16]) -> Vec<u8> {
    samples.iter().map(|&s| alaw_code(s)).collect()
}

fn mulaw_code(sample: i16) -> u8 {
    const BIAS: i32 = 0x84 >> 2;
    const CLIP: i32 = 8159;
    let value = i32::from(sample) >> 2;
    // Codes are stored with every bit inverted; the sign bit is set for positive values.
    let (magnitude, mask) = if value < 0 {
        (-value, 0x7F)
    } else {
        (value, 0xFF)
    };
    let magnitude = magnitude.min(CLIP) + BIAS;
    match segment(magnitude, &MULAW_SEGMENT_ENDS) {
        Some(seg) => (((seg << 4) | ((magnitude >> (seg + 1)) & 0xF)) ^ mask) as u8,
        None => (0x7F ^ mask) as u8,
    }
}

fn alaw_code(sample: i16) -> u8 {
    let value = i32::from(sample) >> 3;
    // Even bits are inverted (0x55); the sign bit is set for positive values.
    let (magnitude, mask) = if value >= 0 {
        (value, 0xD5)
    } else {
        (-value - 1, 0x55)
    };
    match segment(magnitude, &ALAW_SEGMENT_ENDS) {
        Some(seg) => {
            let shift = if seg < 2 { 1 } else { seg };
            (((seg << 4) | ((magnitude >> shift) & 0xF)) ^ mask) as u8
        }
        None => (0x7F ^ mask) as u8,
    }
}

fn segment(magnitude: i32, ends: &[i32; 8]) -> Option<i32> {
    ends.iter()
        .position(|&end| magnitude <= end)
        .map(|s| s as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: [i16; 21] = [
        0, 1, -1, 7, -8, 100, -100, 1000, -1000, 4000, -4000, 12345, -12345, 32767, -32768, 20000,
        -20000, 255, -256, 31, -32,
    ];

    /// Python's `audioop.lin2ulaw` / `lin2alaw` on the samples above, and the sums of the codes
    /// of all 65,536 samples.
    #[test]
    fn matches_audioop() {
        assert_eq!(
            mulaw(&SAMPLES),
            [
                255, 255, 126, 254, 126, 242, 114, 206, 78, 175, 47, 151, 23, 128, 0, 140, 12, 231,
                103, 251, 123
            ]
        );
        assert_eq!(
            alaw(&SAMPLES),
            [
                213, 213, 85, 213, 85, 211, 83, 250, 122, 154, 26, 189, 61, 170, 42, 166, 38, 218,
                90, 212, 84
            ]
        );
        let all: Vec<i16> = (i16::MIN..=i16::MAX).collect();
        let sum = |codes: Vec<u8>| codes.into_iter().map(u64::from).sum::<u64>();
        assert_eq!(sum(mulaw(&all)), 5_694_092);
        assert_eq!(sum(alaw(&all)), 6_971_392);
    }
}
