"""Reference outputs for Ember's TAESD decoder (crates/ember-engines/src/diffusion/taesd.rs).

TAESD (diffusers' AutoencoderTiny) decodes Stable Diffusion's latents with a few plain
convolutions instead of the KL autoencoder's decoder. No real weights can be reached here, so this
script makes a tiny AutoencoderTiny with seeded random weights (the same layer structure at 8
channels) for the tiny test model made by diffusion.py, and records what diffusers computes with
it. Run after diffusion.py (it reads tiny-sd/ and reference.safetensors), with the same venv.

Writes into --out (the diffusion fixtures folder):

- tiny-sd/taesd/: the decoder-side AutoencoderTiny in diffusers' layout (config.json,
  diffusion_pytorch_model.safetensors, float32).
- taesd.safetensors: one decode (`taesd.latents` -> `taesd.decoded`, in [-1, 1]) and the whole
  text-to-image run of reference.json's `pipeline` with the tiny-sd pipeline decoding through TAESD
  (`taesd.pipeline.image`, floats in [0, 1]), from the same given initial latents.
- taesd.json: the versions and the run's settings.

Usage:

    python scripts/reference/taesd.py --out crates/ember-engines/tests/fixtures/diffusion
"""

import argparse
import json
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers import AutoencoderTiny, StableDiffusionPipeline
from safetensors.torch import load_file, save_file


def build_taesd():
    torch.manual_seed(3)
    taesd = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(2, 1, 1, 1),
        latent_channels=4,
    )
    # Default initialisation fades to a flat grey through twenty ReLU convolutions: redraw every
    # tensor at a scale that keeps the image varied.
    with torch.no_grad():
        for name, parameter in taesd.named_parameters():
            scale = 0.05 if name.endswith("bias") else 0.13
            parameter.copy_(torch.randn_like(parameter) * scale)
    return taesd.eval()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    out = parser.parse_args().out
    taesd = build_taesd()
    taesd.save_pretrained(out / "tiny-sd" / "taesd", safe_serialization=True)
    reference = json.loads((out / "reference.json").read_text())
    given = load_file(out / "reference.safetensors")
    run = reference["pipeline"]

    tensors = {}
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        latents = torch.randn((1, 4, 16, 16), generator=g)
        tensors["taesd.latents"] = latents
        tensors["taesd.decoded"] = taesd.decode(latents).sample

        pipe = StableDiffusionPipeline.from_pretrained(
            out / "tiny-sd", torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
        )
        pipe.vae = taesd
        image = pipe(
            run["prompt"],
            negative_prompt=run["negative_prompt"],
            num_inference_steps=run["steps"],
            guidance_scale=run["guidance"],
            latents=given["pipeline.latents"].clone(),
            output_type="np",
        ).images[0]
        tensors["taesd.pipeline.image"] = torch.from_numpy(np.ascontiguousarray(image))
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "taesd.safetensors")
    (out / "taesd.json").write_text(
        json.dumps(
            {"versions": {"torch": torch.__version__, "diffusers": diffusers.__version__}, "run": run},
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
