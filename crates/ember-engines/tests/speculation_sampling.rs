//! Speculative decoding keeps the sampling distribution: at temperature 1 on a code edit (whose
//! answer copies the prompt, so drafts are made and kept), the completions sampled with
//! speculation and without it, under different seeds, must be draws from the same distribution.
//! A chi-square test of homogeneity over the completions (the most frequent ones, the rest
//! pooled) must not reject at p = 0.001. A drafter that kept drafts the model would not have
//! drawn shifts mass onto the copying answer and fails it (one that kept every draft token gave
//! 73.3 over 4 degrees of freedom; this one about 4 over 3). Needs the default models.

use ember_core::metrics::Metrics;
use ember_core::tasks::{ChatMessage, PromptInput, Sampling, TextGenerationRequest};
use ember_engines::llm::{LlmEngine, LlmSettings, Speculation, Traced};
use std::collections::HashMap;

mod common;

const MODEL: &str = "@hf/qwen/qwen2.5-coder-0.5b-instruct";
/// Samples per side.
const SAMPLES: u64 = 120;
/// Generated tokens per sample: past the first drafts (made after the first dozen tokens).
const TOKENS: u32 = 28;
/// Completions seen at least this often (both sides together) are categories of their own.
const MIN_COUNT: usize = 10;
/// Critical values of the chi-square distribution at p = 0.001 by degrees of freedom (1..=12).
const CRITICAL: [f64; 12] = [
    10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12, 27.88, 29.59, 31.26, 32.91,
];

const EDIT: &str = "Rename the variable `count` to `seen`. Answer with the whole function and \
nothing else.\n\n```python\ndef average_of_positive(values):\n    total = 0.0\n    count = 0\n    \
for value in values:\n        if value > 0:\n            total += value\n            count += 1\n    \
return total / count if count else 0.0\n```";

fn load(speculation: Speculation) -> LlmEngine {
    let settings = LlmSettings {
        max_sequences: 4,
        kv_cells: Some(4096),
        speculation,
        step_seconds: Some(common::QWEN_STEP_SECONDS),
        ..LlmSettings::default()
    };
    common::load_llm(MODEL, &settings, Metrics::new().model(MODEL)).unwrap()
}

fn request(seed: u64) -> TextGenerationRequest {
    let sampling = Sampling {
        temperature: 1.0,
        seed: Some(seed),
        ..Sampling::greedy()
    };
    let messages = vec![ChatMessage::text("user", EDIT)];
    TextGenerationRequest::new(PromptInput::Messages(messages), TOKENS, sampling)
}

/// `SAMPLES` completions from seeds `first..`, four at a time.
async fn sample(engine: &LlmEngine, first: u64) -> Vec<Traced> {
    let mut runs = Vec::new();
    for seed in (first..first + SAMPLES).step_by(4) {
        let requests = [0, 1, 2, 3].map(|i| request(seed + i));
        let batch = tokio::join!(
            engine.run_traced(&requests[0], true),
            engine.run_traced(&requests[1], true),
            engine.run_traced(&requests[2], true),
            engine.run_traced(&requests[3], true),
        );
        runs.extend([batch.0, batch.1, batch.2, batch.3].map(Result::unwrap));
    }
    runs
}

#[tokio::test(flavor = "multi_thread")]
async fn sampling_with_drafts_draws_from_the_same_distribution() {
    let speculative = load(Speculation::PromptLookup);
    let with = sample(&speculative, 0).await;
    drop(speculative);
    let plain = load(Speculation::Off);
    let without = sample(&plain, 1_000_000).await;

    let kept: u32 = with.iter().map(|t| t.kept).sum();
    assert!(
        kept as u64 > SAMPLES * 4,
        "only {kept} draft tokens kept over {SAMPLES} samples: the test would not see drafts"
    );
    assert!(without.iter().all(|t| t.drafted == 0));

    let mut counts: HashMap<Vec<i32>, [usize; 2]> = HashMap::new();
    for (side, runs) in [&with, &without].into_iter().enumerate() {
        for run in runs {
            counts.entry(run.tokens.clone()).or_default()[side] += 1;
        }
    }
    let mut categories: Vec<[usize; 2]> = Vec::new();
    let mut other = [0, 0];
    for count in counts.values() {
        match count[0] + count[1] >= MIN_COUNT {
            true => categories.push(*count),
            false => (0..2).for_each(|side| other[side] += count[side]),
        }
    }
    if other[0] + other[1] > 0 {
        categories.push(other);
    }
    assert!(
        categories.len() >= 2,
        "the completions do not vary: nothing to compare ({counts:?})"
    );
    // Pearson's chi-square for a 2 × k table: both sides have SAMPLES draws.
    let total = 2.0 * SAMPLES as f64;
    let statistic: f64 = categories
        .iter()
        .map(|count| {
            let row = (count[0] + count[1]) as f64;
            let expected = row * SAMPLES as f64 / total;
            count
                .iter()
                .map(|&observed| (observed as f64 - expected).powi(2) / expected)
                .sum::<f64>()
        })
        .sum();
    let freedom = (categories.len() - 1).min(CRITICAL.len());
    assert!(
        statistic < CRITICAL[freedom - 1],
        "chi-square {statistic:.1} over {freedom} degrees of freedom rejects at p = 0.001: \
         with speculation {:?}, without {:?}",
        categories.iter().map(|c| c[0]).collect::<Vec<_>>(),
        categories.iter().map(|c| c[1]).collect::<Vec<_>>()
    );
    eprintln!(
        "chi-square {statistic:.2} over {freedom} degrees of freedom; categories (with, without): \
         {categories:?}; {kept} draft tokens kept"
    );
}
