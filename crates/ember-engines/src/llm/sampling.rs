//! Builds llama.cpp's sampler chain from Workers AI sampling settings. Temperature 0 is greedy.

use ember_core::tasks::Sampling;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;

/// Tokens of history the repetition, frequency and presence penalties look at (llama.cpp's default).
const PENALTY_WINDOW: i32 = 64;

pub fn build(sampling: &Sampling, model: &LlamaModel) -> LlamaSampler {
    let mut chain = Vec::new();
    let repeat = sampling.repetition_penalty.unwrap_or(1.0);
    let frequency = sampling.frequency_penalty.unwrap_or(0.0);
    let presence = sampling.presence_penalty.unwrap_or(0.0);
    if repeat != 1.0 || frequency != 0.0 || presence != 0.0 {
        chain.push(LlamaSampler::penalties(
            model.n_vocab(),
            PENALTY_WINDOW,
            repeat,
            frequency,
            presence,
        ));
    }
    if sampling.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
        return LlamaSampler::chain_simple(chain);
    }
    if let Some(k) = sampling.top_k {
        chain.push(LlamaSampler::top_k(k as i32));
    }
    if let Some(p) = sampling.top_p.filter(|p| *p < 1.0) {
        chain.push(LlamaSampler::top_p(p, 1));
    }
    chain.push(LlamaSampler::temp(sampling.temperature));
    chain.push(LlamaSampler::dist(seed_u32(sampling.seed)));
    LlamaSampler::chain_simple(chain)
}

/// llama.cpp seeds are 32-bit; Workers AI seeds go up to 9,999,999,999. Without a seed, a fresh
/// random one is drawn for every request.
fn seed_u32(seed: Option<u64>) -> u32 {
    match seed {
        Some(seed) => (seed ^ (seed >> 32)) as u32,
        None => rand::random(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn large_seeds_stay_distinct() {
        assert_ne!(
            super::seed_u32(Some(1)),
            super::seed_u32(Some(1 + (1 << 32)))
        );
        assert_eq!(super::seed_u32(Some(42)), super::seed_u32(Some(42)));
    }
}
