//! LoRA adapters: a finetune's PEFT files (`adapter_config.json`, `adapter_model.safetensors`)
//! converted to the GGUF adapter llama.cpp applies at run time, checked against the base model's
//! own tensors first, and the adapters a scheduler has loaded into its model.
//!
//! The conversion is llama.cpp's `convert_lora_to_gguf.py` in Rust: every `lora_A`/`lora_B` pair
//! of a projection llama.cpp names becomes `blk.{layer}.{tensor}.weight.lora_a`/`.lora_b` (f32,
//! the same shapes), and `adapter.lora.alpha` carries PEFT's scale (`alpha / r`, or `alpha /
//! sqrt(r)` with rsLoRA) as llama.cpp reads it: `alpha / r`.

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};
use ember_core::InferError;
use ember_core::finetunes::{self, CONFIG_FILE, WEIGHTS_FILE};
use llama_cpp_2::model::{LlamaLoraAdapter, LlamaModel};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The converted adapter, written beside the PEFT files (one per base model).
const CONVERTED_PREFIX: &str = "adapter-";

/// The field a finetune's problems are reported under.
const FIELD: &str = "/lora";

/// Hugging Face projection names and llama.cpp's tensor names for them.
const PROJECTIONS: [(&str, &str); 7] = [
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

fn invalid(problem: impl Into<String>) -> InferError {
    InferError::invalid(FIELD, problem)
}

/// The GGUF adapter for `base` made from the PEFT files in `folder`, converted on first use and
/// kept there (named after the base model's file size, so another base converts again). Errors
/// name what does not fit: a missing file, a rank above `MAX_RANK`, a tensor the base model lacks
/// or has in another shape.
pub fn converted(folder: &Path, base: &Path) -> Result<PathBuf, InferError> {
    let base_bytes = std::fs::metadata(base)
        .map_err(|e| InferError::Internal(format!("{}: {e}", base.display())))?
        .len();
    let target = folder.join(format!("{CONVERTED_PREFIX}{base_bytes:x}.gguf"));
    if target.is_file() {
        return Ok(target);
    }
    let read = |name: &str| {
        std::fs::read(folder.join(name)).map_err(|_| {
            InferError::invalid(
                FIELD,
                format!("the finetune has no {name} (upload {CONFIG_FILE} and {WEIGHTS_FILE})"),
            )
        })
    };
    let config = read(CONFIG_FILE)?;
    let weights = read(WEIGHTS_FILE)?;
    let base_model = BaseModel::read(base)?;
    let gguf = convert(&config, &weights, &base_model)?;
    let part = target.with_extension("gguf.part");
    std::fs::write(&part, gguf)
        .and_then(|()| std::fs::rename(&part, &target))
        .map_err(|e| InferError::Internal(format!("{}: {e}", target.display())))?;
    Ok(target)
}

/// What the conversion checks an adapter against: the base model's architecture and its
/// tensors' shapes (`[out, in]`), read from its GGUF header.
pub(crate) struct BaseModel {
    architecture: String,
    shapes: HashMap<String, Vec<usize>>,
}

impl BaseModel {
    pub(crate) fn read(path: &Path) -> Result<BaseModel, InferError> {
        let internal = |e: &dyn std::fmt::Display| {
            InferError::Internal(format!("reading {}: {e}", path.display()))
        };
        let mut file = std::fs::File::open(path).map_err(|e| internal(&e))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| internal(&e))?;
        let architecture = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let shapes = content
            .tensor_infos
            .into_iter()
            .map(|(name, info)| (name, info.shape.dims().to_vec()))
            .collect();
        Ok(BaseModel {
            architecture,
            shapes,
        })
    }
}

/// The `[out, in]` shape of each layer's query and value projections in the GGUF model at
/// `path`, in layer order: what a generated adapter for it must match (`ember bench lora`).
pub fn attention_shapes(path: &Path) -> Result<Vec<[Vec<usize>; 2]>, InferError> {
    let base = BaseModel::read(path)?;
    let shape =
        |layer: usize, tensor: &str| base.shapes.get(&format!("blk.{layer}.{tensor}.weight"));
    Ok((0..)
        .map_while(|layer| {
            Some([
                shape(layer, "attn_q")?.clone(),
                shape(layer, "attn_v")?.clone(),
            ])
        })
        .collect())
}

/// PEFT's files → a GGUF LoRA adapter for `base`.
pub(crate) fn convert(
    config: &[u8],
    weights: &[u8],
    base: &BaseModel,
) -> Result<Vec<u8>, InferError> {
    let config = finetunes::read_config(config).map_err(invalid)?;
    let tensors = candle_core::safetensors::load_buffer(weights, &Device::Cpu).map_err(|e| {
        invalid(format!(
            "{WEIGHTS_FILE} is not a readable safetensors file: {e}"
        ))
    })?;
    let mut pairs: BTreeMap<String, [Option<Tensor>; 2]> = BTreeMap::new();
    for (name, tensor) in tensors {
        let (target, which) = llama_name(&name).ok_or_else(|| {
            invalid(format!(
                "{WEIGHTS_FILE}: tensor {name} is not a LoRA matrix of a projection llama.cpp adapts \
                 (q, k, v, o, gate, up or down of a layer)"
            ))
        })?;
        pairs.entry(target).or_default()[which] = Some(tensor);
    }
    if pairs.is_empty() {
        return Err(invalid(format!("{WEIGHTS_FILE} holds no LoRA tensors")));
    }
    let mut gguf_tensors = Vec::with_capacity(2 * pairs.len());
    for (target, [a, b]) in pairs {
        let (Some(a), Some(b)) = (a, b) else {
            return Err(invalid(format!(
                "{WEIGHTS_FILE}: {target} has only one of lora_A and lora_B"
            )));
        };
        check_pair(&target, &a, &b, config.r, base)?;
        for (suffix, tensor) in [("lora_a", a), ("lora_b", b)] {
            let tensor = tensor
                .to_dtype(DType::F32)
                .and_then(|t| QTensor::quantize(&t, GgmlDType::F32))
                .map_err(|e| invalid(format!("{WEIGHTS_FILE}: {target}: {e}")))?;
            gguf_tensors.push((format!("{target}.{suffix}"), tensor));
        }
    }
    // llama.cpp scales by alpha / r; rsLoRA scales by lora_alpha / sqrt(r).
    let rank = config.r as f64;
    let alpha = match config.use_rslora {
        true => config.lora_alpha * rank.sqrt(),
        false => config.lora_alpha,
    };
    let metadata = [
        (
            "general.architecture",
            gguf_file::Value::String(base.architecture.clone()),
        ),
        ("general.type", gguf_file::Value::String("adapter".into())),
        ("adapter.type", gguf_file::Value::String("lora".into())),
        ("adapter.lora.alpha", gguf_file::Value::F32(alpha as f32)),
    ];
    let metadata: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = gguf_tensors
        .iter()
        .map(|(name, tensor)| (name.as_str(), tensor))
        .collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &metadata, &tensors)
        .map_err(|e| InferError::Internal(format!("writing the GGUF adapter: {e}")))?;
    Ok(out.into_inner())
}

/// `base_model.model.model.layers.{i}.{projection}.lora_{A|B}.weight` → (`blk.{i}.{tensor}.weight`,
/// 0 for A or 1 for B).
fn llama_name(peft: &str) -> Option<(String, usize)> {
    let rest = peft.strip_prefix("base_model.model.")?;
    let rest = rest.strip_prefix("model.").unwrap_or(rest);
    let rest = rest.strip_prefix("layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (projection, which) = match rest.strip_suffix(".weight")? {
        r if r.ends_with(".lora_A") => (r.strip_suffix(".lora_A")?, 0),
        r if r.ends_with(".lora_B") => (r.strip_suffix(".lora_B")?, 1),
        _ => return None,
    };
    let (_, tensor) = PROJECTIONS.iter().find(|(hf, _)| *hf == projection)?;
    Some((format!("blk.{layer}.{tensor}.weight"), which))
}

/// `a` is `[r, in]` and `b` `[out, r]` for the base tensor `[out, in]`.
fn check_pair(
    target: &str,
    a: &Tensor,
    b: &Tensor,
    rank: usize,
    base: &BaseModel,
) -> Result<(), InferError> {
    let (a_dims, b_dims) = (a.dims(), b.dims());
    let Some(base_dims) = base.shapes.get(target) else {
        return Err(invalid(format!(
            "the adapter is for another base model: {} has no tensor {target}",
            base.architecture
        )));
    };
    if a_dims.len() != 2 || b_dims.len() != 2 || a_dims[0] != b_dims[1] {
        return Err(invalid(format!(
            "{WEIGHTS_FILE}: {target}: lora_A {a_dims:?} and lora_B {b_dims:?} are not a LoRA pair"
        )));
    }
    if a_dims[0] != rank {
        return Err(invalid(format!(
            "{WEIGHTS_FILE}: {target}: rank {} differs from the config's r = {rank}",
            a_dims[0]
        )));
    }
    if base_dims.len() != 2 || base_dims[0] != b_dims[0] || base_dims[1] != a_dims[1] {
        return Err(invalid(format!(
            "the adapter is for another base model: {target} is {base_dims:?} in the model, \
             the adapter changes a [{}, {}] one",
            b_dims[0], a_dims[1]
        )));
    }
    Ok(())
}

/// The adapters a scheduler has loaded into its model, by converted file. llama.cpp keeps each
/// until the model is freed; a finetune deleted while requests use it stays loaded under them.
#[derive(Default)]
pub(crate) struct Adapters {
    loaded: Vec<(PathBuf, LlamaLoraAdapter)>,
}

impl Adapters {
    /// The index of the adapter in `path`, loading it into `model` on first use.
    pub fn index(&mut self, model: &LlamaModel, path: &Path) -> Result<usize, String> {
        if let Some(i) = self.loaded.iter().position(|(p, _)| p == path) {
            return Ok(i);
        }
        let adapter = init(model, path)?;
        self.loaded.push((path.to_path_buf(), adapter));
        Ok(self.loaded.len() - 1)
    }

    pub fn get(&mut self, index: usize) -> &mut LlamaLoraAdapter {
        &mut self.loaded[index].1
    }
}

/// `llama_adapter_lora_init` on a shared model. llama-cpp-2 asks for `&mut LlamaModel` because
/// llama.cpp records the adapter in the model (to free it with the model); the scheduler thread
/// is the only one that does so, and no other thread reads that record (tokenizing does not).
#[allow(unsafe_code)]
fn init(model: &LlamaModel, path: &Path) -> Result<LlamaLoraAdapter, String> {
    let c_path = std::ffi::CString::new(path.to_string_lossy().as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: `LlamaModel` is a `#[repr(transparent)]` wrapper of the non-null model pointer in
    // the pinned llama-cpp-2 (0.1.160), as `LlamaLoraAdapter` is of the adapter's; the model
    // outlives the call, and the path is a valid C string.
    unsafe {
        let raw_model: *mut llama_cpp_sys_2::llama_model = std::mem::transmute_copy(model);
        let adapter = llama_cpp_sys_2::llama_adapter_lora_init(raw_model, c_path.as_ptr());
        match std::ptr::NonNull::new(adapter) {
            Some(adapter) => Ok(std::mem::transmute::<
                std::ptr::NonNull<llama_cpp_sys_2::llama_adapter_lora>,
                LlamaLoraAdapter,
            >(adapter)),
            None => Err(format!(
                "llama.cpp could not load the LoRA adapter {}",
                path.display()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> BaseModel {
        BaseModel {
            architecture: "qwen2".into(),
            shapes: HashMap::from([
                ("blk.0.attn_q.weight".to_string(), vec![8, 8]),
                ("blk.0.attn_v.weight".to_string(), vec![4, 8]),
            ]),
        }
    }

    fn config(r: usize) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "r": r, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "peft_type": "LORA"
        }))
        .unwrap()
    }

    fn weights(tensors: &[(&str, (usize, usize))]) -> Vec<u8> {
        let tensors: Vec<(String, Tensor)> = tensors
            .iter()
            .map(|(name, shape)| {
                let count = shape.0 * shape.1;
                let values: Vec<f32> = (0..count).map(|i| i as f32 / count as f32).collect();
                let tensor = Tensor::from_vec(values, *shape, &Device::Cpu).unwrap();
                (name.to_string(), tensor)
            })
            .collect();
        // Tests run in parallel threads of one process: each file gets its own name.
        static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ember-lora-{}-{n}.st", std::process::id()));
        candle_core::safetensors::save(&tensors.into_iter().collect(), &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        bytes
    }

    const Q_A: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    const Q_B: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
    const V_A: &str = "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight";
    const V_B: &str = "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight";

    fn problem(result: Result<Vec<u8>, InferError>) -> String {
        match result {
            Err(InferError::InvalidInput { field, problem }) => {
                assert_eq!(field, "/lora");
                problem
            }
            other => panic!("expected an invalid-input error, got {other:?}"),
        }
    }

    #[test]
    fn converts_peft_pairs_to_llama_cpp_names_and_shapes() {
        let st = weights(&[(Q_A, (2, 8)), (Q_B, (8, 2)), (V_A, (2, 8)), (V_B, (4, 2))]);
        let gguf = convert(&config(2), &st, &base()).unwrap();
        let content = gguf_file::Content::read(&mut std::io::Cursor::new(&gguf)).unwrap();
        let text = |key: &str| content.metadata[key].to_string().unwrap().clone();
        assert_eq!(text("general.type"), "adapter");
        assert_eq!(text("adapter.type"), "lora");
        assert_eq!(text("general.architecture"), "qwen2");
        assert_eq!(
            content.metadata["adapter.lora.alpha"].to_f32().unwrap(),
            8.0
        );
        let shape = |name: &str| content.tensor_infos[name].shape.dims().to_vec();
        assert_eq!(shape("blk.0.attn_q.weight.lora_a"), vec![2, 8]);
        assert_eq!(shape("blk.0.attn_q.weight.lora_b"), vec![8, 2]);
        assert_eq!(shape("blk.0.attn_v.weight.lora_b"), vec![4, 2]);
        let b = content
            .tensor(
                &mut std::io::Cursor::new(&gguf),
                "blk.0.attn_v.weight.lora_b",
                &Device::Cpu,
            )
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        assert_eq!(
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap()[7],
            7.0 / 8.0
        );
    }

    #[test]
    fn refuses_what_llama_cpp_cannot_apply_naming_it() {
        let pair = weights(&[(Q_A, (2, 8)), (Q_B, (8, 2))]);
        assert!(problem(convert(&config(64), &pair, &base())).contains("rank (r) 64"));
        assert!(problem(convert(b"{", &pair, &base())).contains("adapter_config.json"));
        assert!(
            problem(convert(&config(2), b"\x10\x00garbage", &base()))
                .contains("not a readable safetensors")
        );
        let other_base = weights(&[(Q_A, (2, 16)), (Q_B, (16, 2))]);
        assert!(problem(convert(&config(2), &other_base, &base())).contains("another base model"));
        let missing = weights(&[(
            "base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight",
            (2, 8),
        )]);
        let text = problem(convert(&config(2), &missing, &base()));
        assert!(text.contains("blk.7.attn_q.weight"), "{text}");
        let embed = weights(&[("base_model.model.model.embed_tokens.lora_A.weight", (2, 8))]);
        assert!(problem(convert(&config(2), &embed, &base())).contains("embed_tokens"));
    }
}
