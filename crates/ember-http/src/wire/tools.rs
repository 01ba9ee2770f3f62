//! Tool calling in Workers AI's and OpenAI's JSON: tool definitions (the legacy
//! `{name, description, parameters}` and OpenAI's `{type: "function", function}`), `tool_choice`,
//! tool calls in chat history and in results, `response_format` and `stop`.

use ember_core::InferError;
use ember_core::tools::{
    MAX_STOP_SEQUENCES, ResponseFormat, ToolCall, ToolChoice, ToolDefinition, new_call_id,
};
use serde_json::{Value, json};

/// A call in Workers AI's native form: `{name, arguments}` with `arguments` an object.
pub fn native_call(call: &ToolCall) -> Value {
    json!({ "name": call.name, "arguments": call.arguments })
}

/// A call in OpenAI's form: `arguments` is a JSON string.
pub fn openai_call(call: &ToolCall) -> Value {
    json!({
        "id": call.id,
        "type": "function",
        "function": { "name": call.name, "arguments": call.arguments.to_string() },
    })
}

/// `tools`: an array of legacy or OpenAI tool definitions with distinct names.
pub fn parse_tools(value: &Value) -> Result<Vec<ToolDefinition>, InferError> {
    let Value::Array(items) = value else {
        return Err(InferError::invalid("/tools", "must be an array"));
    };
    let mut tools: Vec<ToolDefinition> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("/tools/{i}");
        let definition = match item.get("function") {
            Some(function) if item.get("type").and_then(Value::as_str) == Some("function") => {
                (function, format!("{at}/function"))
            }
            Some(_) => {
                return Err(InferError::invalid(
                    format!("{at}/type"),
                    "only tools of type 'function' are supported",
                ));
            }
            None => (item, at),
        };
        let tool = parse_tool(definition.0, &definition.1)?;
        if tools.iter().any(|t| t.name == tool.name) {
            return Err(InferError::invalid(
                format!("{}/name", definition.1),
                format!("'{}' names two tools", tool.name),
            ));
        }
        tools.push(tool);
    }
    Ok(tools)
}

fn parse_tool(value: &Value, at: &str) -> Result<ToolDefinition, InferError> {
    let Value::Object(object) = value else {
        return Err(InferError::invalid(at, "must be an object"));
    };
    let name = match object.get("name") {
        Some(Value::String(name)) if valid_tool_name(name) => name.clone(),
        Some(_) => {
            return Err(InferError::invalid(
                format!("{at}/name"),
                "must be 1 to 64 letters, digits, '_' or '-'",
            ));
        }
        None => return Err(InferError::invalid(at, "required property is 'name'")),
    };
    let description = match object.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(_) => {
            return Err(InferError::invalid(
                format!("{at}/description"),
                "must be a string",
            ));
        }
    };
    let parameters = match object.get("parameters") {
        None | Some(Value::Null) => json!({ "type": "object", "properties": {} }),
        Some(schema @ Value::Object(_)) => schema.clone(),
        Some(_) => {
            return Err(InferError::invalid(
                format!("{at}/parameters"),
                "must be a JSON Schema object",
            ));
        }
    };
    Ok(ToolDefinition {
        name,
        description,
        parameters,
    })
}

fn valid_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `tool_choice`: `auto`, `none`, `required` or `{type: "function", function: {name}}`, the name
/// one of `tools`.
pub fn parse_tool_choice(
    value: &Value,
    tools: &[ToolDefinition],
) -> Result<ToolChoice, InferError> {
    let choice = match value {
        Value::String(mode) => match mode.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            _ => {
                return Err(InferError::invalid(
                    "/tool_choice",
                    format!("'{mode}' is not one of auto, none, required"),
                ));
            }
        },
        Value::Object(object) => {
            match object
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
            {
                Some(name) => ToolChoice::Function(name.to_owned()),
                None => {
                    return Err(InferError::invalid(
                        "/tool_choice",
                        "expected {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    ));
                }
            }
        }
        _ => {
            return Err(InferError::invalid(
                "/tool_choice",
                "must be a string or an object",
            ));
        }
    };
    match &choice {
        ToolChoice::Required | ToolChoice::Function(_) if tools.is_empty() => Err(
            InferError::invalid("/tool_choice", "needs a non-empty 'tools'"),
        ),
        ToolChoice::Function(name) if !tools.iter().any(|t| &t.name == name) => {
            Err(InferError::invalid(
                "/tool_choice/function/name",
                format!("'{name}' is not one of the tools"),
            ))
        }
        _ => Ok(choice),
    }
}

/// `response_format`: `{type: "text" | "json_object" | "json_schema"}`. `json_schema` holds a bare
/// schema (Workers AI's native form) or OpenAI's `{name, schema, strict}`.
pub fn parse_response_format(value: &Value) -> Result<ResponseFormat, InferError> {
    let Value::Object(object) = value else {
        return Err(InferError::invalid("/response_format", "must be an object"));
    };
    match object.get("type").and_then(Value::as_str) {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let schema = match object.get("json_schema") {
                Some(Value::Object(wrapper))
                    if wrapper.contains_key("name") && wrapper.get("schema").is_some() =>
                {
                    wrapper.get("schema").cloned().unwrap_or_default()
                }
                Some(schema) => schema.clone(),
                None => {
                    return Err(InferError::invalid(
                        "/response_format",
                        "type json_schema needs 'json_schema'",
                    ));
                }
            };
            if !schema.is_object() {
                return Err(InferError::invalid(
                    "/response_format/json_schema",
                    "must be a JSON Schema object",
                ));
            }
            Ok(ResponseFormat::JsonSchema(schema))
        }
        _ => Err(InferError::invalid(
            "/response_format/type",
            "must be one of text, json_object, json_schema",
        )),
    }
}

/// `stop`: a string or an array of up to four non-empty strings.
pub fn parse_stop(value: &Value) -> Result<Vec<String>, InferError> {
    let stops = match value {
        Value::Null => Vec::new(),
        Value::String(stop) => vec![stop.clone()],
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| InferError::invalid(format!("/stop/{i}"), "must be a string"))
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(InferError::invalid(
                "/stop",
                "must be a string or an array of strings",
            ));
        }
    };
    if stops.len() > MAX_STOP_SEQUENCES {
        return Err(InferError::invalid(
            "/stop",
            format!("must hold at most {MAX_STOP_SEQUENCES} sequences"),
        ));
    }
    if stops.iter().any(String::is_empty) {
        return Err(InferError::invalid("/stop", "sequences must not be empty"));
    }
    Ok(stops)
}

/// An assistant message's `tool_calls`, in OpenAI form (`function.arguments` a JSON string) or
/// native form (`arguments` an object).
pub fn parse_history_calls(value: &Value, at: &str) -> Result<Vec<ToolCall>, InferError> {
    let Value::Array(items) = value else {
        return Err(InferError::invalid(at, "must be an array"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("{at}/{i}");
            let body = item.get("function").unwrap_or(item);
            let name = body
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| InferError::invalid(&at, "a tool call needs a 'name'"))?;
            let arguments = match body.get("arguments") {
                None | Some(Value::Null) => json!({}),
                Some(Value::String(text)) => serde_json::from_str(text).map_err(|e| {
                    InferError::invalid(
                        format!("{at}/function/arguments"),
                        format!("not JSON: {e}"),
                    )
                })?,
                Some(arguments) => arguments.clone(),
            };
            let id = match item.get("id").and_then(Value::as_str) {
                Some(id) => id.to_owned(),
                None => new_call_id(),
            };
            Ok(ToolCall {
                id,
                name: name.to_owned(),
                arguments,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_tool_forms_parse_and_names_must_differ() {
        let tools = parse_tools(&json!([
            {"name": "add", "description": "Adds", "parameters": {"type": "object"}},
            {"type": "function", "function": {"name": "mul"}},
        ]))
        .unwrap();
        assert_eq!(tools[0].name, "add");
        assert_eq!(tools[1].parameters["type"], "object");
        let error = parse_tools(&json!([{"name": "a"}, {"name": "a"}])).unwrap_err();
        assert!(error.to_string().contains("/tools/1/name"), "{error}");
        let error = parse_tools(&json!([{"name": "bad name"}])).unwrap_err();
        assert!(error.to_string().contains("/tools/0/name"), "{error}");
    }

    #[test]
    fn tool_choice_names_must_exist() {
        let tools = parse_tools(&json!([{"name": "add"}])).unwrap();
        let named = json!({"type": "function", "function": {"name": "add"}});
        assert_eq!(
            parse_tool_choice(&named, &tools).unwrap(),
            ToolChoice::Function("add".into())
        );
        let missing = json!({"type": "function", "function": {"name": "sub"}});
        assert!(parse_tool_choice(&missing, &tools).is_err());
        assert!(parse_tool_choice(&json!("required"), &[]).is_err());
        assert!(parse_tool_choice(&json!("sometimes"), &tools).is_err());
    }

    #[test]
    fn response_formats_accept_bare_and_wrapped_schemas() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "number"}}});
        let bare = json!({"type": "json_schema", "json_schema": schema});
        let wrapped = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": true}});
        assert_eq!(
            parse_response_format(&bare).unwrap(),
            ResponseFormat::JsonSchema(schema.clone())
        );
        assert_eq!(
            parse_response_format(&wrapped).unwrap(),
            ResponseFormat::JsonSchema(schema)
        );
        assert!(parse_response_format(&json!({"type": "yaml"})).is_err());
    }

    #[test]
    fn stop_sequences_are_bounded() {
        assert_eq!(parse_stop(&json!("END")).unwrap(), vec!["END"]);
        assert!(parse_stop(&json!(["a", "b", "c", "d", "e"])).is_err());
        assert!(parse_stop(&json!([""])).is_err());
        assert!(parse_stop(&json!([1])).is_err());
    }

    #[test]
    fn history_calls_take_string_or_object_arguments() {
        let calls = parse_history_calls(
            &json!([
                {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 1}"}},
                {"name": "mul", "arguments": {"b": 2}},
            ]),
            "/messages/1/tool_calls",
        )
        .unwrap();
        assert_eq!(calls[0].arguments, json!({"a": 1}));
        assert_eq!(calls[0].id, "call_1");
        assert_eq!(calls[1].arguments, json!({"b": 2}));
        assert!(calls[1].id.starts_with("call_"));
        let error = parse_history_calls(
            &json!([{"function": {"name": "add", "arguments": "{"}}]),
            "/messages/1/tool_calls",
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("/messages/1/tool_calls/0/function/arguments")
        );
    }
}
