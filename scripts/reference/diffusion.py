"""Reference outputs for Ember's Stable Diffusion engine (crates/ember-engines/src/diffusion).

No real diffusion weights can be reached from the machines Ember is tested on
(../shared/reference/model-sources.md), so this script makes a tiny Stable Diffusion 1.5 with
random weights (the same architecture at a few channels: CLIP text encoder, UNet with
cross-attention blocks, KL autoencoder with the 8× latent factor, and a small byte-level BPE
vocabulary in CLIP's tokenizer format) and records what diffusers and transformers compute with
it. Ember serves the same folder as its test model `@hf/ember/tiny-sd`.

Generated with Python 3.11, torch (the plain PyPI wheel, run on the CPU), diffusers and
transformers (versions recorded in reference.json). Writes into --out:

- tiny-sd/: the model in diffusers' folder layout (model_index.json, tokenizer/, text_encoder/,
  unet/, vae/, scheduler/), float16 safetensors.
- reference.json: the versions, the token ids CLIPTokenizer gives for a few prompts, the DDIM and
  LCM timesteps for a few step counts (and img2img strengths), and the settings of the tensors
  below.
- reference.safetensors: the text encoder's last hidden state for a prompt; one UNet call (latents,
  timestep, text states → noise prediction); one VAE decode and encode; one LCM scheduler step with
  its noise, and one DDIM step of a velocity-predicting model on the same tensors; a whole
  text-to-image run (DDIM, 4 steps, guidance 7.5, a negative prompt, given
  initial latents) with its output image as floats in [0, 1]; an image-to-image run from start.png
  (strength 0.6, 5 steps) and an inpainting run (start.png, mask.png; 4 steps), diffusers' noise
  replaced by given tensors (the image's latents drawn as mean + std × noise; inpainting's masked
  image encoded to its mean, as Ember does).
- start.png (the vision tests' cat, 256×256), mask.png (white: repainted), and
  tiny-sd-inpainting-unet/: an inpainting UNet (9 input channels) for the same tiny model.

Usage:

    python scripts/reference/diffusion.py --out crates/ember-engines/tests/fixtures/diffusion
"""

import argparse
import json
from pathlib import Path

import diffusers
import numpy as np
import torch
import transformers
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    LCMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.pipelines.stable_diffusion import (
    pipeline_stable_diffusion_img2img as img2img_module,
    pipeline_stable_diffusion_inpaint as inpaint_module,
)
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

# Text the tiny vocabulary's merges are learned from, and the prompts tokenized with it.
CORPUS = (
    "a photo of a cat sitting on a red sofa. an astronaut riding a horse on the moon, "
    "a cup of espresso on a wooden table, oil painting of a lighthouse at sunset, "
    "high quality, detailed, blurry, low quality, watermark"
)
PROMPTS = [
    "a photo of a cat",
    "An astronaut riding a HORSE on the moon!",
    "  espresso,   sunset\tlighthouse\n",
    "café naïve – 東京 🚀",
    "it's the cat's sofa, isn't it? 123 4567",
    " ".join(["lighthouse"] * 100),
]
MERGES = 120

STEPS_SCHEDULE = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def bytes_to_unicode():
    """GPT-2's reversible map of bytes to printable characters, which CLIP's BPE uses."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def learn_vocabulary(out: Path):
    """A CLIP-format vocabulary: every byte, every byte ending a word, MERGES learned merges."""
    byte_chars = list(bytes_to_unicode().values())
    words = [
        tuple(bytes_to_unicode()[b] for b in w.encode()) for w in CORPUS.lower().split()
    ]
    words = [w[:-1] + (w[-1] + "</w>",) for w in words]
    merges = []
    for _ in range(MERGES):
        pairs = {}
        for w in words:
            for pair in zip(w, w[1:]):
                pairs[pair] = pairs.get(pair, 0) + 1
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        merged = []
        for w in words:
            out_word, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out_word.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out_word.append(w[i])
                    i += 1
            merged.append(tuple(out_word))
        words = merged
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder = out / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    )
    tokenizer = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77
    )
    return tokenizer


def tiny_unet(in_channels: int, layers_per_block: int):
    return UNet2DConditionModel(
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=layers_per_block,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=32,
    ).eval()


def perturb(*models):
    """Random weights leave group norms at identity and biases at zero; perturb every parameter
    so that a wrong wiring cannot hide behind them. The folder stores float16 (as the Hub's fp16
    variants do); the references are computed in float32 from the same rounded values."""
    with torch.no_grad():
        for model in models:
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
                p.copy_(p.half().float())


def build_models(vocab_size: int):
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    ).eval()
    unet = tiny_unet(in_channels=4, layers_per_block=2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=256,
    ).eval()
    perturb(text_encoder, unet, vae)
    return text_encoder, unet, vae


def build_inpainting_unet():
    """An inpainting UNet for the same text encoder and autoencoder: 9 input channels (latents,
    mask, latents of the masked image)."""
    torch.manual_seed(1)
    unet = tiny_unet(in_channels=9, layers_per_block=1)
    perturb(unet)
    return unet


def patch_randomness(image_noise, noise, sample_latents):
    """Makes diffusers' image-to-image and inpainting pipelines draw the given noise: the
    starting latents' (`randn_tensor`) and, for the image's latents, `mean + std × image_noise`
    (`sample_latents`) or the mean (Ember encodes the masked image of inpainting to its mean)."""

    def retrieve_latents(encoder_output, generator=None, sample_mode="sample"):
        dist = encoder_output.latent_dist
        return dist.mean + dist.std * image_noise if sample_latents else dist.mean

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        assert tuple(shape) == tuple(noise.shape), shape
        return noise.clone()

    for module in (img2img_module, inpaint_module):
        module.retrieve_latents = retrieve_latents
        module.randn_tensor = randn_tensor


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    out = parser.parse_args().out
    model_dir = out / "tiny-sd"
    tokenizer = learn_vocabulary(model_dir)
    text_encoder, unet, vae = build_models(len(tokenizer))
    scheduler = DDIMScheduler(**STEPS_SCHEDULE)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )

    reference = {
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
        "tokens": [
            {"prompt": p, "ids": tokenizer(p, truncation=True, max_length=77).input_ids}
            for p in PROMPTS
        ],
        "ddim_timesteps": {},
        "lcm_timesteps": {},
        "img2img_timesteps": [],
    }
    for steps in (1, 4, 20, 50):
        ddim = DDIMScheduler(**STEPS_SCHEDULE)
        ddim.set_timesteps(steps)
        reference["ddim_timesteps"][str(steps)] = ddim.timesteps.tolist()
        lcm = LCMScheduler(**STEPS_SCHEDULE)
        lcm.set_timesteps(steps)
        reference["lcm_timesteps"][str(steps)] = lcm.timesteps.tolist()
    for steps, strength in ((20, 0.75), (4, 0.5), (10, 1.0), (3, 0.1)):
        ddim = DDIMScheduler(**STEPS_SCHEDULE)
        ddim.set_timesteps(steps)
        init = min(int(steps * strength), steps)
        start = max(steps - init, 0)
        reference["img2img_timesteps"].append(
            {"steps": steps, "strength": strength, "timesteps": ddim.timesteps[start:].tolist()}
        )

    tensors = {}
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        ids = tokenizer(
            PROMPTS[0], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
        states = text_encoder(ids).last_hidden_state
        tensors["text.ids"] = ids.to(torch.int64)
        tensors["text.states"] = states

        latents = torch.randn((2, 4, 32, 32), generator=g)
        context = torch.randn((2, 77, 32), generator=g)
        tensors["unet.latents"] = latents
        tensors["unet.context"] = context
        tensors["unet.timestep"] = torch.tensor([981.0])
        tensors["unet.out"] = unet(latents, 981, encoder_hidden_states=context).sample

        vae_latents = torch.randn((1, 4, 16, 16), generator=g)
        tensors["vae.latents"] = vae_latents
        tensors["vae.decoded"] = vae.decode(vae_latents).sample
        image = torch.rand((1, 3, 128, 128), generator=g) * 2 - 1
        tensors["vae.image"] = image
        posterior = vae.encode(image).latent_dist
        tensors["vae.mean"] = posterior.mean
        tensors["vae.std"] = posterior.std

        lcm = LCMScheduler(**STEPS_SCHEDULE)
        lcm.set_timesteps(4)
        model_output = torch.randn((1, 4, 32, 32), generator=g)
        sample = torch.randn((1, 4, 32, 32), generator=g)
        step_seed = 7
        t = lcm.timesteps[1]
        stepped = lcm.step(
            model_output, t, sample, generator=torch.Generator().manual_seed(step_seed)
        ).prev_sample
        # LCMScheduler draws its noise as randn_tensor(shape, generator) right away.
        noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(step_seed))
        tensors["lcm.model_output"] = model_output
        tensors["lcm.sample"] = sample
        tensors["lcm.noise"] = noise
        tensors["lcm.timestep"] = torch.tensor([float(t)])
        tensors["lcm.stepped"] = stepped
        reference["lcm_step"] = {"steps": 4, "step_index": 1, "timestep": int(t)}

        # One DDIM step of a velocity-predicting model (SD 2's 768-pixel ones).
        ddim_v = DDIMScheduler(**STEPS_SCHEDULE, prediction_type="v_prediction")
        ddim_v.set_timesteps(4)
        t = ddim_v.timesteps[1]
        tensors["ddim_v.stepped"] = ddim_v.step(model_output, t, sample).prev_sample
        reference["ddim_v_step"] = {"steps": 4, "step_index": 1, "timestep": int(t)}

        initial = torch.randn((1, 4, 32, 32), generator=g)
        run = {
            "prompt": "a photo of a cat",
            "negative_prompt": "blurry",
            "steps": 4,
            "guidance": 7.5,
            "width": 256,
            "height": 256,
        }
        image = pipe(
            run["prompt"],
            negative_prompt=run["negative_prompt"],
            num_inference_steps=run["steps"],
            guidance_scale=run["guidance"],
            latents=initial.clone(),
            output_type="np",
        ).images[0]
        tensors["pipeline.latents"] = initial
        tensors["pipeline.image"] = torch.from_numpy(np.ascontiguousarray(image))
        reference["pipeline"] = run

        # Image-to-image from a 256×256 photo (no resize on either side), noise given.
        start = Image.open(Path(__file__).parents[2] / "crates/ember-engines/tests/fixtures/vision/images/cat.png")
        start = start.convert("RGB").resize((256, 256), Image.LANCZOS)
        start.save(out / "start.png")
        image_noise = torch.randn((1, 4, 32, 32), generator=g)
        noise = torch.randn((1, 4, 32, 32), generator=g)
        patch_randomness(image_noise, noise, sample_latents=True)
        img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
        run2 = {"prompt": "a photo of a cat", "negative_prompt": "blurry", "steps": 5,
                "guidance": 7.5, "strength": 0.6}
        image = img2img(
            run2["prompt"],
            image=start,
            strength=run2["strength"],
            negative_prompt=run2["negative_prompt"],
            num_inference_steps=run2["steps"],
            guidance_scale=run2["guidance"],
            output_type="np",
        ).images[0]
        tensors["img2img.image_noise"] = image_noise
        tensors["img2img.noise"] = noise
        tensors["img2img.image"] = torch.from_numpy(np.ascontiguousarray(image))
        reference["img2img"] = run2

        # Inpainting: a black-and-white mask (white repainted), whole schedule.
        mask = Image.new("L", (256, 256), 0)
        mask.paste(255, (64, 96, 200, 224))
        mask.save(out / "mask.png")
        inpaint_unet = build_inpainting_unet()
        patch_randomness(image_noise, noise, sample_latents=False)
        components = dict(pipe.components, unet=inpaint_unet)
        inpaint = StableDiffusionInpaintPipeline(**components)
        run3 = {"prompt": "a photo of a cat", "negative_prompt": "blurry", "steps": 4, "guidance": 7.5}
        image = inpaint(
            run3["prompt"],
            image=start,
            mask_image=mask,
            negative_prompt=run3["negative_prompt"],
            num_inference_steps=run3["steps"],
            guidance_scale=run3["guidance"],
            output_type="np",
        ).images[0]
        tensors["inpaint.image"] = torch.from_numpy(np.ascontiguousarray(image))
        reference["inpaint"] = run3
        inpaint_unet.to(torch.float16).save_pretrained(
            out / "tiny-sd-inpainting-unet", safe_serialization=True
        )

    pipe.to(torch.float16).save_pretrained(model_dir, safe_serialization=True)
    # The Hub's SD folders have vocab.json and merges.txt, which is what Ember reads.
    (model_dir / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "reference.safetensors")
    (out / "reference.json").write_text(json.dumps(reference, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
