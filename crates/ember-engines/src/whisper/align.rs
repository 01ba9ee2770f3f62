//! Word timestamps from cross-attention, as CTranslate2's `Whisper.align` and faster-whisper's
//! `find_alignment` / `add_word_timestamps` compute them.
//!
//! The window's text is decoded again in one pass behind `<|startoftranscript|>…<|notimestamps|>`.
//! The alignment heads' raw cross-attention scores over the window's content frames are
//! softmaxed, standardised over the tokens, median-filtered (width 7) over time and averaged over
//! heads; dynamic time warping on the negated matrix maps tokens to frames (20 ms each), and a
//! word starts at its first token's frame. A word's probability is the mean of its tokens'
//! probabilities among text tokens. Then faster-whisper's heuristics: over-long words at sentence
//! ends are cut to twice the median word duration, punctuation joins its neighbour, and the
//! first and last words of a segment are reconciled with the segment's own timestamps.

use super::decode::softmax_at;
use super::model::{CrossKv, Model};
use super::softmax::softmax_last_dim;
use super::tokens::Tokens;
use crate::whisper::Word;
use candle_core::{D, Tensor};

/// Encoder positions per second (one per 2 mel frames of 10 ms).
const TOKENS_PER_SECOND: f64 = 50.0;
const MEDIAN_FILTER_WIDTH: usize = 7;
/// Words ending a sentence, for the long-word heuristic (a substring test, as faster-whisper).
const SENTENCE_END_MARKS: &str = ".。!！?？";

/// A word of the alignment: its text (leading space kept), tokens, times relative to the window
/// and mean token probability.
pub(crate) struct WordTiming {
    pub word: String,
    pub tokens: Vec<u32>,
    pub start: f64,
    pub end: f64,
    pub probability: f64,
}

/// What the alignment pass needs besides the model.
pub(crate) struct AlignInput<'a> {
    pub cross: &'a CrossKv,
    /// `<|startoftranscript|>` (language, task).
    pub sot_sequence: &'a [u32],
    /// The window's text tokens, timestamps left out.
    pub text: &'a [u32],
    /// Mel frames of content in the window (≤ 3000).
    pub frames: usize,
    pub language: &'a str,
}

/// Aligns `input.text` to the window's audio, word by word.
pub(crate) fn find_alignment(
    model: &Model,
    tokens: &Tokens,
    heads: &[(usize, usize)],
    input: &AlignInput,
) -> anyhow::Result<Vec<WordTiming>> {
    let frames = input.frames / 2;
    if input.text.is_empty() || frames == 0 {
        return Ok(Vec::new());
    }
    let sot_len = input.sot_sequence.len();
    let mut sequence = input.sot_sequence.to_vec();
    sequence.push(tokens.no_timestamps);
    sequence.extend_from_slice(input.text);
    sequence.push(tokens.eot);
    let mut cache = model.new_cache();
    let (hidden, scores) = model.decode(&sequence, 1, &mut cache, input.cross, heads)?;

    // P(token) among text tokens, from the row before it (the first from <|notimestamps|>).
    let logits = model.logits(&hidden.narrow(0, sot_len, input.text.len())?)?;
    let text_vocab = tokens.eot as usize;
    let token_probs: Vec<f64> = input
        .text
        .iter()
        .zip(&logits)
        .map(|(&t, row)| softmax_at(&row[..text_vocab], t))
        .collect();

    let matrix = attention_matrix(&scores, frames)?;
    let rows = input.text.len() + 1;
    let matrix = &matrix[sot_len * frames..(sot_len + rows) * frames];
    let path = negative_dtw(matrix, rows, frames);

    let mut with_eot = input.text.to_vec();
    with_eot.push(tokens.eot);
    let (words, word_tokens) = tokens.split_words(&with_eot, input.language)?;
    if word_tokens.len() <= 1 {
        return Ok(Vec::new());
    }
    let mut boundaries = vec![0usize];
    for t in &word_tokens[..word_tokens.len() - 1] {
        boundaries.push(boundaries.last().unwrap() + t.len());
    }
    // The frame where each token row is entered first.
    let jump_times: Vec<f64> = path
        .iter()
        .enumerate()
        .filter(|&(k, &(i, _))| k == 0 || path[k - 1].0 != i)
        .map(|(_, &(_, j))| j as f64 / TOKENS_PER_SECOND)
        .collect();
    Ok(words
        .into_iter()
        .zip(word_tokens)
        .zip(boundaries.windows(2))
        .map(|((word, tokens), b)| WordTiming {
            word,
            tokens,
            start: jump_times[b[0]],
            end: jump_times[b[1]],
            probability: token_probs[b[0]..b[1]].iter().sum::<f64>() / (b[1] - b[0]) as f64,
        })
        .collect())
}

/// The alignment heads' attention `[tokens, frames]` (row-major): per head, softmax over the
/// first `frames` scores, standardisation over the tokens, a median filter over time; then the
/// mean over heads.
fn attention_matrix(scores: &[Tensor], frames: usize) -> anyhow::Result<Vec<f32>> {
    let mut sum: Option<Vec<f32>> = None;
    for head in scores {
        let p = softmax_last_dim(&head.narrow(D::Minus1, 0, frames)?.contiguous()?)?;
        let mean = p.mean_keepdim(0)?;
        let centered = p.broadcast_sub(&mean)?;
        let std = centered.sqr()?.mean_keepdim(0)?.sqrt()?;
        let normalized = centered
            .broadcast_div(&std)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let filtered = median_filter(&normalized, frames, MEDIAN_FILTER_WIDTH);
        match &mut sum {
            None => sum = Some(filtered),
            Some(sum) => sum.iter_mut().zip(&filtered).for_each(|(s, v)| *s += v),
        }
    }
    let n = scores.len() as f32;
    Ok(sum.unwrap_or_default().into_iter().map(|v| v / n).collect())
}

/// CTranslate2's median filter over rows of `width` values: windows reflected at the edges (the
/// edge value not repeated); rows no longer than half the window are left as they are.
fn median_filter(values: &[f32], width: usize, filter: usize) -> Vec<f32> {
    let rank = filter / 2;
    if width <= rank {
        return values.to_vec();
    }
    let mut out = vec![0f32; values.len()];
    let mut window = vec![0f32; filter];
    for (row, out_row) in values.chunks(width).zip(out.chunks_mut(width)) {
        for (j, out) in out_row.iter_mut().enumerate() {
            for (k, slot) in window.iter_mut().enumerate() {
                let mut read = (j as isize + k as isize - rank as isize).unsigned_abs();
                if read >= width {
                    read = 2 * width - read - 2;
                }
                *slot = row[read];
            }
            let (_, median, _) = window.select_nth_unstable_by(rank, f32::total_cmp);
            *out = *median;
        }
    }
    out
}

/// Dynamic time warping on `-x` (`[n, m]` row-major): the cheapest monotonic path from (0, 0) to
/// (n-1, m-1) as (row, column) pairs. Ties prefer the diagonal only when it is strictly cheapest,
/// then the step down a row only when strictly cheapest, else the step along time (CTranslate2's
/// order; the columns are the outer loop).
fn negative_dtw(x: &[f32], n: usize, m: usize) -> Vec<(usize, usize)> {
    let mut cost = vec![f32::INFINITY; (n + 1) * (m + 1)];
    let mut trace = vec![-1i8; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    cost[0] = 0.0;
    for j in 1..=m {
        for i in 1..=n {
            let (c0, c1, c2) = (
                cost[at(i - 1, j - 1)],
                cost[at(i - 1, j)],
                cost[at(i, j - 1)],
            );
            let (c, t) = if c0 < c1 && c0 < c2 {
                (c0, 0)
            } else if c1 < c0 && c1 < c2 {
                (c1, 1)
            } else {
                (c2, 2)
            };
            cost[at(i, j)] = -x[(i - 1) * m + (j - 1)] + c;
            trace[at(i, j)] = t;
        }
    }
    for j in 0..=m {
        trace[at(0, j)] = 2;
    }
    for i in 0..=n {
        trace[at(i, 0)] = 1;
    }
    let (mut i, mut j) = (n, m);
    let mut path = Vec::with_capacity(n + m);
    while i > 0 || j > 0 {
        path.push((i.wrapping_sub(1), j.wrapping_sub(1)));
        match trace[at(i, j)] {
            0 => (i, j) = (i - 1, j - 1),
            1 => i -= 1,
            _ => j -= 1,
        }
    }
    path.reverse();
    // The boundary steps leave the matrix (index -1 in CTranslate2); they never start a row.
    path.retain(|&(i, j)| i < n && j < m);
    path
}

/// faster-whisper's `merge_punctuations`: an opening mark (`"'“¿([{-`) that is a word of its own
/// joins the next word, a closing one (`"'.。,，!！?？:：”)]}、`) the previous word; the emptied
/// entry stays, with no text and no tokens.
pub(crate) fn merge_punctuations(alignment: &mut [WordTiming], prepended: &str, appended: &str) {
    if alignment.len() < 2 {
        return;
    }
    let mut j = alignment.len() - 1;
    for i in (0..alignment.len() - 1).rev() {
        let previous = &alignment[i];
        if previous.word.starts_with(' ') && prepended.contains(previous.word.trim()) {
            let (word, tokens) = (
                std::mem::take(&mut alignment[i].word),
                std::mem::take(&mut alignment[i].tokens),
            );
            let following = &mut alignment[j];
            following.word = word + &following.word;
            following.tokens.splice(0..0, tokens);
        } else {
            j = i;
        }
    }
    let mut i = 0;
    for j in 1..alignment.len() {
        if !alignment[i].word.ends_with(' ') && appended.contains(alignment[j].word.as_str()) {
            let (word, tokens) = (
                std::mem::take(&mut alignment[j].word),
                std::mem::take(&mut alignment[j].tokens),
            );
            alignment[i].word.push_str(&word);
            alignment[i].tokens.extend(tokens);
        } else {
            i = j;
        }
    }
}

/// One timestamped piece of a window's output, to which words are added.
pub(crate) struct Piece {
    pub start: f64,
    pub end: f64,
    pub tokens: Vec<u32>,
    pub words: Vec<Word>,
}

/// faster-whisper's `add_word_timestamps` for one window: words from `alignment` are handed to
/// the pieces by token count, shifted by `time_offset` and rounded to 10 ms, and the pieces'
/// bounds and first and last words are reconciled.
pub(crate) fn add_word_timestamps(
    pieces: &mut [Piece],
    mut alignment: Vec<WordTiming>,
    time_offset: f64,
    punctuations: (&str, &str),
    mut last_speech_timestamp: f64,
    eot: u32,
) {
    let mut durations: Vec<f64> = alignment
        .iter()
        .map(|w| w.end - w.start)
        .filter(|&d| d != 0.0)
        .collect();
    let median_duration = median(&mut durations).min(0.7);
    let max_duration = median_duration * 2.0;
    if !durations.is_empty() {
        for i in 1..alignment.len() {
            if alignment[i].end - alignment[i].start > max_duration {
                if SENTENCE_END_MARKS.contains(alignment[i].word.as_str()) {
                    alignment[i].end = alignment[i].start + max_duration;
                } else if SENTENCE_END_MARKS.contains(alignment[i - 1].word.as_str()) {
                    alignment[i].start = alignment[i].end - max_duration;
                }
            }
        }
    }
    merge_punctuations(&mut alignment, punctuations.0, punctuations.1);

    let mut next = 0;
    for piece in pieces.iter_mut() {
        let text_tokens = piece.tokens.iter().filter(|&&t| t < eot).count();
        let mut saved = 0;
        let mut words: Vec<Word> = Vec::new();
        while next < alignment.len() && saved < text_tokens {
            let timing = &alignment[next];
            if !timing.word.is_empty() {
                words.push(Word {
                    word: timing.word.clone(),
                    start: round2(time_offset + timing.start),
                    end: round2(time_offset + timing.end),
                    probability: timing.probability,
                });
            }
            saved += timing.tokens.len();
            next += 1;
        }
        if let (Some(first), Some(last)) = (words.first().cloned(), words.last().cloned()) {
            // After a pause, the first (and second) word may not be longer than twice the median.
            let second = words.get(1).cloned();
            if first.end - last_speech_timestamp > median_duration * 4.0
                && (first.end - first.start > max_duration
                    || second
                        .as_ref()
                        .is_some_and(|s| s.end - first.start > max_duration * 2.0))
            {
                if let Some(second) = second.filter(|s| s.end - s.start > max_duration) {
                    let boundary = (second.end / 2.0).max(second.end - max_duration);
                    words[0].end = boundary;
                    words[1].start = boundary;
                }
                words[0].start = (words[0].end - max_duration).max(0.0);
            }
            let first = words[0].clone();
            // Prefer the piece's start when the first word is too long, else the word's.
            if piece.start < first.end && piece.start - 0.5 > first.start {
                words[0].start = (first.end - median_duration).min(piece.start).max(0.0);
            } else {
                piece.start = first.start;
            }
            if piece.end > last.start && piece.end + 0.5 < last.end {
                let n = words.len();
                words[n - 1].end = (last.start + median_duration).max(piece.end);
            } else {
                piece.end = words[words.len() - 1].end;
            }
            last_speech_timestamp = piece.end;
        }
        piece.words = words;
    }
}

/// numpy's median (the mean of the middle two of an even count), 0 for none.
fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Python's `round(x, 2)` for the times here (never exactly half a hundredth).
pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(word: &str, tokens: &[u32]) -> WordTiming {
        WordTiming {
            word: word.into(),
            tokens: tokens.to_vec(),
            start: 0.0,
            end: 0.0,
            probability: 1.0,
        }
    }

    #[test]
    fn dtw_follows_the_strongest_cells() {
        // Two tokens over four frames: the first holds frames 0-1, the second 2-3. Entering
        // (1, 2) from (0, 1), (0, 2) or (1, 1) costs the same: ties step along time, through (1, 1).
        let x = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0];
        assert_eq!(
            negative_dtw(&x, 2, 4),
            [(0, 0), (0, 1), (1, 1), (1, 2), (1, 3)]
        );
        // The diagonal where it is strictly the cheapest.
        let x = [1.0, -1.0, -1.0, -1.0, 1.0, -1.0, -1.0, -1.0, 1.0];
        assert_eq!(negative_dtw(&x, 3, 3), [(0, 0), (1, 1), (2, 2)]);
    }

    #[test]
    fn median_filter_reflects_at_the_edges() {
        let row = [5.0, 1.0, 4.0, 2.0, 3.0];
        // Window of 3 at index 0 reads [1, 5, 1] (reflected), at index 4 [2, 3, 2].
        assert_eq!(median_filter(&row, 5, 3), [1.0, 4.0, 2.0, 3.0, 2.0]);
        assert_eq!(median_filter(&row[..1], 1, 3), [5.0]);
    }

    #[test]
    fn punctuation_joins_its_neighbours() {
        let mut words = vec![
            timing(" \"", &[1]),
            timing("Hello", &[2]),
            timing(",", &[3]),
            timing(" world", &[4]),
            timing(".\"", &[5]),
        ];
        merge_punctuations(&mut words, "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、");
        let texts: Vec<&str> = words.iter().map(|w| w.word.as_str()).collect();
        // ".\"" is not one of the closing marks (a substring test on the whole word).
        assert_eq!(texts, ["", " \"Hello,", "", " world", ".\""]);
        assert_eq!(words[1].tokens, [1, 2, 3]);
    }

    #[test]
    fn numpy_median() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0, 10.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
        assert_eq!(round2(0.1 + 0.2), 0.3);
    }
}
