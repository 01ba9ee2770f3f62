//! Turns a stream of token bytes into whole UTF-8 characters: a multi-byte character split across
//! tokens is held back until it is complete, so no streamed piece ever ends mid-character.

#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds bytes and returns the text that is now complete (possibly empty). Bytes that can never
    /// become valid UTF-8 come out as U+FFFD.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(text) => {
                    out.push_str(text);
                    self.pending.clear();
                    return out;
                }
                Err(error) => {
                    let valid = error.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match error.error_len() {
                        // An incomplete character at the end: wait for the next token.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is still held at the end of generation, as lossy text.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_characters_are_held_until_complete() {
        let text = "a😀é漢";
        let bytes = text.as_bytes();
        for split in 0..=bytes.len() {
            for split2 in split..=bytes.len() {
                let mut stream = Utf8Stream::default();
                let mut out = String::new();
                for part in [&bytes[..split], &bytes[split..split2], &bytes[split2..]] {
                    let piece = stream.push(part);
                    out.push_str(&piece);
                }
                out.push_str(&stream.finish());
                assert_eq!(out, text);
            }
        }
    }

    #[test]
    fn every_piece_is_whole_characters() {
        let mut stream = Utf8Stream::default();
        assert_eq!(stream.push(&[0xF0, 0x9F]), "");
        assert_eq!(stream.push(&[0x98]), "");
        assert_eq!(stream.push(&[0x80, b'x']), "😀x");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut stream = Utf8Stream::default();
        assert_eq!(stream.push(&[b'a', 0xFF, b'b']), "a\u{FFFD}b");
        assert_eq!(stream.push(&[0xE6, 0x97]), "");
        assert_eq!(stream.finish(), "\u{FFFD}");
    }
}
