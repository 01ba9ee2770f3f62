#!/usr/bin/env python3
"""diffusers' side of `ember bench image`'s diffusion rows: a Stable Diffusion folder (diffusers'
layout) in diffusers' StableDiffusionPipeline on the CPU, timing the generations `ember bench
image` sends on stdin, one JSON object per line.

    python diffusers_driver.py --model DIR --scheduler ddim
    stdin:  {"prompt": "a lighthouse", "steps": 4, "size": 512, "guidance": 7.5, "seed": 0}
    stdout: {"seconds": 12.3}

The pipeline is configured as diffusers' users get it on a CPU (float32, torch's default thread
count), with the schedule Ember runs for the model (DDIM, or LCM for latent-consistency models),
and times a whole generation: prompt encoding, the denoising steps (two UNet halves under
guidance), the autoencoder's decode and the conversion to a PIL image.

    python diffusers_driver.py --make DIR --tokenizer TOKENIZER_DIR

instead writes a folder with Stable Diffusion 1.5's architecture at full size (CLIP ViT-L/14's text
encoder, the 860 M-parameter UNet, the autoencoder) and random weights, for machines without real
weights: speed does not depend on the weights' values. The tokenizer is copied from TOKENIZER_DIR
(the tiny test model's), the text encoder's vocabulary sized to it.
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    LCMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

SCHEDULE = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def make(out: Path, tokenizer_dir: Path):
    shutil.copytree(tokenizer_dir, out / "tokenizer", dirs_exist_ok=True)
    vocab = len(json.loads((tokenizer_dir / "vocab.json").read_text()))
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=vocab - 2,
            eos_token_id=vocab - 1,
            pad_token_id=vocab - 1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=64,
        cross_attention_dim=768,
        attention_head_dim=8,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    vae.save_pretrained(out / "vae", safe_serialization=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path)
    parser.add_argument("--scheduler", choices=["ddim", "lcm"], default="ddim")
    parser.add_argument("--make", type=Path)
    parser.add_argument("--tokenizer", type=Path)
    args = parser.parse_args()
    if args.make:
        make(args.make, args.tokenizer)
        return

    folder = args.model
    tokenizer = CLIPTokenizer(
        str(folder / "tokenizer/vocab.json"),
        str(folder / "tokenizer/merges.txt"),
        model_max_length=77,
    )
    scheduler = (LCMScheduler if args.scheduler == "lcm" else DDIMScheduler)(**SCHEDULE)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32),
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        start = time.perf_counter()
        pipe(
            request["prompt"],
            num_inference_steps=request["steps"],
            guidance_scale=request["guidance"],
            height=request["size"],
            width=request["size"],
            generator=torch.Generator().manual_seed(request["seed"]),
        )
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


if __name__ == "__main__":
    main()
