//! Decoding: greedy search and beam search with the logits processors seq2seq checkpoints ask
//! for, following Hugging Face transformers' `generate` (5.x: `_sample` without sampling,
//! `_beam_search`, and `NoRepeatNGram`, `MinLength`, `ForcedBOSToken`, `ForcedEOSToken`
//! processors, applied in that order).
//!
//! Lengths count the decoder sequence including its start token, as transformers' `max_length`
//! and `min_length` do for encoder-decoder models.

use super::model::{DecoderState, Model};
use candle_core::Tensor;
use std::collections::HashMap;

/// How beam search decides it is done (`early_stopping` in a generation config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EarlyStopping {
    /// `true`: stop once `num_beams` finished hypotheses exist.
    Done,
    /// `false`: stop when the best running beam, at its current length, cannot beat the worst
    /// finished hypothesis.
    Heuristic,
    /// `"never"`: as `Heuristic`, but assuming the running beam could reach `max_length`.
    Never,
}

/// Generation settings, from the model folder's `generation_config.json` (or `config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationSettings {
    /// The decoder's first input token.
    pub decoder_start_token_id: u32,
    /// Tokens that end a hypothesis.
    pub eos_token_ids: Vec<u32>,
    /// Forced as the first generated token (BART's `<s>`; for M2M100 the target language token
    /// replaces it per request).
    pub forced_bos_token_id: Option<u32>,
    /// Forced as the last token when `max_length` is reached.
    pub forced_eos_token_ids: Vec<u32>,
    /// Longest decoder sequence, start token included.
    pub max_length: usize,
    /// Below this decoder length the end-of-sequence tokens are blocked.
    pub min_length: usize,
    /// No n-gram of this size is generated twice (0 = off).
    pub no_repeat_ngram_size: usize,
    /// 1 = greedy search.
    pub num_beams: usize,
    /// Finished beam scores are divided by `generated_length ^ length_penalty`.
    pub length_penalty: f32,
    pub early_stopping: EarlyStopping,
}

/// What a search needs from a request: the settings with the request's length and forced BOS.
pub(crate) struct Search<'a> {
    pub settings: &'a GenerationSettings,
    pub forced_bos: Option<u32>,
    pub max_length: usize,
}

impl Search<'_> {
    /// Applies the logits processors to one beam's scores, given its sequence so far.
    fn process(&self, sequence: &[u32], scores: &mut [f32]) {
        let s = self.settings;
        let cur_len = sequence.len();
        let n = s.no_repeat_ngram_size;
        if n > 0 && cur_len + 1 >= n {
            for token in banned_ngram_tokens(sequence, n) {
                if let Some(score) = scores.get_mut(token as usize) {
                    *score = f32::NEG_INFINITY;
                }
            }
        }
        if cur_len < s.min_length {
            for &eos in &s.eos_token_ids {
                if let Some(score) = scores.get_mut(eos as usize) {
                    *score = f32::NEG_INFINITY;
                }
            }
        }
        if cur_len == 1
            && let Some(bos) = self.forced_bos
        {
            force(scores, &[bos]);
        }
        if cur_len + 1 == self.max_length && !s.forced_eos_token_ids.is_empty() {
            force(scores, &s.forced_eos_token_ids);
        }
    }

    fn is_eos(&self, token: u32) -> bool {
        self.settings.eos_token_ids.contains(&token)
    }

    /// Greedy search: the highest-scoring token at each step (the first one on ties, as
    /// `argmax`), until an end-of-sequence token or `max_length`.
    pub(crate) fn greedy(
        &self,
        model: &Model,
        encoder_out: &Tensor,
    ) -> candle_core::Result<Vec<u32>> {
        let mut sequence = vec![self.settings.decoder_start_token_id];
        let mut state = model.start(encoder_out, 1)?;
        while sequence.len() < self.max_length {
            let last = sequence[sequence.len() - 1];
            let mut scores = model
                .step(&[last], &mut state)?
                .squeeze(0)?
                .to_vec1::<f32>()?;
            self.process(&sequence, &mut scores);
            let next = argmax(&scores);
            sequence.push(next);
            if self.is_eos(next) {
                break;
            }
        }
        Ok(sequence)
    }

    /// Beam search as transformers 5's `_beam_search` for one input: each step keeps the
    /// `2 · num_beams` best continuations of all beams (accumulated log-probabilities), moves
    /// those among the top `num_beams` that end (EOS or `max_length`) into the finished set with
    /// their length-penalised score, and continues the best `num_beams` that do not end.
    pub(crate) fn beam(
        &self,
        model: &Model,
        encoder_out: &Tensor,
    ) -> candle_core::Result<Vec<u32>> {
        const NEG: f32 = -1.0e9;
        let s = self.settings;
        let beams = s.num_beams;
        let keep = 2.max(1 + s.eos_token_ids.len()) * beams;
        let mut state: DecoderState = model.start(encoder_out, beams)?;
        let mut running: Vec<Vec<u32>> = vec![vec![s.decoder_start_token_id]; beams];
        // Only the first beam is live at first; the copies would only repeat its continuations.
        let mut running_scores: Vec<f32> =
            (0..beams).map(|b| if b == 0 { 0.0 } else { NEG }).collect();
        let mut finished: Vec<Hypothesis> = vec![
            Hypothesis {
                tokens: Vec::new(),
                score: NEG,
                done: false,
            };
            beams
        ];
        let mut improvable = true;
        let mut cur_len = 1usize;
        loop {
            let last: Vec<u32> = running.iter().map(|seq| seq[seq.len() - 1]).collect();
            let logits = model.step(&last, &mut state)?.to_vec2::<f32>()?;
            let vocab = logits[0].len();
            let mut accumulated = Vec::with_capacity(beams * vocab);
            for (b, row) in logits.iter().enumerate() {
                let mut scores = log_softmax(row);
                self.process(&running[b], &mut scores);
                accumulated.extend(scores.into_iter().map(|x| x + running_scores[b]));
            }
            let top = top_k(&accumulated, keep);
            let candidates: Vec<(f32, usize, u32, bool)> = top
                .into_iter()
                .map(|i| {
                    let (beam, token) = (i / vocab, (i % vocab) as u32);
                    let ends = cur_len + 1 >= self.max_length || self.is_eos(token);
                    (accumulated[i], beam, token, ends)
                })
                .collect();

            // The beams that continue: the best candidates that do not end.
            let continuing: Vec<f32> = candidates
                .iter()
                .map(|&(score, _, _, ends)| if ends { score + NEG } else { score })
                .collect();
            let next = top_k(&continuing, beams);
            let parents: Vec<u32> = next.iter().map(|&k| candidates[k].1 as u32).collect();
            let next_running: Vec<Vec<u32>> = next
                .iter()
                .map(|&k| {
                    let (_, beam, token, _) = candidates[k];
                    let mut seq = running[beam].clone();
                    seq.push(token);
                    seq
                })
                .collect();
            let next_scores: Vec<f32> = next.iter().map(|&k| continuing[k]).collect();

            // The finished set: the best of the old set and the candidates that just ended.
            let all_done = finished.iter().all(|h| h.done);
            let penalty = (cur_len as f32).powf(s.length_penalty);
            let mut merged = finished.clone();
            for (k, &(score, beam, token, ends)) in candidates.iter().enumerate() {
                let just_finished = ends && k < beams;
                let mut score = score / penalty;
                if all_done && s.early_stopping == EarlyStopping::Done {
                    score += NEG;
                }
                if !improvable {
                    score += NEG;
                }
                if !just_finished {
                    score += NEG;
                }
                let mut tokens = running[beam].clone();
                tokens.push(token);
                merged.push(Hypothesis {
                    tokens,
                    score,
                    done: just_finished,
                });
            }
            let scores: Vec<f32> = merged.iter().map(|h| h.score).collect();
            finished = top_k(&scores, beams)
                .into_iter()
                .map(|i| merged[i].clone())
                .collect();

            state.reorder(&parents)?;
            running = next_running;
            running_scores = next_scores;
            cur_len += 1;

            // Could a running beam still beat the worst finished hypothesis?
            let best_length = if s.early_stopping == EarlyStopping::Never && s.length_penalty > 0.0
            {
                self.max_length - 1
            } else {
                cur_len - 1
            };
            let best_running = running_scores[0] / (best_length as f32).powf(s.length_penalty);
            let worst_finished = finished
                .iter()
                .map(|h| h.score)
                .fold(f32::INFINITY, f32::min);
            improvable = improvable
                && finished.iter().any(|h| {
                    let bar = if h.done { worst_finished } else { NEG };
                    best_running > bar
                });
            let all_done = finished.iter().all(|h| h.done);
            let open = !(all_done && s.early_stopping == EarlyStopping::Done);
            let can_continue = !candidates.iter().all(|c| c.3);
            if !(improvable && open && can_continue) {
                break;
            }
        }
        Ok(finished.swap_remove(0).tokens)
    }
}

#[derive(Clone)]
struct Hypothesis {
    tokens: Vec<u32>,
    score: f32,
    done: bool,
}

/// Sets every score to -inf except `allowed`, which get 0.
fn force(scores: &mut [f32], allowed: &[u32]) {
    scores.fill(f32::NEG_INFINITY);
    for &token in allowed {
        if let Some(score) = scores.get_mut(token as usize) {
            *score = 0.0;
        }
    }
}

/// The tokens that would repeat an n-gram of `sequence` (transformers'
/// `_calc_banned_ngram_tokens`): those that followed the last `n - 1` tokens before.
fn banned_ngram_tokens(sequence: &[u32], n: usize) -> Vec<u32> {
    if n == 0 || sequence.len() + 1 < n {
        return Vec::new();
    }
    let mut followers: HashMap<&[u32], Vec<u32>> = HashMap::new();
    for ngram in sequence.windows(n) {
        followers
            .entry(&ngram[..n - 1])
            .or_default()
            .push(ngram[n - 1]);
    }
    let prefix = &sequence[sequence.len() + 1 - n..];
    followers.remove(prefix).unwrap_or_default()
}

/// Index of the largest score, the first one on ties.
fn argmax(scores: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in scores.iter().enumerate() {
        if x > scores[best] {
            best = i;
        }
    }
    best as u32
}

/// `x - max - ln Σ exp(x - max)`, as torch's `log_softmax`.
fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&x| (x - max).exp()).sum();
    let log_sum = sum.ln();
    logits.iter().map(|&x| x - max - log_sum).collect()
}

/// Indices of the `k` largest values, largest first; ties keep the lower index first.
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let order = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    let mut indices: Vec<usize> = (0..values.len()).collect();
    let k = k.min(indices.len());
    if k < indices.len() && k > 0 {
        indices.select_nth_unstable_by(k - 1, order);
        indices.truncate(k);
    }
    indices.sort_by(order);
    indices.truncate(k);
    indices
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_bans_follow_transformers() {
        // Trigram ban: the last two tokens (1, 2) were followed by 3 before.
        assert_eq!(banned_ngram_tokens(&[1, 2, 3, 1, 2], 3), vec![3]);
        assert!(banned_ngram_tokens(&[1, 2], 3).is_empty());
        // Too short for any trigram yet, but the rule still applies at length n - 1.
        assert!(banned_ngram_tokens(&[5, 5], 3).is_empty());
        // Unigram "ban" forbids every token seen.
        let mut banned = banned_ngram_tokens(&[4, 7, 4], 1);
        banned.sort();
        assert_eq!(banned, vec![4, 4, 7]);
    }

    #[test]
    fn top_k_is_sorted_and_stable() {
        let values = [0.5, 2.0, f32::NEG_INFINITY, 2.0, -1.0];
        assert_eq!(top_k(&values, 3), vec![1, 3, 0]);
        assert_eq!(top_k(&values, 10), vec![1, 3, 0, 4, 2]);
        assert!(top_k(&values, 0).is_empty());
    }

    #[test]
    fn processors_force_and_block() {
        let settings = GenerationSettings {
            decoder_start_token_id: 2,
            eos_token_ids: vec![2],
            forced_bos_token_id: Some(0),
            forced_eos_token_ids: vec![2],
            max_length: 5,
            min_length: 3,
            no_repeat_ngram_size: 0,
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::Done,
        };
        let search = Search {
            settings: &settings,
            forced_bos: Some(0),
            max_length: 5,
        };
        let mut scores = vec![1.0; 6];
        search.process(&[2], &mut scores);
        assert_eq!(argmax(&scores), 0);
        assert!(scores[1].is_infinite());
        let mut scores = vec![0.0, 0.0, 9.0, 1.0];
        search.process(&[2, 0], &mut scores);
        assert_eq!(argmax(&scores), 3, "EOS is blocked below min_length");
        let mut scores = vec![5.0, 0.0, -9.0, 1.0];
        search.process(&[2, 0, 3, 4], &mut scores);
        assert_eq!(argmax(&scores), 2, "EOS is forced at max_length - 1");
        let lp = log_softmax(&[1.0, 2.0, 3.0]);
        let total: f32 = lp.iter().map(|x| x.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}
