//! Text generation on llama.cpp (through the `llama-cpp-2` crate): loads a GGUF, renders the chat
//! template, tokenizes, decodes the prompt in batches and samples token by token, streaming whole
//! UTF-8 characters. One llama.cpp context per loaded model, owned by the model's thread.

mod sampling;
mod template;
mod utf8;

use ember_core::InferError;
use ember_core::catalog::ModelSpec;
use ember_core::runner::TextGenerationRunner;
use ember_core::tasks::{
    ChatMessage, Completion, FinishReason, PromptInput, TextGenerationRequest, Usage,
};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::OnceLock;
use template::ChatTemplate;
use utf8::Utf8Stream;

/// Tokens decoded per `llama_decode` call while reading a prompt.
const PROMPT_BATCH: usize = 512;

self_cell::self_cell!(
    /// A model and the one context that borrows it, kept together on the model thread.
    struct ModelAndContext {
        owner: LlamaModel,
        #[covariant]
        dependent: LlamaContext,
    }
);

/// llama.cpp's process-wide backend, initialised on first use.
fn backend() -> Result<&'static LlamaBackend, InferError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let mut backend = LlamaBackend::init().map_err(|e| e.to_string())?;
            if std::env::var_os("EMBER_LLAMA_LOG").is_none() {
                backend.void_logs();
            }
            Ok(backend)
        })
        .as_ref()
        .map_err(|e| InferError::Internal(format!("llama.cpp backend: {e}")))
}

/// Threads for llama.cpp: `EMBER_THREADS`, or every available core.
fn threads() -> i32 {
    std::env::var("EMBER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as i32))
}

pub struct LlamaRunner {
    id: String,
    model: ModelAndContext,
    template: Option<ChatTemplate>,
    n_ctx: u32,
}

/// Loads `model.gguf` from the model's folder with a context of the catalog's size (capped at
/// what the model was trained for).
pub fn load(spec: &ModelSpec, dir: &Path) -> Result<LlamaRunner, InferError> {
    let failed = |reason: String| InferError::LoadFailed {
        model: spec.id.clone(),
        reason,
    };
    let backend = backend()?;
    let path = dir.join("model.gguf");
    let model = LlamaModel::load_from_file(backend, &path, &LlamaModelParams::default())
        .map_err(|e| failed(format!("{}: {e}", path.display())))?;
    let n_ctx = spec.context_window.min(model.n_ctx_train()).max(1);
    let template = match model.meta_val_str("tokenizer.chat_template") {
        Ok(source) => {
            let vocab = model.vocab();
            let piece = |t: LlamaToken| {
                String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned()
            };
            Some(
                ChatTemplate::new(source, piece(vocab.bos()), piece(vocab.eos()))
                    .map_err(|e| failed(format!("chat template: {e}")))?,
            )
        }
        Err(_) => None,
    };
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(PROMPT_BATCH as u32)
        .with_n_ubatch(PROMPT_BATCH as u32)
        .with_n_threads(threads())
        .with_n_threads_batch(threads());
    let model = ModelAndContext::try_new(model, |model| model.new_context(backend, params))
        .map_err(|e| failed(format!("context of {n_ctx} tokens: {e}")))?;
    tracing::info!(model = %spec.id, n_ctx, threads = threads(), "loaded on llama.cpp");
    Ok(LlamaRunner {
        id: spec.id.clone(),
        model,
        template,
        n_ctx,
    })
}

impl LlamaRunner {
    /// The exact text the model reads for this request.
    fn prompt_text(&self, prompt: &PromptInput) -> Result<String, InferError> {
        let messages = match prompt {
            PromptInput::Prompt { text, raw: true } => return Ok(text.clone()),
            // A base model without a chat template reads the prompt as-is.
            PromptInput::Prompt { text, raw: false } if self.template.is_none() => {
                return Ok(text.clone());
            }
            PromptInput::Prompt { text, raw: false } => vec![ChatMessage {
                role: "user".into(),
                content: text.clone(),
            }],
            PromptInput::Messages(messages) => messages.clone(),
        };
        let template = self.template.as_ref().ok_or_else(|| {
            InferError::invalid(
                "/messages",
                format!(
                    "{} has no chat template; send `prompt` with `raw: true`",
                    self.id
                ),
            )
        })?;
        template.render(&messages).map_err(|e| {
            InferError::invalid(
                "/messages",
                format!("the model's chat template rejected them: {e}"),
            )
        })
    }

    fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        let vocab = self.model.borrow_owner().vocab();
        // Templates that write the BOS token themselves must not get a second one.
        let bos =
            String::from_utf8_lossy(&vocab.token_to_piece(vocab.bos(), true, None)).into_owned();
        let add_special = !(vocab.should_add_bos() && !bos.is_empty() && text.starts_with(&bos));
        vocab.tokenize(text.as_bytes(), add_special, true)
    }
}

impl TextGenerationRunner for LlamaRunner {
    fn generate(
        &mut self,
        request: &TextGenerationRequest,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Completion, InferError> {
        self.generate_tokens(request, &mut |_, text| text.is_empty() || on_text(text))
    }
}

impl LlamaRunner {
    /// The prompt tokens the model reads for a request (chat template applied).
    pub fn prompt_tokens(&self, prompt: &PromptInput) -> Result<Vec<i32>, InferError> {
        Ok(self
            .tokenize(&self.prompt_text(prompt)?)
            .iter()
            .map(|t| t.0)
            .collect())
    }

    /// Generates like `generate`, reporting each sampled token id with the text it completed
    /// (empty while a multi-byte character is still partial). Bytes still held when generation
    /// ends (a character the model never finished) are reported last with the token id -1.
    pub fn generate_tokens(
        &mut self,
        request: &TextGenerationRequest,
        on_token: &mut dyn FnMut(i32, &str) -> bool,
    ) -> Result<Completion, InferError> {
        let text = self.prompt_text(&request.prompt)?;
        let prompt = self.tokenize(&text);
        if prompt.is_empty() {
            return Err(InferError::invalid("/prompt", "tokenizes to nothing"));
        }
        let n_ctx = self.n_ctx as usize;
        if prompt.len() >= n_ctx {
            return Err(InferError::ModelInputRejected(format!(
                "AiError: Sequence too long: {} > {} (the model's context window)",
                prompt.len(),
                n_ctx - 1
            )));
        }
        let budget = (request.max_tokens as usize).min(n_ctx - prompt.len());
        let mut sampler = sampling::build(&request.sampling, self.model.borrow_owner());
        let internal =
            |what: &str, e: &dyn std::fmt::Display| InferError::Internal(format!("{what}: {e}"));

        self.model.with_dependent_mut(|model, ctx| {
            let vocab = model.vocab();
            ctx.clear_kv_cache();
            let mut batch = LlamaBatch::new(PROMPT_BATCH, 1);
            for (chunk_index, chunk) in prompt.chunks(PROMPT_BATCH).enumerate() {
                batch.clear();
                let start = chunk_index * PROMPT_BATCH;
                for (offset, token) in chunk.iter().enumerate() {
                    let pos = start + offset;
                    batch
                        .add(*token, pos as i32, &[0], pos == prompt.len() - 1)
                        .map_err(|e| internal("batch", &e))?;
                }
                ctx.decode(&mut batch).map_err(|e| internal("decode", &e))?;
            }

            let mut utf8 = Utf8Stream::default();
            let mut output = String::new();
            let mut piece = Vec::with_capacity(16);
            let mut generated = 0usize;
            let mut finish = FinishReason::Length;
            while generated < budget {
                let token = sampler.sample(ctx, batch.n_tokens() - 1);
                if vocab.is_eog(token) {
                    finish = FinishReason::Stop;
                    break;
                }
                generated += 1;
                piece.clear();
                vocab.token_to_piece_into(token, &mut piece, false, None);
                let text = utf8.push(&piece);
                output.push_str(&text);
                if !on_token(token.0, &text) {
                    finish = FinishReason::Cancelled;
                    break;
                }
                if generated == budget {
                    break;
                }
                batch.clear();
                batch
                    .add(token, (prompt.len() + generated - 1) as i32, &[0], true)
                    .map_err(|e| internal("batch", &e))?;
                ctx.decode(&mut batch).map_err(|e| internal("decode", &e))?;
            }
            let rest = utf8.finish();
            if !rest.is_empty() && finish != FinishReason::Cancelled {
                output.push_str(&rest);
                on_token(-1, &rest);
            }
            Ok(Completion {
                text: output,
                usage: Usage::new(prompt.len() as u32, generated as u32),
                finish_reason: finish,
            })
        })
    }
}
