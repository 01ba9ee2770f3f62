//! BERT-family sentence encoders on ONNX Runtime: the encoder of `config.json` and
//! `model.safetensors` built here as an ONNX graph (the operations of transformers'
//! `modeling_bert.py`: absolute positions, post-norm layers, erf GELU; the weights stored f32 as
//! they are), which ONNX Runtime loads from memory, fuses (attention, layer norms) and runs.
//! Measured against candle's BERT on all-MiniLM-L6-v2 (`ember bench embed`, 2 cores), ONNX
//! Runtime runs the same graph 2-5× faster; `embed::load` uses this where ONNX Runtime is
//! installed and candle's `bert.rs` elsewhere.

use super::{Encoder, load_safetensors};
use crate::onnx;
use crate::onnx_proto::{BuiltModel, FLOAT, GraphBuilder, INT64, float, int, ints, value_info};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::bert::{Config, HiddenAct};
use ort::session::Session;
use ort::value::Tensor as OrtTensor;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

/// The additive attention mask of padding (transformers' extended mask in older versions; any
/// value this low gives the padded keys zero weight after softmax in f32).
const MASKED: f32 = -10000.0;

pub struct OnnxBert {
    session: Mutex<Session>,
    max_positions: usize,
    pad_id: u32,
}

impl OnnxBert {
    /// Builds the graph from the model folder and opens it with `threads` threads.
    pub fn load(dir: &Path, threads: usize) -> Result<OnnxBert, String> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| format!("cannot read {}: {e}", config_path.display()))?;
        let config: Config =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", config_path.display()))?;
        if config.hidden_act != HiddenAct::Gelu {
            return Err(format!(
                "hidden_act {:?} is not built here",
                config.hidden_act
            ));
        }
        let weights = load_safetensors(&dir.join("model.safetensors"))?;
        let graph =
            Graph::build(&weights, &config).map_err(|e| format!("model.safetensors: {e}"))?;
        let session = onnx::session_from_memory(graph, threads).map_err(|e| format!("{e:#}"))?;
        Ok(OnnxBert {
            session: Mutex::new(session),
            max_positions: config.max_position_embeddings,
            pad_id: config.pad_token_id as u32,
        })
    }
}

impl Encoder for OnnxBert {
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, seq) = input_ids.dims2()?;
        let ids: Vec<i64> = input_ids
            .flatten_all()?
            .to_vec1::<u32>()?
            .into_iter()
            .map(i64::from)
            .collect();
        let positions: Vec<i64> = (0..batch).flat_map(|_| 0..seq as i64).collect();
        let mask: Vec<f32> = attention_mask
            .flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            .map(|m| (1.0 - m) * MASKED)
            .collect();
        let run = || -> ort::Result<Vec<f32>> {
            let inputs = ort::inputs![
                "input_ids" => OrtTensor::from_array(([batch, seq], ids))?,
                "token_type_ids" => OrtTensor::from_array(([batch, seq], vec![0i64; batch * seq]))?,
                "position_ids" => OrtTensor::from_array(([batch, seq], positions))?,
                "mask_add" => OrtTensor::from_array(([batch, 1, 1, seq], mask))?,
            ];
            let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
            let outputs = session.run(inputs)?;
            let (_, hidden) = outputs[0].try_extract_tensor::<f32>()?;
            Ok(hidden.to_vec())
        };
        let hidden = run().map_err(|e| candle_core::Error::Msg(format!("ONNX Runtime: {e}")))?;
        let width = hidden.len() / (batch * seq).max(1);
        Tensor::from_vec(hidden, (batch, seq, width), &Device::Cpu)
    }

    fn max_positions(&self) -> usize {
        self.max_positions
    }

    fn pad_id(&self) -> u32 {
        self.pad_id
    }
}

/// The graph under construction: its nodes and weights.
struct Graph<'a> {
    weights: &'a HashMap<String, Tensor>,
    onnx: GraphBuilder,
}

impl<'a> Graph<'a> {
    /// The encoder as an ONNX model: inputs `input_ids`, `token_type_ids`, `position_ids` (i64
    /// `[batch, seq]`) and `mask_add` (f32 `[batch, 1, 1, seq]`), output `last_hidden_state`.
    fn build(
        weights: &'a HashMap<String, Tensor>,
        config: &Config,
    ) -> candle_core::Result<BuiltModel> {
        let mut g = Graph {
            weights,
            onnx: GraphBuilder::default(),
        };
        let (hidden, heads) = (config.hidden_size, config.num_attention_heads);
        let head_dim = hidden / heads;
        let eps = config.layer_norm_eps as f32;
        let e = "embeddings";
        let words = g.gather(&format!("{e}.word_embeddings.weight"), "input_ids")?;
        let positions = g.gather(&format!("{e}.position_embeddings.weight"), "position_ids")?;
        let types = g.gather(
            &format!("{e}.token_type_embeddings.weight"),
            "token_type_ids",
        )?;
        let sum = g.onnx.node("Add", &[&words, &positions], vec![]);
        let sum = g.onnx.node("Add", &[&sum, &types], vec![]);
        let mut x = g.layer_norm(&sum, &format!("{e}.LayerNorm"), eps)?;
        let split = g
            .onnx
            .constant_i64("split", &[0, 0, heads as i64, head_dim as i64]);
        let merge = g.onnx.constant_i64("merge", &[0, 0, hidden as i64]);
        let scale = g.onnx.constant_f32("scale", 1.0 / (head_dim as f32).sqrt());
        let (half, one) = (
            g.onnx.constant_f32("half", 0.5),
            g.onnx.constant_f32("one", 1.0),
        );
        let root2 = g.onnx.constant_f32("root2", std::f32::consts::SQRT_2);
        for layer in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{layer}");
            let attention = format!("{p}.attention.self");
            let heads_of = |g: &mut Graph, name: &str, perm: &[i64]| {
                let projected = g.linear(&x, &format!("{attention}.{name}"))?;
                let split = g.onnx.node("Reshape", &[&projected, &split], vec![]);
                candle_core::Result::Ok(g.onnx.node(
                    "Transpose",
                    &[&split],
                    vec![ints("perm", perm)],
                ))
            };
            let q = heads_of(&mut g, "query", &[0, 2, 1, 3])?;
            let k = heads_of(&mut g, "key", &[0, 2, 3, 1])?;
            let v = heads_of(&mut g, "value", &[0, 2, 1, 3])?;
            let scores = g.onnx.node("MatMul", &[&q, &k], vec![]);
            let scores = g.onnx.node("Mul", &[&scores, &scale], vec![]);
            let scores = g.onnx.node("Add", &[&scores, "mask_add"], vec![]);
            let probs = g.onnx.node("Softmax", &[&scores], vec![int("axis", -1)]);
            let context = g.onnx.node("MatMul", &[&probs, &v], vec![]);
            let context = g
                .onnx
                .node("Transpose", &[&context], vec![ints("perm", &[0, 2, 1, 3])]);
            let context = g.onnx.node("Reshape", &[&context, &merge], vec![]);
            let attended = g.linear(&context, &format!("{p}.attention.output.dense"))?;
            let residual = g.onnx.node("Add", &[&attended, &x], vec![]);
            x = g.layer_norm(&residual, &format!("{p}.attention.output.LayerNorm"), eps)?;
            // GELU as erf: x · ½ · (1 + erf(x / √2)).
            let up = g.linear(&x, &format!("{p}.intermediate.dense"))?;
            let scaled = g.onnx.node("Div", &[&up, &root2], vec![]);
            let erf = g.onnx.node("Erf", &[&scaled], vec![]);
            let erf = g.onnx.node("Add", &[&erf, &one], vec![]);
            let halved = g.onnx.node("Mul", &[&up, &half], vec![]);
            let gelu = g.onnx.node("Mul", &[&halved, &erf], vec![]);
            let down = g.linear(&gelu, &format!("{p}.output.dense"))?;
            let residual = g.onnx.node("Add", &[&down, &x], vec![]);
            x = g.layer_norm(&residual, &format!("{p}.output.LayerNorm"), eps)?;
        }
        g.onnx.output(&x, "last_hidden_state");
        let ids = |name: &str| value_info(name, INT64, &[Some("batch"), Some("seq")], &[]);
        let inputs = vec![
            ids("input_ids"),
            ids("token_type_ids"),
            ids("position_ids"),
            value_info(
                "mask_add",
                FLOAT,
                &[Some("batch"), None, None, Some("seq")],
                &[1, 1],
            ),
        ];
        let outputs = vec![value_info(
            "last_hidden_state",
            FLOAT,
            &[Some("batch"), Some("seq"), None],
            &[hidden as i64],
        )];
        Ok(g.onnx.model("bert", inputs, outputs, 17))
    }

    /// The model's tensor `name` (with or without transformers' `bert.` prefix) as f32.
    fn weight(&self, name: &str) -> candle_core::Result<Tensor> {
        self.weights
            .get(name)
            .or_else(|| self.weights.get(&format!("bert.{name}")))
            .ok_or_else(|| candle_core::Error::Msg(format!("no tensor {name}")))?
            .to_dtype(DType::F32)
    }

    /// Adds `tensor` as a weight named `name`; returns the name.
    fn initializer(&mut self, name: &str, tensor: &Tensor) -> candle_core::Result<String> {
        let values = tensor.flatten_all()?.to_vec1::<f32>()?;
        Ok(self.onnx.weight_f32(name, tensor.dims(), values))
    }

    fn gather(&mut self, table: &str, indices: &str) -> candle_core::Result<String> {
        let weights = self.weight(table)?;
        let table = self.initializer(table, &weights)?;
        Ok(self.onnx.node("Gather", &[&table, indices], vec![]))
    }

    /// `x · Wᵀ + b` for the PyTorch `Linear` named `prefix` (`W` stored `[out, in]`).
    fn linear(&mut self, x: &str, prefix: &str) -> candle_core::Result<String> {
        let weight_t = self
            .weight(&format!("{prefix}.weight"))?
            .t()?
            .contiguous()?;
        let weight_t = self.initializer(&format!("{prefix}.weight_t"), &weight_t)?;
        let bias = self.weight(&format!("{prefix}.bias"))?;
        let bias = self.initializer(&format!("{prefix}.bias"), &bias)?;
        let product = self.onnx.node("MatMul", &[x, &weight_t], vec![]);
        Ok(self.onnx.node("Add", &[&product, &bias], vec![]))
    }

    fn layer_norm(&mut self, x: &str, prefix: &str, eps: f32) -> candle_core::Result<String> {
        let gamma = self.weight(&format!("{prefix}.weight"))?;
        let gamma = self.initializer(&format!("{prefix}.weight"), &gamma)?;
        let beta = self.weight(&format!("{prefix}.bias"))?;
        let beta = self.initializer(&format!("{prefix}.bias"), &beta)?;
        let attributes = vec![int("axis", -1), float("epsilon", eps)];
        Ok(self
            .onnx
            .node("LayerNormalization", &[x, &gamma, &beta], attributes))
    }
}
