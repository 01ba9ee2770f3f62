//! The prompt texts both servers get, identical on each side: short questions and ~4,000-token
//! documents for the mixed run. For a model with a chat template they are rendered by
//! `llama-server`'s `/apply-template` (the GGUF's own template); a base model reads them as plain
//! text. Long prompts are sized with `/tokenize` and each starts differently, so no prefix cache
//! can reuse one for another.

use super::servers::Server;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

pub const QUESTIONS: [&str; 16] = [
    "Write a Python function that checks whether a string is a palindrome.",
    "Explain the difference between a process and a thread.",
    "Why is the sky blue?",
    "Write a Rust function that returns the n-th Fibonacci number.",
    "What does the SQL keyword JOIN do? Give an example.",
    "Explain what a hash map is and when to use one.",
    "Write a shell command that counts the lines of every .rs file in a folder.",
    "What is the difference between TCP and UDP?",
    "Write a JavaScript function that debounces another function.",
    "Explain recursion to a beginner.",
    "How does garbage collection work in Java?",
    "Write a C function that reverses a linked list.",
    "What are the advantages of unit tests?",
    "Explain big-O notation with two examples.",
    "Write a Go program that prints the numbers from 1 to 10.",
    "What is a race condition and how can it be avoided?",
];

const LONG_INSTRUCTION: &str = "Summarize the following sensor log in one sentence.";
const SENSORS: [&str; 8] = [
    "north pump",
    "south valve",
    "boiler",
    "east fan",
    "west intake",
    "cooling tower",
    "compressor",
    "main feed",
];

pub struct Prompts {
    pub short: Vec<String>,
    /// The short prompts' mean length in tokens.
    pub short_tokens: u32,
    pub long: Vec<String>,
}

/// Renders `long_count` long prompts of about `long_tokens` tokens and the short questions,
/// through `server` (a `llama-server` on the model).
pub async fn build(
    client: &reqwest::Client,
    server: &Server,
    chat_template: bool,
    long_tokens: usize,
    long_count: usize,
) -> Result<Prompts> {
    let as_chat = async |text: String| render(client, server, chat_template, &text).await;
    let count = async |text: &str| -> Result<usize> {
        let reply = post(
            client,
            &format!("{}/tokenize", server.base),
            &json!({ "content": text }),
        )
        .await?;
        reply["tokens"]
            .as_array()
            .map(Vec::len)
            .context("/tokenize gave no tokens")
    };

    let (mut short, mut short_tokens) = (Vec::new(), 0);
    for question in QUESTIONS {
        let prompt = as_chat(question.to_string()).await?;
        short_tokens += count(&prompt).await?;
        short.push(prompt);
    }
    let short_tokens = (short_tokens / QUESTIONS.len()) as u32;

    // Tokens per log line, measured on the rendered prompt with 0 and 100 lines.
    let empty = count(&as_chat(document(0, 0)).await?).await?;
    let hundred = count(&as_chat(document(0, 100)).await?).await?;
    let per_line = (hundred - empty).max(1) as f64 / 100.0;
    let lines = ((long_tokens.saturating_sub(empty)) as f64 / per_line).round() as usize;
    let mut long = Vec::new();
    for k in 0..long_count {
        let prompt = as_chat(document(k, lines)).await?;
        let tokens = count(&prompt).await?;
        if tokens.abs_diff(long_tokens) > long_tokens / 10 {
            bail!("a long prompt came out at {tokens} tokens, wanted about {long_tokens}");
        }
        long.push(prompt);
    }
    Ok(Prompts {
        short,
        short_tokens,
        long,
    })
}

/// `text` as the model reads a user's message: through its chat template (rendered by
/// `server`, a `llama-server` on the model), or as a question for a base model.
pub async fn render(
    client: &reqwest::Client,
    server: &Server,
    chat_template: bool,
    text: &str,
) -> Result<String> {
    if !chat_template {
        return Ok(format!("Question: {text}\nAnswer:"));
    }
    let body = json!({ "messages": [{ "role": "user", "content": text }] });
    let reply = post(client, &format!("{}/apply-template", server.base), &body).await?;
    reply["prompt"]
        .as_str()
        .map(str::to_string)
        .context("/apply-template gave no prompt")
}

/// Log `k`: `lines` lines of readings, starting with a line unique to `k`.
fn document(k: usize, lines: usize) -> String {
    let mut text = format!("{LONG_INSTRUCTION}\n\nLog {k} of site {}:\n", 1000 + k * 7);
    for i in 0..lines {
        let sensor = SENSORS[(i + k) % SENSORS.len()];
        let value = (i * 37 + k * 11) % 1000;
        text.push_str(&format!(
            "{:02}:{:02} {sensor} reading {}.{} units, status {}\n",
            (i / 60) % 24,
            i % 60,
            value / 10,
            value % 10,
            if value.is_multiple_of(7) {
                "warning"
            } else {
                "ok"
            }
        ));
    }
    text
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> Result<Value> {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("POST {url}: {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("POST {url}: not JSON"))
}
