//! Batch invariance: what it takes from llama.cpp for a sequence's logits to be bit-identical
//! whether it runs alone, beside others, or from the prefix cache, and the check at load time
//! that a model can have it.
//!
//! llama.cpp's CPU backend picks kernels by batch shape, and they round differently:
//! - flash attention takes a tiled path for 32 or more query rows, a one-query path below, and a
//!   path that splits the cells among threads for a lone sequence's single query from 512
//!   cells. Without flash attention, attention is two matmuls and a softmax per query row;
//!   masked cells add exact zeros, so the number of cells a batch spans does not matter.
//! - matmuls use llamafile's tiled kernels from 2 rows (one accumulator per output, the same
//!   order as the 1-row dot product for the quantized types, not for f16 attention), a tiled
//!   K-quant kernel from 8 rows (`GGML_CPU_TILED_MM`), and, for weights repacked into
//!   interleaved layouts, GEMM for groups of 4 rows and GEMV for the rest.
//!
//! So the scheduler, in this mode, gives each sequence its own KV stream, turns flash attention
//! off, reads each prompt chunk in its own pass (llama.cpp would otherwise cut it to the length
//! of the decode rows beside it) and never computes a prompt row alone (no chunk and no cache
//! hit leaves a single row), the process turns the tiled K-quant matmul off, and the model is
//! loaded with repacking off (`load_without_repacking`), so Q4_K and Q4_0 weights go through the
//! same row-by-row dot products as the other types.

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use std::path::Path;

/// The environment variable that turns llama.cpp's tiled K-quant matmul off (when "0").
const TILED_MATMUL: &str = "GGML_CPU_TILED_MM";

/// Turns llama.cpp's tiled K-quant matmul off for the whole process. llama.cpp reads the
/// variable once, at its first matmul, so this must come before any model runs.
///
/// # Safety
/// It sets an environment variable: no other thread may read or write the environment
/// meanwhile (call it before starting threads).
// Setting the environment is unsafe in Rust 2024; llama.cpp offers no other switch.
#[allow(unsafe_code)]
pub unsafe fn use_batch_invariant_kernels() {
    // SAFETY: the caller guarantees no other thread touches the environment.
    unsafe { std::env::set_var(TILED_MATMUL, "0") };
}

/// Why models cannot run batch-invariant in this process, if they cannot.
pub(crate) fn refusal() -> Option<String> {
    if cfg!(feature = "cuda") {
        return Some(
            "batch invariance is for llama.cpp's CPU kernels; this build uses CUDA".into(),
        );
    }
    (std::env::var(TILED_MATMUL).as_deref() != Ok("0")).then(|| {
        format!(
            "batch invariance needs {TILED_MATMUL}=0 set before the first model runs \
             (`ember serve --batch-invariant` sets it; in-process, call \
             `use_batch_invariant_kernels`)"
        )
    })
}

/// Loads the GGUF at `path` with llama.cpp's weight repacking off (`use_extra_bufts = false`):
/// repacked weights switch between GEMV and GEMM kernels by row count, which round differently.
/// llama-cpp-2 0.1.160 does not expose the flag (and its CPU buffer override picks the
/// repacking buffer again), so this calls llama.cpp's loader itself with its default parameters
/// and that one change.
#[allow(unsafe_code)]
pub(crate) fn load_without_repacking(
    _initialized: &LlamaBackend,
    path: &Path,
) -> Result<LlamaModel, String> {
    let c_path = std::ffi::CString::new(path.to_string_lossy().as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: the backend is initialized (the argument proves it) and the path is a valid C
    // string; `LlamaModel` is a `#[repr(transparent)]` wrapper of the non-null model pointer in
    // the pinned llama-cpp-2 (0.1.160), which frees it with `llama_model_free` when dropped, as
    // for a model it loaded itself.
    unsafe {
        let mut params = llama_cpp_sys_2::llama_model_default_params();
        params.use_extra_bufts = false;
        let model = llama_cpp_sys_2::llama_model_load_from_file(c_path.as_ptr(), params);
        match std::ptr::NonNull::new(model) {
            Some(model) => Ok(std::mem::transmute::<
                std::ptr::NonNull<llama_cpp_sys_2::llama_model>,
                LlamaModel,
            >(model)),
            None => Err(format!("llama.cpp could not load {}", path.display())),
        }
    }
}
