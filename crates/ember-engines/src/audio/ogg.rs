//! Whether an Ogg file has its end: Ogg declares no length up front, so a file cut short reads as
//! a shorter recording, except that its last page lacks the end-of-stream flag every finished
//! stream's last page carries.

/// Page header: "OggS", version, header type, granule (8), serial (4), sequence (4), CRC (4),
/// segment count.
const HEADER: usize = 27;
const END_OF_STREAM: u8 = 0x04;
/// How far from the end to look for the last page (a page holds at most ~64 KB).
const TAIL: usize = 70_000;

/// True when the last whole page in the file's tail is an end-of-stream page.
pub(super) fn has_end(bytes: &[u8]) -> bool {
    let tail_start = bytes.len().saturating_sub(TAIL);
    let mut at = bytes.len();
    // Scan back for capture patterns; one that only happens to occur inside packet data, or a
    // page that runs past the end (a cut one), is not a page.
    while let Some(start) = bytes[tail_start..at].windows(4).rposition(|w| w == b"OggS") {
        let start = tail_start + start;
        if page_end(bytes, start).is_some() {
            return bytes[start + 5] & END_OF_STREAM != 0;
        }
        at = start;
    }
    false
}

/// Where the page starting at `start` ends, if it is whole.
fn page_end(bytes: &[u8], start: usize) -> Option<usize> {
    let header = bytes.get(start..start + HEADER)?;
    let segments = usize::from(header[26]);
    let table = bytes.get(start + HEADER..start + HEADER + segments)?;
    let end = start + HEADER + segments + table.iter().map(|&l| usize::from(l)).sum::<usize>();
    (end <= bytes.len()).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(header_type: u8, body: &[u8]) -> Vec<u8> {
        let mut page = b"OggS\0".to_vec();
        page.push(header_type);
        page.extend_from_slice(&[0; 20]);
        page.push(1);
        page.push(body.len() as u8);
        page.extend_from_slice(body);
        page
    }

    #[test]
    fn a_stream_ends_with_its_end_of_stream_page() {
        let whole = [
            page(0x02, b"head"),
            page(0, b"OggS inside data"),
            page(END_OF_STREAM, b"last"),
        ]
        .concat();
        assert!(has_end(&whole));
        // Cut inside the last page: the whole page before it is no end.
        assert!(!has_end(&whole[..whole.len() - 2]));
        // Cut inside the middle page, right after its false capture pattern.
        let cut = whole.len() - page(END_OF_STREAM, b"last").len() - 8;
        assert!(!has_end(&whole[..cut]));
        assert!(!has_end(b""));
    }
}
