//! EfficientNet-Lite0 (Google's mobile EfficientNet: ReLU6, no squeeze-and-excitation, stem and
//! head not scaled), with the weight names of its published PyTorch port (`_conv_stem`,
//! `_blocks.N._depthwise_conv`, `_fc`; efficientnet_lite_pytorch), TensorFlow "SAME" padding and
//! batch norm epsilon 1e-3 as it was trained.

use super::layers::{ConvBn, Padding, batch_norm, classifier_head, classifier_head_onnx};
use crate::onnx_proto::GraphBuilder;
use candle_core::Tensor;
use candle_nn::VarBuilder;

const BN_EPS: f64 = 1e-3;
const STEM_CHANNELS: usize = 32;
const HEAD_CHANNELS: usize = 1280;

/// One stage of MBConv blocks: (repeats, kernel, first stride, expansion, out channels), from
/// `efficientnet_lite_builder.py` (the input channels follow from the stage before).
const STAGES: [(usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
];

/// Inverted residual: 1×1 expansion (unless the ratio is 1), depthwise k×k, 1×1 projection, and
/// the input added back where the shape is unchanged.
struct MbConv {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    project: ConvBn,
    residual: bool,
}

impl MbConv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut y = x.clone();
        if let Some(expand) = &self.expand {
            y = relu6(&expand.forward(&y)?)?;
        }
        y = relu6(&self.depthwise.forward(&y)?)?;
        y = self.project.forward(&y)?;
        if self.residual { y + x } else { Ok(y) }
    }
}

pub struct EfficientNetLite {
    stem: ConvBn,
    blocks: Vec<MbConv>,
    head: ConvBn,
    /// `[classes, 1280]`, `[classes]`.
    fc: (Tensor, Tensor),
}

impl EfficientNetLite {
    pub fn new(vb: VarBuilder) -> candle_core::Result<EfficientNetLite> {
        let conv = |name: &str, bn: &str, in_c: usize, out_c: usize, k: usize| {
            let weight = vb.get((out_c, in_c, k, k), &format!("{name}.weight"))?;
            Ok::<_, candle_core::Error>((weight, batch_norm(vb.pp(bn), out_c, BN_EPS)?))
        };
        let (weight, bn) = conv("_conv_stem", "_bn0", 3, STEM_CHANNELS, 3)?;
        let stem = ConvBn::new(weight, bn, 2, Padding::Same, false)?;

        let mut blocks = Vec::new();
        let mut in_c = STEM_CHANNELS;
        for (repeats, kernel, first_stride, expansion, out_c) in STAGES {
            for repeat in 0..repeats {
                let stride = if repeat == 0 { first_stride } else { 1 };
                let prefix = format!("_blocks.{}", blocks.len());
                let vb = vb.pp(&prefix);
                let hidden = in_c * expansion;
                let expand = if expansion == 1 {
                    None
                } else {
                    let weight = vb.get((hidden, in_c, 1, 1), "_expand_conv.weight")?;
                    let bn = batch_norm(vb.pp("_bn0"), hidden, BN_EPS)?;
                    Some(ConvBn::new(weight, bn, 1, Padding::Same, false)?)
                };
                let weight = vb.get((hidden, 1, kernel, kernel), "_depthwise_conv.weight")?;
                let bn = batch_norm(vb.pp("_bn1"), hidden, BN_EPS)?;
                let depthwise = ConvBn::new(weight, bn, stride, Padding::Same, true)?;
                let weight = vb.get((out_c, hidden, 1, 1), "_project_conv.weight")?;
                let bn = batch_norm(vb.pp("_bn2"), out_c, BN_EPS)?;
                let project = ConvBn::new(weight, bn, 1, Padding::Same, false)?;
                blocks.push(MbConv {
                    expand,
                    depthwise,
                    project,
                    residual: stride == 1 && in_c == out_c,
                });
                in_c = out_c;
            }
        }

        let (weight, bn) = conv("_conv_head", "_bn1", in_c, HEAD_CHANNELS, 1)?;
        let head = ConvBn::new(weight, bn, 1, Padding::Same, false)?;
        let classes = vb.get_unchecked("_fc.weight")?.dim(0)?;
        let fc = (
            vb.get((classes, HEAD_CHANNELS), "_fc.weight")?,
            vb.get(classes, "_fc.bias")?,
        );
        Ok(EfficientNetLite {
            stem,
            blocks,
            head,
            fc,
        })
    }

    /// How many labels the model tells apart.
    pub fn classes(&self) -> usize {
        self.fc.1.elem_count()
    }

    /// Logits `[classes]` for `pixels` (`[1, 3, 224, 224]`).
    pub fn forward(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = relu6(&self.stem.forward(pixels)?)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        x = relu6(&self.head.forward(&x)?)?;
        classifier_head(&x, &self.fc)
    }
}

impl EfficientNetLite {
    /// The same network written into `graph` on `pixels`; returns the logits' name.
    pub(crate) fn onnx(
        &self,
        graph: &mut GraphBuilder,
        pixels: &str,
    ) -> candle_core::Result<String> {
        let relu6 = |graph: &mut GraphBuilder, x: &str| {
            let (zero, six) = (
                graph.constant_f32("zero", 0.0),
                graph.constant_f32("six", 6.0),
            );
            graph.node("Clip", &[x, &zero, &six], vec![])
        };
        let stem = self.stem.onnx(graph, pixels, "stem")?;
        let mut x = relu6(graph, &stem);
        for (i, block) in self.blocks.iter().enumerate() {
            let mut y = x.clone();
            if let Some(expand) = &block.expand {
                let expanded = expand.onnx(graph, &y, &format!("blocks.{i}.expand"))?;
                y = relu6(graph, &expanded);
            }
            let depthwise = block
                .depthwise
                .onnx(graph, &y, &format!("blocks.{i}.depthwise"))?;
            y = relu6(graph, &depthwise);
            y = block
                .project
                .onnx(graph, &y, &format!("blocks.{i}.project"))?;
            x = match block.residual {
                true => graph.node("Add", &[&y, &x], vec![]),
                false => y,
            };
        }
        let head = self.head.onnx(graph, &x, "head")?;
        let head = relu6(graph, &head);
        classifier_head_onnx(graph, &head, &self.fc)
    }
}

fn relu6(x: &Tensor) -> candle_core::Result<Tensor> {
    x.clamp(0f32, 6f32)
}
