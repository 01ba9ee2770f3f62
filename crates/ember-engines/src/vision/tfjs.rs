//! TF.js graph models (a `model.json` and its weight files, as tensorflowjs_converter writes them)
//! translated to ONNX, for ONNX Runtime to run: no Rust runtime reads TF.js, and converting
//! through TensorFlow would need TensorFlow.
//!
//! The translation covers the operations of convolutional image networks (convolutions, with
//! the converter's fused bias and activation, element-wise arithmetic, activations, means,
//! bilinear resizes, concatenation); any other operation is refused by name at load. TensorFlow
//! keeps images NHWC and ONNX Runtime's convolutions want NCHW, so every activation is held NCHW
//! inside the graph: the input is transposed once, the weights are rearranged here, axes are
//! renumbered, and each requested output is transposed back to NHWC. The input takes an image of
//! any size, resized to the network's as TF.js users do (`tf.image.resizeBilinear`).

use crate::onnx_proto::{BuiltModel, FLOAT, GraphBuilder, float, int, ints, string, value_info};
use anyhow::{Context, anyhow, bail, ensure};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// The ONNX graph input: one NHWC image of f32 pixel values, any height and width.
pub(crate) const INPUT: &str = "image";

/// A TF.js graph model: its nodes and its constants' values.
pub(crate) struct TfjsModel {
    nodes: HashMap<String, TfNode>,
    constants: HashMap<String, Constant>,
}

#[derive(Deserialize)]
struct ModelJson {
    format: String,
    #[serde(rename = "modelTopology")]
    topology: Topology,
    #[serde(rename = "weightsManifest")]
    manifest: Vec<WeightGroup>,
}

#[derive(Deserialize)]
struct Topology {
    node: Vec<TfNode>,
}

#[derive(Deserialize)]
struct TfNode {
    name: String,
    op: String,
    #[serde(default)]
    input: Vec<String>,
    #[serde(default)]
    attr: HashMap<String, Value>,
}

#[derive(Deserialize)]
struct WeightGroup {
    paths: Vec<String>,
    weights: Vec<WeightSpec>,
}

#[derive(Deserialize)]
struct WeightSpec {
    name: String,
    shape: Vec<usize>,
    dtype: String,
    quantization: Option<Quantization>,
}

/// How a weight is stored when smaller than its type: float16, or `q · scale + min` in 8 or 16
/// bits.
#[derive(Deserialize)]
struct Quantization {
    dtype: String,
    scale: Option<f32>,
    min: Option<f32>,
}

/// A constant's value: floats as f32, integers (axes, sizes) as i64.
struct Constant {
    dims: Vec<usize>,
    values: Values,
}

enum Values {
    Float(Vec<f32>),
    Int(Vec<i64>),
}

impl TfjsModel {
    /// Reads `dir/file` and the weight files its manifest names (plain file names in `dir`).
    pub(crate) fn read(dir: &Path, file: &str) -> anyhow::Result<TfjsModel> {
        let path = dir.join(file);
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let json: ModelJson = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a TF.js model", path.display()))?;
        ensure!(
            json.format == "graph-model",
            "{} is a TF.js {} model; only graph models are read",
            path.display(),
            json.format
        );
        let mut constants = HashMap::new();
        for group in &json.manifest {
            let mut data = Vec::new();
            for shard in &group.paths {
                ensure!(
                    !shard.contains('/') && !shard.contains('\\') && shard != "..",
                    "weight file {shard:?} is not a file beside the model"
                );
                let bytes = std::fs::read(dir.join(shard))
                    .with_context(|| format!("reading weight file {shard}"))?;
                data.extend_from_slice(&bytes);
            }
            let mut rest = data.as_slice();
            for spec in &group.weights {
                let constant = decode_weight(spec, &mut rest)
                    .with_context(|| format!("weight {}", spec.name))?;
                constants.insert(spec.name.clone(), constant);
            }
            ensure!(rest.is_empty(), "{} bytes of weights left over", rest.len());
        }
        let nodes = json
            .topology
            .node
            .into_iter()
            .map(|node| (node.name.clone(), node))
            .collect();
        Ok(TfjsModel { nodes, constants })
    }

    /// The ONNX model computing the TF tensors `outputs` (each an ONNX output of the same name,
    /// NHWC) from `INPUT`, opset 18.
    pub(crate) fn to_onnx(&self, outputs: &[&str]) -> anyhow::Result<BuiltModel> {
        let mut translation = Translation {
            model: self,
            onnx: GraphBuilder::default(),
            values: HashMap::new(),
        };
        let mut output_infos = Vec::new();
        for &name in outputs {
            let value = translation.value(name)?;
            let nhwc = translation.nhwc(&value);
            translation.onnx.output(&nhwc, name);
            let free = [
                Some("batch"),
                Some("height"),
                Some("width"),
                Some("channels"),
            ];
            output_infos.push(value_info(name, FLOAT, &free, &[]));
        }
        let input = value_info(
            INPUT,
            FLOAT,
            &[None, Some("height"), Some("width"), None],
            &[1, 3],
        );
        Ok(translation
            .onnx
            .model("tfjs", vec![input], output_infos, 18))
    }

    /// The network's input size (height, width), from its placeholder's shape.
    pub(crate) fn input_size(&self) -> anyhow::Result<(usize, usize)> {
        let placeholder = self
            .nodes
            .values()
            .find(|node| node.op == "Placeholder")
            .ok_or_else(|| anyhow!("the model has no input"))?;
        placeholder_size(placeholder)
    }
}

/// Reads one weight from the front of `data`, dequantized.
fn decode_weight(spec: &WeightSpec, data: &mut &[u8]) -> anyhow::Result<Constant> {
    let count: usize = spec.shape.iter().product();
    let mut take = |width: usize| -> anyhow::Result<&[u8]> {
        ensure!(
            data.len() >= count * width,
            "the weight files are too short"
        );
        let (head, tail) = data.split_at(count * width);
        *data = tail;
        Ok(head)
    };
    let values = match (&spec.quantization, spec.dtype.as_str()) {
        (None, "float32") => Values::Float(
            take(4)?
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        (None, "int32") => Values::Int(
            take(4)?
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                .collect(),
        ),
        (Some(q), "float32") if q.dtype == "float16" => Values::Float(
            take(2)?
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ),
        (Some(q), "float32") if q.dtype == "uint8" || q.dtype == "uint16" => {
            let (scale, min) = (q.scale.unwrap_or(1.0), q.min.unwrap_or(0.0));
            let width = if q.dtype == "uint8" { 1 } else { 2 };
            let quantized: Vec<f32> = match width {
                1 => take(1)?.iter().map(|&q| q as f32).collect(),
                _ => take(2)?
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]) as f32)
                    .collect(),
            };
            Values::Float(quantized.into_iter().map(|q| q * scale + min).collect())
        }
        (quantization, dtype) => bail!(
            "unsupported weight type {dtype}{}",
            quantization
                .as_ref()
                .map(|q| format!(" stored as {}", q.dtype))
                .unwrap_or_default()
        ),
    };
    Ok(Constant {
        dims: spec.shape.clone(),
        values,
    })
}

/// The graph being written: each TF tensor translated once, on demand, from the outputs back.
struct Translation<'a> {
    model: &'a TfjsModel,
    onnx: GraphBuilder,
    /// TF tensor name → ONNX value name (NCHW for activations).
    values: HashMap<String, String>,
}

/// TensorFlow's NHWC axis → the NCHW axis it is held in.
fn nchw_axis(axis: i64) -> i64 {
    [0, 2, 3, 1][axis.rem_euclid(4) as usize]
}

impl Translation<'_> {
    /// The ONNX value of the TF tensor `name` (`node` or `node:0`), translating its node first.
    fn value(&mut self, name: &str) -> anyhow::Result<String> {
        let name = name.strip_suffix(":0").unwrap_or(name);
        if let Some(value) = self.values.get(name) {
            return Ok(value.clone());
        }
        ensure!(
            !name.contains(':'),
            "{name}: only first outputs of nodes are translated"
        );
        let node = self
            .model
            .nodes
            .get(name)
            .ok_or_else(|| anyhow!("the graph has no node {name}"))?;
        let value = self
            .translate(node)
            .with_context(|| format!("translating {} ({})", node.name, node.op))?;
        self.values.insert(name.to_string(), value.clone());
        Ok(value)
    }

    fn translate(&mut self, node: &TfNode) -> anyhow::Result<String> {
        let inputs: Vec<&str> = node
            .input
            .iter()
            .filter(|i| !i.starts_with('^'))
            .map(String::as_str)
            .collect();
        let first = || inputs.first().copied().ok_or_else(|| anyhow!("no input"));
        Ok(match node.op.as_str() {
            "Placeholder" => self.input(node)?,
            "Identity" => self.value(first()?)?,
            "Conv2D" | "_FusedConv2D" => self.convolution(node, &inputs, false)?,
            "DepthwiseConv2dNative" | "FusedDepthwiseConv2dNative" => {
                self.convolution(node, &inputs, true)?
            }
            "Add" | "AddV2" | "Sub" | "Mul" | "RealDiv" => {
                let op = match node.op.as_str() {
                    "Sub" => "Sub",
                    "Mul" => "Mul",
                    "RealDiv" => "Div",
                    _ => "Add",
                };
                ensure!(inputs.len() == 2, "expected two inputs");
                let (a, b) = (self.operand(inputs[0])?, self.operand(inputs[1])?);
                self.onnx.node(op, &[&a, &b], vec![])
            }
            "Relu" | "Relu6" | "Sigmoid" | "LeakyRelu" => {
                let x = self.value(first()?)?;
                let alpha = attr_f32(node, "alpha").unwrap_or(0.2);
                self.activation(&node.op, &x, alpha)?
            }
            "Mean" => {
                ensure!(attr_bool(node, "keep_dims"), "a mean that drops axes");
                let x = self.value(first()?)?;
                let axes = self.int_constant(inputs.get(1).copied())?;
                let axes: Vec<i64> = axes.iter().map(|&a| nchw_axis(a)).collect();
                let axes = self
                    .onnx
                    .constant_i64(&format!("{}/axes", node.name), &axes);
                self.onnx
                    .node("ReduceMean", &[&x, &axes], vec![int("keepdims", 1)])
            }
            "ResizeBilinear" => {
                let x = self.value(first()?)?;
                let size = self.int_constant(inputs.get(1).copied())?;
                ensure!(size.len() == 2, "a size of {} numbers", size.len());
                let mode = match (
                    attr_bool(node, "align_corners"),
                    attr_bool(node, "half_pixel_centers"),
                ) {
                    (true, _) => "align_corners",
                    (false, true) => "half_pixel",
                    (false, false) => "asymmetric",
                };
                self.resize(&x, &size, mode, &node.name)
            }
            "ConcatV2" => {
                let (axis, parts) = inputs.split_last().ok_or_else(|| anyhow!("no inputs"))?;
                let axis = self.int_constant(Some(axis))?;
                ensure!(axis.len() == 1, "the axis is not one number");
                let parts = parts
                    .iter()
                    .map(|p| self.value(p))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
                self.onnx
                    .node("Concat", &parts, vec![int("axis", nchw_axis(axis[0]))])
            }
            other => bail!("TF.js operation {other} is not supported"),
        })
    }

    /// The graph input, transposed to NCHW and resized to the placeholder's size.
    fn input(&mut self, placeholder: &TfNode) -> anyhow::Result<String> {
        let (height, width) = placeholder_size(placeholder)?;
        let nchw = self
            .onnx
            .node("Transpose", &[INPUT], vec![ints("perm", &[0, 3, 1, 2])]);
        Ok(self.resize(
            &nchw,
            &[height as i64, width as i64],
            "asymmetric",
            &placeholder.name,
        ))
    }

    fn resize(&mut self, x: &str, size: &[i64], mode: &str, name: &str) -> String {
        let sizes = self.onnx.constant_i64(&format!("{name}/sizes"), size);
        self.onnx.node(
            "Resize",
            &[x, "", "", &sizes],
            vec![
                ints("axes", &[2, 3]),
                string("mode", "linear"),
                string("coordinate_transformation_mode", mode),
            ],
        )
    }

    /// A convolution (`depthwise`: one filter group per input channel), with the bias and
    /// activation tensorflowjs_converter fuses into it.
    fn convolution(
        &mut self,
        node: &TfNode,
        inputs: &[&str],
        depthwise: bool,
    ) -> anyhow::Result<String> {
        ensure!(inputs.len() >= 2, "expected an input and a filter");
        ensure!(
            attr_string(node, "data_format").is_none_or(|f| f == "NHWC"),
            "only NHWC convolutions are translated"
        );
        let x = self.value(inputs[0])?;
        let filter = self.constant(inputs[1])?;
        let Values::Float(values) = &filter.values else {
            bail!("an integer filter");
        };
        let [kh, kw, cin, cout] = filter.dims[..] else {
            bail!("a filter of shape {:?}", filter.dims);
        };
        // TF: [kh, kw, in, out] (depthwise: [kh, kw, in, multiplier]); ONNX: [out, in/group, kh, kw].
        let out_channels = if depthwise { cin * cout } else { cout };
        let per_group = if depthwise { 1 } else { cin };
        let mut weight = vec![0.0; values.len()];
        for y in 0..kh {
            for x in 0..kw {
                for i in 0..cin {
                    for o in 0..cout {
                        let tf = ((y * kw + x) * cin + i) * cout + o;
                        let (out, within) = if depthwise { (i * cout + o, 0) } else { (o, i) };
                        weight[((out * per_group + within) * kh + y) * kw + x] = values[tf];
                    }
                }
            }
        }
        let weight = self.onnx.weight_f32(
            &format!("{}/filter", node.name),
            &[out_channels, per_group, kh, kw],
            weight,
        );
        let strides = attr_ints(node, "strides").unwrap_or_else(|| vec![1, 1, 1, 1]);
        let dilations = attr_ints(node, "dilations").unwrap_or_else(|| vec![1, 1, 1, 1]);
        ensure!(
            strides.len() == 4 && dilations.len() == 4,
            "strides or dilations not 4 long"
        );
        let auto_pad = match attr_string(node, "padding").as_deref() {
            Some("SAME") => "SAME_UPPER",
            Some("VALID") => "VALID",
            other => bail!("padding {other:?} is not supported"),
        };
        let fused: Vec<String> = attr_strings(node, "fused_ops");
        let mut conv_inputs = vec![x, weight];
        let mut activation = None;
        for (index, op) in fused.iter().enumerate() {
            match (index, op.as_str()) {
                (0, "BiasAdd") => {
                    let bias = inputs.get(2).ok_or_else(|| anyhow!("no bias"))?;
                    let bias = self.constant(bias)?;
                    let Values::Float(bias) = &bias.values else {
                        bail!("an integer bias");
                    };
                    let (name, dims) = (format!("{}/bias", node.name), [bias.len()]);
                    conv_inputs.push(self.onnx.weight_f32(&name, &dims, bias.clone()));
                }
                (1, "Relu" | "Relu6" | "LeakyRelu" | "Sigmoid") => activation = Some(op.as_str()),
                _ => bail!("fused operations {fused:?} are not supported"),
            }
        }
        let conv_inputs: Vec<&str> = conv_inputs.iter().map(String::as_str).collect();
        let conv = self.onnx.node(
            "Conv",
            &conv_inputs,
            vec![
                ints("strides", &[strides[1], strides[2]]),
                ints("dilations", &[dilations[1], dilations[2]]),
                string("auto_pad", auto_pad),
                int("group", if depthwise { cin as i64 } else { 1 }),
            ],
        );
        match activation {
            None => Ok(conv),
            Some(op) => {
                let alpha = attr_f32(node, "leakyrelu_alpha").unwrap_or(0.2);
                self.activation(op, &conv, alpha)
            }
        }
    }

    fn activation(&mut self, op: &str, x: &str, alpha: f32) -> anyhow::Result<String> {
        Ok(match op {
            "Relu" => self.onnx.node("Relu", &[x], vec![]),
            "Sigmoid" => self.onnx.node("Sigmoid", &[x], vec![]),
            "LeakyRelu" => self
                .onnx
                .node("LeakyRelu", &[x], vec![float("alpha", alpha)]),
            "Relu6" => {
                let (zero, six) = (self.scalar(0.0), self.scalar(6.0));
                self.onnx.node("Clip", &[x, &zero, &six], vec![])
            }
            other => bail!("activation {other} is not supported"),
        })
    }

    fn scalar(&mut self, value: f32) -> String {
        self.onnx.constant_f32(&format!("scalar/{value}"), value)
    }

    /// An operand of element-wise arithmetic: an activation, or a constant laid out to broadcast
    /// against NCHW activations as it did against NHWC ones.
    fn operand(&mut self, name: &str) -> anyhow::Result<String> {
        let node = name.split(':').next().unwrap_or(name);
        if self.model.nodes.get(node).is_none_or(|n| n.op != "Const") {
            return self.value(name);
        }
        if let Some(value) = self.values.get(node) {
            return Ok(value.clone());
        }
        let constant = self.constant(name)?;
        let Values::Float(values) = &constant.values else {
            bail!("{name}: integer arithmetic is not supported");
        };
        let values = values.clone();
        let dims = match constant.dims[..] {
            [] | [1] => vec![],
            // Per channel: NHWC's last axis is NCHW's second.
            [channels] | [1, 1, 1, channels] => vec![channels, 1, 1],
            ref dims => bail!("{name}: a constant of shape {dims:?} in arithmetic"),
        };
        let value = self.onnx.weight_f32(node, &dims, values);
        self.values.insert(node.to_string(), value.clone());
        Ok(value)
    }

    fn constant(&self, name: &str) -> anyhow::Result<&'_ Constant> {
        let node = name.split(':').next().unwrap_or(name);
        self.model
            .constants
            .get(node)
            .ok_or_else(|| anyhow!("{node} is not a constant with weights"))
    }

    fn int_constant(&self, name: Option<&str>) -> anyhow::Result<Vec<i64>> {
        let name = name.ok_or_else(|| anyhow!("a missing input"))?;
        match &self.constant(name)?.values {
            Values::Int(values) => Ok(values.clone()),
            Values::Float(_) => bail!("{name} is not an integer constant"),
        }
    }

    fn nhwc(&mut self, value: &str) -> String {
        self.onnx
            .node("Transpose", &[value], vec![ints("perm", &[0, 2, 3, 1])])
    }
}

fn placeholder_size(placeholder: &TfNode) -> anyhow::Result<(usize, usize)> {
    let dims: Vec<i64> = placeholder
        .attr
        .get("shape")
        .and_then(|s| s["shape"]["dim"].as_array())
        .map(|dims| {
            dims.iter()
                .map(|d| json_int(&d["size"]).unwrap_or(-1))
                .collect()
        })
        .unwrap_or_default();
    match dims[..] {
        [1, height, width, 3] if height > 0 && width > 0 => Ok((height as usize, width as usize)),
        _ => bail!("the input's shape {dims:?} is not one fixed-size NHWC RGB image"),
    }
}

/// TF's protobuf JSON writes 64-bit integers as strings.
fn json_int(value: &Value) -> Option<i64> {
    value
        .as_i64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
}

fn attr_bool(node: &TfNode, name: &str) -> bool {
    node.attr
        .get(name)
        .and_then(|a| a["b"].as_bool())
        .unwrap_or(false)
}

fn attr_f32(node: &TfNode, name: &str) -> Option<f32> {
    node.attr
        .get(name)
        .and_then(|a| a["f"].as_f64())
        .map(|f| f as f32)
}

fn attr_ints(node: &TfNode, name: &str) -> Option<Vec<i64>> {
    let list = node.attr.get(name)?["list"]["i"].as_array()?;
    list.iter().map(json_int).collect()
}

fn decode_string(value: &Value) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.as_str()?)
        .ok()?;
    String::from_utf8(bytes).ok()
}

fn attr_string(node: &TfNode, name: &str) -> Option<String> {
    decode_string(&node.attr.get(name)?["s"])
}

fn attr_strings(node: &TfNode, name: &str) -> Vec<String> {
    node.attr
        .get(name)
        .and_then(|a| a["list"]["s"].as_array())
        .map(|list| list.iter().filter_map(decode_string).collect())
        .unwrap_or_default()
}
