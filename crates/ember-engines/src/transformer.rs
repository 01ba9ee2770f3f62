//! The attention and feed-forward blocks of Ember's transformers (BART and M2M100 in `seq2seq`,
//! DETR in `vision`, CLIP's text encoder in `diffusion`), with transformers' weight names (`q_proj`, `k_proj`,
//! `v_proj`, `out_proj`; `fc1`, `fc2`): multi-head attention with biases and scores scaled by
//! `head_dim^-0.5`, over `[batch, tokens, dim]`.

use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder, linear};

#[derive(Clone, Copy)]
pub(crate) enum Activation {
    /// Exact GELU (transformers' "gelu").
    Gelu,
    /// The tanh approximation ("gelu_new", "gelu_pytorch_tanh").
    GeluTanh,
    Relu,
    Silu,
    /// `x · sigmoid(1.702 x)`, CLIP's ("quick_gelu").
    QuickGelu,
}

impl Activation {
    pub(crate) fn parse(name: &str) -> Result<Activation, String> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            "quick_gelu" => Activation::QuickGelu,
            other => return Err(format!("config.json: unsupported activation {other:?}")),
        })
    }

    pub(crate) fn forward(self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Gelu => xs.gelu_erf(),
            Activation::GeluTanh => xs.gelu(),
            Activation::Relu => xs.relu(),
            Activation::Silu => xs.silu(),
            Activation::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
        }
    }
}

pub(crate) struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    pub(crate) fn load(vb: VarBuilder, dim: usize, heads: usize) -> candle_core::Result<Attention> {
        Ok(Attention {
            q_proj: linear(dim, dim, vb.pp("q_proj"))?,
            k_proj: linear(dim, dim, vb.pp("k_proj"))?,
            v_proj: linear(dim, dim, vb.pp("v_proj"))?,
            out_proj: linear(dim, dim, vb.pp("out_proj"))?,
            heads,
            head_dim: dim / heads,
        })
    }

    /// `[b, t, dim]` → `[b, heads, t, head_dim]`.
    fn split_heads(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        xs.reshape((b, t, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Keys and values of `xs`, split into heads.
    pub(crate) fn keys_values(&self, xs: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((self.keys(xs)?, self.values(xs)?))
    }

    /// Keys of `xs` (`[b, t, dim]`), split into heads.
    pub(crate) fn keys(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.split_heads(&self.k_proj.forward(xs)?)
    }

    /// Values of `xs` (`[b, t, dim]`), split into heads.
    pub(crate) fn values(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.split_heads(&self.v_proj.forward(xs)?)
    }

    /// Attends from `xs` (`[b, t, dim]`) to all of `keys`/`values` (no mask: the callers attend
    /// over unpadded inputs: one text, one image's features, or a decoder's past).
    pub(crate) fn attend(
        &self,
        xs: &Tensor,
        keys: &Tensor,
        values: &Tensor,
    ) -> candle_core::Result<Tensor> {
        self.attend_masked(xs, keys, values, None)
    }

    /// `attend` with `mask` (`[t, keys]`, 0 or -inf) added to the scores.
    pub(crate) fn attend_masked(
        &self,
        xs: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, dim) = xs.dims3()?;
        let q = self.split_heads(&self.q_proj.forward(xs)?)?;
        let mut scores = (q.matmul(&keys.t()?)? * (self.head_dim as f64).powf(-0.5))?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = weights
            .matmul(values)?
            .transpose(1, 2)?
            .reshape((b, t, dim))?;
        self.out_proj.forward(&context)
    }
}

/// A position-wise feed-forward block: fc2(activation(fc1(x))).
pub(crate) struct FeedForward {
    fc1: Linear,
    fc2: Linear,
}

impl FeedForward {
    pub(crate) fn load(
        vb: &VarBuilder,
        dim: usize,
        ffn_dim: usize,
    ) -> candle_core::Result<FeedForward> {
        Ok(FeedForward {
            fc1: linear(dim, ffn_dim, vb.pp("fc1"))?,
            fc2: linear(ffn_dim, dim, vb.pp("fc2"))?,
        })
    }

    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        activation: Activation,
    ) -> candle_core::Result<Tensor> {
        self.fc2
            .forward(&activation.forward(&self.fc1.forward(xs)?)?)
    }
}
