//! CTranslate2's Whisper layout: `model.bin` (binary version 6, `WhisperSpec`) and the
//! `config.json` beside it. Its tensor names are the ones `model.rs` reads.
//!
//! `model.bin`: u32 version, the spec name (u16 length + bytes), u32 revision, u32 count, then per
//! variable its name (u16 length + bytes, NUL included), u8 rank, rank × u32 dims, u8 dtype
//! (0 f32, 1 int8, 2 int16, 3 int32, 4 f16, 5 bf16), u32 byte count and the data; then u32 count
//! of aliases, each an (alias, target) name pair (`decoder/projection/weight` is the embedding).
//! int8 weights are dequantized with their per-row `<name>_scale` (CTranslate2 stores
//! `round(w · 127 / max|row|)` and that scale). Scalars (`*/num_heads`) are attributes.

use super::weights::{Loaded, Weights};
use anyhow::{Context, bail, ensure};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// The only layout this reader knows; older versions lack the dtype byte or the aliases.
const BINARY_VERSION: u32 = 6;

/// The Whisper fields of a converted model's `config.json`.
#[derive(serde::Deserialize)]
struct Config {
    alignment_heads: Option<Vec<(usize, usize)>>,
    lang_ids: Option<Vec<u32>>,
    suppress_ids_begin: Option<Vec<u32>>,
}

/// One variable as stored: its shape, dtype code and bytes (a range of the file).
struct Raw<'a> {
    dims: Vec<usize>,
    dtype: u8,
    data: &'a [u8],
}

/// Reads a model folder converted by CTranslate2 (`model.bin` + `config.json`).
pub(crate) fn load(dir: &Path) -> anyhow::Result<Loaded> {
    let path = dir.join("model.bin");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let raw = parse(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    let config: Config = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)
        .context("config.json of the CTranslate2 model")?;

    let scalar = |name: &str| -> anyhow::Result<usize> {
        let var = raw
            .get(name)
            .with_context(|| format!("model.bin has no {name}"))?;
        Ok(match (var.dtype, var.data) {
            (1, [v]) => *v as usize,
            (2, [a, b]) => u16::from_le_bytes([*a, *b]) as usize,
            (3, [a, b, c, d]) => u32::from_le_bytes([*a, *b, *c, *d]) as usize,
            _ => bail!("{name} is not an integer scalar"),
        })
    };
    let encoder_heads = scalar("encoder/num_heads")?;
    let decoder_heads = scalar("decoder/num_heads")?;

    let mut tensors = HashMap::new();
    for (name, var) in &raw {
        // Scalars are attributes; scales are folded into their weights below.
        if var.dims.is_empty() || name.ends_with("_scale") {
            continue;
        }
        let tensor = match var.dtype {
            0 => Tensor::from_raw_buffer(var.data, DType::F32, &var.dims, &Device::Cpu)?,
            4 => Tensor::from_raw_buffer(var.data, DType::F16, &var.dims, &Device::Cpu)?,
            5 => Tensor::from_raw_buffer(var.data, DType::BF16, &var.dims, &Device::Cpu)?,
            1 => {
                let scale = raw
                    .get(&format!("{name}_scale"))
                    .with_context(|| format!("int8 {name} has no {name}_scale"))?;
                dequantize_int8(var, scale).with_context(|| name.clone())?
            }
            other => bail!(
                "{name}: unsupported CTranslate2 dtype {other} (int16 models are not supported)"
            ),
        };
        // f16 stays f16 until used (`Weights`); every other type is widened now.
        let tensor = match tensor.dtype() {
            DType::F16 => tensor,
            _ => tensor.to_dtype(DType::F32)?,
        };
        tensors.insert(name.clone(), tensor);
    }
    Ok(Loaded {
        weights: Weights::new(tensors),
        encoder_heads,
        decoder_heads,
        alignment_heads: config.alignment_heads,
        lang_ids: config.lang_ids,
        suppress_ids_begin: config.suppress_ids_begin,
    })
}

/// `q / scale` per row: `scale` holds one f32 per output row (the first dimension).
fn dequantize_int8(var: &Raw, scale: &Raw) -> anyhow::Result<Tensor> {
    let rows = var.dims[0];
    let cols = var.data.len() / rows.max(1);
    ensure!(
        scale.dtype == 0 && scale.data.len() == rows * 4,
        "its scale is not f32 [{rows}]"
    );
    let scales: Vec<f32> = scale
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let values: Vec<f32> = var
        .data
        .iter()
        .enumerate()
        .map(|(i, &q)| q as i8 as f32 / scales[i / cols])
        .collect();
    Ok(Tensor::from_vec(values, var.dims.as_slice(), &Device::Cpu)?)
}

/// Every variable of `model.bin` by name, aliases included (they share the target's bytes).
fn parse(bytes: &[u8]) -> anyhow::Result<HashMap<String, Raw<'_>>> {
    let mut r = Reader { bytes, at: 0 };
    let version = r.u32()?;
    ensure!(
        version == BINARY_VERSION,
        "binary version {version}, expected {BINARY_VERSION}"
    );
    let spec = r.string()?;
    ensure!(
        spec == "WhisperSpec",
        "the model is a {spec}, not a WhisperSpec"
    );
    let _revision = r.u32()?;
    let count = r.u32()?;
    let mut vars = HashMap::with_capacity(count as usize);
    for _ in 0..count {
        let name = r.string()?;
        let rank = r.take(1)?[0] as usize;
        let dims = (0..rank)
            .map(|_| r.u32().map(|d| d as usize))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let dtype = r.take(1)?[0];
        let len = r.u32()? as usize;
        let data = r.take(len)?;
        vars.insert(name, Raw { dims, dtype, data });
    }
    let aliases = r.u32()?;
    for _ in 0..aliases {
        let alias = r.string()?;
        let target = r.string()?;
        let var = vars
            .get(&target)
            .with_context(|| format!("alias {alias} of unknown {target}"))?;
        let copy = Raw {
            dims: var.dims.clone(),
            dtype: var.dtype,
            data: var.data,
        };
        let scale = vars.get(&format!("{target}_scale")).map(|s| Raw {
            dims: s.dims.clone(),
            dtype: s.dtype,
            data: s.data,
        });
        if let Some(scale) = scale {
            vars.insert(format!("{alias}_scale"), scale);
        }
        vars.insert(alias, copy);
    }
    Ok(vars)
}

/// A cursor over `model.bin`.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> anyhow::Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len());
        let end = end.with_context(|| format!("truncated at byte {}", self.at))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u32(&mut self) -> anyhow::Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A u16-length string; CTranslate2 writes names with their C terminator.
    fn string(&mut self) -> anyhow::Result<String> {
        let b = self.take(2)?;
        let len = u16::from_le_bytes([b[0], b[1]]) as usize;
        let text = self.take(len)?;
        let text = text.strip_suffix(&[0]).unwrap_or(text);
        Ok(String::from_utf8(text.to_vec())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serializes variables the way CTranslate2's `model_spec.py` does.
    fn model_bin(vars: &[(&str, &[u32], u8, Vec<u8>)], aliases: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        let string = |out: &mut Vec<u8>, s: &str| {
            out.extend((s.len() as u16 + 1).to_le_bytes());
            out.extend(s.as_bytes());
            out.push(0);
        };
        out.extend(6u32.to_le_bytes());
        string(&mut out, "WhisperSpec");
        out.extend(3u32.to_le_bytes());
        out.extend((vars.len() as u32).to_le_bytes());
        for (name, dims, dtype, data) in vars {
            string(&mut out, name);
            out.push(dims.len() as u8);
            for d in *dims {
                out.extend(d.to_le_bytes());
            }
            out.push(*dtype);
            out.extend((data.len() as u32).to_le_bytes());
            out.extend(data);
        }
        out.extend((aliases.len() as u32).to_le_bytes());
        for (alias, target) in aliases {
            string(&mut out, alias);
            string(&mut out, target);
        }
        out
    }

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn reads_variables_aliases_and_int8() {
        let f16: Vec<u8> = [1.5f32, -2.0, 0.25, 3.0]
            .iter()
            .flat_map(|&v| half_bits(v).to_le_bytes())
            .collect();
        let bytes = model_bin(
            &[
                ("decoder/embeddings/weight", &[2, 2], 4, f16),
                ("encoder/num_heads", &[], 2, 6u16.to_le_bytes().to_vec()),
                ("encoder/w", &[2, 2], 1, vec![127, 0xC1 /* -63 */, 10, 20]),
                ("encoder/w_scale", &[2], 0, f32_bytes(&[127.0, 10.0])),
            ],
            &[("decoder/projection/weight", "decoder/embeddings/weight")],
        );
        let vars = parse(&bytes).unwrap();
        assert_eq!(vars["encoder/num_heads"].dims, Vec::<usize>::new());
        let emb = Tensor::from_raw_buffer(
            vars["decoder/projection/weight"].data,
            DType::F16,
            &[2, 2],
            &Device::Cpu,
        )
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
        assert_eq!(emb.to_vec2::<f32>().unwrap(), [[1.5, -2.0], [0.25, 3.0]]);
        let w = dequantize_int8(&vars["encoder/w"], &vars["encoder/w_scale"]).unwrap();
        assert_eq!(
            w.to_vec2::<f32>().unwrap(),
            [[1.0, -63.0 / 127.0], [1.0, 2.0]]
        );
    }

    #[test]
    fn rejects_other_versions_and_truncation() {
        let mut bytes = model_bin(&[("a", &[1], 0, f32_bytes(&[1.0]))], &[]);
        assert!(parse(&bytes[..bytes.len() - 3]).is_err());
        bytes[0] = 5;
        let err = parse(&bytes).err().unwrap().to_string();
        assert!(err.contains("binary version 5"), "{err}");
    }

    /// f32 → IEEE half bits for values exactly representable in f16 (the test's).
    fn half_bits(v: f32) -> u16 {
        let bits = v.to_bits();
        let sign = ((bits >> 16) & 0x8000) as u16;
        let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
        let mantissa = ((bits >> 13) & 0x3ff) as u16;
        sign | ((exp as u16) << 10) | mantissa
    }
}
