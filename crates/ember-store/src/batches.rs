//! The async batch queue (`queueRequest`): batches of requests for one model, kept in the store
//! so that a restart or a killed server loses none, and the `BatchQueue` trait that keeps them.
//!
//! Invariant: a request of a batch gets its result in the same transaction as its charge
//! (`RequestRecord::batch_item`, written by `Ledger::record_request`), and only while it has
//! none, so each request has exactly one stored result and one charge whatever crashes between
//! its runs.

use crate::StoreError;
use async_trait::async_trait;

/// Batches, their requests and their results.
#[async_trait]
pub trait BatchQueue: Send + Sync {
    /// Stores a new batch, queued. Refuses it (`Ok(false)`) when the requests not yet run,
    /// with this batch's, would pass `max_pending`.
    async fn enqueue(&self, batch: &NewBatch, max_pending: u64) -> Result<bool, StoreError>;
    /// The batch `id`, if it is kept.
    async fn batch(&self, id: &str) -> Result<Option<Batch>, StoreError>;
    /// The newest batches first, of one account or of all.
    async fn batches(&self, account_id: Option<&str>, limit: u32)
    -> Result<Vec<Batch>, StoreError>;
    /// A batch's requests in their order, with the results of those that ran.
    async fn items(&self, batch_id: &str) -> Result<Vec<BatchItem>, StoreError>;
    /// Takes up to `limit` requests that have no result and no live claim, oldest batch first
    /// (only batch `batch_id`'s, if given), claiming them until `claimed_until_ms` (after which
    /// another server may take them).
    async fn claim(
        &self,
        limit: u32,
        batch_id: Option<&str>,
        now_ms: i64,
        claimed_until_ms: i64,
    ) -> Result<Vec<ClaimedItem>, StoreError>;
    /// Makes the requests claimed by a server that is gone claimable at once. One server owns a
    /// SQLite file, so there every claim is such a claim when the server starts; a shared
    /// backend lets the claims of its other servers lapse instead.
    async fn release_stale_claims(&self) -> Result<(), StoreError>;
    /// Makes batch `batch_id`'s requests `indexes` claimable at once (their run was cut off).
    async fn unclaim(&self, batch_id: &str, indexes: &[u32]) -> Result<(), StoreError>;
    /// Deletes the batches that finished before `finished_before_ms`, with their results;
    /// returns how many.
    async fn expire(&self, finished_before_ms: i64) -> Result<u64, StoreError>;
}

/// A batch as submitted.
#[derive(Debug, Clone, PartialEq)]
pub struct NewBatch {
    pub id: String,
    pub account_id: String,
    pub model: String,
    pub created_at_ms: i64,
    pub requests: Vec<NewBatchRequest>,
}

/// One request of a new batch.
#[derive(Debug, Clone, PartialEq)]
pub struct NewBatchRequest {
    /// The model input, as JSON text.
    pub input: String,
    /// The client's own name for it, given back with its result.
    pub external_reference: Option<String>,
}

/// Where a batch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchStatus {
    /// None of its requests has been taken yet.
    Queued,
    Running,
    /// Every request has its result.
    Done,
}

impl BatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Queued => "queued",
            BatchStatus::Running => "running",
            BatchStatus::Done => "done",
        }
    }
}

/// A stored batch and its totals so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub id: String,
    pub account_id: String,
    pub model: String,
    pub created_at_ms: i64,
    pub status: BatchStatus,
    pub requests: u32,
    /// Requests with a result, successful or not.
    pub finished: u32,
    pub finished_at_ms: Option<i64>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub neurons: f64,
}

/// One request of a stored batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchItem {
    pub index: u32,
    pub input: String,
    pub external_reference: Option<String>,
    /// Its result, once it ran.
    pub outcome: Option<ItemOutcome>,
}

/// How a request of a batch ended: its result JSON, or its error's.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemOutcome {
    pub success: bool,
    pub result: String,
}

/// A request taken to be run.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedItem {
    pub batch_id: String,
    pub account_id: String,
    pub model: String,
    pub index: u32,
    pub input: String,
}

/// What `Ledger::record_request` stores for a request of a batch, with its charge.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchItemResult {
    pub batch_id: String,
    pub index: u32,
    pub outcome: ItemOutcome,
}
