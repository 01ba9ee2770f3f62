//! Responses kept for OpenAI's Responses API (`store: true`): what `GET /v1/responses/{id}`
//! answers and what `previous_response_id` continues, and the `StoredResponses` trait.

use crate::StoreError;
use async_trait::async_trait;

/// How long a stored response is kept (as OpenAI keeps them): 30 days.
pub const RESPONSE_KEEP_MS: i64 = 30 * crate::DAY_MS;

#[async_trait]
pub trait StoredResponses: Send + Sync {
    /// Keeps `response`, and forgets those older than `RESPONSE_KEEP_MS` before it.
    async fn keep_response(&self, response: &StoredResponse) -> Result<(), StoreError>;
    /// The account's response `id`, if it is kept.
    async fn response(
        &self,
        account_id: &str,
        id: &str,
    ) -> Result<Option<StoredResponse>, StoreError>;
    /// Forgets the account's response `id`; false if it had none.
    async fn forget_response(&self, account_id: &str, id: &str) -> Result<bool, StoreError>;
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    pub id: String,
    pub account_id: String,
    pub created_at_ms: i64,
    /// The response object, as JSON text.
    pub response: String,
    /// The conversation up to and with this response (chat messages, as JSON text), which a
    /// request naming it as `previous_response_id` continues.
    pub conversation: String,
}
