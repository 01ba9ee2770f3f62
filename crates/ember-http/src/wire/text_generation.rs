//! Text generation in Workers AI's JSON: `prompt` or `messages` (with OpenAI-style content parts),
//! sampling settings, tools, JSON mode and stop sequences in; the completion's result object out.

use super::{
    as_object, bounded_string, optional_bool, optional_integer, optional_number, type_mismatch,
};
use super::{binary, tools};
use ember_core::catalog::{AnswerFormat, ModelSpec};
use ember_core::tasks::{
    ChatMessage, Completion, DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, ImagePart, MAX_PROMPT_CHARS,
    PromptInput, Sampling, TextGenerationRequest,
};
use ember_core::tools::{ResponseFormat, ToolChoice};
use ember_core::{InferError, Target};
use serde_json::{Map, Value, json};

/// `response` as Workers AI returns it: the text, or in JSON mode the parsed value.
pub fn response(completion: &Completion) -> Value {
    match completion.json {
        true => serde_json::from_str(&completion.text).unwrap_or_else(|_| json!(completion.text)),
        false => json!(completion.text),
    }
}

/// The result object of a non-streamed generation.
pub fn result(completion: &Completion) -> Value {
    let mut result = json!({ "response": response(completion), "usage": completion.usage });
    if !completion.tool_calls.is_empty() {
        result["tool_calls"] = completion
            .tool_calls
            .iter()
            .map(tools::native_call)
            .collect();
    }
    result
}

/// The model's input and output JSON Schema: Workers AI's own, its chat-completions family's, or
/// Llama Guard's.
pub fn schema(spec: &ModelSpec) -> &'static str {
    match spec.answer_format {
        AnswerFormat::Native => include_str!("../../schemas/text-generation.json"),
        AnswerFormat::ChatCompletions => {
            include_str!("../../schemas/text-generation-chat-completions.json")
        }
        AnswerFormat::LlamaGuard => include_str!("../../schemas/text-generation-llama-guard.json"),
    }
}

/// Parses a text generation input per the requested model's Workers AI schema (`prompt` or
/// `messages`, not both; `messages` only for the chat-completions family), for the serving model.
pub fn parse(input: &Value, target: Target) -> Result<TextGenerationRequest, InferError> {
    let (spec, chat_completions) = (
        target.served,
        target.requested.answer_format == AnswerFormat::ChatCompletions,
    );
    let object = as_object(input)?;
    if chat_completions && object.get("prompt").is_some() {
        return Err(InferError::invalid(
            "/prompt",
            format!(
                "{} is a chat-completions model: send messages",
                target.requested.id
            ),
        ));
    }
    for unsupported in ["functions", "requests"] {
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
    let prompt = match object.get("image") {
        None | Some(Value::Null) => prompt,
        Some(image) => with_image(prompt, binary::bytes(image, "/image")?)?,
    };
    let max_tokens = match chat_completions {
        true => chat_max_tokens(object, spec)?,
        false => max_tokens(object, "max_tokens", spec)?,
    };
    request(object, spec, prompt, max_tokens)
}

/// Llama 3.2 Vision's shape: an `image` (bytes or base64) beside `prompt` or `messages`, read
/// before the text of the (last) user message.
fn with_image(prompt: PromptInput, bytes: Vec<u8>) -> Result<PromptInput, InferError> {
    let image = ImagePart {
        bytes,
        text_offset: 0,
        at: "/image".into(),
    };
    let mut messages = match prompt {
        PromptInput::Prompt { raw: true, .. } => {
            return Err(InferError::invalid(
                "/raw",
                "a raw prompt has no place for the image; send it without raw",
            ));
        }
        PromptInput::Prompt { text, raw: false } => vec![ChatMessage::text("user", text)],
        PromptInput::Messages(messages) => messages,
    };
    let user = messages
        .iter_mut()
        .rev()
        .find(|m| m.role == "user")
        .ok_or_else(|| InferError::invalid("/messages", "has no user message for the image"))?;
    user.images.insert(0, image);
    Ok(PromptInput::Messages(messages))
}

/// `field` (`max_tokens`, or OpenAI's `max_completion_tokens`): at most the model's output limit,
/// Workers AI's default when absent.
pub fn max_tokens(
    object: &Map<String, Value>,
    field: &str,
    spec: &ModelSpec,
) -> Result<u32, InferError> {
    Ok(
        match optional_integer(object, field, 1, u64::from(spec.max_output_tokens))? {
            Some(n) => n as u32,
            None => DEFAULT_MAX_TOKENS.min(spec.max_output_tokens),
        },
    )
}

/// The output limit in OpenAI's chat API (and Workers AI's chat-completions models):
/// `max_completion_tokens`, which replaced `max_tokens` there, or `max_tokens`.
pub fn chat_max_tokens(object: &Map<String, Value>, spec: &ModelSpec) -> Result<u32, InferError> {
    let field = ["max_completion_tokens", "max_tokens"]
        .into_iter()
        .find(|field| object.get(*field).is_some_and(|v| !v.is_null()))
        .unwrap_or("max_tokens");
    max_tokens(object, field, spec)
}

/// The sampling settings, as Workers AI's generation schemas name them.
pub(crate) fn sampling(object: &Map<String, Value>) -> Result<Sampling, InferError> {
    Ok(Sampling {
        temperature: optional_number(object, "temperature", 0.0, 5.0)?
            .unwrap_or(DEFAULT_TEMPERATURE),
        top_p: optional_number(object, "top_p", 0.0, 2.0)?,
        top_k: optional_integer(object, "top_k", 1, 50)?.map(|k| k as u32),
        min_p: optional_number(object, "min_p", 0.0, 1.0)?,
        seed: optional_integer(object, "seed", 1, 9_999_999_999)?,
        repetition_penalty: optional_number(object, "repetition_penalty", 0.0, 2.0)?,
        frequency_penalty: optional_number(object, "frequency_penalty", 0.0, 2.0)?,
        presence_penalty: optional_number(object, "presence_penalty", 0.0, 2.0)?,
    })
}

/// The request for `prompt`, with the settings Workers AI and OpenAI name alike read from
/// `object`: sampling, `stream`, tools, `response_format` and `stop`.
pub fn request(
    object: &Map<String, Value>,
    spec: &ModelSpec,
    prompt: PromptInput,
    max_tokens: u32,
) -> Result<TextGenerationRequest, InferError> {
    if let PromptInput::Messages(messages) = &prompt
        && let Some(image) = messages.iter().flat_map(|m| &m.images).next()
        && spec.properties.get("vision").is_none_or(|v| v != "true")
    {
        return Err(InferError::invalid(
            &image.at,
            format!("{} does not take images", spec.id),
        ));
    }
    let sampling = sampling(object)?;
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
        // Named by `lora`, resolved against the caller's finetunes by the route.
        lora: None,
    })
}

/// The finetune a request names in `lora` (its id or name), if any.
pub fn lora(input: &Value) -> Result<Option<String>, InferError> {
    match input.get("lora") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(name)) if !name.is_empty() => Ok(Some(name.clone())),
        Some(other) => Err(type_mismatch("/lora", "a finetune's id or name", other)),
    }
}

/// `messages`: a non-empty array of chat messages (content as text or OpenAI-style parts).
pub fn parse_messages(messages: &Value) -> Result<Vec<ChatMessage>, InferError> {
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
                    tools::parse_history_calls(calls, &format!("{at}/tool_calls"))?
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
/// (`{"type": "image_url", "image_url": {"url": ...}}`, or the URL as a plain string) holding a
/// `data:image/...;base64,` URL or the image as an array of byte values.
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
                let url_at = format!("{part_at}/image_url");
                let url = part
                    .get("image_url")
                    .map(|image| image.get("url").unwrap_or(image))
                    .unwrap_or(&Value::Null);
                let bytes = match url {
                    Value::String(text)
                        if text.starts_with("http://") || text.starts_with("https://") =>
                    {
                        // Ember serves offline: it fetches nothing a request names.
                        return Err(InferError::invalid(
                            url_at,
                            "image URLs are not fetched; send the image as a data: URL (data:image/png;base64,...)",
                        ));
                    }
                    _ if url.is_array()
                        || url.as_str().is_some_and(|t| t.starts_with("data:image/")) =>
                    {
                        binary::bytes(url, &url_at)?
                    }
                    _ => {
                        return Err(InferError::invalid(
                            url_at,
                            "expected {\"url\": \"data:image/...;base64,...\"} or an array of bytes",
                        ));
                    }
                };
                images.push(ImagePart {
                    bytes,
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
    use crate::wire::field_of;
    use ember_core::Catalog;

    /// The target of a request for `spec`, served by itself.
    fn on(spec: &ModelSpec) -> Target<'_> {
        Target {
            requested: spec,
            served: spec,
        }
    }

    fn qwen() -> ModelSpec {
        Catalog::builtin()
            .unwrap()
            .get("@hf/qwen/qwen2.5-coder-0.5b-instruct")
            .unwrap()
            .clone()
    }

    #[test]
    fn defaults_follow_the_schema() {
        let request = parse(&json!({"prompt": "hi"}), on(&qwen())).unwrap();
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
                bytes: vec![0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'],
                text_offset: 8,
                at: "/messages/0/content/1".into()
            }]
        );
        let error = parse(&json!({ "messages": messages }), on(&qwen())).unwrap_err();
        assert_eq!(field_of(error), "/messages/0/content/1");
        let mut vision = qwen();
        vision.properties.insert("vision".into(), "true".into());
        assert!(parse(&json!({ "messages": messages }), on(&vision)).is_ok());
        for url in [
            json!("file:///etc/passwd"),
            json!("https://example.com/cat.png"),
            json!([]),
        ] {
            let bad = json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]);
            assert_eq!(
                field_of(parse_messages(&bad).unwrap_err()),
                "/messages/0/content/0/image_url",
                "{url}"
            );
        }
    }

    #[test]
    fn a_top_level_image_goes_with_the_last_user_message() {
        let mut vision = qwen();
        vision.properties.insert("vision".into(), "true".into());
        let request = parse(
            &json!({"prompt": "What is it?", "image": [1, 2]}),
            on(&vision),
        )
        .unwrap();
        let PromptInput::Messages(messages) = request.prompt else {
            panic!("expected messages");
        };
        assert_eq!(
            (messages[0].content.as_str(), &messages[0].images[0].bytes),
            ("What is it?", &vec![1, 2])
        );
        let chat = json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}], "image": "AQI="});
        let PromptInput::Messages(messages) = parse(&chat, on(&vision)).unwrap().prompt else {
            panic!("expected messages");
        };
        assert_eq!((messages[0].images.len(), messages[2].images.len()), (0, 1));
        for (input, field) in [
            (json!({"prompt": "a", "image": []}), "/image"),
            (json!({"prompt": "a", "image": "not base64!"}), "/image"),
            (json!({"prompt": "a", "raw": true, "image": [1]}), "/raw"),
            (
                json!({"messages": [{"role": "system", "content": "a"}], "image": [1]}),
                "/messages",
            ),
        ] {
            let error = parse(&input, on(&vision)).unwrap_err();
            let field_named = match error {
                InferError::InvalidData(field) => field,
                other => field_of(other),
            };
            assert_eq!(field_named, field, "{input}");
        }
        assert_eq!(
            field_of(parse(&json!({"prompt": "a", "image": [1]}), on(&qwen())).unwrap_err()),
            "/image"
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
                field_of(parse(&input, on(&spec)).unwrap_err()),
                field,
                "{input}"
            );
        }
    }
}
