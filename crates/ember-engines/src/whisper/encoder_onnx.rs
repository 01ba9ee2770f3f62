//! Whisper's audio encoder on ONNX Runtime: the candle encoder's weights (`model::Encoder`)
//! written into an ONNX graph of the same operations (two GELU'd convolutions, positions,
//! pre-norm attention blocks, the final norm) that also computes every decoder layer's
//! cross-attention keys and values, laid out as `CrossKv` keeps them. ONNX Runtime's matrix
//! products are faster than candle's on the encoder's 1500 rows (ARCHITECTURE.md).

use super::model::{CrossKv, Encoder, FeedForward, LAYER_NORM_EPS, LayerNorm, Linear};
use crate::onnx;
use crate::onnx_proto::{FLOAT, GraphBuilder, float, int, ints, value_info};
use anyhow::Context;
use candle_core::Tensor;
use ort::session::Session;
use std::sync::Mutex;

pub(super) struct OnnxEncoder {
    session: Mutex<Session>,
    layers: usize,
}

impl OnnxEncoder {
    /// The graph of `encoder`, loaded into a session running on `threads` threads.
    pub(super) fn build(encoder: &Encoder, threads: usize) -> anyhow::Result<OnnxEncoder> {
        let model = Graph::default().encoder(encoder)?;
        Ok(OnnxEncoder {
            session: Mutex::new(onnx::session_from_memory(model, threads)?),
            layers: encoder.cross_kv.len(),
        })
    }

    /// `[1, n_mels, frames]` → the window's cross-attention keys and values.
    pub(super) fn encode(&self, mel: &Tensor) -> anyhow::Result<CrossKv> {
        let inputs = ort::inputs!["mel" => onnx::input(mel)?];
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session.run(inputs).context("ONNX Runtime")?;
        let tensor = |name: String| onnx::candle_tensor(&outputs[name.as_str()]);
        let layers = (0..self.layers)
            .map(|l| Ok((tensor(keys_name(l))?, tensor(values_name(l))?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(CrossKv { layers })
    }
}

fn keys_name(layer: usize) -> String {
    format!("keys_t_{layer}")
}

fn values_name(layer: usize) -> String {
    format!("values_{layer}")
}

/// The graph being written; weights are named by their place in the model.
#[derive(Default)]
struct Graph {
    onnx: GraphBuilder,
}

impl Graph {
    fn encoder(mut self, encoder: &Encoder) -> anyhow::Result<crate::onnx_proto::BuiltModel> {
        let d = encoder.positions.dim(1)?;
        let conv1 = self.conv(&encoder.conv1, "mel", "conv1", 1)?;
        let conv2 = self.conv(&encoder.conv2, &conv1, "conv2", 2)?;
        let mut x = self
            .onnx
            .node("Transpose", &[&conv2], vec![ints("perm", &[0, 2, 1])]);
        // The first `frames / 2` positions.
        let positions = self.weight("positions", &encoder.positions)?;
        let length = self
            .onnx
            .node("Shape", &[&x], vec![int("start", 1), int("end", 2)]);
        let zero = self.onnx.constant_i64("zero", &[0]);
        let positions = self
            .onnx
            .node("Slice", &[&positions, &zero, &length, &zero], vec![]);
        x = self.onnx.node("Add", &[&x, &positions], vec![]);

        let head_dim = d / encoder.heads;
        for (l, layer) in encoder.layers.iter().enumerate() {
            let name = format!("layer{l}");
            let normed = self.layer_norm(&x, &layer.norm, &format!("{name}/norm"))?;
            let qkv = self.linear(&normed, &layer.qkv, &format!("{name}/qkv"))?;
            let qkv = self.onnx.node_outputs(
                "Split",
                &[&qkv],
                3,
                vec![int("axis", -1), int("num_outputs", 3)],
            );
            let context = self.onnx.scaled_dot_product(
                &qkv[0],
                &qkv[1],
                &qkv[2],
                encoder.heads,
                head_dim,
                &name,
            );
            let out = self.linear(&context, &layer.out, &format!("{name}/out"))?;
            x = self.onnx.node("Add", &[&x, &out], vec![]);
            x = self.feed_forward(&x, &layer.ffn, &format!("{name}/ffn"))?;
        }
        let audio = self.layer_norm(&x, &encoder.norm, "norm")?;

        // Per decoder layer: `[1, n, 2d]` → keys `[heads, head_dim, n]`, values `[heads, n,
        // head_dim]`.
        let heads = encoder.decoder_heads;
        let split = self
            .onnx
            .constant_i64("cross/split", &[-1, heads as i64, (d / heads) as i64]);
        let mut outputs = Vec::new();
        for (l, cross_kv) in encoder.cross_kv.iter().enumerate() {
            let kv = self.linear(&audio, cross_kv, &format!("cross{l}"))?;
            let kv = self.onnx.node_outputs(
                "Split",
                &[&kv],
                2,
                vec![int("axis", -1), int("num_outputs", 2)],
            );
            for (value, perm, name) in [
                (&kv[0], [1, 2, 0], keys_name(l)),
                (&kv[1], [1, 0, 2], values_name(l)),
            ] {
                let heads_of = self.onnx.node("Reshape", &[value, &split], vec![]);
                let laid_out = self
                    .onnx
                    .node("Transpose", &[&heads_of], vec![ints("perm", &perm)]);
                self.onnx.output(&laid_out, &name);
                let free = [Some("heads"), Some("rows"), Some("columns")];
                outputs.push(value_info(&name, FLOAT, &free, &[]));
            }
        }
        let dims = |(w, _): &(Tensor, Tensor)| w.dims3();
        let (_, n_mels, _) = dims(&encoder.conv1)?;
        let input = value_info(
            "mel",
            FLOAT,
            &[None, None, Some("frames")],
            &[1, n_mels as i64],
        );
        Ok(self.onnx.model("whisper-encoder", vec![input], outputs, 18))
    }

    fn weight(&mut self, name: &str, tensor: &Tensor) -> anyhow::Result<String> {
        let values = tensor.flatten_all()?.to_vec1::<f32>()?;
        Ok(self.onnx.weight_f32(name, tensor.dims(), values))
    }

    /// A 1-D convolution of kernel 3 and padding 1, then GELU.
    fn conv(
        &mut self,
        (weight, bias): &(Tensor, Tensor),
        x: &str,
        name: &str,
        stride: i64,
    ) -> anyhow::Result<String> {
        let weight = self.weight(&format!("{name}/weight"), weight)?;
        let bias = self.weight(&format!("{name}/bias"), bias)?;
        let conv = self.onnx.node(
            "Conv",
            &[x, &weight, &bias],
            vec![ints("strides", &[stride]), ints("pads", &[1, 1])],
        );
        Ok(self.onnx.gelu(&conv))
    }

    /// `x · W + b`, `W` stored `[in, out]`.
    fn linear(&mut self, x: &str, linear: &Linear, name: &str) -> anyhow::Result<String> {
        let weight = self.weight(&format!("{name}/weight_t"), &linear.weight_t)?;
        let bias = self.weight(&format!("{name}/bias"), &linear.bias)?;
        let product = self.onnx.node("MatMul", &[x, &weight], vec![]);
        Ok(self.onnx.node("Add", &[&product, &bias], vec![]))
    }

    fn layer_norm(&mut self, x: &str, norm: &LayerNorm, name: &str) -> anyhow::Result<String> {
        let gamma = self.weight(&format!("{name}/gamma"), &norm.gamma)?;
        let beta = self.weight(&format!("{name}/beta"), &norm.beta)?;
        Ok(self.onnx.node(
            "LayerNormalization",
            &[x, &gamma, &beta],
            vec![int("axis", -1), float("epsilon", LAYER_NORM_EPS)],
        ))
    }

    /// `x + fc2(gelu(fc1(norm(x))))`.
    fn feed_forward(&mut self, x: &str, ffn: &FeedForward, name: &str) -> anyhow::Result<String> {
        let normed = self.layer_norm(x, &ffn.norm, &format!("{name}/norm"))?;
        let hidden = self.linear(&normed, &ffn.fc1, &format!("{name}/fc1"))?;
        let hidden = self.onnx.gelu(&hidden);
        let out = self.linear(&hidden, &ffn.fc2, &format!("{name}/fc2"))?;
        Ok(self.onnx.node("Add", &[x, &out], vec![]))
    }
}
