//! The prefix cache index: token sequences whose KV cells are kept after their request ended,
//! so a later prompt that starts the same way (a system prompt, the earlier turns of a chat)
//! copies those cells instead of recomputing them.
//!
//! Only bookkeeping lives here; the scheduler keeps the cells under each entry's id: a sequence
//! id of their own on a unified cache, a slot of host-memory snapshots with per-sequence streams.
//! Entries that a running sequence shares cells with are pinned until it ends. Eviction takes the
//! least recently used unpinned entry, and entries of a session (`x-session-affinity`) only after
//! every entry without one.

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
    /// Ids for new entries.
    free_ids: Vec<i32>,
    clock: u64,
}

/// What `insert` decided: the id to keep the finished sequence's cells under (if they are kept) and
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
            free_ids: ids.rev().collect(),
            clock: 0,
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
        self.touch(seq_id);
        if let Some(entry) = self.entries.iter_mut().find(|e| e.seq_id == seq_id) {
            entry.pins += 1;
        }
    }

    /// Marks an entry as the most recently used.
    pub fn touch(&mut self, seq_id: i32) {
        self.clock += 1;
        if let Some(entry) = self.entries.iter_mut().find(|e| e.seq_id == seq_id) {
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
        if tokens.is_empty() || self.entries.iter().any(|e| e.tokens.starts_with(&tokens)) {
            return Insertion {
                seq_id: None,
                dropped,
            };
        }
        while let Some(i) = self
            .entries
            .iter()
            .position(|e| e.pins == 0 && tokens.starts_with(&e.tokens))
        {
            dropped.push(self.remove(i));
        }
        if self.free_ids.is_empty() {
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
        let seq_id = self.free_ids.pop().expect("an id was freed");
        self.clock += 1;
        self.entries.push(Entry {
            seq_id,
            tokens,
            session,
            last_used: self.clock,
            pins: 0,
        });
        Insertion {
            seq_id: Some(seq_id),
            dropped,
        }
    }

    fn remove(&mut self, index: usize) -> i32 {
        let entry = self.entries.swap_remove(index);
        self.free_ids.push(entry.seq_id);
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
}
