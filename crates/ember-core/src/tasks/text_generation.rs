//! Text generation: a chat (`messages`) or a bare `prompt`, sampling settings, tools, JSON mode and
//! stop sequences; the completion a model returns.

use super::{TaskInfo, Usage};
use crate::tools::{ResponseFormat, ToolCall, ToolChoice, ToolDefinition};
use serde::Serialize;

pub const INFO: TaskInfo = TaskInfo {
    name: "Text Generation",
    uuid: "c329a1f9-323d-4e91-b2aa-582dd4188d34",
    requests_per_minute: 300,
    description: "Family of generative text models, such as large language models (LLM), that can be adapted for a variety of natural language tasks.",
};

/// Workers AI's default `max_tokens` for text generation.
pub const DEFAULT_MAX_TOKENS: u32 = 256;
/// Workers AI's default sampling temperature.
pub const DEFAULT_TEMPERATURE: f32 = 0.6;
/// Longest `prompt` or message `content`, in characters, per the published schemas.
pub const MAX_PROMPT_CHARS: usize = 131_072;

#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    /// The text of the message (its text parts joined, when it came as content parts).
    pub content: String,
    /// Images among the message's content parts, for models that see them.
    pub images: Vec<ImagePart>,
    /// Calls an assistant message made (chat history for a multi-turn tool conversation).
    pub tool_calls: Vec<ToolCall>,
    /// On a `tool` message: the call this is the result of.
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn text(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            images: Vec::new(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// An `image_url` content part: the image's bytes (as sent: PNG, JPEG, ...), and where it stood
/// among the text.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePart {
    pub bytes: Vec<u8>,
    /// Byte offset in `content` at which the image came.
    pub text_offset: usize,
    /// The part's JSON pointer, for errors about it.
    pub at: String,
}

/// What the model is asked: a chat, rendered through its template, or a bare prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    Messages(Vec<ChatMessage>),
    /// `raw: false` wraps the prompt as a single user message; `raw: true` sends it as-is.
    Prompt {
        text: String,
        raw: bool,
    },
}

/// Sampling settings. `temperature == 0` means greedy decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    /// Drops tokens less likely than `min_p` times the most likely one (an Ember extension).
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
    pub repetition_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
}

impl Sampling {
    /// Temperature 0: always the most likely token.
    pub fn greedy() -> Sampling {
        Sampling {
            temperature: 0.0,
            top_p: None,
            top_k: None,
            min_p: None,
            seed: None,
            repetition_penalty: None,
            frequency_penalty: None,
            presence_penalty: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TextGenerationRequest {
    pub prompt: PromptInput,
    pub max_tokens: u32,
    pub sampling: Sampling,
    pub stream: bool,
    /// Tools the model may call (empty: none), shown to it through its chat template.
    pub tools: Vec<ToolDefinition>,
    pub tool_choice: ToolChoice,
    pub response_format: ResponseFormat,
    /// Text that ends the generation where it appears; it is not part of the output.
    pub stop: Vec<String>,
    /// A finetune's LoRA adapter applied to the model for this request.
    pub lora: Option<Lora>,
}

/// A finetune's LoRA adapter, as uploaded: the folder holding its `adapter_config.json` and
/// `adapter_model.safetensors` (PEFT's files), which the engine converts for its base model.
#[derive(Debug, Clone, PartialEq)]
pub struct Lora {
    /// The finetune's id.
    pub id: String,
    pub folder: std::path::PathBuf,
}

impl TextGenerationRequest {
    /// A request with no tools, free text and no stop sequences.
    pub fn new(prompt: PromptInput, max_tokens: u32, sampling: Sampling) -> TextGenerationRequest {
        TextGenerationRequest {
            prompt,
            max_tokens,
            sampling,
            stream: false,
            tools: Vec::new(),
            tool_choice: ToolChoice::Auto,
            response_format: ResponseFormat::Text,
            stop: Vec::new(),
            lora: None,
        }
    }

    /// The tools the model sees: none with `tool_choice: none`.
    pub fn offered_tools(&self) -> &[ToolDefinition] {
        match self.tool_choice {
            ToolChoice::None => &[],
            _ => &self.tools,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-generation token.
    Stop,
    /// `max_tokens` (or the context) was reached.
    Length,
    /// The model called tools and waits for their results.
    ToolCalls,
    /// The client went away.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    /// The text is JSON (JSON mode): natively it is returned as the parsed value.
    pub json: bool,
    pub usage: Usage,
    pub finish_reason: FinishReason,
}
