//! The arrays of a NumPy `.npz` file (a zip of `.npy` files), as Kokoro's voice packs come:
//! little-endian f32 arrays in C order, which is all the packs hold.

use anyhow::{Context, bail, ensure};
use std::io::Read;
use std::path::Path;

/// One array: its shape and its values in C (row-major) order.
pub(super) struct Array {
    pub(super) shape: Vec<usize>,
    pub(super) data: Vec<f32>,
}

/// Every array in the archive, by name (the member's name without `.npy`), sorted by name.
pub(super) fn read_npz(path: &Path) -> anyhow::Result<Vec<(String, Array)>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut archive = zip::ZipArchive::new(file)
        .with_context(|| format!("{} is not an .npz (zip) file", path.display()))?;
    let mut arrays = Vec::new();
    for i in 0..archive.len() {
        let mut member = archive.by_index(i)?;
        let Some(name) = member.name()?.strip_suffix(".npy").map(str::to_owned) else {
            continue;
        };
        let mut bytes = Vec::with_capacity(usize::try_from(member.size()).unwrap_or(0));
        member.read_to_end(&mut bytes)?;
        let array =
            parse_npy(&bytes).with_context(|| format!("{name}.npy in {}", path.display()))?;
        arrays.push((name, array));
    }
    arrays.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(arrays)
}

/// Parses a `.npy` file (format versions 1 to 3) holding `<f4` values in C order.
fn parse_npy(bytes: &[u8]) -> anyhow::Result<Array> {
    ensure!(
        bytes.starts_with(b"\x93NUMPY") && bytes.len() >= 10,
        "not a .npy file"
    );
    let (header_len, header_start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 => {
            ensure!(bytes.len() >= 12, "truncated .npy header");
            let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (usize::try_from(len)?, 12)
        }
        v => bail!(".npy format version {v} is not supported"),
    };
    let header = bytes
        .get(header_start..header_start + header_len)
        .context("truncated .npy header")?;
    let header = std::str::from_utf8(header).context(".npy header is not text")?;
    let descr = dict_value(header, "descr")?;
    ensure!(
        descr.trim_matches(|c| c == '\'' || c == '"') == "<f4",
        "the array's type is {descr}, not little-endian f32"
    );
    ensure!(
        dict_value(header, "fortran_order")? == "False",
        "the array is in Fortran order"
    );
    let shape_text = dict_value(header, "shape")?;
    let shape = shape_text
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.parse::<usize>()
                .with_context(|| format!("shape {shape_text}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let size = shape
        .iter()
        .try_fold(4usize, |size, &d| size.checked_mul(d))
        .context("the array's shape is too large")?;
    let body = &bytes[header_start + header_len..];
    ensure!(
        body.len() == size,
        "{} bytes of data for shape {shape:?}",
        body.len()
    );
    let data = body
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Array { shape, data })
}

/// The text of `key`'s value in the header, a Python dict literal such as
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (510, 1, 256), }`.
fn dict_value<'h>(header: &'h str, key: &str) -> anyhow::Result<&'h str> {
    let quoted = [format!("'{key}'"), format!("\"{key}\"")];
    let at = quoted
        .iter()
        .find_map(|q| header.find(q.as_str()).map(|at| at + q.len()))
        .with_context(|| format!(".npy header has no {key}"))?;
    let rest = header[at..]
        .trim_start()
        .strip_prefix(':')
        .context(".npy header")?;
    let rest = rest.trim_start();
    // A tuple runs to its closing parenthesis; anything else to the next comma or brace.
    let end = if rest.starts_with('(') {
        rest.find(')').map(|e| e + 1)
    } else {
        rest.find([',', '}'])
    }
    .context(".npy header")?;
    Ok(rest[..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str, values: &[f32]) -> Vec<u8> {
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&u16::try_from(header.len()).unwrap().to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        bytes
    }

    #[test]
    fn parses_f32_arrays() {
        let bytes = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 1, 2), }\n",
            &[1.0, 2.0, 3.0, -4.5],
        );
        let array = parse_npy(&bytes).unwrap();
        assert_eq!(array.shape, vec![2, 1, 2]);
        assert_eq!(array.data, vec![1.0, 2.0, 3.0, -4.5]);
        let vector = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }",
            &[7.0],
        );
        assert_eq!(parse_npy(&vector).unwrap().shape, vec![1]);
    }

    #[test]
    fn refuses_other_types_and_short_data() {
        let f8 = npy(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }",
            &[0.0, 0.0],
        );
        assert!(parse_npy(&f8).is_err());
        let short = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }",
            &[0.0],
        );
        assert!(parse_npy(&short).is_err());
        let fortran = npy(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }",
            &[0.0],
        );
        assert!(parse_npy(&fortran).is_err());
    }
}
