//! Ember's side of the kernel rows: loads the LLM engine in-process and times prefill and decode
//! through its scheduler the way llama-bench times llama.cpp (random token ids, one warm-up, the
//! median of the repetitions).

use super::report::median;
use anyhow::{Context, Result, ensure};
use ember_core::ModelSpec;
use ember_core::metrics::Metrics;
use ember_engines::llm::{self, LlmSettings};
use std::collections::BTreeMap;
use std::path::Path;

/// Prompt lengths of the prefill rows.
pub const PREFILL_TOKENS: [u32; 2] = [128, 512];
/// Context already in the cache for the decode rows.
pub const DECODE_DEPTHS: [u32; 2] = [128, 512];
/// Tokens generated (and timed) per decode sample.
pub const DECODE_TOKENS: u32 = 128;

/// Tokens per second: prefill by prompt length, decode by context depth.
#[derive(Default)]
pub struct KernelRates {
    pub prefill: BTreeMap<u32, f64>,
    pub decode: BTreeMap<u32, f64>,
}

pub fn ember(
    spec: &ModelSpec,
    dir: &Path,
    n_vocab: u32,
    threads: u32,
    repetitions: u32,
) -> Result<KernelRates> {
    let settings = LlmSettings {
        max_sequences: 1,
        kv_cells: Some(1024),
        threads: Some(i32::try_from(threads)?),
        ..LlmSettings::default()
    };
    let engine = llm::load(spec, dir, &settings, Metrics::new().model(&spec.id))?;
    let mut tokens = RandomTokens::new(n_vocab);
    let mut rates = KernelRates::default();
    for n in PREFILL_TOKENS {
        let rate = timed(repetitions, || {
            let timing = engine.timed_generation(tokens.take(n), 1)?;
            Ok(f64::from(n) / timing.prefill.as_secs_f64())
        })?;
        rates.prefill.insert(n, rate);
    }
    for depth in DECODE_DEPTHS {
        let rate = timed(repetitions, || {
            // The first token comes out of the prefill; the next DECODE_TOKENS are decode steps.
            let timing = engine.timed_generation(tokens.take(depth), DECODE_TOKENS + 1)?;
            ensure!(
                timing.generated == DECODE_TOKENS + 1,
                "generated {} tokens, asked for {}",
                timing.generated,
                DECODE_TOKENS + 1
            );
            Ok(f64::from(DECODE_TOKENS) / timing.decode.as_secs_f64())
        })?;
        rates.decode.insert(depth, rate);
    }
    Ok(rates)
}

/// One warm-up run, then the median of `repetitions` runs.
fn timed(repetitions: u32, mut sample: impl FnMut() -> Result<f64>) -> Result<f64> {
    sample()?;
    let samples = (0..repetitions)
        .map(|_| sample())
        .collect::<Result<Vec<f64>>>()?;
    median(&samples).context("no repetitions")
}

/// Uniformly spread token ids (xorshift64*), fixed seed so runs are repeatable.
struct RandomTokens {
    state: u64,
    n_vocab: u32,
}

impl RandomTokens {
    fn new(n_vocab: u32) -> RandomTokens {
        RandomTokens {
            state: 0x9E37_79B9_7F4A_7C15,
            n_vocab,
        }
    }

    fn take(&mut self, n: u32) -> Vec<i32> {
        (0..n)
            .map(|_| {
                self.state ^= self.state >> 12;
                self.state ^= self.state << 25;
                self.state ^= self.state >> 27;
                let value = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32;
                (value % u64::from(self.n_vocab)) as i32
            })
            .collect()
    }
}
