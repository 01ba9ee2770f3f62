//! Reads a PyTorch state dict saved in the legacy (pre-1.6, non-zip) `torch.save` format, which is
//! how EfficientNet-Lite0's published weights ship: five pickles one after the other (a magic
//! number, the protocol version, system info, the state dict, the storage keys), then each
//! storage's element count and raw little-endian data in the order of the keys. The state dict's
//! tensors are views of those storages with their own offsets and strides (many of these weights
//! are transposed views of TensorFlow kernels), so each is gathered element by element into a
//! contiguous candle tensor. candle's pickle interpreter reads the pickles.

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::Path;

/// The first pickle of every legacy file: protocol 2, the 10-byte long 0x1950a86a20f9469cfc6c.
const MAGIC_PICKLE: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
];

/// The tensors of the state dict in the legacy `.pth` file at `path`, as contiguous CPU tensors of
/// their stored type.
pub fn read_state_dict(path: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    let file = std::fs::File::open(path)?;
    let mut reader = BufReader::new(file);
    let mut magic = [0u8; MAGIC_PICKLE.len()];
    reader.read_exact(&mut magic)?;
    anyhow::ensure!(
        magic == MAGIC_PICKLE,
        "not a legacy PyTorch file (a zip-format .pth is read by candle::pickle)"
    );
    let _protocol_version = read_pickle(&mut reader)?;
    let _system_info = read_pickle(&mut reader)?;
    let state_dict = match read_pickle(&mut reader)? {
        // An OrderedDict with `_metadata` set on it.
        Object::Build { callable, .. } => *callable,
        other => other,
    };
    let Object::Dict(entries) = state_dict else {
        anyhow::bail!("the file holds no state dict");
    };
    let views = entries
        .into_iter()
        // Module versions for `load_state_dict`, not a tensor.
        .filter(|(name, _)| *name != Object::Unicode("_metadata".into()))
        .map(|(name, value)| {
            let name = name
                .unicode()
                .map_err(|o| anyhow::anyhow!("a state dict key is not a string: {o:?}"))?;
            let view = View::parse(value).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            Ok((name, view))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let Object::List(keys) = read_pickle(&mut reader)? else {
        anyhow::bail!("the storage key list is missing");
    };
    let dtypes: HashMap<&str, DType> = views
        .iter()
        .map(|(_, view)| (view.storage.as_str(), view.dtype))
        .collect();
    let mut storages = HashMap::new();
    for key in keys {
        let key = key
            .unicode()
            .map_err(|o| anyhow::anyhow!("a storage key is not a string: {o:?}"))?;
        let dtype = *dtypes
            .get(key.as_str())
            .ok_or_else(|| anyhow::anyhow!("storage {key} belongs to no tensor"))?;
        let mut count = [0u8; 8];
        reader.read_exact(&mut count)?;
        let bytes = usize::try_from(u64::from_le_bytes(count))?
            .checked_mul(dtype.size_in_bytes())
            .ok_or_else(|| anyhow::anyhow!("storage {key} is too large"))?;
        let mut data = Vec::new();
        (&mut reader).take(bytes as u64).read_to_end(&mut data)?;
        anyhow::ensure!(data.len() == bytes, "the file ends inside storage {key}");
        storages.insert(key, data);
    }

    views
        .into_iter()
        .map(|(name, view)| {
            let tensor = view
                .gather(&storages)
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            Ok((name, tensor))
        })
        .collect()
}

fn read_pickle(reader: &mut impl std::io::BufRead) -> anyhow::Result<Object> {
    let mut stack = Stack::empty();
    stack.read_loop(reader)?;
    Ok(stack.finalize()?)
}

/// A tensor as the pickle describes it: a view of a storage.
struct View {
    storage: String,
    dtype: DType,
    /// In elements.
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

impl View {
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`, whose storage is the
    /// persistent id `('storage', StorageClass, key, location, size)`.
    fn parse(value: Object) -> anyhow::Result<View> {
        let fail = |what: &str| anyhow::anyhow!("unexpected pickle: {what}");
        let (callable, args) = value.reduce().map_err(|_| fail("not a tensor"))?;
        match callable.class() {
            Ok((module, class)) if module == "torch._utils" && class == "_rebuild_tensor_v2" => {}
            _ => return Err(fail("not _rebuild_tensor_v2")),
        }
        let mut args = args.tuple().map_err(|_| fail("arguments"))?.into_iter();
        let mut next = || args.next().ok_or_else(|| fail("too few arguments"));
        let storage = next()?
            .persistent_load()
            .map_err(|_| fail("storage"))?
            .tuple()
            .map_err(|_| fail("storage id"))?;
        let offset = next()?.int_or_long().map_err(|_| fail("offset"))?;
        let shape = Vec::<usize>::try_from(next()?).map_err(|_| fail("size"))?;
        let strides = Vec::<usize>::try_from(next()?).map_err(|_| fail("stride"))?;
        let [_, class, key, ..] = storage.as_slice() else {
            return Err(fail("storage id"));
        };
        let dtype = match class.clone().class().map_err(|_| fail("storage class"))?.1 {
            name if name == "FloatStorage" => DType::F32,
            name if name == "LongStorage" => DType::I64,
            other => anyhow::bail!("unsupported storage type {other}"),
        };
        Ok(View {
            storage: key.clone().unicode().map_err(|_| fail("storage key"))?,
            dtype,
            offset: usize::try_from(offset)?,
            shape,
            strides,
        })
    }

    /// Copies the view's elements, in row-major order, out of its storage.
    fn gather(&self, storages: &HashMap<String, Vec<u8>>) -> anyhow::Result<Tensor> {
        let data = storages
            .get(&self.storage)
            .ok_or_else(|| anyhow::anyhow!("storage {} is missing", self.storage))?;
        let size = self.dtype.size_in_bytes();
        let count: usize = self.shape.iter().product();
        let mut bytes = Vec::with_capacity(count * size);
        let mut index = vec![0usize; self.shape.len()];
        for _ in 0..count {
            let element = self.offset
                + index
                    .iter()
                    .zip(&self.strides)
                    .map(|(i, s)| i * s)
                    .sum::<usize>();
            let at = element * size;
            let value = data
                .get(at..at + size)
                .ok_or_else(|| anyhow::anyhow!("the view reaches past its storage"))?;
            bytes.extend_from_slice(value);
            // Odometer step over the shape, last dimension fastest.
            for dim in (0..index.len()).rev() {
                index[dim] += 1;
                if index[dim] < self.shape[dim] {
                    break;
                }
                index[dim] = 0;
            }
        }
        Ok(Tensor::from_raw_buffer(
            &bytes,
            self.dtype,
            &self.shape,
            &Device::Cpu,
        )?)
    }
}
