//! ONNX Runtime: its shared library, found and loaded once per process, and the sessions the
//! models on it run in (the voices in `tts`, Whisper's voice activity detector, and the graphs
//! Ember builds with `onnx_proto`: BERT embeddings, the TF.js detector, Stable Diffusion's UNet
//! and decoder).
//!
//! The library is loaded at run time (`ort`'s `load-dynamic`) rather than linked: `ort` would
//! otherwise download a build at compile time, and the build hosts are offline. The file is the
//! `libonnxruntime.so` of PyPI's onnxruntime wheel, which `scripts/install-deps.sh` unpacks into
//! `$EMBER_HOME/lib` (`ORT_DYLIB_PATH` names another file).

use crate::onnx_proto::BuiltModel;
use anyhow::{Context, anyhow, bail};
use ort::session::Session;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The library's file name inside `$EMBER_HOME/lib`.
const LIBRARY: &str = "libonnxruntime.so";

/// Opens the ONNX model at `path` for inference on the CPU with `threads` threads.
pub(crate) fn session(path: &Path, threads: usize) -> anyhow::Result<Session> {
    load_library()?;
    let open = || builder(threads)?.commit_from_file(path);
    open().with_context(|| format!("opening {} with ONNX Runtime", path.display()))
}

/// `session` for a model built in memory (`onnx_proto`), its external weights handed over as
/// values.
pub(crate) fn session_from_memory(model: BuiltModel, threads: usize) -> anyhow::Result<Session> {
    load_library()?;
    let open = || -> ort::Result<Session> {
        let mut session = builder(threads)?;
        for weight in model.external {
            let value = ort::value::Tensor::from_array((weight.dims, weight.values))?;
            session = session.with_external_initializer(&weight.name, value.into_dyn())?;
        }
        session.commit_from_memory(&model.proto)
    };
    open().context("opening a built model with ONNX Runtime")
}

fn builder(threads: usize) -> ort::Result<ort::session::builder::SessionBuilder> {
    Ok(Session::builder()?
        .with_intra_threads(threads)?
        // One model call at a time per session: no graph-level parallelism to feed.
        .with_inter_threads(1)?
        // The worker thread shares the CPU with other models: idle threads sleep instead of
        // spinning for the next call.
        .with_intra_op_spinning(false)?)
}

/// A candle tensor as an ONNX Runtime input, in f32.
pub(crate) fn input(tensor: &candle_core::Tensor) -> anyhow::Result<ort::value::Tensor<f32>> {
    let values = tensor
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(ort::value::Tensor::from_array((
        tensor.dims().to_vec(),
        values,
    ))?)
}

/// The first output of a run (f32) as a candle tensor.
pub(crate) fn first_output(
    outputs: &ort::session::SessionOutputs,
) -> anyhow::Result<candle_core::Tensor> {
    candle_tensor(&outputs[0])
}

/// An f32 output of a run as a candle tensor.
pub(crate) fn candle_tensor(value: &ort::value::DynValue) -> anyhow::Result<candle_core::Tensor> {
    let (shape, values) = value.try_extract_tensor::<f32>()?;
    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    Ok(candle_core::Tensor::from_vec(
        values.to_vec(),
        dims,
        &candle_core::Device::Cpu,
    )?)
}

/// Loads the library once; every later call returns the first outcome.
fn load_library() -> anyhow::Result<()> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let path = library_path();
            if !path.is_file() {
                return Err(format!(
                    "ONNX Runtime is not installed: no {} (scripts/install-deps.sh puts it there; \
                     ORT_DYLIB_PATH may name another libonnxruntime.so)",
                    path.display()
                ));
            }
            // The environment keeps ONNX Runtime's defaults; `commit` only fails to take effect if
            // one was made before, which nothing else in the process does.
            ort::init_from(&path)
                .map(|environment| {
                    environment.commit();
                })
                .map_err(|e| format!("loading ONNX Runtime: {e}"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

fn library_path() -> PathBuf {
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => ember_core::installed::default_home()
            .join("lib")
            .join(LIBRARY),
    }
}

/// The input names a model must have, checked at load so a wrong file fails there and not on
/// the first request.
pub(crate) fn check_inputs(session: &Session, names: &[&str], model: &Path) -> anyhow::Result<()> {
    let has = |name: &str| session.inputs().iter().any(|i| i.name() == name);
    if let Some(missing) = names.iter().find(|n| !has(n)) {
        let found: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        bail!(
            "{} has no input `{missing}` (inputs: {}): not a model this engine runs",
            model.display(),
            found.join(", ")
        );
    }
    Ok(())
}
