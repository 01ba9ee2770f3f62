//! Image-to-text (`@cf/llava-hf/llava-1.5-7b-hf`, `@cf/unum/uform-gen2-qwen-500m`): an image and
//! a prompt in, the model's description out. A text-generation model that sees images answers it,
//! as one user message holding the image, then the prompt. Charged per token.

use super::text_generation::{ChatMessage, ImagePart, PromptInput, Sampling};
use super::{IMAGE_TOKENS_AT_MOST, TEMPLATE_TOKENS, TaskInfo, TextGenerationRequest, Usage};

pub const INFO: TaskInfo = TaskInfo {
    name: "Image-to-Text",
    uuid: "882a91d1-c331-4eec-bdad-834c919942a8",
    requests_per_minute: 720,
    description: "Image to text models output a text from a given image. Image captioning or optical character recognition can be considered as the most common applications of image to text.",
};

/// Workers AI's default `max_tokens` for llava-1.5-7b-hf.
pub const DEFAULT_MAX_TOKENS: u32 = 512;
/// What the model is asked when the request has no prompt.
pub const DEFAULT_PROMPT: &str = "Describe this image.";

pub fn usage(output: &ImageToTextOutput) -> Usage {
    output.usage
}

pub fn most_usage(request: &ImageToTextRequest, _input_bytes: u32) -> Usage {
    let prompt = u32::try_from(request.prompt.len()).unwrap_or(u32::MAX);
    Usage::new(
        prompt.saturating_add(IMAGE_TOKENS_AT_MOST + TEMPLATE_TOKENS),
        request.max_tokens,
    )
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImageToTextRequest {
    /// The encoded image, as the caller sent it.
    pub image: Vec<u8>,
    pub prompt: String,
    pub max_tokens: u32,
    pub sampling: Sampling,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImageToTextOutput {
    pub description: String,
    pub usage: Usage,
}

impl ImageToTextRequest {
    /// The chat a model that sees images answers: one user message, the image before the prompt.
    pub fn chat(self) -> TextGenerationRequest {
        let mut message = ChatMessage::text("user", self.prompt);
        message.images.push(ImagePart {
            bytes: self.image,
            text_offset: 0,
            at: "/image".into(),
        });
        TextGenerationRequest::new(
            PromptInput::Messages(vec![message]),
            self.max_tokens,
            self.sampling,
        )
    }
}
