//! Accounts and their API tokens (kept as a SHA-256 of the secret), and the `AccountStore`
//! trait that keeps them.

use crate::StoreError;
use async_trait::async_trait;

/// Accounts and tokens. Every write is one transaction: a crash never leaves half of one.
#[async_trait]
pub trait AccountStore: Send + Sync {
    async fn create_account(&self, account: &Account) -> Result<(), StoreError>;
    /// Replaces an account's name, plan and allocation; false if there is no such account.
    async fn update_account(&self, account: &Account) -> Result<bool, StoreError>;
    async fn account(&self, id: &str) -> Result<Option<Account>, StoreError>;
    /// All accounts, oldest first.
    async fn accounts(&self) -> Result<Vec<Account>, StoreError>;
    /// Whether any account exists (Ember's open dev mode ends with the first).
    async fn has_accounts(&self) -> Result<bool, StoreError>;

    /// Stores a token; `StoreError::Conflict` if its account does not exist.
    async fn create_token(&self, token: &Token) -> Result<(), StoreError>;
    async fn token(&self, id: &str) -> Result<Option<Token>, StoreError>;
    /// All tokens, or one account's, oldest first.
    async fn tokens(&self, account_id: Option<&str>) -> Result<Vec<Token>, StoreError>;
    /// Marks a token revoked at `at_ms`; false if there is no such live token.
    async fn revoke_token(&self, id: &str, at_ms: i64) -> Result<bool, StoreError>;
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
