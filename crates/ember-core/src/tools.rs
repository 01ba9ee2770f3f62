//! Tool calling and constrained output in text generation requests: tool definitions, the
//! caller's `tool_choice`, the calls a model makes, and the response format.

use serde_json::{Map, Value, json};

/// Most stop sequences in one request (OpenAI's limit).
pub const MAX_STOP_SEQUENCES: usize = 4;

#[derive(Debug, Clone, PartialEq)]
pub struct ToolDefinition {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments object.
    pub parameters: Value,
}

impl ToolDefinition {
    /// The OpenAI form, which chat templates expect in their `tools` variable.
    pub fn to_openai_json(&self) -> Value {
        let mut function = Map::new();
        function.insert("name".into(), json!(self.name));
        if let Some(description) = &self.description {
            function.insert("description".into(), json!(description));
        }
        function.insert("parameters".into(), self.parameters.clone());
        json!({ "type": "function", "function": function })
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum ToolChoice {
    /// The model decides whether to call tools.
    #[default]
    Auto,
    /// The model answers in text; the tools are not shown to it.
    None,
    /// The model must call at least one tool.
    Required,
    /// The model must call this tool.
    Function(String),
}

/// A call the model made (or made earlier, in the chat history).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: Value,
}

/// A fresh tool call id, `call_` and 24 hex digits.
pub fn new_call_id() -> String {
    format!("call_{}", &uuid::Uuid::new_v4().simple().to_string()[..24])
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum ResponseFormat {
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid under this schema.
    JsonSchema(Value),
}
