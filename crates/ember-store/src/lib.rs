//! Ember's state behind async traits, one per concern: accounts and tokens (`AccountStore`), the
//! request log and usage ledger (`Ledger`), per-minute rate windows (`RateWindows`) and the
//! Neurons held by running requests (`Reservations`), and AI Gateway's gateways, logs and
//! response cache (`GatewayStore`, `GatewayLogs`, `ResponseCache`), the async batch queue
//! (`BatchQueue`), the Responses API's stored responses (`StoredResponses`) and finetunes
//! (`FinetuneStore`). `Stores` bundles one of each, so callers
//! hold one value and never name a backend. `sqlite` is the default backend; a scaled-out one
//! implements the same traits, passes the same `conformance` suite, and callers do not change.

mod accounts;
mod batches;
#[cfg(feature = "conformance")]
pub mod conformance;
mod days;
mod finetunes;
mod gateways;
mod ledger;
mod reservations;
mod responses;
mod sqlite;
mod windows;

pub use accounts::{Account, AccountStore, Plan, Token};
pub use batches::{
    Batch, BatchItem, BatchItemResult, BatchQueue, BatchStatus, ClaimedItem, ItemOutcome, NewBatch,
    NewBatchRequest,
};
pub use days::{DAY_MS, utc_day, utc_day_start_ms};
pub use finetunes::{Finetune, FinetuneStore};
pub use gateways::{
    AnalyticsQuery, AnalyticsRow, CachedResponse, Gateway, GatewayLog, GatewayLogs, GatewayRoutes,
    GatewayStore, LogPatch, LogQuery, LogStrategy, LogTotals, RateTechnique, ResponseCache, Route,
    RouteDeployment, RouteVersion, gateway_cache_key,
};
pub use ledger::{DailyUsage, Ledger, RequestRecord, UsageQuery};
pub use reservations::{Hold, MemoryReservations, Reservation, Reservations};
pub use responses::{RESPONSE_KEEP_MS, StoredResponse, StoredResponses};
pub use sqlite::SqliteStore;
pub use windows::{MemoryWindows, RateWindows, Window};

use std::sync::Arc;

/// Every store Ember uses, one per concern.
#[derive(Clone)]
pub struct Stores {
    pub accounts: Arc<dyn AccountStore>,
    pub ledger: Arc<dyn Ledger>,
    pub windows: Arc<dyn RateWindows>,
    pub reservations: Arc<dyn Reservations>,
    pub gateways: Arc<dyn GatewayStore>,
    pub gateway_logs: Arc<dyn GatewayLogs>,
    pub response_cache: Arc<dyn ResponseCache>,
    pub routes: Arc<dyn GatewayRoutes>,
    pub batches: Arc<dyn BatchQueue>,
    pub responses: Arc<dyn StoredResponses>,
    pub finetunes: Arc<dyn FinetuneStore>,
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
    /// A blocking-pool task that ran a storage call panicked or was cancelled.
    #[error("storage task: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Conflict(String),
}
