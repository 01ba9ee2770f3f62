//! ResNet with bottleneck layers: microsoft/resnet-50's `ResNetForImageClassification`, read from
//! a Hugging Face folder (`config.json`: depths, hidden sizes, where stages downsample;
//! `model.safetensors` with transformers' weight names), and the same body under timm's weight
//! names, its shape read from the weights, as DETR's backbone (`Backbone::from_timm`).

use super::layers::{ConvBn, Padding, batch_norm, classifier_head, classifier_head_onnx};
use crate::onnx_proto::{GraphBuilder, ints};
use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::Deserialize;

/// transformers' `nn.BatchNorm2d` default.
const BN_EPS: f64 = 1e-5;
/// A bottleneck's inner width is its output width over this.
const REDUCTION: usize = 4;

#[derive(Debug, Deserialize)]
pub struct ResNetConfig {
    num_channels: usize,
    embedding_size: usize,
    hidden_sizes: Vec<usize>,
    depths: Vec<usize>,
    layer_type: String,
    #[serde(default)]
    downsample_in_first_stage: bool,
    #[serde(default)]
    downsample_in_bottleneck: bool,
}

/// 1×1 reduce, 3×3, 1×1 expand (no activation after it), plus the shortcut (a strided 1×1
/// projection where the shape changes), then ReLU.
struct Bottleneck {
    shortcut: Option<ConvBn>,
    layers: [ConvBn; 3],
}

impl Bottleneck {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let residual = match &self.shortcut {
            Some(shortcut) => shortcut.forward(x)?,
            None => x.clone(),
        };
        let mut y = self.layers[0].forward(x)?.relu()?;
        y = self.layers[1].forward(&y)?.relu()?;
        y = self.layers[2].forward(&y)?;
        (y + residual)?.relu()
    }
}

/// The 7×7 stem, a 3×3 max pool, and the bottleneck layers.
pub(super) struct Backbone {
    stem: ConvBn,
    layers: Vec<Bottleneck>,
}

impl Backbone {
    /// The last layer's features for `pixels` (`[1, 3, height, width]`), at 1/32 of the size.
    pub(super) fn forward(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.stem.forward(pixels)?.relu()?;
        // Max pool 3×3, stride 2, padding 1; after a ReLU every value is ≥ 0, so zero padding
        // gives the same maximum as PyTorch's -inf padding.
        let mut x = x
            .pad_with_zeros(2, 1, 1)?
            .pad_with_zeros(3, 1, 1)?
            .max_pool2d_with_stride(3, 2)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        Ok(x)
    }

    /// timm's ResNet (`conv1`, `bn1`, `layer{1-4}.{n}.{conv,bn}{1-3}`, `downsample.{0,1}`, the
    /// stride on the 3×3), as many layers as the weights hold.
    pub(super) fn from_timm(vb: VarBuilder, eps: f64) -> candle_core::Result<Backbone> {
        let conv_bn = |vb: &VarBuilder, conv: &str, bn: &str, stride: usize| {
            let weight = vb.get_unchecked(&format!("{conv}.weight"))?;
            let (out_c, kernel) = (weight.dim(0)?, weight.dim(3)?);
            let bn = batch_norm(vb.pp(bn), out_c, eps)?;
            ConvBn::new(weight, bn, stride, Padding::Symmetric(kernel / 2), false)
        };
        let stem = conv_bn(&vb, "conv1", "bn1", 2)?;
        let mut layers = Vec::new();
        for stage in 1..=4 {
            for index in 0.. {
                let vb = vb.pp(format!("layer{stage}.{index}"));
                if !vb.contains_tensor("conv1.weight") {
                    break;
                }
                let stride = if index == 0 && stage > 1 { 2 } else { 1 };
                let shortcut = if vb.contains_tensor("downsample.0.weight") {
                    Some(conv_bn(&vb, "downsample.0", "downsample.1", stride)?)
                } else {
                    None
                };
                layers.push(Bottleneck {
                    shortcut,
                    layers: [
                        conv_bn(&vb, "conv1", "bn1", 1)?,
                        conv_bn(&vb, "conv2", "bn2", stride)?,
                        conv_bn(&vb, "conv3", "bn3", 1)?,
                    ],
                });
            }
        }
        Ok(Backbone { stem, layers })
    }
}

pub struct ResNet {
    backbone: Backbone,
    /// `[classes, channels]`, `[classes]`.
    classifier: (Tensor, Tensor),
}

impl ResNet {
    pub fn new(config: &ResNetConfig, vb: VarBuilder) -> anyhow::Result<ResNet> {
        anyhow::ensure!(
            config.layer_type == "bottleneck",
            "layer_type {:?} is not supported (only \"bottleneck\", ResNet-50's)",
            config.layer_type
        );
        anyhow::ensure!(
            config.depths.len() == config.hidden_sizes.len() && !config.depths.is_empty(),
            "depths and hidden_sizes must be of the same, non-zero length"
        );
        let conv_bn = |vb: VarBuilder, in_c, out_c, k, stride| {
            let weight = vb.get((out_c, in_c, k, k), "convolution.weight")?;
            let bn = batch_norm(vb.pp("normalization"), out_c, BN_EPS)?;
            ConvBn::new(weight, bn, stride, Padding::Symmetric(k / 2), false)
        };
        let stem = conv_bn(
            vb.pp("resnet.embedder.embedder"),
            config.num_channels,
            config.embedding_size,
            7,
            2,
        )?;

        let mut layers = Vec::new();
        let mut in_c = config.embedding_size;
        for (stage, (&out_c, &depth)) in config.hidden_sizes.iter().zip(&config.depths).enumerate()
        {
            let stage_stride = if stage > 0 || config.downsample_in_first_stage {
                2
            } else {
                1
            };
            for index in 0..depth {
                let vb = vb.pp(format!("resnet.encoder.stages.{stage}.layers.{index}"));
                let stride = if index == 0 { stage_stride } else { 1 };
                let inner = out_c / REDUCTION;
                let shortcut = if in_c != out_c || stride != 1 {
                    let weight = vb.get((out_c, in_c, 1, 1), "shortcut.convolution.weight")?;
                    let bn = batch_norm(vb.pp("shortcut.normalization"), out_c, BN_EPS)?;
                    Some(ConvBn::new(
                        weight,
                        bn,
                        stride,
                        Padding::Symmetric(0),
                        false,
                    )?)
                } else {
                    None
                };
                let (reduce_stride, middle_stride) = if config.downsample_in_bottleneck {
                    (stride, 1)
                } else {
                    (1, stride)
                };
                layers.push(Bottleneck {
                    shortcut,
                    layers: [
                        conv_bn(vb.pp("layer.0"), in_c, inner, 1, reduce_stride)?,
                        conv_bn(vb.pp("layer.1"), inner, inner, 3, middle_stride)?,
                        conv_bn(vb.pp("layer.2"), inner, out_c, 1, 1)?,
                    ],
                });
                in_c = out_c;
            }
        }
        let classes = vb.get_unchecked("classifier.1.weight")?.dim(0)?;
        let classifier = (
            vb.get((classes, in_c), "classifier.1.weight")?,
            vb.get(classes, "classifier.1.bias")?,
        );
        Ok(ResNet {
            backbone: Backbone { stem, layers },
            classifier,
        })
    }

    /// How many labels the model tells apart.
    pub fn classes(&self) -> usize {
        self.classifier.1.elem_count()
    }

    /// Logits `[classes]` for `pixels` (`[1, 3, 224, 224]`).
    pub fn forward(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        classifier_head(&self.backbone.forward(pixels)?, &self.classifier)
    }

    /// The same network written into `graph` on `pixels`; returns the logits' name.
    pub(crate) fn onnx(
        &self,
        graph: &mut GraphBuilder,
        pixels: &str,
    ) -> candle_core::Result<String> {
        let backbone = &self.backbone;
        let stem = backbone.stem.onnx(graph, pixels, "stem")?;
        let stem = graph.node("Relu", &[&stem], vec![]);
        // After the ReLU nothing is negative, so the max pool's padding is as candle's zeros.
        let mut x = graph.node(
            "MaxPool",
            &[&stem],
            vec![
                ints("kernel_shape", &[3, 3]),
                ints("strides", &[2, 2]),
                ints("pads", &[1, 1, 1, 1]),
            ],
        );
        for (i, block) in backbone.layers.iter().enumerate() {
            let residual = match &block.shortcut {
                Some(shortcut) => shortcut.onnx(graph, &x, &format!("layers.{i}.shortcut"))?,
                None => x.clone(),
            };
            let mut y = x.clone();
            for (j, layer) in block.layers.iter().enumerate() {
                y = layer.onnx(graph, &y, &format!("layers.{i}.{j}"))?;
                if j < 2 {
                    y = graph.node("Relu", &[&y], vec![]);
                }
            }
            let sum = graph.node("Add", &[&y, &residual], vec![]);
            x = graph.node("Relu", &[&sum], vec![]);
        }
        classifier_head_onnx(graph, &x, &self.classifier)
    }
}
