#!/usr/bin/env python3
"""ONNX Runtime's side of `ember bench image`: EfficientNet-Lite0 as an ONNX graph on onnxruntime,
timing the classification requests `ember bench image` sends on stdin, one JSON object per line.

    python onnxruntime_image_driver.py --weights efficientnet-lite0.pth --threads 2
    stdin:  {"images": ["a.png", "b.png"]}
    stdout: {"seconds": 0.12, "top1": [285, 967]}

The graph is built here from the same weights Ember serves (the legacy torch.save file, read with
Python's pickle, no torch needed): EfficientNet-Lite0 as published (TensorFlow "SAME" padding for
224×224 inputs, ReLU6, batch norms as BatchNormalization nodes, which onnxruntime folds into the
convolutions when it optimizes the graph, as it does for any export). The session is configured as
onnxruntime's users get it (default graph optimizations, `intra_op_num_threads` = threads). Each
image is classified from its file, one after another, timed end to end as Ember is: Pillow decodes
it and prepares it as ConvNextImageProcessor does (bicubic resize of the shortest edge to 256,
centre crop 224, (x - 127) / 128), then onnxruntime runs it.
"""

import argparse
import collections
import json
import pickle
import struct
import sys
import time

import numpy as np
import onnxruntime
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]
DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64}


def read_legacy_state_dict(path):
    """A pre-1.6 torch.save file: magic, protocol and system-info pickles, the state dict (whose
    tensors are strided views of storages), the storage keys, then each storage's data."""
    views = []

    def rebuild(storage, offset, size, stride, *_):
        view = {"storage": storage, "offset": offset, "size": size, "stride": stride}
        views.append(view)
        return view

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return rebuild
            if module == "torch" and name.endswith("Storage"):
                return name
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            raise pickle.UnpicklingError(f"unexpected {module}.{name}")

        def persistent_load(self, pid):
            _, storage_type, key, _location, _size, *_ = pid
            return (storage_type, key)

    with open(path, "rb") as f:
        for _ in range(3):
            pickle.load(f)
        state = Unpickler(f).load()
        keys = pickle.load(f)
        dtypes = {view["storage"][1]: DTYPES[view["storage"][0]] for view in views}
        storages = {}
        for key in keys:
            (count,) = struct.unpack("<q", f.read(8))
            storages[key] = np.frombuffer(f.read(count * np.dtype(dtypes[key]).itemsize), dtype=dtypes[key])
    tensors = {}
    for name, view in state.items():
        data = storages[view["storage"][1]]
        itemsize = data.itemsize
        array = np.lib.stride_tricks.as_strided(
            data[view["offset"] :], shape=view["size"], strides=[s * itemsize for s in view["stride"]]
        )
        tensors[name] = np.ascontiguousarray(array)
    return tensors


def same_pads(size, kernel, stride):
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


def build_graph(weights):
    nodes, initializers = [], []

    def constant(name, array):
        initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def conv_bn(x, conv, bn, size, stride, groups=1):
        weight = weights[f"{conv}.weight"]
        kernel = weight.shape[-1]
        before, after, out = same_pads(size, kernel, stride)
        name = conv.replace(".", "_")
        nodes.append(
            helper.make_node(
                "Conv", [x, constant(name + "_w", weight)], [name], strides=[stride, stride],
                pads=[before, before, after, after], group=groups,
            )
        )
        params = [constant(f"{name}_bn_{p}", weights[f"{bn}.{p}"]) for p in ("weight", "bias", "running_mean", "running_var")]
        nodes.append(helper.make_node("BatchNormalization", [name] + params, [name + "_bn"], epsilon=1e-3))
        return name + "_bn", out

    low, high = constant("relu6_min", np.float32(0)), constant("relu6_max", np.float32(6))

    def relu6(x):
        nodes.append(helper.make_node("Clip", [x, low, high], [x + "_relu6"]))
        return x + "_relu6"

    x, size = conv_bn("pixels", "_conv_stem", "_bn0", 224, 2)
    x = relu6(x)
    block, in_c = 0, 32
    for repeats, _kernel, first_stride, expansion, out_c in STAGES:
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            prefix = f"_blocks.{block}"
            y = x
            if expansion != 1:
                y, _ = conv_bn(y, f"{prefix}._expand_conv", f"{prefix}._bn0", size, 1)
                y = relu6(y)
            hidden = in_c * expansion
            y, new_size = conv_bn(y, f"{prefix}._depthwise_conv", f"{prefix}._bn1", size, stride, groups=hidden)
            y = relu6(y)
            y, _ = conv_bn(y, f"{prefix}._project_conv", f"{prefix}._bn2", new_size, 1)
            if stride == 1 and in_c == out_c:
                nodes.append(helper.make_node("Add", [y, x], [y + "_residual"]))
                y += "_residual"
            x, size, in_c, block = y, new_size, out_c, block + 1
    x, _ = conv_bn(x, "_conv_head", "_bn1", size, 1)
    x = relu6(x)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["features"]))
    nodes.append(
        helper.make_node("Gemm", ["features", constant("fc_w", weights["_fc.weight"]), constant("fc_b", weights["_fc.bias"])], ["logits"], transB=1)
    )
    graph = helper.make_graph(
        nodes,
        "efficientnet-lite0",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def preprocess(path):
    image = Image.open(path).convert("RGB")
    width, height = image.size
    short, long = min(width, height), max(width, height)
    long = int(256 * long / short)
    size = (256, long) if width <= height else (long, 256)
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - 224) // 2, (size[1] - 224) // 2
    pixels = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32)
    pixels = (pixels / 255.0 - 127 / 255) / (128 / 255)
    return pixels.transpose(2, 0, 1)[None]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model = build_graph(read_legacy_state_dict(args.weights))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        start = time.perf_counter()
        top1 = [int(np.argmax(session.run(None, {"pixels": preprocess(path)})[0])) for path in request["images"]]
        print(json.dumps({"seconds": time.perf_counter() - start, "top1": top1}), flush=True)


if __name__ == "__main__":
    main()
