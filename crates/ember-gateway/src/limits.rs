//! Requests-per-minute limits over a sliding window: the times of each key's requests in the
//! last 60 seconds, exactly (a published limit is at most a few thousand a minute).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

const WINDOW_MS: i64 = 60_000;

#[derive(Default)]
pub(crate) struct RateLimiter {
    windows: Mutex<HashMap<String, VecDeque<i64>>>,
}

impl RateLimiter {
    /// Counts a request on `key` at `now_ms` if fewer than `per_minute` came in the last
    /// minute; otherwise the seconds until one leaves the window.
    pub(crate) fn check(&self, key: &str, per_minute: u32, now_ms: i64) -> Result<(), u64> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let window = windows.entry(key.to_string()).or_default();
        while window.front().is_some_and(|&at| at <= now_ms - WINDOW_MS) {
            window.pop_front();
        }
        if window.len() >= per_minute as usize {
            let oldest = window.front().copied().unwrap_or(now_ms);
            let wait_ms = (oldest + WINDOW_MS - now_ms).max(1);
            return Err((wait_ms as u64).div_ceil(1000));
        }
        window.push_back(now_ms);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_slides_and_tells_when_to_retry() {
        let limiter = RateLimiter::default();
        assert!(limiter.check("k", 2, 0).is_ok());
        assert!(limiter.check("k", 2, 30_000).is_ok());
        // The first request leaves the window at 60 s.
        assert_eq!(limiter.check("k", 2, 45_000), Err(15));
        assert_eq!(limiter.check("k", 2, 59_999), Err(1));
        // Refused requests are not counted.
        assert!(limiter.check("k", 2, 60_000).is_ok());
        assert_eq!(limiter.check("k", 2, 60_001), Err(30));
        // Keys are independent.
        assert!(limiter.check("other", 2, 60_001).is_ok());
    }
}
