//! Decoding one 30 s window, as CTranslate2's `Whisper.generate` does for faster-whisper: the
//! prompt pass and the no-speech probability, the logits processors (suppressed tokens, blank
//! suppression at the first step, the timestamp rules), and greedy search, sampling with best-of,
//! or beam search with patience and length penalty.

use super::model::{CrossKv, Model, SelfKv};
use super::steps::StepQueue;
use rand::Rng;
use rand::rngs::StdRng;

/// CTranslate2 disables a token by writing the lowest float into its logit.
const DISABLED: f32 = f32::MIN;

/// The special tokens decoding needs.
#[derive(Clone, Copy)]
pub(crate) struct Specials {
    pub sot: u32,
    pub eot: u32,
    pub no_speech: u32,
    pub timestamp_begin: u32,
}

/// How one window is decoded.
pub(crate) struct DecodeOptions {
    /// 1: greedy (or sampling when `temperature > 0`).
    pub beam_size: usize,
    /// Beam search stops once `round(beam_size · patience)` hypotheses finished.
    pub patience: f32,
    /// Hypotheses are ranked by `sum log p / len ^ length_penalty`.
    pub length_penalty: f32,
    pub temperature: f32,
    /// Samples drawn when `temperature > 0`; the best by normalized score is kept.
    pub best_of: usize,
    /// Tokens never produced.
    pub suppress: Vec<u32>,
    /// Tokens not produced at the first step (`suppress_blank`).
    pub suppress_begin: Vec<u32>,
    /// With timestamps: the last timestamp index allowed first (`max_initial_timestamp / 0.02`).
    pub max_initial_timestamp: Option<u32>,
}

/// The decoder after the prompt: the state every temperature of the fallback starts from.
pub(crate) struct Prompted {
    cache: SelfKv,
    /// The last prompt token, fed at the first decoding step.
    start: u32,
    /// How many tokens may be generated: `min(n_text_ctx / 2, n_text_ctx - prompt_len + 1)`.
    max_length: usize,
    /// P(no speech) at `<|startoftranscript|>`; `None` when that is `start` (found at step 0).
    no_speech_prob: Option<f64>,
}

/// One window's result.
pub(crate) struct Generated {
    /// The tokens, EOT excluded.
    pub tokens: Vec<u32>,
    /// Sum of the log-probabilities of the tokens and of the EOT that ended them.
    pub sum_logprob: f64,
    pub no_speech_prob: f64,
}

/// Runs all prompt tokens but the last through the decoder.
pub(crate) fn prompt(
    model: &Model,
    cross: &CrossKv,
    prompt: &[u32],
    specials: Specials,
) -> anyhow::Result<Prompted> {
    let sot_index = prompt
        .iter()
        .position(|&t| t == specials.sot)
        .ok_or_else(|| anyhow::anyhow!("the prompt has no <|startoftranscript|>"))?;
    let (&start, before) = prompt
        .split_last()
        .ok_or_else(|| anyhow::anyhow!("empty prompt"))?;
    let mut cache = model.new_cache();
    let mut no_speech_prob = None;
    if !before.is_empty() {
        let (hidden, _) = model.decode(before, 1, &mut cache, cross, &[])?;
        if sot_index < before.len() {
            let logits = model.logits(&hidden.narrow(0, sot_index, 1)?)?;
            no_speech_prob = Some(softmax_at(&logits[0], specials.no_speech));
        }
    }
    let ctx = model.dims.n_text_ctx;
    Ok(Prompted {
        cache,
        start,
        max_length: (ctx / 2).min(ctx.saturating_sub(before.len())),
        no_speech_prob,
    })
}

/// Decodes from `prompted` with `options`.
pub(crate) fn generate(
    model: &Model,
    steps: &StepQueue,
    cross: &CrossKv,
    prompted: &Prompted,
    specials: Specials,
    options: &DecodeOptions,
    rng: &mut StdRng,
) -> anyhow::Result<Generated> {
    let search = Search {
        model,
        steps,
        cross,
        specials,
        options,
        prompted,
    };
    if options.beam_size > 1 && options.temperature == 0.0 {
        search.beam()
    } else {
        search.sample(rng)
    }
}

struct Search<'a> {
    model: &'a Model,
    steps: &'a StepQueue,
    cross: &'a CrossKv,
    specials: Specials,
    options: &'a DecodeOptions,
    prompted: &'a Prompted,
}

/// A finished hypothesis.
struct Hypothesis {
    tokens: Vec<u32>,
    sum_logprob: f64,
}

impl Search<'_> {
    /// The logits of the last token of each sequence in the batch, as rows (the step taken
    /// together with other transcriptions' where they are stepping too).
    fn step(&self, cache: &mut SelfKv, inputs: &[u32]) -> anyhow::Result<Vec<Vec<f32>>> {
        self.steps.step(self.model, cache, inputs, self.cross)
    }

    /// Greedy search (temperature 0) or `best_of` independent samples.
    fn sample(&self, rng: &mut StdRng) -> anyhow::Result<Generated> {
        let o = self.options;
        let count = if o.temperature > 0.0 {
            o.best_of.max(1)
        } else {
            1
        };
        let mut cache = self.prompted.cache.clone();
        if count > 1 {
            cache.select(&vec![0; count]);
        }
        let mut sequences: Vec<Vec<u32>> = vec![Vec::new(); count];
        let mut sums = vec![0f64; count];
        // Batch row → sequence, for the sequences still running.
        let mut running: Vec<usize> = (0..count).collect();
        let mut inputs = vec![self.prompted.start; count];
        let mut no_speech_prob = self.prompted.no_speech_prob;
        for step in 0..self.prompted.max_length {
            let mut logits = self.step(&mut cache, &inputs)?;
            if step == 0 && no_speech_prob.is_none() {
                no_speech_prob = Some(softmax_at(&logits[0], self.specials.no_speech));
            }
            let mut kept = Vec::new();
            let mut next_running = Vec::new();
            inputs.clear();
            for (row, &seq) in running.iter().enumerate() {
                let log_probs = self.log_probs(step, &mut logits[row], &sequences[seq]);
                let token = if o.temperature > 0.0 {
                    draw(&log_probs, o.temperature, rng)
                } else {
                    argmax(&log_probs)
                };
                sums[seq] += log_probs[token as usize] as f64;
                if token == self.specials.eot {
                    continue;
                }
                sequences[seq].push(token);
                if step + 1 < self.prompted.max_length {
                    kept.push(row as u32);
                    next_running.push(seq);
                    inputs.push(token);
                }
            }
            if next_running.is_empty() {
                break;
            }
            if next_running.len() != running.len() {
                cache.select(&kept);
            }
            running = next_running;
        }
        let hypotheses = sequences
            .into_iter()
            .zip(sums)
            .map(|(tokens, sum_logprob)| Hypothesis {
                tokens,
                sum_logprob,
            })
            .collect();
        Ok(self.best(hypotheses, no_speech_prob))
    }

    /// CTranslate2's beam search: `2 · beam_size` candidates a step; a candidate ending in EOT
    /// (or any, at the last step) among the first `beam_size` finishes a hypothesis and its place
    /// goes to the next unfinished candidate; done after `round(beam_size · patience)` hypotheses.
    /// The first step expands the one prompt row only.
    fn beam(&self) -> anyhow::Result<Generated> {
        let o = self.options;
        let beam = o.beam_size;
        let candidates = 2 * beam;
        let max_hypotheses = ((beam as f32) * o.patience).round().max(1.0) as usize;
        let vocab = self.model.dims.n_vocab;
        let mut cache = self.prompted.cache.clone();
        let mut sequences: Vec<Vec<u32>> = vec![Vec::new()];
        let mut scores: Vec<f32> = vec![0.0];
        let mut inputs = vec![self.prompted.start];
        let mut finished: Vec<Hypothesis> = Vec::new();
        let mut no_speech_prob = self.prompted.no_speech_prob;
        for step in 0..self.prompted.max_length {
            let mut logits = self.step(&mut cache, &inputs)?;
            if step == 0 && no_speech_prob.is_none() {
                no_speech_prob = Some(softmax_at(&logits[0], self.specials.no_speech));
            }
            // The best `candidates` of every row's log-probabilities plus the row's score.
            let mut top: Vec<(f32, usize)> = Vec::with_capacity(candidates + 1);
            for (row, sequence) in sequences.iter().enumerate() {
                let log_probs = self.log_probs(step, &mut logits[row], sequence);
                for (id, &lp) in log_probs.iter().enumerate() {
                    let score = lp + scores[row];
                    if top.len() < candidates || score > top[top.len() - 1].0 {
                        let at = top.partition_point(|&(s, _)| s >= score);
                        top.insert(at, (score, row * vocab + id));
                        top.truncate(candidates);
                    }
                }
            }
            let last_step = step + 1 == self.prompted.max_length;
            let token = |c: usize| (top[c].1 % vocab) as u32;
            let origin = |c: usize| top[c].1 / vocab;
            let mut next_secondary = beam;
            let mut active = Vec::with_capacity(beam);
            for k in 0..beam.min(top.len()) {
                let mut slot = k;
                let is_eot = token(k) == self.specials.eot;
                if is_eot || last_step {
                    let mut tokens = sequences[origin(k)].clone();
                    if !is_eot {
                        tokens.push(token(k));
                    }
                    finished.push(Hypothesis {
                        tokens,
                        sum_logprob: top[k].0 as f64,
                    });
                    if let Some(j) =
                        (next_secondary..top.len()).find(|&j| token(j) != self.specials.eot)
                    {
                        slot = j;
                        next_secondary = j + 1;
                    }
                }
                active.push(slot);
            }
            if last_step || finished.len() >= max_hypotheses {
                break;
            }
            sequences = active
                .iter()
                .map(|&c| {
                    let mut s = sequences[origin(c)].clone();
                    s.push(token(c));
                    s
                })
                .collect();
            scores = active.iter().map(|&c| top[c].0).collect();
            inputs = active.iter().map(|&c| token(c)).collect();
            let origins: Vec<u32> = active.iter().map(|&c| origin(c) as u32).collect();
            cache.select(&origins);
        }
        Ok(self.best(finished, no_speech_prob))
    }

    /// The hypothesis with the best length-normalized score (the first of equals).
    fn best(&self, hypotheses: Vec<Hypothesis>, no_speech_prob: Option<f64>) -> Generated {
        let penalty = self.options.length_penalty as f64;
        let normalized = |h: &Hypothesis| h.sum_logprob / (h.tokens.len() as f64).powf(penalty);
        let best = hypotheses
            .into_iter()
            .reduce(|best, h| {
                if normalized(&h) > normalized(&best) {
                    h
                } else {
                    best
                }
            })
            .unwrap_or(Hypothesis {
                tokens: Vec::new(),
                sum_logprob: 0.0,
            });
        Generated {
            tokens: best.tokens,
            sum_logprob: best.sum_logprob,
            no_speech_prob: no_speech_prob.unwrap_or(0.0),
        }
    }

    /// Applies the logits processors to one row (in CTranslate2's order) and returns its
    /// log-probabilities. `sequence` is what this row generated before `step`.
    fn log_probs(&self, step: usize, logits: &mut [f32], sequence: &[u32]) -> Vec<f32> {
        let o = self.options;
        for &id in &o.suppress {
            logits[id as usize] = DISABLED;
        }
        if step == 0 {
            for &id in &o.suppress_begin {
                logits[id as usize] = DISABLED;
            }
        }
        if let Some(max_initial) = o.max_initial_timestamp
            && let Some(log_probs) = self.timestamp_rules(step, logits, sequence, max_initial)
        {
            return log_probs;
        }
        log_softmax(logits)
    }

    /// CTranslate2's `ApplyTimestampRules`: no `<|notimestamps|>`; the first token is a
    /// timestamp no later than `max_initial`; timestamps come in pairs (two in a row must be
    /// followed by text, a lone one by a timestamp not earlier than it or EOT) and never decrease;
    /// and when the timestamps together are likelier than any single text token, a timestamp.
    /// Returns the row's log-probabilities when the check computed them and they stand.
    fn timestamp_rules(
        &self,
        step: usize,
        logits: &mut [f32],
        sequence: &[u32],
        max_initial: u32,
    ) -> Option<Vec<f32>> {
        let Specials {
            eot,
            timestamp_begin: begin,
            ..
        } = self.specials;
        let (begin_i, end_i) = (begin as usize, logits.len() - 1);
        let disable =
            |logits: &mut [f32], range: std::ops::Range<usize>| logits[range].fill(DISABLED);
        logits[(begin - 1) as usize] = DISABLED;
        if step == 0 {
            disable(logits, 0..begin_i);
            disable(logits, (begin + max_initial) as usize + 1..end_i + 1);
            return None;
        }
        let last = sequence[step - 1];
        if last >= begin {
            let penultimate = if step >= 2 { sequence[step - 2] } else { last };
            if penultimate >= begin {
                disable(logits, begin_i..end_i + 1);
                return None;
            }
            disable(logits, 0..eot as usize);
            disable(logits, begin_i..last as usize);
        } else if let Some(&previous) = sequence.iter().rev().find(|&&t| t >= begin) {
            disable(logits, begin_i..previous as usize + 1);
        }
        let log_probs = log_softmax(logits);
        let max_text = log_probs[..begin_i]
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        if log_sum_exp(&log_probs[begin_i..]) > max_text {
            disable(logits, 0..begin_i);
            return None;
        }
        Some(log_probs)
    }
}

fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// A token drawn from `softmax(log_probs / temperature)`.
fn draw(log_probs: &[f32], temperature: f32, rng: &mut StdRng) -> u32 {
    let scaled: Vec<f32> = log_probs.iter().map(|&lp| lp / temperature).collect();
    let probs: Vec<f64> = log_softmax(&scaled)
        .iter()
        .map(|&lp| (lp as f64).exp())
        .collect();
    let mut target = rng.random::<f64>() * probs.iter().sum::<f64>();
    for (i, &p) in probs.iter().enumerate() {
        target -= p;
        if target <= 0.0 && p > 0.0 {
            return i as u32;
        }
    }
    argmax(log_probs)
}

pub(crate) fn log_sum_exp(values: &[f32]) -> f32 {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return max;
    }
    let sum: f64 = values.iter().map(|&v| (v - max).exp() as f64).sum();
    max + sum.ln() as f32
}

pub(crate) fn log_softmax(values: &[f32]) -> Vec<f32> {
    let lse = log_sum_exp(values);
    values.iter().map(|&v| v - lse).collect()
}

/// `softmax(values)[index]`.
pub(crate) fn softmax_at(values: &[f32], index: u32) -> f64 {
    (log_softmax(values)[index as usize] as f64).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_ignores_disabled_tokens() {
        let lp = log_softmax(&[DISABLED, 0.0, 0.0]);
        assert!(lp[0] < -1e30);
        assert!((lp[1] - 0.5f32.ln()).abs() < 1e-6);
        assert!((softmax_at(&[1.0, 1.0, 1.0, 1.0], 2) - 0.25).abs() < 1e-7);
    }

    #[test]
    fn argmax_takes_the_first_of_equals() {
        assert_eq!(argmax(&[0.0, 2.0, 2.0, 1.0]), 1);
    }
}
