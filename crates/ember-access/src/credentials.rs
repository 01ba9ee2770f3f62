//! Accounts and API tokens: new ids, tokens issued once and kept only as a SHA-256, and the
//! constant-time check of a bearer token against what is stored.
//!
//! A token reads `ember_<id>_<secret>`: the id finds the stored row, the secret is compared by
//! hash, so a lookup never depends on the secret and a stolen database holds no usable token.

use ember_store::{Account, AccountStore, Plan, StoreError, Token};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const TOKEN_PREFIX: &str = "ember_";
/// Free neurons per UTC day, as Workers AI gives every account.
pub const DEFAULT_DAILY_FREE_NEURONS: f64 = 10_000.0;

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    // ThreadRng is a CSPRNG seeded from the operating system.
    rand::rng().fill_bytes(&mut buffer);
    hex::encode(buffer)
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Creates an account with a new 32-hex-digit id.
pub async fn create_account(
    store: &dyn AccountStore,
    name: &str,
    plan: Plan,
    daily_free_neurons: f64,
    now_ms: i64,
) -> Result<Account, StoreError> {
    let account = Account {
        id: random_hex(16),
        name: name.to_string(),
        plan,
        daily_free_neurons,
        created_at_ms: now_ms,
    };
    store.create_account(&account).await?;
    Ok(account)
}

/// A token just issued: `bearer` is shown once and never stored.
pub struct IssuedToken {
    pub token: Token,
    pub bearer: String,
}

pub async fn issue_token(
    store: &dyn AccountStore,
    account_id: &str,
    name: &str,
    expires_at_ms: Option<i64>,
    now_ms: i64,
) -> Result<IssuedToken, StoreError> {
    let (id, secret) = (random_hex(8), random_hex(32));
    let token = Token {
        id: id.clone(),
        account_id: account_id.to_string(),
        name: name.to_string(),
        secret_sha256: sha256_hex(&secret),
        created_at_ms: now_ms,
        expires_at_ms,
        revoked_at_ms: None,
    };
    store.create_token(&token).await?;
    Ok(IssuedToken {
        token,
        bearer: format!("{TOKEN_PREFIX}{id}_{secret}"),
    })
}

/// Why a bearer token was refused (for the server log; clients see one message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Malformed,
    Unknown,
    WrongSecret,
    Revoked,
    Expired,
}

/// The stored token a bearer token proves, if it is live at `now_ms`.
pub async fn verify(
    store: &dyn AccountStore,
    bearer: Option<&str>,
    now_ms: i64,
) -> Result<Token, VerifyError> {
    let bearer = bearer.ok_or(VerifyError::Refused(Refusal::Missing))?;
    let (id, secret) = bearer
        .strip_prefix(TOKEN_PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .ok_or(VerifyError::Refused(Refusal::Malformed))?;
    let token = store
        .token(id)
        .await?
        .ok_or(VerifyError::Refused(Refusal::Unknown))?;
    let matches: bool = sha256_hex(secret)
        .as_bytes()
        .ct_eq(token.secret_sha256.as_bytes())
        .into();
    let refusal = if !matches {
        Some(Refusal::WrongSecret)
    } else if token.revoked_at_ms.is_some() {
        Some(Refusal::Revoked)
    } else if token.expires_at_ms.is_some_and(|at| at <= now_ms) {
        Some(Refusal::Expired)
    } else {
        None
    };
    match refusal {
        Some(refusal) => Err(VerifyError::Refused(refusal)),
        None => Ok(token),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("token refused: {0:?}")]
    Refused(Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_store::SqliteStore;

    fn refusal(result: Result<Token, VerifyError>) -> Refusal {
        match result {
            Err(VerifyError::Refused(refusal)) => refusal,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn issued_tokens_verify_until_revoked_or_expired() {
        let stores = SqliteStore::in_memory().unwrap();
        let store = stores.accounts.as_ref();
        let account = create_account(store, "team", Plan::Free, 10.0, 0)
            .await
            .unwrap();
        assert_eq!(account.id.len(), 32);
        let issued = issue_token(store, &account.id, "ci", Some(1_000), 0)
            .await
            .unwrap();
        assert!(!issued.token.secret_sha256.contains(&issued.bearer[20..]));
        let token = verify(store, Some(&issued.bearer), 999).await.unwrap();
        assert_eq!(token.account_id, account.id);
        assert_eq!(
            refusal(verify(store, Some(&issued.bearer), 1_000).await),
            Refusal::Expired
        );

        let forever = issue_token(store, &account.id, "app", None, 0)
            .await
            .unwrap();
        let mut wrong = forever.bearer.clone();
        wrong.pop();
        wrong.push('x');
        assert_eq!(
            refusal(verify(store, Some(&wrong), 5).await),
            Refusal::WrongSecret
        );
        assert_eq!(refusal(verify(store, None, 5).await), Refusal::Missing);
        assert_eq!(
            refusal(verify(store, Some("dummy"), 5).await),
            Refusal::Malformed
        );
        assert_eq!(
            refusal(verify(store, Some("ember_0000_ffff"), 5).await),
            Refusal::Unknown
        );
        store.revoke_token(&forever.token.id, 6).await.unwrap();
        assert_eq!(
            refusal(verify(store, Some(&forever.bearer), 7).await),
            Refusal::Revoked
        );
    }
}
