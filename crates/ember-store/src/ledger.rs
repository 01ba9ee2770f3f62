//! The request log (one row per finished request) and the usage ledger (per account, UTC day
//! and model), and the `Ledger` trait that keeps both.

use crate::{BatchItemResult, DAY_MS, StoreError, utc_day, utc_day_start_ms};
use async_trait::async_trait;

/// What requests did and cost.
#[async_trait]
pub trait Ledger: Send + Sync {
    /// Writes a finished request to the log and, when it ran under an account and named a
    /// model, adds it to the ledger row of its account, UTC day and model, in one transaction.
    async fn record_request(&self, record: &RequestRecord) -> Result<(), StoreError>;
    async fn request(&self, id: &str) -> Result<Option<RequestRecord>, StoreError>;
    /// Neurons an account has been charged on a UTC day (`YYYY-MM-DD`), all models together.
    async fn neurons_spent(&self, account_id: &str, day: &str) -> Result<f64, StoreError>;
    /// Daily ledger rows of an account from `since` to `until` (UTC days, inclusive), by day then
    /// model.
    async fn usage(&self, query: &UsageQuery) -> Result<Vec<DailyUsage>, StoreError>;
}

/// One finished request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    pub id: String,
    pub created_at_ms: i64,
    /// The account it ran under; none when it was refused before one was known.
    pub account_id: Option<String>,
    pub route: String,
    pub model: String,
    pub served_by: Option<String>,
    pub http_status: u16,
    pub error_code: Option<u32>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub neurons: f64,
    /// The part of `neurons` beyond the account's free allocation (paid plans).
    pub billable_neurons: f64,
    pub duration_ms: u64,
    /// A request of a batch: its result, stored with its charge, only if it has none yet (then
    /// nothing is written). Not read back by `Ledger::request`.
    pub batch_item: Option<BatchItemResult>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UsageQuery {
    pub account_id: String,
    /// First UTC day, `YYYY-MM-DD`.
    pub since: String,
    /// Last UTC day, inclusive.
    pub until: String,
    pub model: Option<String>,
}

impl UsageQuery {
    /// Days shown when `since` is not given: the last 30, today included.
    const DEFAULT_DAYS: i64 = 30;

    /// A query from what a client gave, `until` defaulting to today and `since` to 29 days
    /// before it; `Err((field, problem))` for a day not written `YYYY-MM-DD` or a range that
    /// ends before it starts.
    pub fn new(
        account_id: String,
        since: Option<String>,
        until: Option<String>,
        model: Option<String>,
        now_ms: i64,
    ) -> Result<UsageQuery, (&'static str, String)> {
        let until = until.unwrap_or_else(|| utc_day(now_ms));
        let since =
            since.unwrap_or_else(|| utc_day(now_ms - (UsageQuery::DEFAULT_DAYS - 1) * DAY_MS));
        for (field, day) in [("since", &since), ("until", &until)] {
            if utc_day_start_ms(day).is_none() {
                return Err((
                    field,
                    format!("expected a UTC date written YYYY-MM-DD, got {day:?}"),
                ));
            }
        }
        if since > until {
            return Err(("since", format!("{since} is after until ({until})")));
        }
        Ok(UsageQuery {
            account_id,
            since,
            until,
            model,
        })
    }
}

/// One ledger row: an account's use of one model on one UTC day.
#[derive(Debug, Clone, PartialEq)]
pub struct DailyUsage {
    pub day: String,
    pub model: String,
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub neurons: f64,
    pub billable_neurons: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_queries_default_to_the_last_30_days_and_check_their_days() {
        let now = utc_day_start_ms("2026-11-23").unwrap() + 5;
        let query = UsageQuery::new("a".into(), None, None, None, now).unwrap();
        assert_eq!(
            (query.since.as_str(), query.until.as_str()),
            ("2026-10-25", "2026-11-23")
        );
        let bad = UsageQuery::new("a".into(), Some("yesterday".into()), None, None, now);
        assert_eq!(bad.unwrap_err().0, "since");
        let reversed = UsageQuery::new("a".into(), None, Some("2026-01-01".into()), None, now);
        assert_eq!(reversed.unwrap_err().0, "since");
    }
}
