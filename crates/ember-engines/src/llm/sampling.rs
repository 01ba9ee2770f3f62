//! Per-sequence token sampling: repetition/frequency/presence penalties, top-k, top-p, min-p,
//! temperature and a seeded generator, over the logits in a few streaming passes written for the
//! compiler to vectorise (Gemma's vocabulary has 262,144 entries): the maximum, the best
//! `CANDIDATES` tokens (skipping chunks that cannot enter them) and, where needed, the softmax
//! normaliser. A walk over the rest happens only when the draw falls outside those candidates,
//! which keeps the result exact. Temperature 0 is greedy. Filters see temperature-1
//! probabilities and temperature applies to the survivors, in llama.cpp's default order.

use ember_core::tasks::Sampling;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

/// Tokens of history the penalties look at (llama.cpp's default).
const PENALTY_WINDOW: usize = 64;
/// Tokens kept from the single pass when no `top_k` bounds the choice.
const CANDIDATES: usize = 256;
/// Width of the loops written for the compiler to vectorise.
const LANES: usize = 16;
/// Logits the candidate scan skips at once when none of them can enter the candidates.
const SCAN_CHUNK: usize = 64;

#[derive(Debug, Clone, Copy)]
struct Candidate {
    token: i32,
    logit: f32,
}

/// Orders a min-heap of candidates by logit.
struct Smaller(Candidate);

impl PartialEq for Smaller {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Smaller {}
impl PartialOrd for Smaller {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Smaller {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: the heap's top is the smallest logit (ties: the larger token id goes first).
        other
            .0
            .logit
            .total_cmp(&self.0.logit)
            .then(self.0.token.cmp(&other.0.token))
    }
}

/// A penalised token: its raw logit and the value the penalties give it.
#[derive(Debug, Clone, Copy)]
struct Override {
    token: i32,
    raw: f32,
    adjusted: f32,
}

/// `ln Σ exp(l / t)` over the logits seen so far, kept as a running maximum and a scaled sum.
#[derive(Debug, Clone, Copy)]
struct Normaliser {
    /// 1 / t: every weight multiplies by it (a division per token costs more than the rest).
    scale: f32,
    max: f32,
    sum: f32,
}

impl Normaliser {
    fn new(temperature: f32) -> Normaliser {
        Normaliser {
            scale: temperature.recip(),
            max: f32::NEG_INFINITY,
            sum: 0.0,
        }
    }

    /// Over the whole vocabulary, the overrides in place of their raw logits: the largest logit,
    /// then the weights summed in one vectorised pass.
    fn over(logits: &[f32], overrides: &[Override], temperature: f32) -> Normaliser {
        let max = overrides
            .iter()
            .map(|o| o.adjusted)
            .fold(largest(logits), f32::max);
        let mut normaliser = Normaliser {
            scale: temperature.recip(),
            max,
            sum: 0.0,
        };
        // Every token forbidden: nothing weighs anything (and -inf - -inf would be NaN).
        if max == f32::NEG_INFINITY {
            return normaliser;
        }
        normaliser.sum = reduce(logits, 0.0, |l| normaliser.weight(l), |a, b| a + b);
        for o in overrides {
            normaliser.sum += normaliser.weight(o.adjusted) - normaliser.weight(o.raw);
        }
        normaliser
    }

    fn add(&mut self, logit: f32) {
        // A token a grammar forbids (-inf) weighs nothing; counting it would make NaN.
        if logit == f32::NEG_INFINITY {
            return;
        }
        if logit > self.max {
            self.sum = self.sum * exp_nonpositive((self.max - logit) * self.scale) + 1.0;
            self.max = logit;
        } else {
            self.sum += self.weight(logit);
        }
    }

    /// The probability mass (unnormalised weight) of a logit on this scale.
    fn weight(&self, logit: f32) -> f32 {
        exp_nonpositive((logit - self.max) * self.scale)
    }
}

pub struct Sampler {
    settings: Sampling,
    rng: StdRng,
    recent: VecDeque<i32>,
}

impl Sampler {
    /// A sampler for one sequence whose tokens so far are `history` (the prompt; negative ids
    /// mark positions that hold no token, an image's, and are not penalised). Without a seed, a
    /// fresh random one is drawn.
    pub fn new(settings: &Sampling, history: &[i32]) -> Sampler {
        let rng = match settings.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let tail = &history[history.len().saturating_sub(PENALTY_WINDOW)..];
        Sampler {
            settings: settings.clone(),
            rng,
            recent: tail.iter().copied().filter(|&t| t >= 0).collect(),
        }
    }

    /// Records a token of the sequence (prompt tail or generated) for the penalties.
    pub fn accept(&mut self, token: i32) {
        if self.recent.len() == PENALTY_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(token);
    }

    /// Picks the next token from a position's logits.
    pub fn sample(&mut self, logits: &[f32]) -> i32 {
        let overrides = self.penalties(logits);
        let s = &self.settings;
        if s.temperature <= 0.0 {
            if overrides.is_empty() {
                return argmax(logits) as i32;
            }
            return scan(logits, 1, &overrides)[0].token;
        }
        let top_p = s.top_p.filter(|p| *p < 1.0);
        let min_p = s.min_p.filter(|p| *p > 0.0);
        if s.top_k.is_none() && top_p.is_none() && min_p.is_none() {
            return self.sample_everything(logits, &overrides);
        }
        let k = s.top_k.map_or(CANDIDATES, |k| k as usize);
        // Top-p over the whole vocabulary needs its normaliser; top-k renormalises over its k.
        let global = (s.top_k.is_none() && top_p.is_some())
            .then(|| Normaliser::over(logits, &overrides, 1.0));
        let candidates = scan(logits, k, &overrides);
        let complete = s.top_k.is_some() || candidates.len() == logits.len();
        let kept = survivors(&candidates, top_p, min_p, complete, global);
        let candidates = match kept {
            Some(n) => candidates[..n].to_vec(),
            None => {
                // The cut lies beyond the candidates: sort the whole vocabulary (rare).
                let all = scan(logits, logits.len(), &overrides);
                let n = survivors(&all, top_p, min_p, true, None).unwrap_or(all.len());
                all[..n].to_vec()
            }
        };
        let temperature = self.settings.temperature;
        pick(&candidates, temperature, &mut self.rng)
    }

    /// Samples from the full distribution at the temperature: the candidates cover most of the
    /// mass; the rest of the vocabulary is walked only when the draw lands there.
    fn sample_everything(&mut self, logits: &[f32], overrides: &[Override]) -> i32 {
        let temperature = self.settings.temperature;
        let candidates = scan(logits, CANDIDATES, overrides);
        let normaliser = Normaliser::over(logits, overrides, temperature);
        let target = self.rng.random::<f32>() * normaliser.sum;
        let mut mass = 0.0;
        for candidate in &candidates {
            mass += normaliser.weight(candidate.logit);
            if mass >= target {
                return candidate.token;
            }
        }
        let mut chosen: Vec<i32> = candidates.iter().map(|c| c.token).collect();
        chosen.sort_unstable();
        let mut last = candidates[0].token;
        for (token, &raw) in logits.iter().enumerate() {
            let token = token as i32;
            if chosen.binary_search(&token).is_ok() {
                continue;
            }
            let logit = overrides
                .iter()
                .find(|o| o.token == token)
                .map_or(raw, |o| o.adjusted);
            mass += normaliser.weight(logit);
            last = token;
            if mass >= target {
                return token;
            }
        }
        // Rounding left the draw a hair beyond the total: the last token walked takes it.
        last
    }

    /// The penalised tokens of the recent history, as llama.cpp's penalties sampler computes them.
    fn penalties(&self, logits: &[f32]) -> Vec<Override> {
        let s = &self.settings;
        let repeat = s.repetition_penalty.unwrap_or(1.0);
        let frequency = s.frequency_penalty.unwrap_or(0.0);
        let presence = s.presence_penalty.unwrap_or(0.0);
        if repeat == 1.0 && frequency == 0.0 && presence == 0.0 {
            return Vec::new();
        }
        let mut counts: Vec<(i32, u32)> = Vec::new();
        for &token in &self.recent {
            match counts.iter_mut().find(|(t, _)| *t == token) {
                Some((_, count)) => *count += 1,
                None => counts.push((token, 1)),
            }
        }
        counts
            .into_iter()
            .filter(|(token, _)| (*token as usize) < logits.len())
            .map(|(token, count)| {
                let raw = logits[token as usize];
                let mut adjusted = if raw <= 0.0 {
                    raw * repeat
                } else {
                    raw / repeat
                };
                adjusted -= count as f32 * frequency + presence;
                Override {
                    token,
                    raw,
                    adjusted,
                }
            })
            .collect()
    }
}

/// How far the best logit is ahead of the second best: small margins are where rounding
/// differences between batch shapes can flip a greedy choice.
pub fn margin(logits: &[f32]) -> f32 {
    let best = argmax(logits);
    let second = largest(&logits[..best]).max(largest(&logits[best + 1..]));
    logits[best] - second
}

/// The first position of the largest logit: the greedy choice, ties going to the lower token id
/// as in `scan`. Per token the scheduler thread walks the whole vocabulary while llama.cpp's
/// threads wait, so these passes are written for the compiler to vectorise: the maximum, the
/// first chunk holding it, its place there.
fn argmax(logits: &[f32]) -> usize {
    let max = largest(logits);
    let holds_max = |chunk: &[f32]| chunk.iter().fold(false, |seen, &l| seen | (l == max));
    logits
        .chunks(SCAN_CHUNK)
        .position(holds_max)
        .and_then(|c| {
            let start = c * SCAN_CHUNK;
            let place = logits[start..].iter().position(|&l| l == max)?;
            Some(start + place)
        })
        .unwrap_or(0)
}

/// The largest value (negative infinity when empty; NaNs are skipped).
fn largest(values: &[f32]) -> f32 {
    reduce(
        values,
        f32::NEG_INFINITY,
        |v| v,
        |max, v| if v > max { v } else { max },
    )
}

/// `combine` over `map` of every value, starting from `identity`, in `LANES` independent
/// accumulators so that the compiler vectorises the loop (one accumulator would fix the order
/// of the float operations and keep it scalar).
fn reduce(
    values: &[f32],
    identity: f32,
    map: impl Fn(f32) -> f32,
    combine: impl Fn(f32, f32) -> f32,
) -> f32 {
    let mut lanes = [identity; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &value) in lanes.iter_mut().zip(chunk) {
            *lane = combine(*lane, map(value));
        }
    }
    let lanes = lanes.into_iter().fold(identity, &combine);
    rest.iter()
        .fold(lanes, |acc, &value| combine(acc, map(value)))
}

/// e^x for x ≤ 0 (weights of logits below the maximum) in plain arithmetic the compiler
/// vectorises: libm's `expf` is a call per value, and the normaliser needs one for every token
/// of the vocabulary (with it, sampling over Gemma's 262,144 took 1.6 ms a token; now 0.6).
/// Cephes' `expf`: x = n ln 2 + r with |r| ≤ ln 2 / 2, e^r from its polynomial, 2^n from the
/// exponent bits; relative error about 2e-7. Below -87, where f32 turns subnormal, and at -∞: 0.
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    // ln 2 split in two, so that n ln 2 is exact for the n that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 × 2^23 rounds to the nearest integer (no libm call).
    const ROUND: f32 = 12_582_912.0;
    let clamped = if x < -87.0 { -87.0 } else { x };
    // n + 1.5 × 2^23, whose low mantissa bits hold n in two's complement.
    let shifted = clamped * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let p = (((((1.987_569_2e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5)
        * r
        * r
        + r
        + 1.0;
    // Integer arithmetic on the bits (an `as` cast saturates, which blocks vectorising).
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let two_to_n = f32::from_bits(n_bits.wrapping_add(127) << 23);
    if x < -87.0 { 0.0 } else { p * two_to_n }
}

/// One pass over the logits: the best `k` tokens, best first, penalties applied.
fn scan(logits: &[f32], k: usize, overrides: &[Override]) -> Vec<Candidate> {
    // Keep room for every overridden token: they are scored by their raw logit here and
    // replaced afterwards, so the best `k` others are always kept.
    let keep = (k + overrides.len()).min(logits.len());
    let mut heap: BinaryHeap<Smaller> = BinaryHeap::with_capacity(keep + 1);
    for (start, chunk) in (0..).step_by(SCAN_CHUNK).zip(logits.chunks(SCAN_CHUNK)) {
        // A full heap takes only logits above its smallest: most chunks of a real distribution
        // hold none, and one vectorised pass rules them out.
        if heap.len() == keep
            && let Some(smallest) = heap.peek()
            && largest(chunk) <= smallest.0.logit
        {
            continue;
        }
        for (offset, &logit) in chunk.iter().enumerate() {
            let token = (start + offset) as i32;
            if heap.len() < keep {
                heap.push(Smaller(Candidate { token, logit }));
            } else if let Some(mut smallest) = heap.peek_mut()
                && logit > smallest.0.logit
            {
                *smallest = Smaller(Candidate { token, logit });
            }
        }
    }
    let mut candidates: Vec<Candidate> = heap
        .into_iter()
        .map(|s| s.0)
        .filter(|c| !overrides.iter().any(|o| o.token == c.token))
        .collect();
    candidates.extend(overrides.iter().map(|o| Candidate {
        token: o.token,
        logit: o.adjusted,
    }));
    candidates.sort_unstable_by(|a, b| b.logit.total_cmp(&a.logit).then(a.token.cmp(&b.token)));
    candidates.truncate(k.max(1));
    candidates
}

/// How many of the (best-first) candidates survive top-p and min-p. `None` when the answer
/// depends on tokens beyond them (`complete` is false and the cut was not reached).
fn survivors(
    candidates: &[Candidate],
    top_p: Option<f32>,
    min_p: Option<f32>,
    complete: bool,
    global: Option<Normaliser>,
) -> Option<usize> {
    let mut n = candidates.len();
    if let Some(p) = top_p {
        let normaliser = global.unwrap_or_else(|| {
            let mut local = Normaliser::new(1.0);
            candidates.iter().for_each(|c| local.add(c.logit));
            local
        });
        let mut cumulative = 0.0;
        let cut = candidates.iter().position(|c| {
            cumulative += normaliser.weight(c.logit) / normaliser.sum;
            cumulative >= p
        });
        match cut {
            Some(i) => n = i + 1,
            None if !complete => return None,
            None => {}
        }
    }
    if let Some(min_p) = min_p {
        let threshold = candidates[0].logit + min_p.ln();
        let kept = candidates[..n]
            .iter()
            .take_while(|c| c.logit >= threshold)
            .count();
        if kept == candidates.len() && !complete {
            return None;
        }
        n = kept.max(1);
    }
    Some(n)
}

/// Draws one of the candidates with probability ∝ exp(logit / temperature).
fn pick(candidates: &[Candidate], temperature: f32, rng: &mut StdRng) -> i32 {
    let mut normaliser = Normaliser::new(temperature);
    candidates.iter().for_each(|c| normaliser.add(c.logit));
    let target = rng.random::<f32>() * normaliser.sum;
    let mut mass = 0.0;
    for candidate in candidates {
        mass += normaliser.weight(candidate.logit);
        if mass >= target {
            return candidate.token;
        }
    }
    candidates[candidates.len() - 1].token
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(temperature: f32) -> Sampling {
        Sampling {
            temperature,
            top_p: None,
            top_k: None,
            min_p: None,
            seed: Some(7),
            repetition_penalty: None,
            frequency_penalty: None,
            presence_penalty: None,
        }
    }

    fn frequencies(settings: &Sampling, logits: &[f32], draws: usize) -> Vec<f32> {
        let mut sampler = Sampler::new(settings, &[]);
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            counts[sampler.sample(logits) as usize] += 1;
        }
        counts.iter().map(|&c| c as f32 / draws as f32).collect()
    }

    fn probabilities(p: &[f32]) -> Vec<f32> {
        p.iter().map(|p| p.ln()).collect()
    }

    #[test]
    fn greedy_takes_the_best_token_and_penalties_can_move_it() {
        let logits = vec![1.0, 3.0, 2.9, -1.0];
        let mut sampler = Sampler::new(&settings(0.0), &[]);
        assert_eq!(sampler.sample(&logits), 1);
        let mut penalised = settings(0.0);
        penalised.repetition_penalty = Some(1.5);
        let mut sampler = Sampler::new(&penalised, &[]);
        sampler.accept(1);
        // 3.0 / 1.5 = 2.0 < 2.9
        assert_eq!(sampler.sample(&logits), 2);
    }

    #[test]
    fn argmax_and_margin_agree_with_the_scan() {
        let mut rng = StdRng::seed_from_u64(7);
        for n in [1, 2, 15, 16, 17, 49_152] {
            // Few distinct values, so ties are common and must go to the lower token id.
            let logits: Vec<f32> = (0..n)
                .map(|_| rng.random_range(0..40) as f32 / 4.0)
                .collect();
            let best = scan(&logits, 2, &[]);
            assert_eq!(argmax(&logits) as i32, best[0].token, "n = {n}");
            let second = best.get(1).map_or(f32::NEG_INFINITY, |c| c.logit);
            assert_eq!(margin(&logits), best[0].logit - second, "n = {n}");
        }
        assert_eq!(argmax(&[f32::NEG_INFINITY, 1.0, f32::NAN, 1.0]), 1);
    }

    #[test]
    fn exp_nonpositive_matches_libm() {
        for i in 0..=100_000 {
            let x = -90.0 * i as f32 / 100_000.0;
            let (fast, libm) = (exp_nonpositive(x), x.exp());
            if x < -87.0 {
                assert_eq!(fast, 0.0);
            } else {
                assert!(
                    (fast - libm).abs() <= 4e-7 * libm,
                    "e^{x}: {fast} vs {libm}"
                );
            }
        }
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive(0.0), 1.0);
    }

    #[test]
    fn the_normaliser_sums_every_weight() {
        let mut rng = StdRng::seed_from_u64(3);
        let logits: Vec<f32> = (0..1000).map(|_| rng.random_range(-30.0..10.0)).collect();
        let overrides = [Override {
            token: 5,
            raw: logits[5],
            adjusted: 12.0,
        }];
        let fast = Normaliser::over(&logits, &overrides, 0.7);
        let mut expected = 0.0f64;
        for (token, &logit) in logits.iter().enumerate() {
            let logit = if token == 5 { 12.0 } else { logit };
            expected += ((f64::from(logit) - 12.0) / 0.7).exp();
        }
        assert_eq!(fast.max, 12.0);
        assert!((f64::from(fast.sum) - expected).abs() < 1e-5 * expected);
    }

    #[test]
    fn full_distribution_matches_the_softmax() {
        let logits = probabilities(&[0.5, 0.3, 0.2]);
        let seen = frequencies(&settings(1.0), &logits, 20_000);
        for (seen, want) in seen.iter().zip([0.5, 0.3, 0.2]) {
            assert!((seen - want).abs() < 0.02, "{seen} vs {want}");
        }
    }

    #[test]
    fn draws_reach_tokens_beyond_the_candidates() {
        // A flat distribution over 2,000 tokens: most of the mass lies outside the best 256.
        let logits = vec![0.0; 2000];
        let seen = frequencies(&settings(1.0), &logits, 4000);
        let beyond: f32 = seen[CANDIDATES..].iter().sum();
        assert!(beyond > 0.8, "{beyond}");
    }

    #[test]
    fn forbidden_tokens_are_never_drawn() {
        let mut logits = vec![f32::NEG_INFINITY; 1000];
        logits[3] = 0.5;
        logits[700] = 1.0;
        let mut sampler = Sampler::new(&settings(0.8), &[]);
        for _ in 0..200 {
            let token = sampler.sample(&logits);
            assert!(token == 3 || token == 700, "drew {token}");
        }
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        let logits = probabilities(&[0.5, 0.3, 0.15, 0.05]);
        let mut top_p = settings(1.0);
        top_p.top_p = Some(0.7);
        let seen = frequencies(&top_p, &logits, 5000);
        assert_eq!(seen[2] + seen[3], 0.0);
        assert!((seen[0] - 0.625).abs() < 0.03, "{seen:?}");
        let mut min_p = settings(1.0);
        // Keeps tokens at least 0.4 × 0.5 = 0.2 likely.
        min_p.min_p = Some(0.4);
        let seen = frequencies(&min_p, &logits, 5000);
        assert_eq!(seen[2] + seen[3], 0.0, "{seen:?}");
        let mut top_k = settings(1.0);
        top_k.top_k = Some(1);
        assert_eq!(frequencies(&top_k, &logits, 100)[0], 1.0);
    }

    #[test]
    fn top_p_beyond_the_candidates_falls_back_to_the_whole_vocabulary() {
        let logits = vec![0.0; 1000];
        let mut top_p = settings(1.0);
        top_p.top_p = Some(0.9);
        let seen = frequencies(&top_p, &logits, 4000);
        let kept = seen.iter().filter(|f| **f > 0.0).count();
        assert!(kept > 600, "{kept}");
    }

    #[test]
    fn a_seed_repeats_its_draws() {
        let logits: Vec<f32> = (0..5000)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
            .collect();
        let draw = |seed| {
            let mut s = settings(0.8);
            s.seed = Some(seed);
            let mut sampler = Sampler::new(&s, &[]);
            (0..50).map(|_| sampler.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }
}
