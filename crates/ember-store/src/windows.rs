//! Request limits over sliding windows: the `RateWindows` trait, and `MemoryWindows`, which keeps
//! the times of each key's requests in its window in process memory, exactly (a published limit
//! is at most a few thousand a minute).

use crate::StoreError;
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Sliding windows, one per key (an account's task or model, a gateway).
#[async_trait]
pub trait RateWindows: Send + Sync {
    /// Counts a request on `key` at `now_ms` if fewer than `limit` were counted in the
    /// `window_ms` up to it (requests at `now_ms - window_ms` or earlier have left); a refused
    /// request is not counted. One key is always used with one window length.
    async fn count_over(
        &self,
        key: &str,
        limit: u32,
        window_ms: i64,
        now_ms: i64,
    ) -> Result<Window, StoreError>;

    /// Adds `amount` spent on `key` at `at_ms`; what was spent `window_ms` or longer before
    /// `at_ms` may be forgotten.
    async fn spend(
        &self,
        key: &str,
        amount: f64,
        window_ms: i64,
        at_ms: i64,
    ) -> Result<(), StoreError>;

    /// What `key` spent in the `window_ms` up to `now_ms` (spending at `now_ms - window_ms` or
    /// earlier has left).
    async fn spent(&self, key: &str, window_ms: i64, now_ms: i64) -> Result<f64, StoreError>;

    /// `count_over` a one-minute window: the per-task limits.
    async fn count(&self, key: &str, per_minute: u32, now_ms: i64) -> Result<Window, StoreError> {
        self.count_over(key, per_minute, MINUTE_MS, now_ms).await
    }
}

/// What a window said of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Allowed,
    /// Full: the whole seconds until its oldest request leaves it (at least 1).
    Full {
        retry_after_secs: u64,
    },
}

const MINUTE_MS: i64 = 60_000;

/// Windows in this process's memory: right for one server (`SqliteStore`'s default), where a
/// restart forgets at most a minute of counts.
#[derive(Default)]
pub struct MemoryWindows {
    windows: Mutex<HashMap<String, VecDeque<i64>>>,
    /// Per key, what was spent and when.
    spending: Mutex<HashMap<String, VecDeque<(i64, f64)>>>,
}

impl MemoryWindows {
    /// The key's spending in the window up to `now_ms`, older entries dropped.
    fn spending_since<'a>(
        spending: &'a mut HashMap<String, VecDeque<(i64, f64)>>,
        key: &str,
        window_ms: i64,
        now_ms: i64,
    ) -> &'a mut VecDeque<(i64, f64)> {
        let entries = spending.entry(key.to_string()).or_default();
        while entries
            .front()
            .is_some_and(|(at, _)| *at <= now_ms - window_ms)
        {
            entries.pop_front();
        }
        entries
    }
}

#[async_trait]
impl RateWindows for MemoryWindows {
    async fn count_over(
        &self,
        key: &str,
        limit: u32,
        window_ms: i64,
        now_ms: i64,
    ) -> Result<Window, StoreError> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let window = windows.entry(key.to_string()).or_default();
        while window.front().is_some_and(|&at| at <= now_ms - window_ms) {
            window.pop_front();
        }
        if window.len() >= limit as usize {
            let oldest = window.front().copied().unwrap_or(now_ms);
            let wait_ms = (oldest + window_ms - now_ms).max(1);
            return Ok(Window::Full {
                retry_after_secs: (wait_ms as u64).div_ceil(1000),
            });
        }
        window.push_back(now_ms);
        Ok(Window::Allowed)
    }

    async fn spend(
        &self,
        key: &str,
        amount: f64,
        window_ms: i64,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let mut spending = self.spending.lock().unwrap_or_else(|e| e.into_inner());
        Self::spending_since(&mut spending, key, window_ms, at_ms).push_back((at_ms, amount));
        Ok(())
    }

    async fn spent(&self, key: &str, window_ms: i64, now_ms: i64) -> Result<f64, StoreError> {
        let mut spending = self.spending.lock().unwrap_or_else(|e| e.into_inner());
        let entries = Self::spending_since(&mut spending, key, window_ms, now_ms);
        Ok(entries.iter().map(|(_, amount)| amount).sum())
    }
}
