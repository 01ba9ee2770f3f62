//! The part of ONNX's protobuf schema (`onnx.proto3`, field numbers as published) that Ember
//! writes: a model of one graph whose nodes, weights (raw little-endian data), inputs and outputs
//! it builds itself from a checkpoint's weights, for ONNX Runtime to load from memory; and
//! `GraphBuilder`, which every graph Ember builds is written with (BERT, the TF.js translation,
//! the image classifiers' layers, Stable Diffusion's UNet and decoder).

use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub(crate) struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
}

/// `AttributeProto.AttributeType`.
pub(crate) const ATTRIBUTE_FLOAT: i32 = 1;
pub(crate) const ATTRIBUTE_INT: i32 = 2;
pub(crate) const ATTRIBUTE_STRING: i32 = 3;
pub(crate) const ATTRIBUTE_INTS: i32 = 7;

#[derive(Clone, PartialEq, Message)]
pub(crate) struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(float, tag = "2")]
    pub f: f32,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(bytes = "vec", tag = "4")]
    pub s: Vec<u8>,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    #[prost(int32, tag = "20")]
    pub r#type: i32,
}

/// `TensorProto.DataType`.
pub(crate) const FLOAT: i32 = 1;
pub(crate) const INT64: i32 = 7;

#[derive(Clone, PartialEq, Message)]
pub(crate) struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    /// `TensorProto.DataLocation`: 0 in `raw_data`, 1 external.
    #[prost(int32, tag = "14")]
    pub data_location: i32,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct TypeProto {
    /// `TypeProto.tensor_type` (the only member of its `value` oneof written here).
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TypeTensor>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct TypeTensor {
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// A dimension: a fixed size (`dim_value`, tag 1) or a named free one (`dim_param`, tag 2).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Dimension {
    #[prost(int64, optional, tag = "1")]
    pub dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    pub dim_param: Option<String>,
}

/// A graph under construction: its nodes and weights, each node's output named fresh.
#[derive(Default)]
pub(crate) struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    external: Vec<ExternalWeight>,
}

/// A model built in memory: the serialized graph and the weights kept out of it.
pub(crate) struct BuiltModel {
    pub proto: Vec<u8>,
    pub external: Vec<ExternalWeight>,
}

/// A weight the serialized graph only names: protobuf messages stop at 2 GB, and Stable
/// Diffusion's UNet alone is 3.4 GB of f32, so large weights are handed to ONNX Runtime as
/// values of their own (`onnx::session_from_memory`).
pub(crate) struct ExternalWeight {
    pub name: String,
    pub dims: Vec<usize>,
    pub values: Vec<f32>,
}

/// Weights of at least this many values are kept out of the serialized graph.
const EXTERNAL_FROM: usize = 1 << 16;

impl GraphBuilder {
    /// Adds a node of `op` on `inputs`; returns its output's (fresh) name.
    pub(crate) fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attribute: Vec<AttributeProto>,
    ) -> String {
        let output = format!("{}_{}", op.to_lowercase(), self.nodes.len());
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|i| i.to_string()).collect(),
            output: vec![output.clone()],
            name: output.clone(),
            op_type: op.into(),
            attribute,
        });
        output
    }

    /// Adds a node of `op` with `outputs` outputs; returns their (fresh) names.
    pub(crate) fn node_outputs(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: usize,
        attribute: Vec<AttributeProto>,
    ) -> Vec<String> {
        let name = format!("{}_{}", op.to_lowercase(), self.nodes.len());
        let output: Vec<String> = (0..outputs).map(|i| format!("{name}:{i}")).collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|i| i.to_string()).collect(),
            output: output.clone(),
            name,
            op_type: op.into(),
            attribute,
        });
        output
    }

    /// Whether a weight named `name` was added.
    fn has_weight(&self, name: &str) -> bool {
        self.initializers.iter().any(|t| t.name == name)
    }

    /// Names `value` `name` (a graph output) with an `Identity` node.
    pub(crate) fn output(&mut self, value: &str, name: &str) {
        self.nodes.push(NodeProto {
            input: vec![value.into()],
            output: vec![name.into()],
            name: name.into(),
            op_type: "Identity".into(),
            attribute: Vec::new(),
        });
    }

    /// Adds an f32 weight of shape `dims` named `name`; returns the name. The values are taken,
    /// not copied: a large weight is handed on to ONNX Runtime as it is.
    pub(crate) fn weight_f32(&mut self, name: &str, dims: &[usize], values: Vec<f32>) -> String {
        let external = values.len() >= EXTERNAL_FROM;
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: FLOAT,
            name: name.into(),
            raw_data: match external {
                true => Vec::new(),
                false => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            },
            // ONNX Runtime replaces these with the values given to the session; the location
            // names no file.
            external_data: match external {
                true => vec![StringStringEntryProto {
                    key: "location".into(),
                    value: "ember-external-weights".into(),
                }],
                false => Vec::new(),
            },
            data_location: i32::from(external),
        });
        if external {
            self.external.push(ExternalWeight {
                name: name.into(),
                dims: dims.to_vec(),
                values,
            });
        }
        name.into()
    }

    /// A scalar weight named `name`, added once however often it is asked for.
    pub(crate) fn constant_f32(&mut self, name: &str, value: f32) -> String {
        if self.has_weight(name) {
            return name.into();
        }
        self.weight_f32(name, &[], vec![value])
    }

    pub(crate) fn constant_i64(&mut self, name: &str, values: &[i64]) -> String {
        self.initializers.push(TensorProto {
            dims: vec![values.len() as i64],
            data_type: INT64,
            name: name.into(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name.into()
    }

    /// The exact (erf) GELU of `x`, in the form ONNX Runtime fuses into one kernel.
    pub(crate) fn gelu(&mut self, x: &str) -> String {
        let half = self.constant_f32("scalar/0.5", 0.5);
        let one = self.constant_f32("scalar/1", 1.0);
        let root2 = std::f32::consts::SQRT_2;
        let root2 = self.constant_f32(&format!("scalar/{root2}"), root2);
        let scaled = self.node("Div", &[x, &root2], vec![]);
        let erf = self.node("Erf", &[&scaled], vec![]);
        let erf = self.node("Add", &[&erf, &one], vec![]);
        let halved = self.node("Mul", &[x, &half], vec![]);
        self.node("Mul", &[&halved, &erf], vec![])
    }

    /// softmax(q·kᵀ/√d)·v per head, for `[B, N, heads·d]` projections; heads merged back.
    pub(crate) fn scaled_dot_product(
        &mut self,
        q: &str,
        k: &str,
        v: &str,
        heads: usize,
        head_dim: usize,
        prefix: &str,
    ) -> String {
        let split = self.constant_i64(
            &format!("{prefix}/split"),
            &[0, 0, heads as i64, head_dim as i64],
        );
        let mut heads_of = |x: &str, perm: &[i64]| {
            let split = self.node("Reshape", &[x, &split], vec![]);
            self.node("Transpose", &[&split], vec![ints("perm", perm)])
        };
        let q = heads_of(q, &[0, 2, 1, 3]);
        let k = heads_of(k, &[0, 2, 3, 1]);
        let v = heads_of(v, &[0, 2, 1, 3]);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let scale = self.constant_f32(&format!("scalar/{scale}"), scale);
        let scores = self.node("MatMul", &[&q, &k], vec![]);
        let scores = self.node("Mul", &[&scores, &scale], vec![]);
        let probs = self.node("Softmax", &[&scores], vec![int("axis", -1)]);
        let context = self.node("MatMul", &[&probs, &v], vec![]);
        let context = self.node("Transpose", &[&context], vec![ints("perm", &[0, 2, 1, 3])]);
        let merge = self.constant_i64(
            &format!("{prefix}/merge"),
            &[0, 0, (heads * head_dim) as i64],
        );
        self.node("Reshape", &[&context, &merge], vec![])
    }

    /// The model of this graph in ONNX's default opset `opset`.
    pub(crate) fn model(
        self,
        name: &str,
        inputs: Vec<ValueInfoProto>,
        outputs: Vec<ValueInfoProto>,
        opset: i64,
    ) -> BuiltModel {
        let proto = ModelProto {
            ir_version: 8,
            producer_name: "ember".into(),
            graph: Some(GraphProto {
                node: self.nodes,
                name: name.into(),
                initializer: self.initializers,
                input: inputs,
                output: outputs,
            }),
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: opset,
            }],
        }
        .encode_to_vec();
        BuiltModel {
            proto,
            external: self.external,
        }
    }
}

pub(crate) fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        i: value,
        r#type: ATTRIBUTE_INT,
        ..Default::default()
    }
}

pub(crate) fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: values.to_vec(),
        r#type: ATTRIBUTE_INTS,
        ..Default::default()
    }
}

pub(crate) fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        f: value,
        r#type: ATTRIBUTE_FLOAT,
        ..Default::default()
    }
}

pub(crate) fn string(name: &str, value: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        s: value.as_bytes().to_vec(),
        r#type: ATTRIBUTE_STRING,
        ..Default::default()
    }
}

/// A graph input or output: its element type and shape, each dimension named (free) or, for
/// the `None`s, the next of `fixed`.
pub(crate) fn value_info(
    name: &str,
    elem_type: i32,
    dims: &[Option<&str>],
    fixed: &[i64],
) -> ValueInfoProto {
    let mut fixed = fixed.iter();
    let dim = dims
        .iter()
        .map(|dim| match dim {
            Some(param) => Dimension {
                dim_value: None,
                dim_param: Some(param.to_string()),
            },
            None => Dimension {
                dim_value: fixed.next().copied(),
                dim_param: None,
            },
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeTensor {
                elem_type,
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
    }
}
