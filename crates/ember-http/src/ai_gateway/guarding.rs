//! A gateway's guardrails on one request: the conversation read from the request's body (in any
//! of the forms a gateway passes on), judged by the guard model (`ember_core::guard`) before the
//! request runs, and a whole answer judged after it; a blocked prompt or answer is refused with
//! Cloudflare's 2016 or 2017, and what was found goes to the log. Each check is charged to the
//! caller as a run of the guard model (Cloudflare bills guardrails as Workers AI usage): held to
//! the allocation, in the request log and the ledger. On the gateway's own endpoints (provider
//! URLs, the universal endpoint) a stream held to response rules is read whole, judged, and sent
//! on at once or refused, as Cloudflare buffers it there; elsewhere (REST with
//! `cf-aig-gateway-id`, the binding) a streamed answer is judged when it has ended, for the log
//! only, its text having reached the client as it came.

use crate::AppState;
use crate::error::ApiError;
use ember_access::Caller;
use ember_ai_gateway::guardrails::{GuardAction, Guardrails, decide};
use ember_core::RunOptions;
use ember_core::guard::{self, GUARD_MODEL};
use ember_core::tasks::{ChatMessage, Usage};
use ember_store::RequestRecord;
use serde_json::{Map, Value, json};
use std::time::Instant;

/// The guardrails a request is held to, its conversation, and what they found so far.
pub(super) struct Guarding {
    rules: Guardrails,
    caller: Caller,
    conversation: Vec<ChatMessage>,
    found: Map<String, Value>,
}

impl Guarding {
    /// The gateway's guardrails on a request with a conversation in `body`; none when the
    /// gateway has none or the request carries no text to judge (an image, audio).
    pub(super) fn new(
        stored: Option<&str>,
        body: Option<&Value>,
        caller: &Caller,
    ) -> Option<Guarding> {
        let rules = Guardrails::parse_stored(stored).filter(|rules| !rules.is_empty())?;
        let conversation = conversation(body?);
        (!conversation.is_empty()).then(|| Guarding {
            rules,
            caller: caller.clone(),
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

    /// Whether answers are judged (any response rule is set).
    pub(super) fn judges_answers(&self) -> bool {
        !self.rules.response.is_empty()
    }

    /// Judges the answer in a whole response body or a whole stream's events, when any response
    /// rule is set and it has one.
    pub(super) async fn check_response(
        &mut self,
        state: &AppState,
        body: &[u8],
    ) -> Result<(), ApiError> {
        match answer_text(body).or_else(|| streamed_answer(body)) {
            Some(answer) => self.check_answer(state, answer).await,
            None => Ok(()),
        }
    }

    /// Judges the answer of a stream that has ended (its events in `body`), for the log.
    pub(super) async fn log_streamed_answer(&mut self, state: &AppState, body: &[u8]) {
        if let Some(answer) = streamed_answer(body)
            && let Err(error) = self.check_answer(state, answer).await
            && !matches!(error, ApiError::GuardrailBlocked { .. })
        {
            tracing::warn!(error = %error.message(), "a streamed answer could not be judged");
        }
    }

    async fn check_answer(&mut self, state: &AppState, answer: String) -> Result<(), ApiError> {
        if self.rules.response.is_empty() {
            return Ok(());
        }
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
        let verdict = self.charged_check(state, conversation).await?;
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
                "action": action.map(GuardAction::as_str),
            }),
        );
        Ok(action)
    }

    /// Runs the guard model on the caller's account: its most cost held of the allocation
    /// (every byte a token), its real cost settled in the ledger.
    async fn charged_check(
        &self,
        state: &AppState,
        conversation: Vec<ChatMessage>,
    ) -> Result<guard::Verdict, ApiError> {
        let access = &state.access;
        let spec = state.ember.resolve(GUARD_MODEL)?;
        let bytes: usize = conversation.iter().map(|m| m.content.len()).sum();
        let most = Usage::new(bytes as u32 + 64, guard::ANSWER_TOKENS).priced(&spec.price);
        let admission = access
            .reserve(&self.caller, most.neurons)
            .await
            .map_err(|error| crate::metering::refusal(access, &self.caller, error))?;
        let started = Instant::now();
        let options = RunOptions::default();
        let checked = guard::check(&state.ember, conversation, &options).await?;
        let usage = checked.usage;
        let record = RequestRecord {
            id: uuid::Uuid::new_v4().simple().to_string(),
            created_at_ms: access.now_ms(),
            account_id: Some(self.caller.account.id.clone()),
            route: "guardrails".to_string(),
            model: GUARD_MODEL.to_string(),
            served_by: Some(checked.served_by),
            http_status: 200,
            error_code: None,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            neurons: usage.neurons,
            billable_neurons: 0.0,
            duration_ms: started.elapsed().as_millis() as u64,
            batch_item: None,
        };
        crate::metering::settle(access.clone(), Some(admission), record).await;
        Ok(checked.verdict)
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

/// The answer's text in a stream's events: Workers AI's `response` pieces, OpenAI chunks'
/// `delta.content`, or Anthropic's text deltas.
pub(super) fn streamed_answer(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let mut answer = String::new();
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let Ok(event) = serde_json::from_str::<Value>(data.trim()) else {
            continue;
        };
        let piece = event
            .get("response")
            .or_else(|| event.pointer("/choices/0/delta/content"))
            .or_else(|| event.pointer("/delta/text"));
        if let Some(piece) = piece.and_then(Value::as_str) {
            answer.push_str(piece);
        }
    }
    (!answer.is_empty()).then_some(answer)
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

    #[test]
    fn reads_the_answer_of_every_stream_form() {
        let workers =
            "data: {\"response\":\"Hel\"}\n\ndata: {\"response\":\"lo\"}\n\ndata: [DONE]\n\n";
        assert_eq!(streamed_answer(workers.as_bytes()), Some("Hello".into()));
        let openai = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n";
        assert_eq!(streamed_answer(openai.as_bytes()), Some("Hi".into()));
        let anthropic = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Yo\"}}\n\n";
        assert_eq!(streamed_answer(anthropic.as_bytes()), Some("Yo".into()));
        assert_eq!(streamed_answer(b"data: [DONE]\n\n"), None);
    }
}
