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
//! hit leaves a single row), and the process turns the tiled K-quant matmul off. Repacking
//! cannot be turned off through `llama-cpp-2` 0.1.160 (it does not expose `use_extra_bufts`, and
//! an override to the CPU buffer type picks the repacking buffer again), so models with weight
//! types llama.cpp repacks on this CPU architecture are refused.

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file;
use std::path::Path;

/// The environment variable that turns llama.cpp's tiled K-quant matmul off (when "0").
const TILED_MATMUL: &str = "GGML_CPU_TILED_MM";

/// Weight types llama.cpp's CPU backend repacks on this architecture (`ggml-cpu/repack.cpp`):
/// on x86 with AVX2, Q4_0, Q4_K and IQ4_NL (IQ types are refused anyway: candle cannot read
/// them), and Q2_K with AVX-512; on ARM also Q5_K, Q6_K and Q8_0.
const REPACKED: &[GgmlDType] = if cfg!(target_arch = "x86_64") {
    &[GgmlDType::Q4_0, GgmlDType::Q4K, GgmlDType::Q2K]
} else {
    &[
        GgmlDType::Q4_0,
        GgmlDType::Q4K,
        GgmlDType::Q2K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
        GgmlDType::Q8_0,
    ]
};

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

/// Why the model in `gguf` cannot run batch-invariant here, if it cannot.
pub(crate) fn refusal(gguf: &Path) -> Option<String> {
    if cfg!(feature = "cuda") {
        return Some(
            "batch invariance is for llama.cpp's CPU kernels; this build uses CUDA".into(),
        );
    }
    if std::env::var(TILED_MATMUL).as_deref() != Ok("0") {
        return Some(format!(
            "batch invariance needs {TILED_MATMUL}=0 set before the first model runs \
             (`ember serve --batch-invariant` sets it; in-process, call \
             `use_batch_invariant_kernels`)"
        ));
    }
    let content = std::fs::File::open(gguf)
        .map_err(|e| e.to_string())
        .and_then(|mut file| gguf_file::Content::read(&mut file).map_err(|e| e.to_string()));
    let content = match content {
        Ok(content) => content,
        Err(error) => {
            return Some(format!(
                "batch invariance: cannot check the weight types of {}: {error}",
                gguf.display()
            ));
        }
    };
    let mut repacked = content
        .tensor_infos
        .values()
        .filter(|info| REPACKED.contains(&info.ggml_dtype))
        .map(|info| type_name(info.ggml_dtype))
        .collect::<Vec<_>>();
    repacked.sort();
    repacked.dedup();
    (!repacked.is_empty()).then(|| {
        format!(
            "batch invariance: llama.cpp repacks {} weights on this CPU, and its repacked \
             kernels change with batch size; use a file of other types (Q4_1, Q5_0, Q5_1, Q8_0, \
             F16), e.g. from llama.cpp's `llama-quantize --allow-requantize IN OUT Q8_0`",
            repacked.join(", ")
        )
    })
}

/// llama.cpp's name for a weight type (candle's `Debug` drops the underscore of K-quants).
fn type_name(dtype: GgmlDType) -> &'static str {
    match dtype {
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8_0 => "Q8_0",
        _ => "other",
    }
}
