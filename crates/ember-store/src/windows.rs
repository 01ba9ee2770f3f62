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
}
