//! Whisper's tokenizer (`tokenizer.json`) and its special tokens: the start-of-transcript
//! sequence, timestamps, the tokens suppressed by default, and splitting tokens into words the way
//! faster-whisper's `Tokenizer` does.

use anyhow::Context;
use std::path::Path;
use tokenizers::Tokenizer;

/// Languages written without spaces: their words are split at character boundaries.
const UNSPACED_LANGUAGES: [&str; 6] = ["zh", "ja", "th", "lo", "my", "yue"];

/// Python's `string.punctuation`; faster-whisper tests `subword.strip() in` it, a substring test.
const ASCII_PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

pub(crate) struct Tokens {
    tokenizer: Tokenizer,
    pub eot: u32,
    pub sot: u32,
    pub sot_prev: u32,
    pub sot_lm: u32,
    pub transcribe: u32,
    pub translate: u32,
    pub no_timestamps: u32,
    pub no_speech: u32,
    /// `<|0.00|>`; every id from here to the end of the vocabulary is a timestamp.
    pub timestamp_begin: u32,
}

impl Tokens {
    pub(crate) fn load(dir: &Path) -> anyhow::Result<Tokens> {
        let path = dir.join("tokenizer.json");
        let tokenizer =
            Tokenizer::from_file(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let id = |token: &str| {
            tokenizer
                .token_to_id(token)
                .with_context(|| format!("tokenizer.json has no {token}"))
        };
        let no_timestamps = id("<|notimestamps|>")?;
        Ok(Tokens {
            eot: id("<|endoftext|>")?,
            sot: id("<|startoftranscript|>")?,
            sot_prev: id("<|startofprev|>")?,
            sot_lm: id("<|startoflm|>")?,
            transcribe: id("<|transcribe|>")?,
            translate: id("<|translate|>")?,
            no_timestamps,
            // Older vocabularies name it <|nocaptions|>.
            no_speech: id("<|nospeech|>").or_else(|_| id("<|nocaptions|>"))?,
            timestamp_begin: no_timestamps + 1,
            tokenizer,
        })
    }

    /// The special tokens that are never produced whenever any suppression is asked for.
    pub(crate) fn task_specials(&self) -> [u32; 6] {
        [
            self.transcribe,
            self.translate,
            self.sot,
            self.sot_prev,
            self.sot_lm,
            self.no_speech,
        ]
    }

    /// The language tokens (`<|en|>`, ...): those between `<|startoftranscript|>` and
    /// `<|translate|>`, for models whose config does not list them.
    pub(crate) fn language_ids(&self) -> Vec<u32> {
        (self.sot + 1..self.translate).collect()
    }

    /// `en` for `<|en|>`.
    pub(crate) fn language_code(&self, id: u32) -> Option<String> {
        let token = self.tokenizer.id_to_token(id)?;
        Some(token.strip_prefix("<|")?.strip_suffix("|>")?.to_string())
    }

    pub(crate) fn language_id(&self, code: &str) -> Option<u32> {
        self.tokenizer.token_to_id(&format!("<|{code}|>"))
    }

    /// Text → ids, without special tokens.
    pub(crate) fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of the text tokens among `ids` (those below EOT).
    pub(crate) fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        let text: Vec<u32> = ids.iter().copied().filter(|&id| id < self.eot).collect();
        self.tokenizer
            .decode(&text, true)
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// What the `-1` of `suppress_tokens` stands for: faster-whisper's `non_speech_tokens`
    /// (speaker tags, brackets, music symbols; `-` and `'` only at the start of a word).
    pub(crate) fn non_speech(&self) -> anyhow::Result<Vec<u32>> {
        let mut symbols: Vec<String> = "\"#()*+/:;<=>@[\\]^_`{|}~「」『』"
            .chars()
            .map(String::from)
            .collect();
        symbols.extend(
            "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪"
                .split(' ')
                .map(String::from),
        );
        // Symbols of U+2640..U+267F share their first two UTF-8 bytes, so suppressing the first
        // token of a multi-token one suppresses only such symbols.
        let miscellaneous: Vec<String> = "♩♪♫♬♭♮♯".chars().map(String::from).collect();
        let mut ids = vec![self.encode(" -")?[0], self.encode(" '")?[0]];
        for symbol in symbols.iter().chain(&miscellaneous) {
            let is_misc = miscellaneous.contains(symbol);
            for text in [symbol.clone(), format!(" {symbol}")] {
                let tokens = self.encode(&text)?;
                if tokens.len() == 1 || (is_misc && !tokens.is_empty()) {
                    ids.push(tokens[0]);
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Splits tokens (text tokens, then EOT) into words, each with its tokens. Words keep their
    /// leading space; punctuation is a word of its own; EOT decodes to an empty last word.
    pub(crate) fn split_words(
        &self,
        ids: &[u32],
        language: &str,
    ) -> anyhow::Result<(Vec<String>, Vec<Vec<u32>>)> {
        let (subwords, subword_tokens) = self.split_on_unicode(ids)?;
        if UNSPACED_LANGUAGES.contains(&language) {
            return Ok((subwords, subword_tokens));
        }
        let mut words: Vec<String> = Vec::new();
        let mut word_tokens: Vec<Vec<u32>> = Vec::new();
        for (subword, tokens) in subwords.into_iter().zip(subword_tokens) {
            let special = tokens[0] >= self.eot;
            let with_space = subword.starts_with(' ');
            let punctuation = ASCII_PUNCTUATION.contains(subword.trim());
            match (words.last_mut(), word_tokens.last_mut()) {
                (Some(word), Some(last)) if !(special || with_space || punctuation) => {
                    word.push_str(&subword);
                    last.extend(tokens);
                }
                _ => {
                    words.push(subword);
                    word_tokens.push(tokens);
                }
            }
        }
        Ok((words, word_tokens))
    }

    /// Groups tokens so that each group decodes to whole characters: a group ends where the text
    /// decoded so far has no replacement character that the full text does not have too.
    fn split_on_unicode(&self, ids: &[u32]) -> anyhow::Result<(Vec<String>, Vec<Vec<u32>>)> {
        let decode = |ids: &[u32]| {
            self.tokenizer
                .decode(ids, true)
                .map_err(|e| anyhow::anyhow!("{e}"))
        };
        let full: Vec<char> = decode(ids)?.chars().collect();
        let mut words = Vec::new();
        let mut word_tokens = Vec::new();
        let mut current = Vec::new();
        let mut offset = 0;
        for &id in ids {
            current.push(id);
            let decoded = decode(&current)?;
            // Python indexes strings by code point.
            let replacement = decoded
                .chars()
                .position(|c| c == '\u{fffd}')
                .map(|i| i + offset);
            if replacement.is_none_or(|i| full.get(i) == Some(&'\u{fffd}')) {
                offset += decoded.chars().count();
                words.push(decoded);
                word_tokens.push(std::mem::take(&mut current));
            }
        }
        Ok((words, word_tokens))
    }
}
