//! A gateway's guardrails: for prompts and for responses, which hazard categories are flagged
//! (logged, and passed) and which blocked (refused with code 2016 or 2017). Read from and
//! written as the API's object, `{"prompt": {"s1": "BLOCK", ...}, "response": {...}}`; a category
//! it does not name is ignored. `p1` (prompt injection, which Cloudflare checks with Prompt Guard)
//! is accepted and kept, and never found: no local model judges it.

use crate::AiGatewayError;
use ember_core::guard::CATEGORIES;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Prompt injection's code, beside Llama Guard's `s1`...`s14`.
const PROMPT_INJECTION: &str = "p1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardAction {
    Flag,
    Block,
}

impl GuardAction {
    pub fn as_str(self) -> &'static str {
        match self {
            GuardAction::Flag => "FLAG",
            GuardAction::Block => "BLOCK",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Guardrails {
    /// By lowercase category code.
    pub prompt: BTreeMap<String, GuardAction>,
    pub response: BTreeMap<String, GuardAction>,
}

impl Guardrails {
    /// The API's object, each rule checked; a field out of the rules is named as a JSON path
    /// (`guardrails.prompt.s1`).
    pub fn from_json(value: &Value) -> Result<Guardrails, AiGatewayError> {
        let object = value
            .as_object()
            .ok_or_else(|| AiGatewayError::invalid("guardrails", "must be an object"))?;
        let mut guardrails = Guardrails::default();
        for (key, rules) in object {
            let target = match key.as_str() {
                "prompt" => &mut guardrails.prompt,
                "response" => &mut guardrails.response,
                // Other fields of the object (an `enabled` flag) are the dashboard's.
                _ => continue,
            };
            *target = rules_from_json(&format!("guardrails.{key}"), rules)?;
        }
        Ok(guardrails)
    }

    pub fn to_json(&self) -> Value {
        let rules = |rules: &BTreeMap<String, GuardAction>| {
            let object: Map<String, Value> = rules
                .iter()
                .map(|(code, action)| (code.clone(), action.as_str().into()))
                .collect();
            Value::Object(object)
        };
        serde_json::json!({"prompt": rules(&self.prompt), "response": rules(&self.response)})
    }

    /// A gateway's stored setting; none when it has none (or it cannot be read).
    pub fn parse_stored(text: Option<&str>) -> Option<Guardrails> {
        let value: Value = serde_json::from_str(text?).ok()?;
        Guardrails::from_json(&value).ok()
    }

    pub fn is_empty(&self) -> bool {
        self.prompt.is_empty() && self.response.is_empty()
    }
}

fn rules_from_json(
    field: &str,
    value: &Value,
) -> Result<BTreeMap<String, GuardAction>, AiGatewayError> {
    let object = match value {
        Value::Null => return Ok(BTreeMap::new()),
        Value::Object(object) => object,
        _ => return Err(AiGatewayError::invalid(field, "must be an object")),
    };
    let mut rules = BTreeMap::new();
    for (code, action) in object {
        let lower = code.to_ascii_lowercase();
        let known = lower == PROMPT_INJECTION
            || CATEGORIES
                .iter()
                .any(|(category, _)| category.eq_ignore_ascii_case(&lower));
        if !known {
            return Err(AiGatewayError::invalid(
                &format!("{field}.{code}"),
                "is no guardrail category (s1 to s14, p1)",
            ));
        }
        let action = match action.as_str().map(str::to_ascii_uppercase).as_deref() {
            Some("FLAG") => GuardAction::Flag,
            Some("BLOCK") => GuardAction::Block,
            // Ignoring a category is leaving it out.
            Some("IGNORE") => continue,
            _ => {
                return Err(AiGatewayError::invalid(
                    &format!("{field}.{code}"),
                    "must be \"FLAG\" or \"BLOCK\"",
                ));
            }
        };
        rules.insert(lower, action);
    }
    Ok(rules)
}

/// What the rules do with a message found in `categories` (codes as the guard model gives them):
/// block if any is blocked, else flag if any is flagged.
pub fn decide(rules: &BTreeMap<String, GuardAction>, categories: &[String]) -> Option<GuardAction> {
    let actions = categories
        .iter()
        .filter_map(|code| rules.get(&code.to_ascii_lowercase()).copied());
    actions.max_by_key(|action| *action == GuardAction::Block)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rules_are_read_checked_and_written_back() {
        let guardrails = Guardrails::from_json(
            &json!({"prompt": {"S1": "block", "s10": "FLAG", "s2": "IGNORE"}, "response": null}),
        )
        .unwrap();
        assert_eq!(guardrails.prompt.len(), 2);
        assert_eq!(guardrails.prompt["s1"], GuardAction::Block);
        assert!(guardrails.response.is_empty());
        assert_eq!(
            guardrails.to_json(),
            json!({"prompt": {"s1": "BLOCK", "s10": "FLAG"}, "response": {}})
        );
        let text = guardrails.to_json().to_string();
        assert_eq!(Guardrails::parse_stored(Some(&text)), Some(guardrails));

        let error = Guardrails::from_json(&json!({"prompt": {"s15": "BLOCK"}})).unwrap_err();
        assert!(
            error.to_string().starts_with("guardrails.prompt.s15"),
            "{error}"
        );
        let error = Guardrails::from_json(&json!({"response": {"s1": "DROP"}})).unwrap_err();
        assert!(
            error.to_string().starts_with("guardrails.response.s1"),
            "{error}"
        );
        assert!(Guardrails::from_json(&json!([])).is_err());
    }

    #[test]
    fn a_block_outweighs_a_flag() {
        let guardrails =
            Guardrails::from_json(&json!({"prompt": {"s1": "FLAG", "s9": "BLOCK"}})).unwrap();
        let decide = |codes: &[&str]| {
            let codes: Vec<String> = codes.iter().map(|c| c.to_string()).collect();
            decide(&guardrails.prompt, &codes)
        };
        assert_eq!(decide(&["S1"]), Some(GuardAction::Flag));
        assert_eq!(decide(&["S1", "S9"]), Some(GuardAction::Block));
        assert_eq!(decide(&["S5"]), None);
        assert_eq!(decide(&[]), None);
    }
}
