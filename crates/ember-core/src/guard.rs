//! Safety checks in Llama Guard 3's terms: its hazard categories, the verdict read from its
//! answer ("safe", or "unsafe" and a line of category codes), and `check`, which asks the
//! catalog's guard model (`@cf/meta/llama-guard-3-8b`, or its stand-in where its weights are
//! absent) about the last message of a conversation. AI Gateway's guardrails call it.

use crate::ember::{Ember, complete};
use crate::runner::TextEvent;
use crate::tasks::{ChatMessage, PromptInput, Sampling, TextGenerationRequest, Usage};
use crate::{InferError, RunOptions};
use serde_json::json;
use std::time::Duration;
use tokio::sync::mpsc;

/// The model that judges prompts and responses.
pub const GUARD_MODEL: &str = "@cf/meta/llama-guard-3-8b";

/// Llama Guard 3's hazard categories, by code.
pub const CATEGORIES: [(&str, &str); 14] = [
    ("S1", "Violent Crimes"),
    ("S2", "Non-Violent Crimes"),
    ("S3", "Sex-Related Crimes"),
    ("S4", "Child Sexual Exploitation"),
    ("S5", "Defamation"),
    ("S6", "Specialized Advice"),
    ("S7", "Privacy"),
    ("S8", "Intellectual Property"),
    ("S9", "Indiscriminate Weapons"),
    ("S10", "Hate"),
    ("S11", "Suicide & Self-Harm"),
    ("S12", "Sexual Content"),
    ("S13", "Elections"),
    ("S14", "Code Interpreter Abuse"),
];

/// Llama Guard answers "safe" or "unsafe\nS1,S10" in a few tokens.
pub const ANSWER_TOKENS: u32 = 20;

/// What the guard model said of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub safe: bool,
    /// The violated categories' codes (`S1`...), in the order given; empty when safe.
    pub categories: Vec<String>,
}

impl Verdict {
    /// Reads an answer in Llama Guard's format: a first line `safe` or `unsafe`, and for
    /// `unsafe` the category codes on the next, separated by commas. Anything that does not
    /// start with `safe` is taken as unsafe (a guard that cannot be read does not pass text).
    pub fn parse(answer: &str) -> Verdict {
        let mut lines = answer.trim().lines();
        let first = lines.next().unwrap_or_default().trim().to_ascii_lowercase();
        if first == "safe" {
            return Verdict::safe();
        }
        let categories = lines
            .flat_map(|line| line.split(','))
            .map(|code| code.trim().to_ascii_uppercase())
            .filter(|code| CATEGORIES.iter().any(|(known, _)| known == code))
            .collect();
        Verdict {
            safe: false,
            categories,
        }
    }

    pub fn safe() -> Verdict {
        Verdict {
            safe: true,
            categories: Vec::new(),
        }
    }

    /// The verdict as Llama Guard writes it.
    pub fn answer(&self) -> String {
        match self.safe {
            true => "safe".to_string(),
            false => format!("unsafe\n{}", self.categories.join(",")),
        }
    }
}

/// A generation's events with its answer read as a verdict and written as JSON
/// (`{"safe": false, "categories": ["S1"]}`, the completion marked JSON): Llama Guard asked for a
/// JSON `response_format`, which Workers AI answers with the verdict as an object.
pub async fn verdict_as_json(
    events: mpsc::Receiver<TextEvent>,
    timeout: Option<Duration>,
) -> Result<mpsc::Receiver<TextEvent>, InferError> {
    let mut completion = complete(events, timeout).await?;
    let verdict = Verdict::parse(&completion.text);
    completion.text = json!({"safe": verdict.safe, "categories": verdict.categories}).to_string();
    completion.json = true;
    Ok(TextEvent::finished(completion))
}

/// A check's verdict, its usage (priced at the guard model's price) and the model that served.
pub struct Checked {
    pub verdict: Verdict,
    pub usage: Usage,
    pub served_by: String,
}

/// Asks the guard model whether the conversation's last message (a user's prompt, or the
/// assistant's response after it) is safe; greedy, so the same conversation gets the same
/// verdict.
pub async fn check(
    ember: &Ember,
    conversation: Vec<ChatMessage>,
    options: &RunOptions,
) -> Result<Checked, InferError> {
    let target = ember.target(GUARD_MODEL)?;
    let request = TextGenerationRequest::new(
        PromptInput::Messages(conversation),
        ANSWER_TOKENS,
        Sampling::greedy(),
    );
    let events = ember.generate(target.served, request, options).await?;
    let completion = complete(events, options.timeout).await?;
    Ok(Checked {
        verdict: Verdict::parse(&completion.text),
        usage: completion.usage.priced(&target.requested.price),
        served_by: target.served.id.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_llama_guard_answers() {
        assert_eq!(Verdict::parse("safe"), Verdict::safe());
        assert_eq!(Verdict::parse("\n\nsafe\n"), Verdict::safe());
        let unsafe_ = Verdict::parse("unsafe\nS1,S10");
        assert_eq!(unsafe_.categories, ["S1", "S10"]);
        assert!(!unsafe_.safe);
        assert_eq!(Verdict::parse("unsafe\ns9, S99").categories, ["S9"]);
        // An answer that is not Llama Guard's is no pass.
        assert!(!Verdict::parse("I cannot tell").safe);
        assert_eq!(Verdict::parse(&unsafe_.answer()), unsafe_);
    }
}
