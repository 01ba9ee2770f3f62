//! Ember's durable state behind one trait, `Storage`: accounts, API tokens (hashed), the request
//! log and the usage ledger (per account, UTC day and model). `sqlite` is the default backend; a
//! scaled-out one implements the same trait and callers do not change.

mod sqlite;

pub use sqlite::SqliteStore;

use std::sync::Arc;

/// The storage every part of Ember shares.
pub type Store = Arc<dyn Storage>;

/// What Ember keeps durably. Every write is one transaction: a crash never leaves half of one.
pub trait Storage: Send + Sync {
    fn create_account(&self, account: &Account) -> Result<(), StoreError>;
    /// Replaces an account's plan and allocation; false if there is no such account.
    fn update_account(&self, account: &Account) -> Result<bool, StoreError>;
    fn account(&self, id: &str) -> Result<Option<Account>, StoreError>;
    fn accounts(&self) -> Result<Vec<Account>, StoreError>;
    /// Whether any account exists (Ember's open dev mode ends with the first).
    fn has_accounts(&self) -> Result<bool, StoreError>;

    fn create_token(&self, token: &Token) -> Result<(), StoreError>;
    fn token(&self, id: &str) -> Result<Option<Token>, StoreError>;
    /// All tokens, or one account's.
    fn tokens(&self, account_id: Option<&str>) -> Result<Vec<Token>, StoreError>;
    /// Marks a token revoked at `at_ms`; false if there is no such live token.
    fn revoke_token(&self, id: &str, at_ms: i64) -> Result<bool, StoreError>;

    /// Writes a finished request to the log and, when it ran under an account and named a
    /// model, adds it to the ledger row of its account, UTC day and model, in one transaction.
    fn record_request(&self, record: &RequestRecord) -> Result<(), StoreError>;
    fn request(&self, id: &str) -> Result<Option<RequestRecord>, StoreError>;
    /// Neurons an account has been charged on a UTC day (`YYYY-MM-DD`), all models together.
    fn neurons_spent(&self, account_id: &str, day: &str) -> Result<f64, StoreError>;
    /// Daily ledger rows of an account from `since` to `until` (UTC days, inclusive), by day then
    /// model.
    fn usage(&self, query: &UsageQuery) -> Result<Vec<DailyUsage>, StoreError>;
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("cannot create the folder for {path}: {source}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("{0}")]
    Conflict(String),
}

/// What an account pays: `free` stops at the daily allocation, `paid` goes on and the neurons
/// beyond it are billable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Free,
    Paid,
}

impl Plan {
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Free => "free",
            Plan::Paid => "paid",
        }
    }

    pub fn parse(text: &str) -> Option<Plan> {
        match text {
            "free" => Some(Plan::Free),
            "paid" => Some(Plan::Paid),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    /// 32 hex digits, like a Cloudflare account id.
    pub id: String,
    pub name: String,
    pub plan: Plan,
    /// Neurons free per UTC day.
    pub daily_free_neurons: f64,
    pub created_at_ms: i64,
}

/// An API token as stored: the secret itself is never kept, only its SHA-256.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub secret_sha256: String,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
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

/// Milliseconds in a day (UTC days have no leap seconds in Unix time).
pub const DAY_MS: i64 = 86_400_000;

/// The UTC day (`YYYY-MM-DD`) a Unix time in milliseconds falls on.
pub fn utc_day(unix_ms: i64) -> String {
    let days = unix_ms.div_euclid(DAY_MS);
    let date =
        time::Date::from_julian_day(UNIX_EPOCH_JULIAN_DAY + days as i32).unwrap_or(time::Date::MIN);
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// The Unix time in milliseconds at which the UTC day `text` (`YYYY-MM-DD`) begins; none if
/// `text` is no calendar date written so.
pub fn utc_day_start_ms(text: &str) -> Option<i64> {
    let parts: Vec<&str> = text.split('-').collect();
    let [year, month, day] = parts.as_slice() else {
        return None;
    };
    if year.len() != 4 || month.len() != 2 || day.len() != 2 {
        return None;
    }
    let (year, day) = (year.parse().ok()?, day.parse().ok()?);
    let month = time::Month::try_from(month.parse::<u8>().ok()?).ok()?;
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    Some(i64::from(date.to_julian_day() - UNIX_EPOCH_JULIAN_DAY) * DAY_MS)
}

/// The Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i32 = 2_440_588;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_days_turn_at_midnight() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(86_400_000 - 1), "1970-01-01");
        assert_eq!(utc_day(86_400_000), "1970-01-02");
        assert_eq!(utc_day(1_795_392_000_000), "2026-11-23");
        assert_eq!(utc_day(-1), "1969-12-31");
    }

    #[test]
    fn utc_days_are_checked_dates() {
        assert_eq!(utc_day_start_ms("1970-01-02"), Some(86_400_000));
        assert_eq!(utc_day_start_ms("2026-11-23"), Some(1_795_392_000_000));
        assert_eq!(utc_day_start_ms("2026-02-30"), None);
        assert_eq!(utc_day_start_ms("2026-2-3"), None);
        assert_eq!(utc_day_start_ms("yesterday"), None);
    }

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
