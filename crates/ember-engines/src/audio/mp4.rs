//! MP4 edit lists: how much encoder priming and padding an MP4 track declares (its `elst` box),
//! which symphonia's MP4 reader parses but does not apply.
//!
//! AAC encoders start with priming samples (1,024 for ffmpeg, 2,112 for Apple's) and pad the last
//! frame; MP4 muxers record the audible span in the track's edit list. Left in, they add up to
//! ~45 ms of silence and shift every timestamp Whisper reports.

use std::ops::Range;

/// The audible span of track `track_id` in the MP4 file `bytes`, in samples at `rate`. `None`
/// where the track has no edit list, or one this reads no simple span from (several segments,
/// for instance); the track is then used whole.
pub(super) fn audible_span(bytes: &[u8], track_id: u32, rate: u32) -> Option<Range<u64>> {
    let moov = child(bytes, b"moov")?;
    let movie_timescale = timescale(child(moov, b"mvhd")?)?;
    let trak = boxes(moov)
        .filter(|(kind, _)| kind == b"trak")
        .map(|(_, body)| body)
        .find(|trak| child(trak, b"tkhd").and_then(tkhd_track_id) == Some(track_id))?;
    let media_timescale = timescale(child(child(trak, b"mdia")?, b"mdhd")?)?;
    let (segment_duration, media_time) = single_segment(child(child(trak, b"edts")?, b"elst")?)?;
    let to_samples = |value: u64, timescale: u32| {
        u64::try_from(u128::from(value) * u128::from(rate) / u128::from(timescale)).ok()
    };
    let start = to_samples(media_time, media_timescale)?;
    // A zero duration means "to the end" (fragmented files write that).
    let end = match segment_duration {
        0 => u64::MAX,
        duration => start.checked_add(to_samples(duration, movie_timescale)?)?,
    };
    Some(start..end)
}

/// The boxes in `data`, as (type, body). Stops at the first malformed header.
fn boxes(mut data: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    std::iter::from_fn(move || {
        let size = u32::from_be_bytes(data.get(..4)?.try_into().ok()?);
        let kind: [u8; 4] = data.get(4..8)?.try_into().ok()?;
        let (header, size) = match size {
            0 => (8, data.len()),
            1 => (
                16,
                usize::try_from(u64::from_be_bytes(data.get(8..16)?.try_into().ok()?)).ok()?,
            ),
            n => (8, n as usize),
        };
        let body = data.get(header..size)?;
        data = &data[size..];
        Some((kind, body))
    })
}

fn child<'a>(data: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    boxes(data).find(|(k, _)| k == kind).map(|(_, body)| body)
}

fn be_u32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn be_u64(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

/// The timescale of an `mvhd` or `mdhd` box (same layout up to it); never zero.
fn timescale(full_box: &[u8]) -> Option<u32> {
    let at = if *full_box.first()? == 1 { 20 } else { 12 };
    be_u32(full_box, at).filter(|&t| t > 0)
}

fn tkhd_track_id(tkhd: &[u8]) -> Option<u32> {
    let at = if *tkhd.first()? == 1 { 20 } else { 12 };
    be_u32(tkhd, at)
}

/// (segment duration in the movie timescale, media time in the media timescale) of an edit list
/// with one segment that plays the media (a leading empty edit, which delays the track, is
/// skipped: the transcript starts at the first sound either way).
fn single_segment(elst: &[u8]) -> Option<(u64, u64)> {
    let version = *elst.first()?;
    let count = be_u32(elst, 4)? as usize;
    let entry_len = if version == 1 { 20 } else { 12 };
    let mut segments = (0..count.min(elst.len() / entry_len)).filter_map(|i| {
        let at = 8 + i * entry_len;
        let (duration, media_time) = if version == 1 {
            (be_u64(elst, at)?, be_u64(elst, at + 8)? as i64)
        } else {
            (
                u64::from(be_u32(elst, at)?),
                i64::from(be_u32(elst, at + 4)? as i32),
            )
        };
        // -1 marks an empty edit.
        (media_time >= 0).then_some((duration, media_time as u64))
    });
    let segment = segments.next()?;
    segments.next().is_none().then_some(segment)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp4_box(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        out
    }

    /// A moov with one track (id 1, media timescale 44 100) and the given edit entries
    /// (version 0: duration, media time), in a movie timescale of 1 000.
    fn movie(entries: &[(u32, i32)]) -> Vec<u8> {
        let mut header = vec![0u8; 12];
        header.extend_from_slice(&1000u32.to_be_bytes());
        let mvhd = mp4_box(b"mvhd", &header);
        let mut tkhd = vec![0u8; 12];
        tkhd.extend_from_slice(&1u32.to_be_bytes());
        let mut mdhd = vec![0u8; 12];
        mdhd.extend_from_slice(&44_100u32.to_be_bytes());
        let mut elst = vec![0u8; 4];
        elst.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        for (duration, media_time) in entries {
            elst.extend_from_slice(&duration.to_be_bytes());
            elst.extend_from_slice(&media_time.to_be_bytes());
            elst.extend_from_slice(&[0, 1, 0, 0]);
        }
        let trak = [
            mp4_box(b"tkhd", &tkhd),
            mp4_box(b"mdia", &mp4_box(b"mdhd", &mdhd)),
            mp4_box(b"edts", &mp4_box(b"elst", &elst)),
        ]
        .concat();
        let mut file = mp4_box(b"ftyp", b"M4A \0\0\0\0");
        file.extend(mp4_box(b"mdat", &[0; 16]));
        file.extend(mp4_box(b"moov", &[mvhd, mp4_box(b"trak", &trak)].concat()));
        file
    }

    #[test]
    fn reads_the_priming_and_length_of_the_audio_track() {
        // 2 s of audio after ffmpeg's 1,024 priming samples, decoded at 44.1 kHz.
        let file = movie(&[(2000, 1024)]);
        assert_eq!(audible_span(&file, 1, 44_100), Some(1024..89_224));
        // Decoded at another rate (an SBR stream doubles it), the span scales.
        assert_eq!(audible_span(&file, 1, 88_200), Some(2048..178_448));
        // A leading empty edit is a delay, not part of the span.
        let delayed = movie(&[(500, -1), (2000, 1024)]);
        assert_eq!(audible_span(&delayed, 1, 44_100), Some(1024..89_224));
        // A zero duration runs to the end.
        assert_eq!(
            audible_span(&movie(&[(0, 1024)]), 1, 44_100),
            Some(1024..u64::MAX)
        );
    }

    #[test]
    fn anything_else_means_use_the_track_whole() {
        assert_eq!(
            audible_span(&movie(&[(1000, 0), (1000, 50_000)]), 1, 44_100),
            None
        );
        assert_eq!(audible_span(&movie(&[(2000, 1024)]), 2, 44_100), None);
        let file = movie(&[(2000, 1024)]);
        for cut in [0, 10, file.len() / 2, file.len() - 3] {
            assert_eq!(audible_span(&file[..cut], 1, 44_100), None);
        }
        assert_eq!(audible_span(b"\0\0\0\x01moov", 1, 44_100), None);
    }
}
