//! Finetunes: the LoRA adapters an account uploaded for a base model, and the `FinetuneStore`
//! trait. The adapter files themselves live in the model home (`finetunes/<id>/`), named here
//! only by the finetune's id.

use crate::StoreError;
use async_trait::async_trait;

#[async_trait]
pub trait FinetuneStore: Send + Sync {
    /// Creates `finetune`; false when the account already has one of that name.
    async fn create_finetune(&self, finetune: &Finetune) -> Result<bool, StoreError>;
    /// The account's finetunes, oldest first.
    async fn finetunes(&self, account_id: &str) -> Result<Vec<Finetune>, StoreError>;
    /// The account's finetune whose id or name is `id_or_name`.
    async fn finetune(
        &self,
        account_id: &str,
        id_or_name: &str,
    ) -> Result<Option<Finetune>, StoreError>;
    /// Records that the finetune's files changed at `modified_at_ms`; false if it has none.
    async fn touch_finetune(
        &self,
        account_id: &str,
        id: &str,
        modified_at_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Deletes the account's finetune `id`; false if it had none.
    async fn delete_finetune(&self, account_id: &str, id: &str) -> Result<bool, StoreError>;
}

#[derive(Debug, Clone, PartialEq)]
pub struct Finetune {
    pub id: String,
    pub account_id: String,
    /// The base model's catalog id, as the client named it.
    pub model: String,
    pub name: String,
    pub description: Option<String>,
    pub created_at_ms: i64,
    pub modified_at_ms: i64,
}
