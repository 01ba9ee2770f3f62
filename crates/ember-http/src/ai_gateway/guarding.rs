//! A gateway's guardrails on one request: the conversation read from the request's body (in any
//! of the forms a gateway passes on), judged by the guard model (`ember_core::guard`) before the
//! request runs, and a whole answer judged after it; a blocked prompt or answer is refused with
//! Cloudflare's 2016 or 2017, and what was found goes to the log. A streamed answer is not
//! judged: its text reaches the client as it comes (Cloudflare does not enforce response rules on
//! REST streams either).

use crate::AppState;
use crate::error::ApiError;
use ember_ai_gateway::guardrails::{GuardAction, Guardrails, decide};
use ember_core::RunOptions;
use ember_core::guard;
use ember_core::tasks::ChatMessage;
use serde_json::{Map, Value, json};

/// The guardrails a request is held to, its conversation, and what they found so far.
pub(super) struct Guarding {
    rules: Guardrails,
    conversation: Vec<ChatMessage>,
    found: Map<String, Value>,
}

impl Guarding {
    /// The gateway's guardrails on a request with a conversation in `body`; none when the
    /// gateway has none or the request carries no text to judge (an image, audio).
    pub(super) fn new(stored: Option<&str>, body: Option<&Value>) -> Option<Guarding> {
        let rules = Guardrails::parse_stored(stored).filter(|rules| !rules.is_empty())?;
        let conversation = conversation(body?);
        (!conversation.is_empty()).then_some(Guarding {
            rules,
            conversation,
            found: Map::new(),
        })
    }

    /// Judges the prompt (the conversation's last message), when any prompt rule is set.
    pub(super) async fn check_prompt(&mut self, state: &AppState) -> Result<(), ApiError> {
        if self.rules.prompt.is_empty() {
            return Ok(());
        }
        let conversation = self.conversation.clone();
        let action = self.judge(state, "prompt", conversation).await?;
        match action {
            Some(GuardAction::Block) => Err(ApiError::GuardrailBlocked { response: false }),
            _ => Ok(()),
        }
    }

    /// Judges the answer in a response body, when any response rule is set and it has one.
    pub(super) async fn check_response(
        &mut self,
        state: &AppState,
        body: &[u8],
    ) -> Result<(), ApiError> {
        if self.rules.response.is_empty() {
            return Ok(());
        }
        let Some(answer) = answer_text(body) else {
            return Ok(());
        };
        let mut conversation = self.conversation.clone();
        conversation.push(ChatMessage::text("assistant", answer));
        match self.judge(state, "response", conversation).await? {
            Some(GuardAction::Block) => Err(ApiError::GuardrailBlocked { response: true }),
            _ => Ok(()),
        }
    }

    /// What was found, for the log (`{"prompt": {safe, categories, action}, ...}`).
    pub(super) fn found(&self) -> Option<String> {
        (!self.found.is_empty()).then(|| Value::Object(self.found.clone()).to_string())
    }

    async fn judge(
        &mut self,
        state: &AppState,
        side: &str,
        conversation: Vec<ChatMessage>,
    ) -> Result<Option<GuardAction>, ApiError> {
        let options = RunOptions::default();
        let (verdict, _) = guard::check(&state.ember, conversation, &options).await?;
        let rules = match side {
            "prompt" => &self.rules.prompt,
            _ => &self.rules.response,
        };
        let action = decide(rules, &verdict.categories);
        self.found.insert(
            side.to_string(),
            json!({
                "safe": verdict.safe,
                "categories": verdict.categories,
                "action": action.map(|a| match a {
                    GuardAction::Flag => "FLAG",
                    GuardAction::Block => "BLOCK",
                }),
            }),
        );
        Ok(action)
    }
}

/// The conversation in a request body: the binding's `{inputs: {...}}`, a universal request's
/// first step's `query`, or the body itself; its `messages` (text parts joined), else its
/// `prompt` or `input` text as one user message.
fn conversation(body: &Value) -> Vec<ChatMessage> {
    let inputs = match body {
        Value::Array(steps) => steps.first().and_then(|step| step.get("query")),
        object => object.get("inputs").or(Some(object)),
    };
    let Some(inputs) = inputs else {
        return Vec::new();
    };
    if let Some(messages) = inputs.get("messages").and_then(Value::as_array) {
        return messages
            .iter()
            .filter_map(|message| {
                let role = message.get("role")?.as_str()?;
                let content = text_of(message.get("content")?)?;
                Some(ChatMessage::text(role, content))
            })
            .collect();
    }
    ["prompt", "input"]
        .iter()
        .find_map(|field| inputs.get(*field).and_then(text_of))
        .map(|text| vec![ChatMessage::text("user", text)])
        .unwrap_or_default()
}

/// A message's text: a string, or its content parts' `text` joined.
fn text_of(content: &Value) -> Option<String> {
    match content {
        Value::String(text) => Some(text.clone()),
        Value::Array(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|part| part.get("text")?.as_str())
                .collect();
            (!texts.is_empty()).then(|| texts.join("\n"))
        }
        _ => None,
    }
}

/// The answer's text in a whole response: Workers AI's `response` (bare, or in the REST
/// envelope's `result`), an OpenAI chat completion's first choice, or Anthropic's text blocks.
fn answer_text(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let value = value.get("result").unwrap_or(&value);
    if let Some(text) = value.get("response").and_then(Value::as_str) {
        return Some(text.to_string());
    }
    if let Some(text) = value
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
    {
        return Some(text.to_string());
    }
    value.get("content").and_then(text_of)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_conversation_of_every_body_form() {
        let texts = |body: Value| {
            conversation(&body)
                .into_iter()
                .map(|m| format!("{}: {}", m.role, m.content))
                .collect::<Vec<_>>()
        };
        let messages = json!([{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]);
        assert_eq!(
            texts(json!({"messages": messages})),
            ["system: Be brief.", "user: Hi"]
        );
        assert_eq!(
            texts(json!({"inputs": {"prompt": "Hello"}, "options": {}})),
            ["user: Hello"]
        );
        assert_eq!(
            texts(json!([{"provider": "workers-ai", "query": {"prompt": "Yo"}}])),
            ["user: Yo"]
        );
        assert_eq!(texts(json!({"input": "Responses"})), ["user: Responses"]);
        assert!(texts(json!({"image": [1, 2, 3]})).is_empty());
    }

    #[test]
    fn reads_the_answer_of_every_response_form() {
        let answer = |body: Value| answer_text(body.to_string().as_bytes());
        assert_eq!(
            answer(json!({"result": {"response": "A"}})),
            Some("A".into())
        );
        assert_eq!(answer(json!({"response": "B"})), Some("B".into()));
        assert_eq!(
            answer(json!({"choices": [{"message": {"content": "C"}}]})),
            Some("C".into())
        );
        assert_eq!(
            answer(json!({"content": [{"type": "text", "text": "D"}]})),
            Some("D".into())
        );
        assert_eq!(answer(json!({"result": {"data": [[0.1]]}})), None);
    }
}
