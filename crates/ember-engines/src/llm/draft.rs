//! Speculative decoding's drafts by prompt lookup: where a sequence's last few tokens appeared
//! before (in its prompt or its own output), the tokens that followed them there are proposed as
//! its next ones, and the scheduler checks them all in one pass. No draft model: this pays off
//! where the output copies its input (code edits, quoting, summaries, RAG answers) and proposes
//! nothing elsewhere.
//!
//! Whether a draft pays depends on the machine: a pass of several rows costs more than one row,
//! by how much the scheduler measures when it starts (`StepCosts`). On a 2-core x86 CPU with
//! Qwen2.5-Coder-0.5B (Q4_K, whose weights llama.cpp repacks for 4-row GEMMs and multiplies the
//! rows beyond a multiple of 4 one by one), one row took 16 ms, two 36 ms, 4 48 ms, 8 65 ms and
//! 16 79 ms. So each step the drafts are sized (`draft_lengths`) to the measured row count that
//! gives the most expected tokens per second, counting each draft token by the chance that it
//! and the ones before it are kept, against decoding without drafts. That chance is learnt as
//! drafts are checked: by each sequence (`Drafting`) and, by the length of the match that found
//! the draft, by the engine (`MatchRecords`).

/// The longest and shortest run of last tokens looked up (longer runs first: they find the
/// place being copied more surely).
const NGRAM_MAX: usize = 8;
const NGRAM_MIN: usize = 2;
/// The most tokens a sequence's draft proposes.
pub(crate) const MAX_DRAFT: usize = 15;
/// A sequence's acceptance rate starts from the engine's rate for drafts found by matches of
/// that length (`MatchRecords`), worth a quarter of a draft of its own (`SEQUENCE_PRIOR`), so
/// that its first cut draft stops long drafts where the engine learnt elsewhere that they pay
/// (in chat after code edits); the engine's rates start from `prior_kept`. A short match is weak
/// evidence of copying: in chat answers (measured on `ember bench speculative`'s questions) most
/// drafts from 2- and 3-token matches were wrong, while in code edits the first draft from a
/// long match is mostly kept, and the sequence's own record soon outweighs the prior.
const PRIOR_CUT: f64 = 1.0;
const SEQUENCE_PRIOR: f64 = 0.25;
/// Each step a sequence's record fades by this factor: what counts is whether its output copies
/// now, and a sequence that stopped drafting after misses tries again some tens of steps later.
const FADE: f64 = 0.97;
/// Each step the engine's records fade by this factor (half in about 700 steps), so that what it
/// learnt follows its traffic, and drafts it stopped making are tried again now and then.
const ENGINE_FADE: f64 = 0.999;

/// The prior's kept tokens for a draft found by a run of `matched` last tokens: a draft token's
/// chance to be kept is 0.5 for 2 or 3, 0.8 for 6 or 7, and 0.9 only for 8, so a sequence's
/// first draft comes from a long match (with `MARGIN`, nothing less pays at first).
fn prior_kept(matched: usize) -> f64 {
    match matched {
        ..=3 => 1.0,
        4 => 2.0,
        5 => 3.0,
        6 | 7 => 4.0,
        _ => 9.0,
    }
}

/// Drafts are made only where they promise this much more than decoding without them: a wrong
/// draft costs a whole step of many rows, so a bet that wins a few percent on average loses
/// more often than not.
const MARGIN: f64 = 1.1;

/// A record of drafts: tokens kept, and drafts cut short by a token the model would not pick.
#[derive(Debug, Clone, Copy, Default)]
struct Record {
    kept: f64,
    cut: f64,
}

impl Record {
    fn add(&mut self, proposed: usize, kept: usize) {
        self.kept += kept as f64;
        if kept < proposed {
            self.cut += 1.0;
        }
    }

    fn fade(&mut self, by: f64) {
        self.kept *= by;
        self.cut *= by;
    }

    /// The chance to keep a draft token (given the ones before it), from this record over a
    /// prior of `prior_kept` tokens kept and `prior_cut` drafts cut.
    fn rate(&self, prior_kept: f64, prior_cut: f64) -> f64 {
        (self.kept + prior_kept) / (self.kept + self.cut + prior_kept + prior_cut)
    }
}

/// One sequence's record of drafts.
#[derive(Debug, Clone, Default)]
pub(crate) struct Drafting(Record);

impl Drafting {
    /// The chance that the model keeps a draft token, given that it kept the ones before it,
    /// from the sequence's record over the engine's rate `prior` for its match length.
    pub(crate) fn acceptance(&self, prior: f64) -> f64 {
        // As if a quarter draft had been cut after as many kept tokens as that rate implies.
        self.0
            .rate(SEQUENCE_PRIOR * prior / (1.0 - prior), SEQUENCE_PRIOR)
    }

    /// Records that the model kept `kept` of a draft of `proposed` tokens.
    pub(crate) fn verified(&mut self, proposed: usize, kept: usize) {
        self.0.add(proposed, kept);
    }

    /// Fades the record by one step.
    pub(crate) fn fade(&mut self) {
        self.0.fade(FADE);
    }
}

/// What an engine has learnt of its drafts, by the length of the match that found them.
#[derive(Debug, Clone, Default)]
pub(crate) struct MatchRecords([Record; NGRAM_MAX + 1]);

impl MatchRecords {
    /// The chance to keep a token of a draft found by a run of `matched` last tokens.
    pub(crate) fn acceptance(&self, matched: usize) -> f64 {
        self.0[matched.min(NGRAM_MAX)].rate(prior_kept(matched), PRIOR_CUT)
    }

    /// Records that the model kept `kept` of a draft of `proposed` tokens found by `matched`.
    pub(crate) fn verified(&mut self, matched: usize, proposed: usize, kept: usize) {
        self.0[matched.min(NGRAM_MAX)].add(proposed, kept);
    }

    /// Fades every record by one step.
    pub(crate) fn fade(&mut self) {
        self.0
            .iter_mut()
            .for_each(|record| record.fade(ENGINE_FADE));
    }
}

/// A draft found by prompt lookup, and the length of the run of last tokens that found it.
#[derive(Debug, PartialEq)]
pub(crate) struct Lookup<'t> {
    pub draft: &'t [i32],
    pub matched: usize,
}

/// The up to `max` tokens that followed the latest earlier occurrence of the sequence's last
/// `NGRAM_MAX`..=`NGRAM_MIN` tokens, longest match first; an empty draft when none occurred. A
/// draft stops at a position that holds no token (an image's).
pub(crate) fn prompt_lookup(tokens: &[i32], max: usize) -> Lookup<'_> {
    let none = Lookup {
        draft: &[],
        matched: 0,
    };
    if max == 0 {
        return none;
    }
    for n in (NGRAM_MIN..=NGRAM_MAX).rev() {
        let Some(start) = tokens.len().checked_sub(n) else {
            continue;
        };
        let tail = &tokens[start..];
        if tail.iter().any(|&t| t < 0) {
            continue;
        }
        // The latest earlier occurrence, which is likeliest to be the text being copied.
        if let Some(at) = (0..start).rev().find(|&i| &tokens[i..i + n] == tail) {
            let following = &tokens[at + n..tokens.len().min(at + n + max)];
            let end = following
                .iter()
                .position(|&t| t < 0)
                .unwrap_or(following.len());
            if end > 0 {
                return Lookup {
                    draft: &following[..end],
                    matched: n,
                };
            }
        }
    }
    none
}

/// What a decode step of a given number of rows (every row with logits) costs, measured at
/// `MEASURED_ROWS`; other counts are interpolated.
#[derive(Debug, Clone)]
pub(crate) struct StepCosts {
    /// Seconds, per entry of `MEASURED_ROWS`.
    seconds: Vec<f64>,
}

/// The row counts measured, and the only totals a step with drafts is sized to.
pub(crate) const MEASURED_ROWS: [usize; 5] = [1, 2, 4, 8, 16];

impl StepCosts {
    /// The costs measured at each of `MEASURED_ROWS`, in seconds (`f64::MAX` where a step
    /// failed: drafts never pay there).
    pub(crate) fn new(seconds: Vec<f64>) -> StepCosts {
        StepCosts { seconds }
    }

    /// The cost of a step of `rows` rows, linear between the measured counts.
    fn seconds(&self, rows: usize) -> f64 {
        let last = MEASURED_ROWS.len() - 1;
        let above = MEASURED_ROWS
            .iter()
            .position(|&r| r >= rows)
            .unwrap_or(last)
            .max(1);
        let (r0, r1) = (MEASURED_ROWS[above - 1] as f64, MEASURED_ROWS[above] as f64);
        let (c0, c1) = (self.seconds[above - 1], self.seconds[above]);
        c0 + (c1 - c0) * (rows as f64 - r0) / (r1 - r0)
    }
}

/// A decoding sequence's offer for a step: how many draft tokens it has (its prompt lookup's
/// length) and how likely each is kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Offer {
    pub available: usize,
    pub acceptance: f64,
}

/// How many draft tokens each of a step's `offers.len()` decoding sequences gets (all zero: no
/// drafts), at most `budget` in all: the step is sized to the measured row count with the most
/// expected tokens per second, if that beats decoding without drafts by `MARGIN`. At a given count the
/// draft tokens go, one by one, where the chance of being kept (the acceptance rate to the
/// power of the token's place in its draft) is highest.
pub(crate) fn draft_lengths(offers: &[Offer], budget: usize, costs: &StepCosts) -> Vec<usize> {
    let decoding = offers.len();
    let plain = decoding as f64 / costs.seconds(decoding);
    let mut best = (plain * MARGIN, vec![0; decoding]);
    for rows in MEASURED_ROWS {
        if rows <= decoding || rows - decoding > budget {
            continue;
        }
        let mut lengths = vec![0; decoding];
        let mut expected = decoding as f64;
        for _ in decoding..rows {
            let next = |i: usize| offers[i].acceptance.powi(lengths[i] as i32 + 1);
            let Some(i) = (0..decoding)
                .filter(|&i| lengths[i] < offers[i].available)
                .max_by(|&a, &b| next(a).total_cmp(&next(b)))
            else {
                break;
            };
            expected += next(i);
            lengths[i] += 1;
        }
        // A count the drafts cannot fill costs like the next measured one: not worth it.
        if decoding + lengths.iter().sum::<usize>() < rows {
            continue;
        }
        let rate = expected / costs.seconds(rows);
        if rate > best.0 {
            best = (rate, lengths);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The costs measured on a 2-core x86 CPU with Qwen2.5-Coder-0.5B (ms).
    fn measured() -> StepCosts {
        StepCosts::new(vec![0.0164, 0.0358, 0.048, 0.0647, 0.0792])
    }

    fn draft(tokens: &[i32], max: usize) -> &[i32] {
        prompt_lookup(tokens, max).draft
    }

    #[test]
    fn proposes_what_followed_the_latest_occurrence_of_the_last_tokens() {
        // "1 2 3 4 5 6 ... 1 2 3" → "4 5 6"; a later "2 3 9" wins for the 2-gram "2 3" only.
        let tokens = [1, 2, 3, 4, 5, 6, 7, 2, 3, 9, 1, 2, 3];
        assert_eq!(
            prompt_lookup(&tokens, 3),
            Lookup {
                draft: &[4, 5, 6],
                matched: 3
            }
        );
        assert_eq!(draft(&tokens, 10), &[4, 5, 6, 7, 2, 3, 9, 1, 2, 3]);
        let tokens = [5, 2, 3, 9, 8, 2, 3];
        assert_eq!(prompt_lookup(&tokens, 4).matched, 2);
        assert_eq!(draft(&tokens, 4), &[9, 8, 2, 3]);
        assert_eq!(draft(&tokens, 0), &[] as &[i32]);
    }

    #[test]
    fn nothing_matches_nothing_is_proposed() {
        assert_eq!(draft(&[1, 2, 3, 4, 5], 4), &[] as &[i32]);
        assert_eq!(draft(&[7], 4), &[] as &[i32]);
        // A single repeated token is no match: two are needed.
        assert_eq!(draft(&[4, 1, 2, 4], 4), &[] as &[i32]);
    }

    #[test]
    fn drafts_stop_at_image_positions() {
        let tokens = [1, 2, 3, -1, -1, 4, 1, 2];
        assert_eq!(draft(&tokens, 4), &[3]);
        assert_eq!(draft(&[1, 2, -1, 1, 2], 4), &[] as &[i32]);
    }

    #[test]
    fn costs_are_interpolated_between_the_measured_counts() {
        let costs = measured();
        assert!((costs.seconds(1) - 0.0164).abs() < 1e-9);
        assert!((costs.seconds(6) - 0.05635).abs() < 1e-9);
        assert!((costs.seconds(12) - 0.07195).abs() < 1e-9);
        assert!((costs.seconds(16) - 0.0792).abs() < 1e-9);
    }

    #[test]
    fn drafts_are_sized_to_the_most_tokens_per_second() {
        let costs = measured();
        let offer = |available, acceptance| Offer {
            available,
            acceptance,
        };
        // Copying: all 15 rows of a 16-row step.
        assert_eq!(draft_lengths(&[offer(15, 0.95)], 64, &costs), [15]);
        // A 5-token match fills 4 rows, not 8 (an unfilled count costs like a full one), but 4
        // rows pay only with a near-certain draft.
        assert_eq!(draft_lengths(&[offer(5, 0.99)], 64, &costs), [3]);
        assert_eq!(draft_lengths(&[offer(5, 0.75)], 64, &costs), [0]);
        // Writing something new: drafts would cost more than they bring.
        assert_eq!(draft_lengths(&[offer(15, 0.5)], 64, &costs), [0]);
        // No match, or no room in the step.
        assert_eq!(draft_lengths(&[offer(0, 0.95)], 64, &costs), [0]);
        assert_eq!(draft_lengths(&[offer(15, 0.95)], 2, &costs), [0]);
        // Two sequences: the likelier one's tokens first.
        let lengths = draft_lengths(&[offer(15, 0.95), offer(15, 0.6)], 64, &costs);
        assert_eq!(lengths.iter().sum::<usize>(), 14);
        assert!(lengths[0] > lengths[1], "{lengths:?}");
        // Sixteen decoding sequences fill the measured rows already.
        assert_eq!(draft_lengths(&[offer(15, 0.95); 16], 64, &costs), [0; 16]);
    }

    #[test]
    fn acceptance_is_learnt_and_fades_back() {
        let engine = MatchRecords::default();
        assert!((engine.acceptance(2) - 0.5).abs() < 1e-9);
        assert!((engine.acceptance(6) - 0.8).abs() < 1e-9);
        assert!((engine.acceptance(8) - 0.9).abs() < 1e-9);
        let mut drafting = Drafting::default();
        assert!((drafting.acceptance(0.8) - 0.8).abs() < 1e-9);
        drafting.verified(15, 15);
        assert!(drafting.acceptance(0.5) > 0.9);
        for _ in 0..8 {
            drafting.verified(15, 0);
        }
        assert!(
            drafting.acceptance(0.8) < 0.75,
            "{}",
            drafting.acceptance(0.8)
        );
        for _ in 0..150 {
            drafting.fade();
        }
        assert!(
            drafting.acceptance(0.8) > 0.75,
            "{}",
            drafting.acceptance(0.8)
        );
    }

    #[test]
    fn the_engine_learns_which_matches_find_good_drafts() {
        let mut engine = MatchRecords::default();
        // Drafts from 8-token matches keep failing at once (chat): not worth a draft any more.
        for _ in 0..10 {
            engine.verified(8, 15, 0);
        }
        assert!(engine.acceptance(8) < 0.5, "{}", engine.acceptance(8));
        // 4-token matches keep finding what the model writes (code edits).
        for _ in 0..10 {
            engine.verified(4, 15, 14);
        }
        assert!(engine.acceptance(4) > 0.9, "{}", engine.acceptance(4));
        // What it learnt fades back to the prior as the traffic changes.
        for _ in 0..5000 {
            engine.fade();
        }
        assert!((engine.acceptance(8) - 0.9).abs() < 0.01);
    }
}
