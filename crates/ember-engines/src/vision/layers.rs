//! The convolution the image classifiers are built from: a 2-D convolution with the batch norm
//! after it folded into its weights (inference only, so the norm is a fixed affine map), with
//! PyTorch's symmetric or TensorFlow's "SAME" padding. Ordinary convolutions run on candle's
//! im2col and matrix product (1×1 ones as a plain matrix product); depthwise ones (one filter per
//! channel, EfficientNet's) on their own loop, since candle runs a grouped convolution as one
//! convolution per group. The same layers write themselves into an ONNX graph (`ConvBn::onnx`,
//! `classifier_head_onnx`) for the classifiers' ONNX Runtime path.

use crate::onnx_proto::{GraphBuilder, int, ints, string};
use candle_core::{D, Device, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

/// How a convolution pads its input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Padding {
    /// `p` zeros on every side (PyTorch's `padding=p`).
    Symmetric(usize),
    /// TensorFlow's "SAME": the output is `ceil(input / stride)`, the extra zero after rather
    /// than before when the padding is odd.
    Same,
}

/// Reads the batch norm under `vb` (`weight`, `bias`, `running_mean`, `running_var`) and returns
/// the per-channel scale and shift it applies in eval mode.
pub fn batch_norm(
    vb: VarBuilder,
    channels: usize,
    eps: f64,
) -> candle_core::Result<(Tensor, Tensor)> {
    let gamma = vb.get(channels, "weight")?;
    let beta = vb.get(channels, "bias")?;
    let mean = vb.get(channels, "running_mean")?;
    let var = vb.get(channels, "running_var")?;
    let scale = gamma.broadcast_div(&(var + eps)?.sqrt()?)?;
    let shift = (beta - mean.mul(&scale)?)?;
    Ok((scale, shift))
}

pub struct ConvBn {
    /// `[out, in / groups, k, k]`, the norm's scale folded in.
    weight: Tensor,
    /// `[out]`: the norm's shift (and the convolution's own bias, if any).
    bias: Tensor,
    kernel: usize,
    stride: usize,
    padding: Padding,
    depthwise: bool,
}

impl ConvBn {
    /// The convolution `weight` (`[out, in / groups, k, k]`) followed by the batch norm
    /// (`scale`, `shift`). `depthwise`: one filter per channel (groups = channels).
    pub fn new(
        weight: Tensor,
        (scale, shift): (Tensor, Tensor),
        stride: usize,
        padding: Padding,
        depthwise: bool,
    ) -> candle_core::Result<ConvBn> {
        let kernel = weight.dim(D::Minus1)?;
        let weight = weight.broadcast_mul(&scale.reshape(((), 1, 1, 1))?)?;
        Ok(ConvBn {
            weight: weight.contiguous()?,
            bias: shift,
            kernel,
            stride,
            padding,
            depthwise,
        })
    }

    /// `x`: `[1, channels, height, width]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (_, channels, height, width) = x.dims4()?;
        let (top, bottom) = self.pads(height);
        let (left, right) = self.pads(width);
        let out_height = (height + top + bottom - self.kernel) / self.stride + 1;
        let out_width = (width + left + right - self.kernel) / self.stride + 1;
        let y = if self.depthwise {
            let input = x.flatten_all()?.to_vec1::<f32>()?;
            let weight = self.weight.flatten_all()?.to_vec1::<f32>()?;
            let geometry = Geometry {
                height,
                width,
                kernel: self.kernel,
                stride: self.stride,
                top,
                left,
                out_height,
                out_width,
            };
            let output = depthwise(&input, &weight, channels, &geometry);
            Tensor::from_vec(output, (1, channels, out_height, out_width), &Device::Cpu)?
        } else if self.kernel == 1 && self.stride == 1 {
            let out_channels = self.weight.dim(0)?;
            let weight = self.weight.reshape((out_channels, channels))?;
            weight
                .matmul(&x.reshape((channels, height * width))?)?
                .reshape((1, out_channels, height, width))?
        } else {
            let padded = x
                .pad_with_zeros(2, top, bottom)?
                .pad_with_zeros(3, left, right)?;
            padded.conv2d(&self.weight, 0, self.stride, 1, 1)?
        };
        y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)
    }

    /// This convolution as an ONNX `Conv` on `x` (NCHW), its weights named after `name`.
    pub(crate) fn onnx(
        &self,
        graph: &mut GraphBuilder,
        x: &str,
        name: &str,
    ) -> candle_core::Result<String> {
        let weight = graph.weight_f32(
            &format!("{name}.weight"),
            self.weight.dims(),
            self.weight.flatten_all()?.to_vec1::<f32>()?,
        );
        let bias = graph.weight_f32(
            &format!("{name}.bias"),
            self.bias.dims(),
            self.bias.to_vec1::<f32>()?,
        );
        let stride = self.stride as i64;
        let mut attributes = vec![
            ints("strides", &[stride, stride]),
            int(
                "group",
                if self.depthwise {
                    self.weight.dim(0)? as i64
                } else {
                    1
                },
            ),
        ];
        attributes.push(match self.padding {
            Padding::Symmetric(p) => ints("pads", &[p as i64; 4]),
            // TensorFlow's SAME puts the odd zero after: ONNX's SAME_UPPER.
            Padding::Same => string("auto_pad", "SAME_UPPER"),
        });
        Ok(graph.node("Conv", &[x, &weight, &bias], attributes))
    }

    /// Zeros before and after along a dimension of `size`.
    fn pads(&self, size: usize) -> (usize, usize) {
        match self.padding {
            Padding::Symmetric(p) => (p, p),
            Padding::Same => {
                let out = size.div_ceil(self.stride);
                let total = ((out - 1) * self.stride + self.kernel).saturating_sub(size);
                (total / 2, total - total / 2)
            }
        }
    }
}

/// Global average pooling of `features` (`[1, channels, h, w]`), then the linear classifier
/// `(weight [classes, channels], bias [classes])`: logits `[classes]`.
pub fn classifier_head(
    features: &Tensor,
    (weight, bias): &(Tensor, Tensor),
) -> candle_core::Result<Tensor> {
    let pooled = features.flatten_from(2)?.mean(D::Minus1)?;
    pooled.matmul(&weight.t()?)?.broadcast_add(bias)?.squeeze(0)
}

/// `classifier_head` in an ONNX graph: the features' global average, then the linear layer.
pub(crate) fn classifier_head_onnx(
    graph: &mut GraphBuilder,
    features: &str,
    (weight, bias): &(Tensor, Tensor),
) -> candle_core::Result<String> {
    let pooled = graph.node("GlobalAveragePool", &[features], vec![]);
    let pooled = graph.node("Flatten", &[&pooled], vec![int("axis", 1)]);
    let weight_t = weight.t()?.contiguous()?;
    let weight_t = graph.weight_f32(
        "classifier.weight_t",
        weight_t.dims(),
        weight_t.flatten_all()?.to_vec1::<f32>()?,
    );
    let bias = graph.weight_f32("classifier.bias", bias.dims(), bias.to_vec1::<f32>()?);
    let product = graph.node("MatMul", &[&pooled, &weight_t], vec![]);
    Ok(graph.node("Add", &[&product, &bias], vec![]))
}

struct Geometry {
    height: usize,
    width: usize,
    kernel: usize,
    stride: usize,
    top: usize,
    left: usize,
    out_height: usize,
    out_width: usize,
}

/// One `kernel`×`kernel` filter per channel over `input` (`[channels, height, width]`); channels
/// in parallel. Each channel is first copied into a zero-padded plane, so that every filter tap
/// is a branch-free pass over a whole output row (contiguous for stride 1, so the compiler
/// vectorises it), the taps added in the same order for every output element.
fn depthwise(input: &[f32], weight: &[f32], channels: usize, g: &Geometry) -> Vec<f32> {
    let plane = g.height * g.width;
    let filter = g.kernel * g.kernel;
    // The padded plane: exactly what the outputs read.
    let padded_height = (g.out_height - 1) * g.stride + g.kernel;
    let padded_width = (g.out_width - 1) * g.stride + g.kernel;
    let mut output = vec![0f32; channels * g.out_height * g.out_width];
    output
        .par_chunks_mut(g.out_height * g.out_width)
        .enumerate()
        .for_each_init(
            || vec![0f32; padded_height * padded_width],
            |padded, (channel, out)| {
                let input = &input[channel * plane..][..plane];
                let weight = &weight[channel * filter..][..filter];
                padded.fill(0.0);
                let columns = g.width.min(padded_width.saturating_sub(g.left));
                for (y, row) in input.chunks_exact(g.width).enumerate() {
                    let padded_y = y + g.top;
                    if padded_y >= padded_height {
                        break;
                    }
                    padded[padded_y * padded_width + g.left..][..columns]
                        .copy_from_slice(&row[..columns]);
                }
                for (oy, out_row) in out.chunks_exact_mut(g.out_width).enumerate() {
                    for ky in 0..g.kernel {
                        let row = &padded[(oy * g.stride + ky) * padded_width..][..padded_width];
                        for kx in 0..g.kernel {
                            let w = weight[ky * g.kernel + kx];
                            if g.stride == 1 {
                                let inputs = &row[kx..kx + g.out_width];
                                for (o, &i) in out_row.iter_mut().zip(inputs) {
                                    *o += w * i;
                                }
                            } else {
                                for (j, o) in out_row.iter_mut().enumerate() {
                                    *o += w * row[kx + j * g.stride];
                                }
                            }
                        }
                    }
                }
            },
        );
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path (depthwise, 1×1, im2col) against candle's own grouped convolution on the same
    /// padded input.
    #[test]
    fn paths_agree_with_candle() {
        let device = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (1, 4, 9, 7), &device).unwrap();
        let unit = (
            Tensor::ones(4, candle_core::DType::F32, &device).unwrap(),
            Tensor::zeros(4, candle_core::DType::F32, &device).unwrap(),
        );
        for (kernel, stride, padding, depthwise) in [
            (3, 1, Padding::Symmetric(1), true),
            (5, 2, Padding::Same, true),
            (3, 2, Padding::Same, false),
            (1, 1, Padding::Symmetric(0), false),
            (7, 2, Padding::Symmetric(3), false),
        ] {
            let groups = if depthwise { 4 } else { 1 };
            let weight =
                Tensor::randn(0f32, 1.0, (4, 4 / groups, kernel, kernel), &device).unwrap();
            let conv =
                ConvBn::new(weight.clone(), unit.clone(), stride, padding, depthwise).unwrap();
            let (top, bottom) = conv.pads(9);
            let (left, right) = conv.pads(7);
            let expected = x
                .pad_with_zeros(2, top, bottom)
                .unwrap()
                .pad_with_zeros(3, left, right)
                .unwrap()
                .conv2d(&weight, 0, stride, 1, groups)
                .unwrap();
            let got = conv.forward(&x).unwrap();
            assert_eq!(got.dims(), expected.dims(), "k{kernel} s{stride}");
            let diff = (got - expected)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-4, "k{kernel} s{stride}: {diff}");
        }
    }

    #[test]
    fn same_padding_puts_the_odd_zero_after() {
        let conv = |kernel, stride| ConvBn {
            weight: Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu).unwrap(),
            bias: Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu).unwrap(),
            kernel,
            stride,
            padding: Padding::Same,
            depthwise: true,
        };
        assert_eq!(conv(3, 2).pads(224), (0, 1));
        assert_eq!(conv(5, 2).pads(56), (1, 2));
        assert_eq!(conv(5, 1).pads(14), (2, 2));
    }
}
