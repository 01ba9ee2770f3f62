//! Text generation: a chat (`messages`) or a bare `prompt`, sampling settings, tools, JSON mode and
//! stop sequences; parsed and validated from the Workers AI schema. The completion's result object.

use super::{
    Usage, as_object, bounded_string, optional_bool, optional_integer, optional_number,
    type_mismatch,
};
use crate::InferError;
use crate::catalog::ModelSpec;
use crate::tools::{
    self, ResponseFormat, ToolCall, ToolChoice, ToolDefinition, parse_history_calls,
};
use serde::Serialize;
use serde_json::{Value, json};

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

/// An `image_url` content part: where the image is, and where it stood among the text.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePart {
    /// A `data:image/...;base64,` URL or an `http(s)://` URL.
    pub url: String,
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

impl Completion {
    /// `response` as Workers AI returns it: the text, or in JSON mode the parsed value.
    pub fn response(&self) -> Value {
        match self.json {
            true => serde_json::from_str(&self.text).unwrap_or_else(|_| json!(self.text)),
            false => json!(self.text),
        }
    }

    /// The result object of a non-streamed generation.
    pub fn to_json(&self) -> Value {
        let mut result = json!({ "response": self.response(), "usage": self.usage });
        if !self.tool_calls.is_empty() {
            result["tool_calls"] = self.tool_calls.iter().map(ToolCall::native_json).collect();
        }
        result
    }
}

/// Parses a text generation input per the Workers AI schema (`prompt` or `messages`, not both).
pub fn parse_text_generation(
    input: &Value,
    spec: &ModelSpec,
) -> Result<TextGenerationRequest, InferError> {
    let object = as_object(input)?;
    for unsupported in ["functions", "lora", "requests"] {
        if object.get(unsupported).is_some_and(|v| !v.is_null()) {
            return Err(InferError::invalid(
                format!("/{unsupported}"),
                "is not supported by this version of Ember",
            ));
        }
    }
    let prompt = match (object.get("prompt"), object.get("messages")) {
        (Some(_), Some(_)) => {
            return Err(InferError::invalid(
                "/",
                "prompt and messages are mutually exclusive",
            ));
        }
        (None, None) => {
            return Err(InferError::invalid(
                "/",
                "required properties are 'prompt' or 'messages'",
            ));
        }
        (Some(prompt), None) => PromptInput::Prompt {
            text: bounded_string(prompt, "/prompt")?,
            raw: optional_bool(object, "raw")?.unwrap_or(false),
        },
        (None, Some(messages)) => PromptInput::Messages(parse_messages(messages)?),
    };
    if let PromptInput::Messages(messages) = &prompt
        && let Some(image) = messages.iter().flat_map(|m| &m.images).next()
        && spec.properties.get("vision").is_none_or(|v| v != "true")
    {
        return Err(InferError::invalid(
            &image.at,
            format!("{} does not take images", spec.id),
        ));
    }
    let max_tokens =
        match optional_integer(object, "max_tokens", 1, u64::from(spec.max_output_tokens))? {
            Some(n) => n as u32,
            None => DEFAULT_MAX_TOKENS.min(spec.max_output_tokens),
        };
    let sampling = Sampling {
        temperature: optional_number(object, "temperature", 0.0, 5.0)?
            .unwrap_or(DEFAULT_TEMPERATURE),
        top_p: optional_number(object, "top_p", 0.0, 2.0)?,
        top_k: optional_integer(object, "top_k", 1, 50)?.map(|k| k as u32),
        min_p: optional_number(object, "min_p", 0.0, 1.0)?,
        seed: optional_integer(object, "seed", 1, 9_999_999_999)?,
        repetition_penalty: optional_number(object, "repetition_penalty", 0.0, 2.0)?,
        frequency_penalty: optional_number(object, "frequency_penalty", 0.0, 2.0)?,
        presence_penalty: optional_number(object, "presence_penalty", 0.0, 2.0)?,
    };
    let tools = match object.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(value) => tools::parse_tools(value)?,
    };
    let tool_choice = match object.get("tool_choice") {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(value) => tools::parse_tool_choice(value, &tools)?,
    };
    let response_format = match object.get("response_format") {
        None | Some(Value::Null) => ResponseFormat::Text,
        Some(value) => tools::parse_response_format(value)?,
    };
    if response_format != ResponseFormat::Text
        && tool_choice != ToolChoice::None
        && !tools.is_empty()
    {
        return Err(InferError::invalid(
            "/response_format",
            "JSON mode cannot be combined with tools",
        ));
    }
    let stop = match object.get("stop") {
        None => Vec::new(),
        Some(value) => tools::parse_stop(value)?,
    };
    Ok(TextGenerationRequest {
        prompt,
        max_tokens,
        sampling,
        stream: optional_bool(object, "stream")?.unwrap_or(false),
        tools,
        tool_choice,
        response_format,
        stop,
    })
}

fn parse_messages(messages: &Value) -> Result<Vec<ChatMessage>, InferError> {
    let Value::Array(items) = messages else {
        return Err(type_mismatch("/messages", "array", messages));
    };
    if items.is_empty() {
        return Err(InferError::invalid(
            "/messages",
            "must hold at least one message",
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("/messages/{i}");
            let Value::Object(message) = item else {
                return Err(type_mismatch(&at, "object", item));
            };
            let role = match message.get("role") {
                Some(Value::String(role))
                    if ["system", "user", "assistant", "tool"].contains(&role.as_str()) =>
                {
                    role.clone()
                }
                Some(Value::String(role)) => {
                    return Err(InferError::invalid(
                        format!("{at}/role"),
                        format!("'{role}' is not one of system, user, assistant, tool"),
                    ));
                }
                Some(other) => return Err(type_mismatch(&format!("{at}/role"), "string", other)),
                None => {
                    return Err(InferError::invalid(
                        &at,
                        "required properties are 'role,content'",
                    ));
                }
            };
            let tool_calls = match message.get("tool_calls") {
                None | Some(Value::Null) => Vec::new(),
                Some(calls) if role == "assistant" => {
                    parse_history_calls(calls, &format!("{at}/tool_calls"))?
                }
                Some(_) => {
                    return Err(InferError::invalid(
                        format!("{at}/tool_calls"),
                        "only assistant messages carry tool calls",
                    ));
                }
            };
            let mut images = Vec::new();
            let content = match message.get("content") {
                Some(Value::Array(parts)) => {
                    let (text, parts_images) = content_parts(parts, &format!("{at}/content"))?;
                    images = parts_images;
                    text
                }
                // An assistant turn that only called tools has no content.
                None | Some(Value::Null) if !tool_calls.is_empty() => String::new(),
                Some(Value::String(text)) if text.is_empty() && !tool_calls.is_empty() => {
                    String::new()
                }
                Some(content) => bounded_string(content, &format!("{at}/content"))?,
                None => {
                    return Err(InferError::invalid(
                        &at,
                        "required properties are 'role,content'",
                    ));
                }
            };
            let tool_call_id = match message.get("tool_call_id") {
                None | Some(Value::Null) => None,
                Some(Value::String(id)) => Some(id.clone()),
                Some(other) => {
                    return Err(type_mismatch(
                        &format!("{at}/tool_call_id"),
                        "string",
                        other,
                    ));
                }
            };
            Ok(ChatMessage {
                role,
                content,
                images,
                tool_calls,
                tool_call_id,
            })
        })
        .collect()
}

/// OpenAI-style content parts: text parts joined in order, and `image_url` parts
/// (`{"type": "image_url", "image_url": {"url": ...}}`, or the URL as a plain string).
fn content_parts(parts: &[Value], at: &str) -> Result<(String, Vec<ImagePart>), InferError> {
    let mut text = String::new();
    let mut images = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let part_at = format!("{at}/{i}");
        match (part.get("type").and_then(Value::as_str), part) {
            (Some("text"), _) => match part.get("text") {
                Some(Value::String(piece)) => text.push_str(piece),
                _ => {
                    return Err(InferError::invalid(
                        format!("{part_at}/text"),
                        "expected a string",
                    ));
                }
            },
            (Some("image_url"), _) => {
                let url = part
                    .get("image_url")
                    .and_then(|image| image.get("url").unwrap_or(image).as_str())
                    .filter(|url| {
                        url.starts_with("data:image/")
                            || url.starts_with("https://")
                            || url.starts_with("http://")
                    })
                    .ok_or_else(|| {
                        InferError::invalid(
                            format!("{part_at}/image_url"),
                            "expected {\"url\": \"data:image/...;base64,...\"} or an http(s) URL",
                        )
                    })?;
                images.push(ImagePart {
                    url: url.to_string(),
                    text_offset: text.len(),
                    at: part_at,
                });
            }
            _ => {
                return Err(InferError::invalid(
                    part_at,
                    "expected a text part {\"type\": \"text\", \"text\": \"...\"} or an image_url part",
                ));
            }
        }
    }
    if text.chars().count() > MAX_PROMPT_CHARS {
        return Err(InferError::invalid(
            at,
            format!("must be at most {MAX_PROMPT_CHARS} characters"),
        ));
    }
    Ok((text, images))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Catalog;
    use crate::tasks::field_of;

    fn qwen() -> ModelSpec {
        Catalog::builtin()
            .unwrap()
            .get("@hf/qwen/qwen2.5-coder-0.5b-instruct")
            .unwrap()
            .clone()
    }

    #[test]
    fn defaults_follow_the_schema() {
        let request = parse_text_generation(&json!({"prompt": "hi"}), &qwen()).unwrap();
        assert_eq!(request.max_tokens, 256);
        assert_eq!(request.sampling.temperature, 0.6);
        assert!(!request.stream);
        assert_eq!(
            request.prompt,
            PromptInput::Prompt {
                text: "hi".into(),
                raw: false
            }
        );
    }

    #[test]
    fn image_parts_are_kept_and_refused_by_models_without_vision() {
        let image = json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}});
        let messages = json!([{"role": "user", "content": [{"type": "text", "text": "What is "}, image, {"type": "text", "text": "this?"}]}]);
        let parsed = parse_messages(&messages).unwrap();
        assert_eq!(parsed[0].content, "What is this?");
        assert_eq!(
            parsed[0].images,
            vec![ImagePart {
                url: "data:image/png;base64,iVBORw0KGgo=".into(),
                text_offset: 8,
                at: "/messages/0/content/1".into()
            }]
        );
        let error = parse_text_generation(&json!({ "messages": messages }), &qwen()).unwrap_err();
        assert_eq!(field_of(error), "/messages/0/content/1");
        let mut vision = qwen();
        vision.properties.insert("vision".into(), "true".into());
        assert!(parse_text_generation(&json!({ "messages": messages }), &vision).is_ok());
        let bad = json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]);
        assert_eq!(
            field_of(parse_messages(&bad).unwrap_err()),
            "/messages/0/content/0/image_url"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let spec = qwen();
        let cases = [
            (json!({"prompt": "a", "messages": []}), "/"),
            (json!({}), "/"),
            (json!({"prompt": ""}), "/prompt"),
            (json!({"prompt": 3}), "/prompt"),
            (
                json!({"messages": [{"role": "user", "content": ["x"]}]}),
                "/messages/0/content/0",
            ),
            (
                json!({"messages": [{"role": "king", "content": "x"}]}),
                "/messages/0/role",
            ),
            (json!({"messages": [{"role": "user"}]}), "/messages/0"),
            (json!({"messages": "hi"}), "/messages"),
            (json!({"prompt": "a", "temperature": 9}), "/temperature"),
            (json!({"prompt": "a", "max_tokens": 0}), "/max_tokens"),
            (json!({"prompt": "a", "max_tokens": 1.5}), "/max_tokens"),
            (json!({"prompt": "a", "top_k": 51}), "/top_k"),
            (json!({"prompt": "a", "stream": "yes"}), "/stream"),
            (json!({"prompt": "a", "tools": "add"}), "/tools"),
            (
                json!({"prompt": "a", "tools": [{"name": "add"}], "tool_choice": "maybe"}),
                "/tool_choice",
            ),
            (
                json!({"prompt": "a", "response_format": {"type": "xml"}}),
                "/response_format/type",
            ),
            (json!({"prompt": "a", "stop": [1]}), "/stop/0"),
            (
                json!({"messages": [{"role": "user", "content": "a", "tool_calls": []}]}),
                "/messages/0/tool_calls",
            ),
            (json!([1, 2]), "/"),
        ];
        for (input, field) in cases {
            assert_eq!(
                field_of(parse_text_generation(&input, &spec).unwrap_err()),
                field,
                "{input}"
            );
        }
    }
}
