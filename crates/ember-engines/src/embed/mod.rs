//! Text embeddings on candle: a sentence-transformers pipeline (tokenize → encoder → pool → the
//! model's remaining `modules.json` modules) around one of two encoders.
//!
//! - BERT-family encoders (all-MiniLM-L6-v2, the BGE models): `bert_onnx` on ONNX Runtime where
//!   it is installed (measured faster), else [`bert`] on `candle_transformers::models::bert`.
//! - [`gemma3`]: EmbeddingGemma's bidirectional Gemma 3 encoder, written here.
//!
//! What a request goes through, matching sentence-transformers (`SentenceTransformer.encode`):
//!
//! 1. Tokenize with the model's `tokenizer.json`, its own padding and truncation turned off and
//!    replaced by ours: at most `max_input_tokens` tokens *including* the special tokens the
//!    post-processor adds (the content is cut on the right), as the Hugging Face tokenizer does
//!    with `truncation=True, max_length=N`.
//! 2. Sort the texts by length and cut them into batches of at most [`BATCH_TOKENS`] padded
//!    tokens; pad on the right with an attention mask (right padding keeps every real token at the
//!    position it has when run alone, so batching does not change results).
//! 3. Pool the encoder's last hidden state: `Mean` = mean over the real tokens (special tokens
//!    included, as the `Pooling` module does), `Cls` = the hidden state of token 0.
//! 4. Apply the modules after `Pooling` in `modules.json`: `Dense` (weights from the module's
//!    folder) and `Normalize` (L2, `F.normalize` with eps 1e-12).
//!
//! Vectors come back in input order with the number of tokens each text used.

pub mod bert;
mod bert_onnx;
pub mod gemma3;

use candle_core::{D, DType, Device, Tensor};
use ember_core::catalog::Engine;
use ember_core::runner::Runner;
use ember_core::tasks::{EmbeddingsOutput, Pooling, TaskOutput, TaskRequest};
use ember_core::{InferError, ModelSpec};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use tokenizers::{
    PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

/// Most padded tokens (batch size × longest text) run through the encoder at once.
pub const BATCH_TOKENS: usize = 4096;

/// An encoder: token ids and attention mask in, last hidden state out.
pub(crate) trait Encoder: Send {
    /// `input_ids`: `[batch, seq]` u32; `attention_mask`: `[batch, seq]` f32 (1 = real token,
    /// 0 = padding). Returns `[batch, seq, hidden]` f32.
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> candle_core::Result<Tensor>;
    /// Longest sequence the encoder accepts (its position table).
    fn max_positions(&self) -> usize;
    /// Token id used to pad batches.
    fn pad_id(&self) -> u32;
}

/// A BERT encoder on ONNX Runtime, or on candle where ONNX Runtime cannot be loaded.
fn bert_encoder(dir: &Path) -> Result<Box<dyn Encoder>, String> {
    let threads = crate::cpu_threads();
    match bert_onnx::OnnxBert::load(dir, threads) {
        Ok(encoder) => Ok(Box::new(encoder)),
        Err(why) => {
            tracing::info!(%why, "BERT embeddings on candle instead of ONNX Runtime");
            Ok(Box::new(bert::Bert::load(dir)?))
        }
    }
}

/// Loads an embeddings model from its folder, choosing the encoder by `spec.engine`.
pub fn load(spec: &ModelSpec, dir: &Path) -> Result<SentenceEmbedder, InferError> {
    let failed = |reason: String| InferError::LoadFailed {
        model: spec.id.clone(),
        reason,
    };
    if !dir.is_dir() {
        return Err(failed(format!(
            "model folder {} does not exist",
            dir.display()
        )));
    }
    let encoder: Box<dyn Encoder> = match spec.engine {
        Engine::CandleBert => bert_encoder(dir).map_err(failed)?,
        Engine::CandleGemma3Embedding => {
            Box::new(gemma3::Gemma3Encoder::load(dir).map_err(failed)?)
        }
        other => {
            return Err(failed(format!(
                "engine {other:?} is not an embeddings engine"
            )));
        }
    };
    let head = load_head(dir).map_err(failed)?;
    let limit = spec.max_input_tokens.map_or(encoder.max_positions(), |n| {
        (n as usize).min(encoder.max_positions())
    });
    let tokenizer = load_tokenizer(&dir.join("tokenizer.json"), limit).map_err(failed)?;
    tracing::debug!(model = %spec.id, max_tokens = limit, head = ?head, "embeddings model loaded");
    Ok(SentenceEmbedder {
        tokenizer,
        encoder,
        head,
        max_tokens: limit,
    })
}

/// A loaded sentence-transformers model: tokenizer, encoder and the modules after pooling.
pub struct SentenceEmbedder {
    tokenizer: Tokenizer,
    encoder: Box<dyn Encoder>,
    head: Vec<HeadModule>,
    max_tokens: usize,
}

impl SentenceEmbedder {
    /// Most tokens (special tokens included) a text is truncated to.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The token ids each text is embedded from (with special tokens, after truncation).
    pub fn tokenize(&self, texts: &[String]) -> Result<Vec<Vec<u32>>, InferError> {
        let encodings = self
            .tokenizer
            .encode_batch_fast(texts.iter().map(String::as_str).collect::<Vec<_>>(), true)
            .map_err(|e| InferError::Internal(format!("tokenizer failed: {e}")))?;
        Ok(encodings
            .into_iter()
            .map(|encoding| {
                let mut ids = encoding.get_ids().to_vec();
                // The tokenizer already truncates; this only guards the encoder's position table.
                ids.truncate(self.max_tokens);
                ids
            })
            .collect())
    }

    /// Embeds texts that are already token ids; returns one vector per text, in order.
    pub fn embed_ids(
        &self,
        ids: &[Vec<u32>],
        pooling: Pooling,
    ) -> Result<Vec<Vec<f32>>, InferError> {
        run_batched(ids, self.encoder.pad_id(), |input_ids, mask| {
            let hidden = self.encoder.forward(input_ids, mask)?;
            let mut pooled = match pooling {
                Pooling::Mean => mean_pool(&hidden, mask)?,
                Pooling::Cls => cls_pool(&hidden)?,
            };
            for module in &self.head {
                pooled = module.forward(&pooled)?;
            }
            Ok(pooled)
        })
        .map_err(internal)
    }

    /// Embeds every text (truncated to the model's input limit) with the given pooling.
    pub fn embed(
        &self,
        texts: &[String],
        pooling: Pooling,
    ) -> Result<EmbeddingsOutput, InferError> {
        let ids = self.tokenize(texts)?;
        let vectors = self.embed_ids(&ids, pooling)?;
        let token_counts = ids.iter().map(|ids| ids.len() as u32).collect();
        Ok(EmbeddingsOutput {
            vectors,
            token_counts,
            pooling,
        })
    }
}

/// A request run together with others: its position among them and its texts.
type Member = (usize, Vec<String>);

/// Requests that waited together and run in one pass: concurrent requests of a text or a few
/// fill the encoder's batches instead of running it once each.
const REQUESTS_TOGETHER: usize = 32;

impl Runner for SentenceEmbedder {
    fn run(&mut self, request: TaskRequest) -> Result<TaskOutput, InferError> {
        match request {
            TaskRequest::TextEmbeddings(request) => self
                .embed(&request.texts, request.pooling)
                .map(TaskOutput::TextEmbeddings),
            other => Err(crate::wrong_task(&other)),
        }
    }

    fn batch_size(&self) -> usize {
        REQUESTS_TOGETHER
    }

    /// The texts of all requests with the same pooling are embedded together (batching leaves
    /// each text's vector as it is alone, see `run_batched`), then handed back per request.
    fn run_together(&mut self, requests: Vec<TaskRequest>) -> Vec<Result<TaskOutput, InferError>> {
        let mut answers: Vec<Option<Result<TaskOutput, InferError>>> =
            (0..requests.len()).map(|_| None).collect();
        // Per pooling: the requests' positions and texts.
        let mut groups: Vec<(Pooling, Vec<Member>)> = Vec::new();
        for (i, request) in requests.into_iter().enumerate() {
            let TaskRequest::TextEmbeddings(request) = request else {
                answers[i] = Some(Err(crate::wrong_task(&request)));
                continue;
            };
            match groups
                .iter_mut()
                .find(|(pooling, _)| *pooling == request.pooling)
            {
                Some((_, members)) => members.push((i, request.texts)),
                None => groups.push((request.pooling, vec![(i, request.texts)])),
            }
        }
        for (pooling, members) in groups {
            let texts: Vec<String> = members
                .iter()
                .flat_map(|(_, t)| t.iter().cloned())
                .collect();
            match self.embed(&texts, pooling) {
                Ok(output) => {
                    let mut vectors = output.vectors.into_iter();
                    let mut counts = output.token_counts.into_iter();
                    for (i, texts) in members {
                        let part = EmbeddingsOutput {
                            vectors: vectors.by_ref().take(texts.len()).collect(),
                            token_counts: counts.by_ref().take(texts.len()).collect(),
                            pooling,
                        };
                        answers[i] = Some(Ok(TaskOutput::TextEmbeddings(part)));
                    }
                }
                Err(error) => {
                    for (i, _) in members {
                        answers[i] = Some(Err(error.clone()));
                    }
                }
            }
        }
        answers
            .into_iter()
            .map(|answer| answer.expect("every request is answered"))
            .collect()
    }
}

fn internal(error: candle_core::Error) -> InferError {
    InferError::Internal(format!("embeddings engine: {error}"))
}

/// Loads `tokenizer.json` with its padding off and truncation to `max_tokens` tokens in all.
pub(crate) fn load_tokenizer(path: &Path, max_tokens: usize) -> Result<Tokenizer, String> {
    let mut tokenizer =
        Tokenizer::from_file(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let added = tokenizer
        .get_post_processor()
        .map_or(0, |p| p.added_tokens(false));
    if max_tokens <= added {
        return Err(format!(
            "input limit of {max_tokens} tokens leaves no room beside {added} special tokens"
        ));
    }
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            direction: TruncationDirection::Right,
            max_length: max_tokens,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        }))
        .map_err(|e| format!("cannot set truncation: {e}"))?;
    Ok(tokenizer)
}

/// Runs `forward` over the rows in batches of at most [`BATCH_TOKENS`] padded tokens (longest
/// first, right padding with `pad_id` and an f32 attention mask) and returns its per-row output
/// rows in input order. `forward` gets `[batch, seq]` u32 ids and mask and returns `[batch, n]`.
pub(crate) fn run_batched(
    rows: &[Vec<u32>],
    pad_id: u32,
    forward: impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Vec<Vec<f32>>> {
    let lengths: Vec<usize> = rows.iter().map(Vec::len).collect();
    let mut outputs = vec![Vec::new(); rows.len()];
    for batch in plan_batches(&lengths, BATCH_TOKENS) {
        let batch_rows: Vec<&[u32]> = batch.iter().map(|&i| rows[i].as_slice()).collect();
        let (ids, mask) = pad_batch(&batch_rows, pad_id)?;
        for (i, row) in batch
            .into_iter()
            .zip(forward(&ids, &mask)?.to_vec2::<f32>()?)
        {
            outputs[i] = row;
        }
    }
    Ok(outputs)
}

/// Groups text indices into batches: longest first, each batch at most `budget` padded tokens
/// (but always at least one text). Every index appears in exactly one batch.
pub(crate) fn plan_batches(lengths: &[usize], budget: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut longest = 0;
    for i in order {
        // Sorted longest first, so the batch's first text sets its padded length.
        if !current.is_empty() && (current.len() + 1) * longest > budget {
            batches.push(std::mem::take(&mut current));
        }
        if current.is_empty() {
            longest = lengths[i].max(1);
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Right-pads rows to the longest: `[batch, seq]` u32 ids and `[batch, seq]` f32 mask.
pub(crate) fn pad_batch(rows: &[&[u32]], pad_id: u32) -> candle_core::Result<(Tensor, Tensor)> {
    let seq = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
    let mut ids = Vec::with_capacity(rows.len() * seq);
    let mut mask = Vec::with_capacity(rows.len() * seq);
    for row in rows {
        ids.extend_from_slice(row);
        ids.extend(std::iter::repeat_n(pad_id, seq - row.len()));
        mask.extend(std::iter::repeat_n(1f32, row.len()));
        mask.extend(std::iter::repeat_n(0f32, seq - row.len()));
    }
    Ok((
        Tensor::from_vec(ids, (rows.len(), seq), &Device::Cpu)?,
        Tensor::from_vec(mask, (rows.len(), seq), &Device::Cpu)?,
    ))
}

/// Mean of the hidden states of the real tokens: `[b, t, h]`, mask `[b, t]` → `[b, h]`.
/// As sentence-transformers: sum(h · mask) / max(sum(mask), 1e-9).
pub(crate) fn mean_pool(hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let mask = mask.to_dtype(hidden.dtype())?;
    let summed = hidden.broadcast_mul(&mask.unsqueeze(D::Minus1)?)?.sum(1)?;
    let counts = mask.sum_keepdim(1)?.clamp(1e-9f32, f32::MAX)?;
    summed.broadcast_div(&counts)
}

/// The hidden state of token 0 (`[CLS]` for BERT, `<bos>` for Gemma): `[b, t, h]` → `[b, h]`.
pub(crate) fn cls_pool(hidden: &Tensor) -> candle_core::Result<Tensor> {
    hidden.narrow(1, 0, 1)?.squeeze(1)?.contiguous()
}

/// `x / max(‖x‖₂, 1e-12)` per row, as `torch.nn.functional.normalize`.
pub(crate) fn l2_normalize(xs: &Tensor) -> candle_core::Result<Tensor> {
    let norms = xs
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12f32, f32::MAX)?;
    xs.broadcast_div(&norms)
}

/// A sentence-transformers module applied after pooling.
#[derive(Debug)]
pub(crate) enum HeadModule {
    /// `activation(x · W + b)`, `W` kept `[in, out]` (the checkpoint's `[out, in]` transposed).
    Dense {
        weight_t: Tensor,
        bias: Option<Tensor>,
        activation: Activation,
    },
    Normalize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Activation {
    Identity,
    Tanh,
}

impl HeadModule {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            HeadModule::Dense {
                weight_t,
                bias,
                activation,
            } => {
                let mut ys = xs.matmul(weight_t)?;
                if let Some(bias) = bias {
                    ys = ys.broadcast_add(bias)?;
                }
                match activation {
                    Activation::Identity => Ok(ys),
                    Activation::Tanh => ys.tanh(),
                }
            }
            HeadModule::Normalize => l2_normalize(xs),
        }
    }
}

#[derive(serde::Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(serde::Deserialize)]
struct DenseConfig {
    in_features: usize,
    out_features: usize,
    #[serde(default = "yes")]
    bias: bool,
    #[serde(default = "identity")]
    activation_function: String,
}

fn yes() -> bool {
    true
}

fn identity() -> String {
    "torch.nn.modules.linear.Identity".into()
}

/// Reads `modules.json` and loads the modules after `Transformer` and `Pooling`.
fn load_head(dir: &Path) -> Result<Vec<HeadModule>, String> {
    let path = dir.join("modules.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(folder = %dir.display(), "no modules.json: pooled vectors are returned as they are");
            return Ok(Vec::new());
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let entries: Vec<ModuleEntry> =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut head = Vec::new();
    for entry in entries {
        let kind = entry.kind.rsplit('.').next().unwrap_or_default();
        match kind {
            "Transformer" | "Pooling" => {}
            "Normalize" => head.push(HeadModule::Normalize),
            "Dense" => head.push(load_dense(&dir.join(&entry.path))?),
            _ => {
                return Err(format!(
                    "unsupported sentence-transformers module {}",
                    entry.kind
                ));
            }
        }
    }
    Ok(head)
}

fn load_dense(dir: &Path) -> Result<HeadModule, String> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| format!("cannot read {}: {e}", config_path.display()))?;
    let config: DenseConfig =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", config_path.display()))?;
    let activation = match config.activation_function.as_str() {
        "torch.nn.modules.linear.Identity" => Activation::Identity,
        "torch.nn.modules.activation.Tanh" => Activation::Tanh,
        other => {
            return Err(format!(
                "{}: unsupported activation {other}",
                config_path.display()
            ));
        }
    };
    let mut tensors = load_safetensors(&dir.join("model.safetensors"))?;
    let weight = tensors
        .remove("linear.weight")
        .ok_or_else(|| format!("{}: no linear.weight", dir.display()))?
        .to_dtype(DType::F32)
        .map_err(|e| e.to_string())?;
    if weight.dims() != [config.out_features, config.in_features] {
        return Err(format!(
            "{}: linear.weight is {:?}, config says {}x{}",
            dir.display(),
            weight.dims(),
            config.out_features,
            config.in_features
        ));
    }
    let bias = if config.bias {
        let bias = tensors
            .remove("linear.bias")
            .ok_or_else(|| format!("{}: no linear.bias", dir.display()))?;
        Some(bias.to_dtype(DType::F32).map_err(|e| e.to_string())?)
    } else {
        None
    };
    let weight_t = weight
        .t()
        .and_then(|w| w.contiguous())
        .map_err(|e| e.to_string())?;
    Ok(HeadModule::Dense {
        weight_t,
        bias,
        activation,
    })
}

#[derive(serde::Deserialize)]
struct TensorHeader {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

/// Reads a `.safetensors` file into CPU tensors one tensor at a time, so loading needs little
/// more memory than the weights themselves (no mmap: the workspace forbids `unsafe`).
pub(crate) fn load_safetensors(path: &Path) -> Result<HashMap<String, Tensor>, String> {
    let fail = |what: String| format!("{}: {what}", path.display());
    let mut file = std::fs::File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
    let file_len = file.metadata().map_err(|e| fail(e.to_string()))?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|e| fail(format!("cannot read header: {e}")))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > 100_000_000 || header_len + 8 > file_len {
        return Err(fail("not a safetensors file".into()));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| fail(format!("cannot read header: {e}")))?;
    let mut entries: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| fail(format!("bad header: {e}")))?;
    entries.remove("__metadata__");
    let data_start = 8 + header_len;
    let mut headers: Vec<(String, TensorHeader)> = entries
        .into_iter()
        .map(|(name, value)| {
            serde_json::from_value(value)
                .map(|h| (name.clone(), h))
                .map_err(|e| fail(format!("bad header for {name}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    headers.sort_by_key(|(_, h)| h.data_offsets[0]);
    let mut tensors = HashMap::with_capacity(headers.len());
    for (name, h) in headers {
        let [begin, end] = h.data_offsets;
        let dtype = match h.dtype.as_str() {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "F64" => DType::F64,
            "I64" => DType::I64,
            "U32" => DType::U32,
            "U8" => DType::U8,
            other => return Err(fail(format!("{name}: unsupported dtype {other}"))),
        };
        let elements: usize = h.shape.iter().product();
        if end < begin
            || end - begin != elements * dtype.size_in_bytes()
            || data_start + end as u64 > file_len
        {
            return Err(fail(format!("{name}: bad data offsets")));
        }
        file.seek(SeekFrom::Start(data_start + begin as u64))
            .map_err(|e| fail(e.to_string()))?;
        let tensor = if dtype == DType::F32 {
            // Stream through a small buffer instead of holding the raw bytes of a large table.
            let mut values = Vec::with_capacity(elements);
            let mut chunk = vec![0u8; (1 << 20).min(end - begin)];
            let mut left = end - begin;
            while left > 0 {
                let n = chunk.len().min(left);
                file.read_exact(&mut chunk[..n])
                    .map_err(|e| fail(e.to_string()))?;
                values.extend(
                    chunk[..n]
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                );
                left -= n;
            }
            Tensor::from_vec(values, h.shape.as_slice(), &Device::Cpu)
        } else {
            let mut bytes = vec![0u8; end - begin];
            file.read_exact(&mut bytes)
                .map_err(|e| fail(e.to_string()))?;
            Tensor::from_raw_buffer(&bytes, dtype, &h.shape, &Device::Cpu)
        }
        .map_err(|e| fail(format!("{name}: {e}")))?;
        tensors.insert(name, tensor);
    }
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t2(rows: &[&[f32]]) -> Tensor {
        let cols = rows[0].len();
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_vec(flat, (rows.len(), cols), &Device::Cpu).unwrap()
    }

    #[test]
    fn batches_cover_every_text_once_within_budget() {
        let lengths = [5, 300, 7, 7, 1, 120, 40, 0];
        let batches = plan_batches(&lengths, 320);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        for batch in &batches {
            let longest = batch.iter().map(|&i| lengths[i]).max().unwrap();
            assert!(
                batch.len() == 1 || batch.len() * longest <= 320,
                "{batch:?}"
            );
            // Longest first within and across batches.
            assert!(batch.windows(2).all(|w| lengths[w[0]] >= lengths[w[1]]));
        }
        assert_eq!(batches[0], vec![1]);
        // A text longer than the budget still gets a batch of its own.
        assert_eq!(plan_batches(&[10, 2], 4), vec![vec![0], vec![1]]);
        assert!(plan_batches(&[], 4).is_empty());
    }

    #[test]
    fn padding_is_right_aligned_with_mask() {
        let (ids, mask) = pad_batch(&[&[7, 8, 9], &[5]], 0).unwrap();
        assert_eq!(
            ids.to_vec2::<u32>().unwrap(),
            vec![vec![7, 8, 9], vec![5, 0, 0]]
        );
        assert_eq!(
            mask.to_vec2::<f32>().unwrap(),
            vec![vec![1.0, 1.0, 1.0], vec![1.0, 0.0, 0.0]]
        );
    }

    #[test]
    fn mean_pool_ignores_padding() {
        // batch 2, seq 3, hidden 2
        let hidden = Tensor::from_vec(
            vec![1f32, 2., 3., 4., 5., 6., 10., 20., 99., 99., 99., 99.],
            (2, 3, 2),
            &Device::Cpu,
        )
        .unwrap();
        let mask = t2(&[&[1., 1., 1.], &[1., 0., 0.]]);
        let pooled = mean_pool(&hidden, &mask).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(pooled, vec![vec![3.0, 4.0], vec![10.0, 20.0]]);
    }

    #[test]
    fn cls_pool_takes_token_zero() {
        let hidden = Tensor::from_vec(
            (0..12).map(|x| x as f32).collect::<Vec<_>>(),
            (2, 3, 2),
            &Device::Cpu,
        )
        .unwrap();
        let pooled = cls_pool(&hidden).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(pooled, vec![vec![0.0, 1.0], vec![6.0, 7.0]]);
    }

    #[test]
    fn normalize_gives_unit_rows_and_keeps_zero() {
        let xs = t2(&[&[3., 4.], &[0., 0.]]);
        let ys = l2_normalize(&xs).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(ys, vec![vec![0.6, 0.8], vec![0.0, 0.0]]);
    }

    #[test]
    fn dense_is_x_times_w_transposed() {
        let dense = HeadModule::Dense {
            weight_t: t2(&[&[1., 1., 0.], &[0., 1., 2.]]),
            bias: None,
            activation: Activation::Identity,
        };
        let ys = dense
            .forward(&t2(&[&[1., 2.]]))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(ys, vec![vec![1.0, 3.0, 4.0]]);
    }
}
