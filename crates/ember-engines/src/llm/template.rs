//! Chat templates: the Jinja template a GGUF carries (`tokenizer.chat_template`), rendered with
//! minijinja plus Python-compatible string methods, the way Hugging Face's `apply_chat_template`
//! renders it (no trim_blocks/lstrip_blocks, `add_generation_prompt = true`, `tojson` spaced like
//! Python's `json.dumps`). Tools and tool calls reach the template in OpenAI's shape, as Hugging
//! Face passes them. A template that knows no tools gets them described in a system message, and
//! calls and results written as text, in the Hermes format Ember parses.

use ember_core::tasks::ChatMessage;
use ember_core::tools::ToolDefinition;
use minijinja::value::Kwargs;
use minijinja::{Environment, Error, ErrorKind, Value, context};
use serde::Serialize;
use serde_json::json;

pub struct ChatTemplate {
    env: Environment<'static>,
    /// The template reads a `tools` variable (else tools are described in a system message).
    knows_tools: bool,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles a template. Fails on syntax errors so a broken template is a load error.
    pub fn new(
        source: String,
        bos_token: String,
        eos_token: String,
    ) -> Result<ChatTemplate, Error> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_filter("tojson", python_tojson);
        env.add_function("strftime_now", |format: String| {
            // Templates use this to print today's date in the system prompt.
            time_now_formatted(&format)
        });
        let knows_tools = source.contains("tools");
        env.add_template_owned("chat", source)?;
        Ok(ChatTemplate {
            env,
            knows_tools,
            bos_token,
            eos_token,
        })
    }

    /// Renders the conversation, with the tools the model may call, followed by the assistant's
    /// turn opener.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        tools: &[ToolDefinition],
    ) -> Result<String, Error> {
        let described;
        let (messages, tools) = match self.knows_tools || tools.is_empty() {
            true => (messages, tools),
            false => {
                described = describe_tools(messages, tools);
                (described.as_slice(), &[][..])
            }
        };
        let messages: Vec<serde_json::Value> = messages.iter().map(template_message).collect();
        let tools: Option<Vec<serde_json::Value>> =
            (!tools.is_empty()).then(|| tools.iter().map(ToolDefinition::to_openai_json).collect());
        self.env.get_template("chat")?.render(context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => true,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
    }
}

/// For a template that knows no tools: the tools in the system message, calls and results as
/// the Hermes-format text a tool-aware template would have written.
fn describe_tools(messages: &[ChatMessage], tools: &[ToolDefinition]) -> Vec<ChatMessage> {
    let mut signatures = String::new();
    for tool in tools {
        signatures.push('\n');
        // A JSON value always serializes.
        signatures.push_str(&python_json(&tool.to_openai_json()).unwrap_or_default());
    }
    let instructions = format!(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>\
         {signatures}\n</tools>\n\nFor each function call, return a json object with function \
         name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n</tool_call>"
    );
    let (system, rest) = match messages.split_first() {
        Some((first, rest)) if first.role == "system" => {
            (format!("{}\n\n{instructions}", first.content), rest)
        }
        _ => (instructions, messages),
    };
    let mut described = vec![ChatMessage::text("system", system)];
    for message in rest {
        let (role, mut content) = match message.role.as_str() {
            "tool" => (
                "user",
                format!("<tool_response>\n{}\n</tool_response>", message.content),
            ),
            role => (role, message.content.clone()),
        };
        for call in &message.tool_calls {
            let call = json!({ "name": call.name, "arguments": call.arguments });
            content.push_str(&format!(
                "\n<tool_call>\n{}\n</tool_call>",
                python_json(&call).unwrap_or_default()
            ));
        }
        described.push(ChatMessage::text(role, content.trim_start()));
    }
    described
}

/// JSON as Python's `json.dumps` writes it.
fn python_json(value: &impl Serialize) -> Result<String, serde_json::Error> {
    let mut out = Vec::new();
    value.serialize(&mut serde_json::Serializer::with_formatter(
        &mut out,
        PythonSeparators,
    ))?;
    // serde_json writes only UTF-8.
    Ok(String::from_utf8(out).unwrap_or_default())
}

/// A message as templates read it: `tool_calls` as `[{id, type, function: {name, arguments}}]`
/// with `arguments` an object, `tool_call_id` on tool results.
fn template_message(message: &ChatMessage) -> serde_json::Value {
    let mut value = json!({ "role": message.role, "content": message.content });
    if !message.tool_calls.is_empty() {
        value["tool_calls"] = message
            .tool_calls
            .iter()
            .map(|call| {
                json!({
                    "id": call.id,
                    "type": "function",
                    "function": { "name": call.name, "arguments": call.arguments },
                })
            })
            .collect();
    }
    if let Some(id) = &message.tool_call_id {
        value["tool_call_id"] = json!(id);
    }
    value
}

/// `tojson` as Hugging Face defines it for chat templates: `json.dumps` with `", "` and `": "`
/// separators (or `indent`), non-ASCII kept, nothing HTML-escaped.
fn python_tojson(value: Value, kwargs: Kwargs) -> Result<String, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let failed = |e: serde_json::Error| Error::new(ErrorKind::InvalidOperation, e.to_string());
    let Some(width) = indent else {
        return python_json(&value).map_err(failed);
    };
    let spaces = vec![b' '; width];
    let mut out = Vec::new();
    value
        .serialize(&mut serde_json::Serializer::with_formatter(
            &mut out,
            serde_json::ser::PrettyFormatter::with_indent(&spaces),
        ))
        .map_err(failed)?;
    Ok(String::from_utf8(out).unwrap_or_default())
}

/// serde_json's compact output with Python's default separators.
struct PythonSeparators;

impl serde_json::ser::Formatter for PythonSeparators {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// A small strftime for the directives chat templates use (`%d %b %Y`, `%Y-%m-%d`), in UTC.
fn time_now_formatted(format: &str) -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    let (year, month, day) = civil_from_days(days);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month_name = MONTHS[(month - 1) as usize];
    format
        .replace("%Y", &year.to_string())
        .replace("%m", &format!("{month:02}"))
        .replace("%d", &format!("{day:02}"))
        .replace("%B", month_name)
        .replace("%b", &month_name[..3])
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] | trim + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage::text(role, content)
    }

    #[test]
    fn renders_chatml_with_default_system_prompt() {
        let template = ChatTemplate::new(CHATML.into(), "<s>".into(), "</s>".into()).unwrap();
        let text = template.render(&[msg("user", " Hi ")], &[]).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let template = ChatTemplate::new(
            "{% if messages[0].role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}{{ messages[0].content.strip().upper() }}".into(),
            String::new(),
            String::new(),
        )
        .unwrap();
        assert_eq!(
            template.render(&[msg("user", " hey ")], &[]).unwrap(),
            "HEY"
        );
        assert!(
            template
                .render(&[msg("tool", "x")], &[])
                .unwrap_err()
                .to_string()
                .contains("no tools")
        );
    }

    #[test]
    fn tools_and_calls_reach_the_template_in_openai_shape() {
        let template = ChatTemplate::new(
            "{% for tool in tools %}{{ tool | tojson }}{% endfor %}|{% for m in messages %}{% for c in m.tool_calls %}{{ c.function.name }}{{ c.function.arguments | tojson }}{% endfor %}{{ m.tool_call_id }}{% endfor %}".into(),
            String::new(),
            String::new(),
        )
        .unwrap();
        let tool = ToolDefinition {
            name: "add".into(),
            description: Some("Adds <b>".into()),
            parameters: json!({"type": "object"}),
        };
        let mut call = msg("assistant", "");
        call.tool_calls.push(ember_core::tools::ToolCall {
            id: "call_1".into(),
            name: "add".into(),
            arguments: json!({"a": 1, "b": [2, 3]}),
        });
        let mut result = msg("tool", "5");
        result.tool_call_id = Some("call_1".into());
        let text = template.render(&[call, result], &[tool]).unwrap();
        assert_eq!(
            text,
            r#"{"type": "function", "function": {"name": "add", "description": "Adds <b>", "parameters": {"type": "object"}}}|add{"a": 1, "b": [2, 3]}call_1"#
        );
    }

    #[test]
    fn templates_without_tools_get_them_in_a_system_message() {
        let template = ChatTemplate::new(CHATML.into(), "<s>".into(), "</s>".into()).unwrap();
        let tool = ToolDefinition {
            name: "add".into(),
            description: None,
            parameters: json!({"type": "object"}),
        };
        let mut call = msg("assistant", "");
        call.tool_calls.push(ember_core::tools::ToolCall {
            id: "call_1".into(),
            name: "add".into(),
            arguments: json!({"a": 1}),
        });
        let text = template
            .render(&[msg("user", "1+?"), call, msg("tool", "2")], &[tool])
            .unwrap();
        assert!(text.starts_with("<|im_start|>system\n# Tools\n"), "{text}");
        assert!(text.contains("<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"add\", \"parameters\": {\"type\": \"object\"}}}\n</tools>"), "{text}");
        assert!(text.contains("<|im_start|>assistant\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1}}\n</tool_call><|im_end|>"), "{text}");
        assert!(
            text.contains("<|im_start|>user\n<tool_response>\n2\n</tool_response><|im_end|>"),
            "{text}"
        );
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_779), (2026, 11, 22));
    }
}
