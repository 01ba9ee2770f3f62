//! The prefix cache index: token sequences whose KV cells stay in the cache under their own
//! sequence id after their request ended, so a later prompt that starts the same way (a system
//! prompt, the earlier turns of a chat) copies those cells instead of recomputing them.
//!
//! Only bookkeeping lives here; the scheduler moves the cells. On a unified cache entries get
//! sequence ids of their own; with per-sequence streams an entry stays in the stream its request
//! ran in, and ids it gives up go back to the scheduler. Entries that a running sequence copied
//! from are pinned until it ends. Eviction takes the least recently used unpinned entry, and
//! entries of a session (`x-session-affinity`) only after every entry without one.

use std::ops::Range;

#[derive(Debug)]
struct Entry {
    seq_id: i32,
    tokens: Vec<i32>,
    session: Option<String>,
    last_used: u64,
    pins: u32,
}

#[derive(Debug)]
pub struct PrefixCache {
    entries: Vec<Entry>,
    /// Ids for new entries; `None` when entries keep their sequence's id.
    free_ids: Option<Vec<i32>>,
    clock: u64,
}

/// What `insert` decided: the id to move the finished sequence's cells to (if it is kept) and
/// entries dropped to make room or because the new one covers them; their cells must be removed.
#[derive(Debug, PartialEq)]
pub struct Insertion {
    pub seq_id: Option<i32>,
    pub dropped: Vec<i32>,
}

impl PrefixCache {
    /// An empty cache that stores entries under the sequence ids in `ids`.
    pub fn new(ids: Range<i32>) -> PrefixCache {
        PrefixCache {
            entries: Vec::new(),
            free_ids: Some(ids.rev().collect()),
            clock: 0,
        }
    }

    /// An empty cache whose entries keep the id their sequence ran under (`adopt`).
    pub fn in_place() -> PrefixCache {
        PrefixCache {
            entries: Vec::new(),
            free_ids: None,
            clock: 0,
        }
    }

    /// Removes an entry from the index, leaving its cells to the caller (a sequence taking it
    /// over).
    pub fn take(&mut self, seq_id: i32) {
        self.entries.retain(|e| e.seq_id != seq_id);
    }

    /// The lowest id an entry holds.
    pub fn lowest_id(&self) -> Option<i32> {
        self.entries.iter().map(|e| e.seq_id).min()
    }

    /// Records that an entry's cells moved to another id.
    pub fn moved(&mut self, from: i32, to: i32) {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.seq_id == from) {
            entry.seq_id = to;
        }
    }

    /// KV cells held by entries (shared cells counted once per entry).
    pub fn cells(&self) -> u32 {
        self.entries.iter().map(|e| e.tokens.len() as u32).sum()
    }

    /// Entries sharing a prefix with `prompt`, longest first, as (sequence id, shared length),
    /// the length capped at `max`. Entries of `session` come first among equal lengths.
    pub fn matches(&self, prompt: &[i32], max: usize, session: Option<&str>) -> Vec<(i32, usize)> {
        let mut found: Vec<(i32, usize, bool)> = self
            .entries
            .iter()
            .map(|e| {
                let shared = e
                    .tokens
                    .iter()
                    .zip(prompt)
                    .take_while(|(a, b)| a == b)
                    .count()
                    .min(max);
                (e.seq_id, shared, e.session.as_deref() == session)
            })
            .filter(|(_, shared, _)| *shared > 0)
            .collect();
        found.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)));
        found
            .into_iter()
            .map(|(id, shared, _)| (id, shared))
            .collect()
    }

    /// Marks an entry as in use by a running sequence (so it is neither evicted nor dropped).
    pub fn pin(&mut self, seq_id: i32) {
        self.clock += 1;
        if let Some(entry) = self.entries.iter_mut().find(|e| e.seq_id == seq_id) {
            entry.pins += 1;
            entry.last_used = self.clock;
        }
    }

    pub fn unpin(&mut self, seq_id: i32) {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.seq_id == seq_id) {
            entry.pins = entry.pins.saturating_sub(1);
        }
    }

    /// Drops the least recently used unpinned entry; returns its sequence id.
    pub fn evict(&mut self) -> Option<i32> {
        let victim = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.pins == 0)
            .min_by_key(|(_, e)| (e.session.is_some(), e.last_used))
            .map(|(i, _)| i)?;
        Some(self.remove(victim))
    }

    /// Keeps `tokens` (whose cells a finished sequence holds) as an entry under an id of the
    /// cache's own, unless an entry already covers them. Unpinned entries that `tokens` covers
    /// are dropped.
    pub fn insert(&mut self, tokens: Vec<i32>, session: Option<String>) -> Insertion {
        let mut dropped = Vec::new();
        if !self.make_room(&tokens, &mut dropped) {
            return Insertion {
                seq_id: None,
                dropped,
            };
        }
        let ids = self.free_ids.as_ref().expect("a cache with ids of its own");
        if ids.is_empty() {
            match self.evict() {
                Some(id) => dropped.push(id),
                None => {
                    return Insertion {
                        seq_id: None,
                        dropped,
                    };
                }
            }
        }
        let seq_id = self
            .free_ids
            .as_mut()
            .and_then(Vec::pop)
            .expect("an id was freed");
        self.push(seq_id, tokens, session);
        Insertion {
            seq_id: Some(seq_id),
            dropped,
        }
    }

    /// Keeps `tokens` as an entry under the id their sequence ran under, unless an entry already
    /// covers them (then `seq_id` is among the returned ids). Returns the ids given up: entries
    /// that `tokens` covers, whose cells the caller removes.
    pub fn adopt(&mut self, seq_id: i32, tokens: Vec<i32>, session: Option<String>) -> Vec<i32> {
        let mut dropped = Vec::new();
        if self.make_room(&tokens, &mut dropped) {
            self.push(seq_id, tokens, session);
        } else {
            dropped.push(seq_id);
        }
        dropped
    }

    /// Drops the unpinned entries that `tokens` covers; false when `tokens` is empty or an entry
    /// already covers it.
    fn make_room(&mut self, tokens: &[i32], dropped: &mut Vec<i32>) -> bool {
        if tokens.is_empty() || self.entries.iter().any(|e| e.tokens.starts_with(tokens)) {
            return false;
        }
        while let Some(i) = self
            .entries
            .iter()
            .position(|e| e.pins == 0 && tokens.starts_with(&e.tokens))
        {
            dropped.push(self.remove(i));
        }
        true
    }

    fn push(&mut self, seq_id: i32, tokens: Vec<i32>, session: Option<String>) {
        self.clock += 1;
        self.entries.push(Entry {
            seq_id,
            tokens,
            session,
            last_used: self.clock,
            pins: 0,
        });
    }

    fn remove(&mut self, index: usize) -> i32 {
        let entry = self.entries.swap_remove(index);
        if let Some(ids) = &mut self.free_ids {
            ids.push(entry.seq_id);
        }
        entry.seq_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_longest_shared_prefix_capped() {
        let mut cache = PrefixCache::new(10..12);
        let a = cache.insert(vec![1, 2, 3, 4], None).seq_id.unwrap();
        let b = cache.insert(vec![1, 2, 9], None).seq_id.unwrap();
        assert_eq!(
            cache.matches(&[1, 2, 3, 4, 5], 10, None),
            vec![(a, 4), (b, 2)]
        );
        assert_eq!(cache.matches(&[1, 2, 3, 4], 3, None)[0], (a, 3));
        assert!(cache.matches(&[7], 10, None).is_empty());
    }

    #[test]
    fn a_longer_conversation_replaces_its_earlier_turn() {
        let mut cache = PrefixCache::new(0..4);
        let first = cache
            .insert(vec![1, 2, 3], Some("s".into()))
            .seq_id
            .unwrap();
        let second = cache.insert(vec![1, 2, 3, 4, 5], Some("s".into()));
        assert_eq!(second.dropped, vec![first]);
        assert_eq!(cache.cells(), 5);
        // Already covered: nothing new is kept.
        assert_eq!(cache.insert(vec![1, 2], None).seq_id, None);
    }

    #[test]
    fn evicts_least_recently_used_unpinned_and_sessions_last() {
        let mut cache = PrefixCache::new(0..3);
        let session = cache.insert(vec![1], Some("s".into())).seq_id.unwrap();
        let old = cache.insert(vec![2], None).seq_id.unwrap();
        let pinned = cache.insert(vec![3], None).seq_id.unwrap();
        cache.pin(pinned);
        let full = cache.insert(vec![4], None);
        assert_eq!(full.dropped, vec![old]);
        assert_eq!(cache.evict(), Some(full.seq_id.unwrap()));
        assert_eq!(cache.evict(), Some(session));
        assert_eq!(cache.evict(), None);
        cache.unpin(pinned);
        assert_eq!(cache.evict(), Some(pinned));
    }

    #[test]
    fn adopted_entries_keep_their_ids_and_give_back_covered_ones() {
        let mut cache = PrefixCache::in_place();
        assert!(cache.adopt(5, vec![1, 2, 3], None).is_empty());
        // A longer conversation replaces it; the old stream is given back.
        assert_eq!(cache.adopt(2, vec![1, 2, 3, 4], None), vec![5]);
        assert_eq!(cache.matches(&[1, 2, 3, 4, 5], 9, None), vec![(2, 4)]);
        // Already covered: the finished sequence's own id is given back.
        assert_eq!(cache.adopt(7, vec![1, 2], None), vec![7]);
        assert_eq!(cache.lowest_id(), Some(2));
        cache.moved(2, 9);
        assert_eq!(cache.matches(&[1, 2, 3, 4, 5], 9, None), vec![(9, 4)]);
        cache.take(9);
        assert!(cache.matches(&[1, 2, 3, 4, 5], 9, None).is_empty());
        assert_eq!(cache.evict(), None);
    }
}
