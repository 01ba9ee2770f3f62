//! Per-sequence token sampling: repetition/frequency/presence penalties, top-k, top-p, min-p,
//! temperature and a seeded generator, in one pass over the logits (Gemma's vocabulary has
//! 262,144 entries). The pass keeps the best `CANDIDATES` tokens and, where needed, the softmax
//! normaliser; a second pass happens only when the choice falls outside those candidates, which
//! keeps the result exact. Temperature 0 is greedy. Filters see temperature-1 probabilities and
//! temperature applies to the survivors, in llama.cpp's default order.

use ember_core::tasks::Sampling;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

/// Tokens of history the penalties look at (llama.cpp's default).
const PENALTY_WINDOW: usize = 64;
/// Tokens kept from the single pass when no `top_k` bounds the choice.
const CANDIDATES: usize = 256;

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
    temperature: f32,
    max: f32,
    sum: f32,
}

impl Normaliser {
    fn new(temperature: f32) -> Normaliser {
        Normaliser {
            temperature,
            max: f32::NEG_INFINITY,
            sum: 0.0,
        }
    }

    fn add(&mut self, logit: f32) {
        // A token a grammar forbids (-inf) weighs nothing; counting it would make NaN.
        if logit == f32::NEG_INFINITY {
            return;
        }
        if logit > self.max {
            self.sum = self.sum * ((self.max - logit) / self.temperature).exp() + 1.0;
            self.max = logit;
        } else {
            self.sum += ((logit - self.max) / self.temperature).exp();
        }
    }

    /// Replaces one logit already counted (`raw`) by another (`adjusted`).
    fn replace(&mut self, raw: f32, adjusted: f32) {
        self.sum -= ((raw - self.max) / self.temperature).exp();
        self.add(adjusted);
    }

    /// The probability mass (unnormalised weight) of a logit on this scale.
    fn weight(&self, logit: f32) -> f32 {
        ((logit - self.max) / self.temperature).exp()
    }
}

pub struct Sampler {
    settings: Sampling,
    rng: StdRng,
    recent: VecDeque<i32>,
}

impl Sampler {
    /// A sampler for one sequence whose tokens so far are `history` (the prompt). Without a
    /// seed, a fresh random one is drawn.
    pub fn new(settings: &Sampling, history: &[i32]) -> Sampler {
        let rng = match settings.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let tail = &history[history.len().saturating_sub(PENALTY_WINDOW)..];
        Sampler {
            settings: settings.clone(),
            rng,
            recent: tail.iter().copied().collect(),
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
            return scan(logits, 1, &overrides, None).0[0].token;
        }
        let top_p = s.top_p.filter(|p| *p < 1.0);
        let min_p = s.min_p.filter(|p| *p > 0.0);
        if s.top_k.is_none() && top_p.is_none() && min_p.is_none() {
            return self.sample_everything(logits, &overrides);
        }
        let k = s.top_k.map_or(CANDIDATES, |k| k as usize);
        // Top-p over the whole vocabulary needs its normaliser; top-k renormalises over its k.
        let global = (s.top_k.is_none() && top_p.is_some()).then(|| Normaliser::new(1.0));
        let (candidates, normaliser) = scan(logits, k, &overrides, global);
        let complete = s.top_k.is_some() || candidates.len() == logits.len();
        let kept = survivors(&candidates, top_p, min_p, complete, normaliser);
        let candidates = match kept {
            Some(n) => candidates[..n].to_vec(),
            None => {
                // The cut lies beyond the candidates: sort the whole vocabulary (rare).
                let all = scan(logits, logits.len(), &overrides, None).0;
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
        let (candidates, normaliser) = scan(
            logits,
            CANDIDATES,
            overrides,
            Some(Normaliser::new(temperature)),
        );
        let normaliser = normaliser.expect("requested");
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
    let best = scan(logits, 2, &[], None).0;
    best[0].logit - best.get(1).map_or(f32::NEG_INFINITY, |c| c.logit)
}

/// One pass over the logits: the best `k` tokens (best first, penalties applied) and, if asked,
/// the softmax normaliser of the whole (penalised) vocabulary.
fn scan(
    logits: &[f32],
    k: usize,
    overrides: &[Override],
    mut normaliser: Option<Normaliser>,
) -> (Vec<Candidate>, Option<Normaliser>) {
    // Keep room for every overridden token: they are scored by their raw logit here and
    // replaced afterwards, so the best `k` others are always kept.
    let keep = (k + overrides.len()).min(logits.len());
    let mut heap: BinaryHeap<Smaller> = BinaryHeap::with_capacity(keep + 1);
    for (token, &logit) in logits.iter().enumerate() {
        if let Some(normaliser) = normaliser.as_mut() {
            normaliser.add(logit);
        }
        if heap.len() < keep {
            heap.push(Smaller(Candidate {
                token: token as i32,
                logit,
            }));
        } else if let Some(mut smallest) = heap.peek_mut()
            && logit > smallest.0.logit
        {
            *smallest = Smaller(Candidate {
                token: token as i32,
                logit,
            });
        }
    }
    let mut candidates: Vec<Candidate> = heap
        .into_iter()
        .map(|s| s.0)
        .filter(|c| !overrides.iter().any(|o| o.token == c.token))
        .collect();
    for o in overrides {
        if let Some(normaliser) = normaliser.as_mut() {
            normaliser.replace(o.raw, o.adjusted);
        }
        candidates.push(Candidate {
            token: o.token,
            logit: o.adjusted,
        });
    }
    candidates.sort_unstable_by(|a, b| b.logit.total_cmp(&a.logit).then(a.token.cmp(&b.token)));
    candidates.truncate(k.max(1));
    (candidates, normaliser)
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
