//! Workers AI task inputs and outputs: parsing and validating the JSON a caller sends into typed
//! requests (errors name the offending field as a JSON pointer), and shaping results as the
//! contract's result objects.

use crate::InferError;
use crate::catalog::{ModelSpec, Price, Task};
use crate::tools::{
    self, ResponseFormat, ToolCall, ToolChoice, ToolDefinition, parse_history_calls,
};
use serde::Serialize;
use serde_json::{Map, Value, json};

/// Workers AI's default `max_tokens` for text generation.
pub const DEFAULT_MAX_TOKENS: u32 = 256;
/// Workers AI's default sampling temperature.
pub const DEFAULT_TEMPERATURE: f32 = 0.6;
/// Most tokens a chat template adds around the caller's text (system prompt, tool instructions).
const TEMPLATE_TOKENS: u32 = 256;
/// Most texts in one embeddings request.
pub const MAX_EMBEDDING_TEXTS: usize = 100;
/// Longest `prompt` or message `content`, in characters, per the published schemas.
pub const MAX_PROMPT_CHARS: usize = 131_072;

// ------------------------------------------------------------------ text generation

#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
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
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub prompt_tokens_details: PromptTokensDetails,
    /// What the request costs at the model's published price (fractional, like Workers AI's).
    pub neurons: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose KV cells came from the prefix cache instead of being computed.
    pub cached_tokens: u32,
}

impl Usage {
    pub fn new(prompt_tokens: u32, completion_tokens: u32) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails::default(),
            neurons: 0.0,
        }
    }

    /// The usage with its cost at `price`.
    pub fn priced(mut self, price: &Price) -> Usage {
        self.neurons = price.neurons(self.prompt_tokens.into(), self.completion_tokens.into());
        self
    }

    pub fn with_cached_tokens(mut self, cached_tokens: u32) -> Usage {
        self.prompt_tokens_details.cached_tokens = cached_tokens;
        self
    }
}

/// What running `input` on `spec` can cost at most, known before the model runs: every byte of
/// the input may be a token, plus the chat template's own, and all of `max_tokens` generated.
/// It is held against an account's daily allocation until the real usage is known.
pub fn estimate_usage(spec: &ModelSpec, input: &Value) -> Usage {
    let input_bytes = u32::try_from(input.to_string().len()).unwrap_or(u32::MAX);
    let usage = match spec.task {
        Task::TextGeneration => {
            let max_tokens = input
                .get("max_tokens")
                .and_then(Value::as_u64)
                .map_or(DEFAULT_MAX_TOKENS, |n| n.min(u64::from(u32::MAX)) as u32)
                .min(spec.max_output_tokens);
            Usage::new(input_bytes.saturating_add(TEMPLATE_TOKENS), max_tokens)
        }
        Task::TextEmbeddings => Usage::new(input_bytes, 0),
    };
    usage.priced(&spec.price)
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
            let content = match message.get("content") {
                Some(Value::Array(parts)) => text_parts(parts, &format!("{at}/content"))?,
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
                tool_calls,
                tool_call_id,
            })
        })
        .collect()
}

/// OpenAI-style content parts: only text parts are accepted, joined in order.
fn text_parts(parts: &[Value], at: &str) -> Result<String, InferError> {
    let mut text = String::new();
    for (i, part) in parts.iter().enumerate() {
        match (part.get("type").and_then(Value::as_str), part.get("text")) {
            (Some("text"), Some(Value::String(piece))) => text.push_str(piece),
            _ => {
                return Err(InferError::invalid(
                    format!("{at}/{i}"),
                    "expected a text part {\"type\": \"text\", \"text\": \"...\"}",
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
    Ok(text)
}

// ------------------------------------------------------------------ embeddings

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Mean,
    Cls,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingsRequest {
    pub texts: Vec<String>,
    pub pooling: Pooling,
}

/// Vectors in input order, and the tokens each text used after truncation.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingsOutput {
    pub vectors: Vec<Vec<f32>>,
    pub token_counts: Vec<u32>,
}

impl EmbeddingsOutput {
    /// The result object: `{shape, data, pooling}`.
    pub fn to_json(&self, pooling: Pooling) -> Value {
        let dims = self.vectors.first().map_or(0, Vec::len);
        json!({ "shape": [self.vectors.len(), dims], "data": self.vectors, "pooling": pooling })
    }

    pub fn input_tokens(&self) -> u32 {
        self.token_counts.iter().sum()
    }
}

/// Parses `{text: string | string[], pooling?: "mean" | "cls"}`.
pub fn parse_embeddings(input: &Value) -> Result<EmbeddingsRequest, InferError> {
    let object = as_object(input)?;
    if object.get("requests").is_some() {
        return Err(InferError::invalid(
            "/requests",
            "async batch requests are not supported by this version of Ember",
        ));
    }
    let texts = match object.get("text") {
        None => return Err(InferError::invalid("/", "required properties are 'text'")),
        Some(Value::String(_)) => vec![nonempty_string(&object["text"], "/text")?],
        Some(Value::Array(items)) => {
            if items.is_empty() || items.len() > MAX_EMBEDDING_TEXTS {
                return Err(InferError::invalid(
                    "/text",
                    format!(
                        "must hold 1 to {MAX_EMBEDDING_TEXTS} strings, got {}",
                        items.len()
                    ),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| nonempty_string(item, &format!("/text/{i}")))
                .collect::<Result<_, _>>()?
        }
        Some(other) => return Err(type_mismatch("/text", "string or array", other)),
    };
    let pooling = match object.get("pooling") {
        None | Some(Value::Null) => Pooling::Mean,
        Some(Value::String(p)) if p == "mean" => Pooling::Mean,
        Some(Value::String(p)) if p == "cls" => Pooling::Cls,
        Some(Value::String(p)) => {
            return Err(InferError::invalid(
                "/pooling",
                format!("'{p}' is not one of mean, cls"),
            ));
        }
        Some(other) => return Err(type_mismatch("/pooling", "string", other)),
    };
    Ok(EmbeddingsRequest { texts, pooling })
}

// ------------------------------------------------------------------ helpers

fn as_object(input: &Value) -> Result<&Map<String, Value>, InferError> {
    input
        .as_object()
        .ok_or_else(|| type_mismatch("/", "object", input))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_mismatch(at: &str, expected: &str, got: &Value) -> InferError {
    InferError::invalid(at, format!("expected {expected}, got {}", kind(got)))
}

fn nonempty_string(value: &Value, at: &str) -> Result<String, InferError> {
    match value {
        Value::String(s) if s.is_empty() => Err(InferError::invalid(at, "must not be empty")),
        Value::String(s) => Ok(s.clone()),
        other => Err(type_mismatch(at, "string", other)),
    }
}

fn bounded_string(value: &Value, at: &str) -> Result<String, InferError> {
    let text = nonempty_string(value, at)?;
    if text.chars().count() > MAX_PROMPT_CHARS {
        return Err(InferError::invalid(
            at,
            format!("must be at most {MAX_PROMPT_CHARS} characters"),
        ));
    }
    Ok(text)
}

fn optional_bool(object: &Map<String, Value>, key: &str) -> Result<Option<bool>, InferError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(type_mismatch(&format!("/{key}"), "boolean", other)),
    }
}

fn optional_number(
    object: &Map<String, Value>,
    key: &str,
    min: f64,
    max: f64,
) -> Result<Option<f32>, InferError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let n = n.as_f64().unwrap_or(f64::NAN);
            if (min..=max).contains(&n) {
                Ok(Some(n as f32))
            } else {
                Err(InferError::invalid(
                    format!("/{key}"),
                    format!("must be between {min} and {max}, got {n}"),
                ))
            }
        }
        Some(other) => Err(type_mismatch(&format!("/{key}"), "number", other)),
    }
}

fn optional_integer(
    object: &Map<String, Value>,
    key: &str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, InferError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if (min..=max).contains(&v) => Ok(Some(v)),
            _ => Err(InferError::invalid(
                format!("/{key}"),
                format!("must be an integer between {min} and {max}, got {n}"),
            )),
        },
        Some(other) => Err(type_mismatch(&format!("/{key}"), "integer", other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Catalog;

    fn qwen() -> ModelSpec {
        Catalog::builtin()
            .unwrap()
            .get("@hf/qwen/qwen2.5-coder-0.5b-instruct")
            .unwrap()
            .clone()
    }

    fn field_of(error: InferError) -> String {
        match error {
            InferError::InvalidInput { field, .. } => field,
            other => panic!("expected invalid input, got {other:?}"),
        }
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

    #[test]
    fn embeddings_inputs() {
        let request = parse_embeddings(&json!({"text": ["a", "b"], "pooling": "cls"})).unwrap();
        assert_eq!(request.texts, vec!["a", "b"]);
        assert_eq!(request.pooling, Pooling::Cls);
        let too_many: Vec<String> = (0..101).map(|i| i.to_string()).collect();
        for (input, field) in [
            (json!({"text": too_many}), "/text"),
            (json!({"text": []}), "/text"),
            (json!({"text": ["a", ""]}), "/text/1"),
            (json!({"text": ["a", 1]}), "/text/1"),
            (json!({"text": "a", "pooling": "max"}), "/pooling"),
            (json!({"prompt": "a"}), "/"),
        ] {
            assert_eq!(
                field_of(parse_embeddings(&input).unwrap_err()),
                field,
                "{input}"
            );
        }
    }

    #[test]
    fn embeddings_json_shape() {
        let output = EmbeddingsOutput {
            vectors: vec![vec![0.5, 0.5], vec![1.0, 0.0]],
            token_counts: vec![3, 4],
        };
        assert_eq!(
            output.to_json(Pooling::Mean),
            json!({"shape": [2, 2], "data": [[0.5, 0.5], [1.0, 0.0]], "pooling": "mean"})
        );
    }
}
