//! Ember's side of the kernel rows: loads the LLM engine in-process once and times prefill and
//! decode through its scheduler the way llama-bench times llama.cpp (random token ids, one
//! warm-up), one sample of each row per round; and the samples of both sides.

use super::report::median;
use anyhow::{Result, ensure};
use ember_core::ModelSpec;
use ember_core::metrics::Metrics;
use ember_engines::llm::{self, LlmEngine, LlmSettings, Speculation};
use std::collections::BTreeMap;
use std::path::Path;

/// Prompt lengths of the prefill rows.
pub const PREFILL_TOKENS: [u32; 2] = [128, 512];
/// Context already in the cache for the decode rows.
pub const DECODE_DEPTHS: [u32; 2] = [128, 512];
/// Tokens generated (and timed) per decode sample.
pub const DECODE_TOKENS: u32 = 128;

/// Samples in tokens per second: prefill by prompt length, decode by context depth.
#[derive(Default)]
pub struct KernelSamples {
    pub prefill: BTreeMap<u32, Vec<f64>>,
    pub decode: BTreeMap<u32, Vec<f64>>,
}

impl KernelSamples {
    /// The median of one row's samples.
    pub fn median(&self, prefill: bool, n: u32) -> Option<f64> {
        let rows = if prefill { &self.prefill } else { &self.decode };
        rows.get(&n).and_then(|samples| median(samples))
    }

    /// The latest sample of every row, for the progress log.
    pub fn latest(&self) -> String {
        let prefill = self
            .prefill
            .iter()
            .map(|(n, s)| (format!("prefill {n}"), s));
        let decode = self
            .decode
            .iter()
            .map(|(n, s)| (format!("decode after {n}"), s));
        let latest: Vec<String> = prefill
            .chain(decode)
            .filter_map(|(row, samples)| Some(format!("{row} {:.1}", samples.last()?)))
            .collect();
        latest.join(", ")
    }
}

/// Ember's engine with one sequence, loaded once for all of its samples.
pub struct EmberKernels {
    engine: LlmEngine,
    tokens: RandomTokens,
}

impl EmberKernels {
    /// Loads the engine and runs one warm-up sample.
    pub fn load(spec: &ModelSpec, dir: &Path, n_vocab: u32, threads: u32) -> Result<Self> {
        let settings = LlmSettings {
            max_sequences: 1,
            kv_cells: Some(1024),
            // Every sample starts on an empty cache, as llama-bench's do: other requests' cached
            // cells would lengthen each attention scan and shift where this one's cells land.
            prefix_cache: false,
            // llama-bench decodes one token a step: drafts would measure something else.
            speculation: Speculation::Off,
            threads: Some(i32::try_from(threads)?),
            ..LlmSettings::default()
        };
        let engine = llm::load(spec, dir, &settings, Metrics::new().model(&spec.id))?;
        let mut kernels = EmberKernels {
            engine,
            tokens: RandomTokens::new(n_vocab),
        };
        kernels.sample(&mut KernelSamples::default())?;
        Ok(kernels)
    }

    /// One sample of every row, added to `samples`.
    pub fn sample(&mut self, samples: &mut KernelSamples) -> Result<()> {
        for n in PREFILL_TOKENS {
            let timing = self.engine.timed_generation(self.tokens.take(n), 1)?;
            let rate = f64::from(n) / timing.prefill.as_secs_f64();
            samples.prefill.entry(n).or_default().push(rate);
        }
        for depth in DECODE_DEPTHS {
            // The first token comes out of the prefill; the next DECODE_TOKENS are decode steps.
            let timing = self
                .engine
                .timed_generation(self.tokens.take(depth), DECODE_TOKENS + 1)?;
            ensure!(
                timing.generated == DECODE_TOKENS + 1,
                "generated {} tokens, asked for {}",
                timing.generated,
                DECODE_TOKENS + 1
            );
            let rate = f64::from(DECODE_TOKENS) / timing.decode.as_secs_f64();
            samples.decode.entry(depth).or_default().push(rate);
        }
        Ok(())
    }
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
