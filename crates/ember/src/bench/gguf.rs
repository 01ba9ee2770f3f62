//! Reads the two facts the bench needs from a GGUF file's metadata: the vocabulary size (for
//! random prompt tokens, as llama-bench uses) and whether the file carries a chat template.

use anyhow::{Context, Result, bail};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

pub struct GgufInfo {
    pub n_vocab: u32,
    pub chat_template: bool,
}

pub fn read(path: &Path) -> Result<GgufInfo> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut r = BufReader::new(file);
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    if &magic != b"GGUF" {
        bail!("{} is not a GGUF file", path.display());
    }
    let version = u32_le(&mut r)?;
    if version < 2 {
        bail!("{}: GGUF version {version} is too old", path.display());
    }
    let _tensors = u64_le(&mut r)?;
    let entries = u64_le(&mut r)?;
    let (mut n_vocab, mut chat_template) = (None, false);
    for _ in 0..entries {
        let key = string(&mut r)?;
        let kind = u32_le(&mut r)?;
        match key.as_str() {
            "tokenizer.ggml.tokens" if kind == ARRAY => {
                let element = u32_le(&mut r)?;
                let count = u64_le(&mut r)?;
                n_vocab = Some(u32::try_from(count)?);
                for _ in 0..count {
                    skip_value(&mut r, element)?;
                }
            }
            "tokenizer.chat_template" => {
                chat_template = true;
                skip_value(&mut r, kind)?;
            }
            _ => skip_value(&mut r, kind)?,
        }
    }
    Ok(GgufInfo {
        n_vocab: n_vocab.with_context(|| format!("{} has no vocabulary", path.display()))?,
        chat_template,
    })
}

const STRING: u32 = 8;
const ARRAY: u32 = 9;

fn skip_value(r: &mut impl Read, kind: u32) -> Result<()> {
    let size = match kind {
        0 | 1 | 7 => 1, // u8, i8, bool
        2 | 3 => 2,     // u16, i16
        4..=6 => 4,     // u32, i32, f32
        10..=12 => 8,   // u64, i64, f64
        STRING => u64_le(r)?,
        ARRAY => {
            let element = u32_le(r)?;
            for _ in 0..u64_le(r)? {
                skip_value(r, element)?;
            }
            return Ok(());
        }
        other => bail!("unknown GGUF value type {other}"),
    };
    std::io::copy(&mut r.take(size), &mut std::io::sink())?;
    Ok(())
}

fn string(r: &mut impl Read) -> Result<String> {
    let len = u64_le(r)?;
    let mut bytes = Vec::new();
    r.take(len).read_to_end(&mut bytes)?;
    Ok(String::from_utf8(bytes)?)
}

fn u32_le(r: &mut impl Read) -> Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn u64_le(r: &mut impl Read) -> Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}
