//! Where ONNX Runtime cannot be loaded, Stable Diffusion's UNet and autoencoder run on
//! candle-transformers' blocks and still match diffusers on the tiny generated SD 1.5
//! (`tests/fixtures/diffusion/`, as `diffusion_reference.rs`, with its tolerances). A test binary
//! of its own: the library is loaded once per process, and here it is pointed at nothing.

use candle_core::{Device, Tensor};
use ember_core::metrics::Metrics;
use ember_engines::diffusion::scheduler::SchedulerKind;
use ember_engines::diffusion::{DecoderKind, ImageGenerator};
use std::path::PathBuf;

fn max_difference(ours: &Tensor, theirs: &Tensor) -> f32 {
    assert_eq!(ours.dims(), theirs.dims());
    let difference = (ours - theirs)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap();
    difference.max(0).unwrap().to_scalar().unwrap()
}

#[test]
fn candle_runs_the_unet_and_decoder_without_onnxruntime() {
    // SAFETY: set before any thread of this test binary reads the environment (the only test).
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
    };
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusion");
    let tensors =
        candle_core::safetensors::load(fixtures.join("reference.safetensors"), &Device::Cpu)
            .unwrap();
    let generator = ImageGenerator::load(
        &fixtures.join("tiny-sd"),
        SchedulerKind::Ddim,
        DecoderKind::Autoencoder,
        Metrics::new().model("@hf/ember/tiny-sd"),
    )
    .unwrap();
    assert!(!generator.on_onnx_runtime());

    let timestep = tensors["unet.timestep"].to_vec1::<f32>().unwrap()[0] as usize;
    let predicted = generator
        .predict_noise(&tensors["unet.latents"], timestep, &tensors["unet.context"])
        .unwrap();
    let difference = max_difference(&predicted, &tensors["unet.out"]);
    assert!(difference <= 5e-4, "noise prediction: {difference}");

    let decoded = generator
        .decode(&(&tensors["vae.latents"] * 0.18215).unwrap())
        .unwrap();
    let expected = tensors["vae.decoded"].affine(0.5, 0.5).unwrap();
    let expected = expected.clamp(0.0f32, 1.0f32).unwrap();
    let difference = max_difference(&decoded, &expected);
    assert!(difference <= 1e-4, "decoded image: {difference}");
}
