//! Speculative decoding by prompt lookup on a real model (Qwen2.5-Coder-0.5B): a code edit, whose
//! answer copies most of its prompt, gives the same tokens with speculation as without, greedy
//! alone, beside other sequences and on per-sequence streams, while the model keeps most of the
//! drafts; seeded sampling draws the same tokens through the first draft. Where greedy runs
//! part, the run without speculation's choice must have been a near-tie: drafts are checked in a
//! pass of several rows, whose kernels round differently from a one-row step. Needs the default
//! models (`ember models pull --defaults`).

use ember_core::metrics::Metrics;
use ember_core::tasks::{ChatMessage, PromptInput, Sampling, TextGenerationRequest};
use ember_engines::llm::{KvLayout, LlmEngine, LlmSettings, Speculation, Traced};

mod common;

const MODEL: &str = "@hf/qwen/qwen2.5-coder-0.5b-instruct";

/// Logit margin below which a greedy choice may differ between batch shapes (as in
/// `generation_reference.rs`).
const NEAR_TIE: f32 = 0.25;

const EDIT: &str = "Rename the variable `total` to `running_sum` in this function. Answer with the \
whole function and nothing else.\n\n```python\ndef average_of_positive(values):\n    \"\"\"Returns \
the mean of the positive numbers in values, or 0.0 when there are none.\"\"\"\n    total = 0.0\n    \
count = 0\n    for value in values:\n        if value > 0:\n            total += value\n            \
count += 1\n    if count == 0:\n        return 0.0\n    return total / count\n```";

/// The engines without and with speculation.
async fn load(kv_layout: KvLayout) -> (LlmEngine, LlmEngine) {
    let load = |speculation| {
        let settings = LlmSettings {
            max_sequences: 4,
            kv_cells: Some(8192),
            kv_layout,
            speculation,
            step_seconds: Some(common::QWEN_STEP_SECONDS),
            ..LlmSettings::default()
        };
        common::load_llm(MODEL, &settings, Metrics::new().model(MODEL)).unwrap()
    };
    (load(Speculation::Off), load(Speculation::PromptLookup))
}

fn edit(sampling: Sampling) -> TextGenerationRequest {
    let messages = vec![ChatMessage::text("user", EDIT)];
    TextGenerationRequest::new(PromptInput::Messages(messages), 160, sampling)
}

fn seeded(seed: u64) -> Sampling {
    Sampling {
        temperature: 0.7,
        seed: Some(seed),
        ..Sampling::greedy()
    }
}

/// `got` (with speculation) equals `plain` (without), or parts from it where `plain`'s choice was
/// a near-tie.
fn assert_same(got: &Traced, plain: &Traced, what: &str) {
    match parting(got, plain) {
        None => assert_eq!(got.tokens, plain.tokens, "{what}: lengths differ"),
        Some(step) => assert!(
            plain.margins[step] < NEAR_TIE,
            "{what}: tokens part at step {step}, where the margin was {} (speculative {:?}, \
             plain {:?})",
            plain.margins[step],
            got.tokens,
            plain.tokens
        ),
    }
}

/// A seeded run with speculation draws as the run without it does, so they agree at least
/// through the first draft (made after the first dozen tokens; a draw taken out of turn would
/// part them there). Later they may part at any draw that falls near the edge between two
/// likely tokens, which rounding moves, near-tie or not.
fn assert_same_draws(got: &Traced, plain: &Traced, what: &str) {
    const CHECKED: usize = 24;
    if let Some(step) = parting(got, plain) {
        assert!(
            step >= CHECKED.min(plain.tokens.len()),
            "{what}: tokens part at step {step} (speculative {:?}, plain {:?})",
            got.tokens,
            plain.tokens
        );
    }
}

fn parting(got: &Traced, plain: &Traced) -> Option<usize> {
    got.tokens
        .iter()
        .zip(&plain.tokens)
        .position(|(a, b)| a != b)
}

// One test, so that no other test's engine runs while the speculative one times its steps.
#[tokio::test(flavor = "multi_thread")]
async fn drafts_change_nothing_and_are_mostly_kept_on_a_code_edit() {
    let (plain, speculative) = load(KvLayout::Unified).await;
    for (what, sampling) in [
        ("greedy", Sampling::greedy()),
        ("seeded", seeded(7)),
        ("seeded", seeded(1234)),
    ] {
        let expected = plain
            .run_traced(&edit(sampling.clone()), false)
            .await
            .unwrap();
        assert_eq!(expected.drafted, 0, "speculation off drafts nothing");
        let greedy = sampling.temperature == 0.0;
        let got = speculative
            .run_traced(&edit(sampling), false)
            .await
            .unwrap();
        match greedy {
            true => assert_same(&got, &expected, what),
            false => assert_same_draws(&got, &expected, what),
        }
        assert_mostly_drafted(&got, what);
    }
    // The prompt from the prefix cache, and three sequences at once, each with drafts.
    let expected = plain
        .run_traced(&edit(Sampling::greedy()), false)
        .await
        .unwrap();
    let request = edit(Sampling::greedy());
    let runs = tokio::join!(
        speculative.run_traced(&request, false),
        speculative.run_traced(&request, false),
        speculative.run_traced(&request, false),
    );
    for run in [runs.0, runs.1, runs.2] {
        let run = run.unwrap();
        assert_same(&run, &expected, "three at once");
        assert!(run.kept > 0, "three at once: no draft kept");
    }
    drop((plain, speculative));

    let (plain, speculative) = load(KvLayout::PerSequence).await;
    let expected = plain
        .run_traced(&edit(Sampling::greedy()), false)
        .await
        .unwrap();
    // Twice: the second run restores the first's snapshot, which must hold no rejected draft.
    for what in ["per-sequence", "per-sequence, from the prefix cache"] {
        let got = speculative
            .run_traced(&edit(Sampling::greedy()), false)
            .await
            .unwrap();
        assert_same(&got, &expected, what);
        assert_mostly_drafted(&got, what);
    }
}

/// The answer copies the function: most of it must come from drafts the model kept.
fn assert_mostly_drafted(got: &Traced, what: &str) {
    assert!(
        got.kept * 2 > got.timing.generated,
        "{what}: only {} of {} tokens came from drafts ({} drafted)",
        got.kept,
        got.timing.generated,
        got.drafted
    );
}
