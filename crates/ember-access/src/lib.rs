//! What stands between a request and the models: who is calling (an account, proved by an API
//! token, or the local account of the open dev mode), whether they may run now (per-task rate
//! limits, the daily free allocation of Neurons) and what they used (each request's cost
//! settled into the ledger). The state lives behind `ember_store`'s async traits; the rules
//! (which window, how long a reservation may live, when dev mode is on) are here. Knows nothing
//! of HTTP. (Cloudflare's AI Gateway — caching, logs, fallbacks — is `ember-ai-gateway`, not this.)

pub mod clock;
pub mod credentials;

use clock::Clock;
use credentials::{DEFAULT_DAILY_FREE_NEURONS, Refusal, VerifyError};
use ember_core::catalog::{ModelSpec, Task};
use ember_store::{
    Account, Hold, Plan, RequestRecord, Reservation, Reservations, StoreError, Stores, Window,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The account requests run under in the open dev mode. Its plan is `paid`, so local work is
/// never refused, and the usage API shows what it would have cost.
pub const LOCAL_ACCOUNT_ID: &str = "local";

#[derive(Debug, Clone)]
pub struct AccessConfig {
    /// While the store holds no account, requests need no valid token (Ember listens on
    /// loopback only and `--require-auth` is off).
    pub open_without_accounts: bool,
    pub rate_limits: bool,
    /// Requests per minute per task, replacing the published ones.
    pub task_limits: HashMap<Task, u32>,
    /// How long a request's reservation counts if it is never settled (its server was
    /// killed): longer than any request runs.
    pub reservation_ttl: Duration,
}

impl Default for AccessConfig {
    fn default() -> AccessConfig {
        AccessConfig {
            open_without_accounts: true,
            rate_limits: true,
            task_limits: HashMap::new(),
            reservation_ttl: Duration::from_secs(3_600),
        }
    }
}

/// Who a request runs for.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub account: Account,
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("authentication failed: {0:?}")]
    Unauthenticated(Refusal),
    /// The path names an account the token does not belong to.
    #[error("the token's account is not the one in the path")]
    WrongAccount,
    #[error("rate limited; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("the daily free allocation is used up")]
    AllocationUsed,
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Access {
    stores: Stores,
    clock: Arc<dyn Clock>,
    config: AccessConfig,
}

impl Access {
    pub fn new(stores: Stores, clock: Arc<dyn Clock>, config: AccessConfig) -> Access {
        Access {
            stores,
            clock,
            config,
        }
    }

    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Whether requests run without a token now: the dev mode, which ends when the first
    /// account is created (checked on every request, so the CLI's change takes effect at once).
    pub async fn is_open(&self) -> Result<bool, StoreError> {
        Ok(self.config.open_without_accounts && !self.stores.accounts.has_accounts().await?)
    }

    /// The caller a request's bearer token proves, checked against the account its path
    /// names (`/client/v4/accounts/{id}/...`), if any.
    pub async fn authenticate(
        &self,
        bearer: Option<&str>,
        path_account: Option<&str>,
    ) -> Result<Caller, AccessError> {
        if self.is_open().await? {
            return Ok(Caller {
                account: local_account(),
            });
        }
        let accounts = self.stores.accounts.as_ref();
        let token = credentials::verify(accounts, bearer, self.now_ms())
            .await
            .map_err(|e| match e {
                VerifyError::Refused(refusal) => AccessError::Unauthenticated(refusal),
                VerifyError::Store(error) => AccessError::Store(error),
            })?;
        if path_account.is_some_and(|id| id != token.account_id) {
            return Err(AccessError::WrongAccount);
        }
        let account = accounts
            .account(&token.account_id)
            .await?
            .ok_or(AccessError::Unauthenticated(Refusal::Unknown))?;
        Ok(Caller { account })
    }

    /// Lets a request on `spec` run if its rate limit and allocation allow, holding
    /// `estimated_neurons` of the allocation until it settles.
    pub async fn admit(
        &self,
        caller: &Caller,
        spec: &ModelSpec,
        estimated_neurons: f64,
    ) -> Result<Admission, AccessError> {
        let now_ms = self.now_ms();
        if self.config.rate_limits {
            let (key, per_minute) = self.rate_limit(caller, spec);
            let window = self.stores.windows.count(&key, per_minute, now_ms).await?;
            if let Window::Full { retry_after_secs } = window {
                return Err(AccessError::RateLimited { retry_after_secs });
            }
        }
        self.reserve(caller, estimated_neurons).await
    }

    /// Holds `estimated_neurons` of the caller's allocation until the request settles, with no
    /// rate limit: a batch's requests, whose submission counted as the one request.
    pub async fn reserve(
        &self,
        caller: &Caller,
        estimated_neurons: f64,
    ) -> Result<Admission, AccessError> {
        let now_ms = self.now_ms();
        let hold = Hold {
            account: caller.account.clone(),
            neurons: estimated_neurons,
            at_ms: now_ms,
            expires_at_ms: now_ms + self.config.reservation_ttl.as_millis() as i64,
        };
        let reservation = self.stores.reservations.reserve(&hold).await?;
        Ok(Admission {
            reservation: Some(reservation.ok_or(AccessError::AllocationUsed)?),
            reservations: self.stores.reservations.clone(),
        })
    }

    /// The window a request counts in and its size: the model's own where Workers AI
    /// publishes a per-model limit, else the account's window for the task.
    fn rate_limit(&self, caller: &Caller, spec: &ModelSpec) -> (String, u32) {
        let account = &caller.account.id;
        match spec.rate_limit_per_minute {
            Some(per_minute) => (format!("{account} model {}", spec.id), per_minute),
            None => {
                let task = spec.task.rate_limited_as();
                let per_minute = self
                    .config
                    .task_limits
                    .get(&task)
                    .copied()
                    .unwrap_or_else(|| task.requests_per_minute());
                (
                    format!("{account} task {}", task.display_name()),
                    per_minute,
                )
            }
        }
    }

    /// Writes a finished request to the log and the ledger. With its admission, the request's
    /// real cost (`record.neurons`) settles the reservation, dated when it was admitted, and
    /// the billable part is filled in. Returns once the write is committed, so a client never
    /// sees a cost the ledger lacks; a caller that may be cancelled runs it as its own task.
    pub async fn settle(
        &self,
        admission: Option<Admission>,
        mut record: RequestRecord,
    ) -> Result<(), StoreError> {
        let Some(reservation) = admission.and_then(|mut a| a.reservation.take()) else {
            return self.stores.ledger.record_request(&record).await;
        };
        record.created_at_ms = reservation.hold.at_ms;
        self.stores.reservations.settle(&reservation, record).await
    }
}

/// A request let through: its reservation of the allocation, given back if it is dropped
/// unsettled.
pub struct Admission {
    /// None once taken to be settled.
    reservation: Option<Reservation>,
    reservations: Arc<dyn Reservations>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        // A release cannot be awaited here, so it runs as a task; with no runtime left (the
        // process is ending) the reservation's expiry ends it.
        if let Some(reservation) = self.reservation.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let reservations = self.reservations.clone();
            runtime.spawn(async move {
                if let Err(error) = reservations.release(&reservation).await {
                    tracing::warn!(%error, "could not release a reservation");
                }
            });
        }
    }
}

fn local_account() -> Account {
    Account {
        id: LOCAL_ACCOUNT_ID.to_string(),
        name: "local (dev mode)".to_string(),
        plan: Plan::Paid,
        daily_free_neurons: DEFAULT_DAILY_FREE_NEURONS,
        created_at_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clock::ManualClock;
    use ember_core::catalog::Catalog;
    use ember_store::SqliteStore;

    fn record(id: &str, account: &Account, neurons: f64) -> RequestRecord {
        RequestRecord {
            id: id.into(),
            created_at_ms: 0,
            account_id: Some(account.id.clone()),
            route: "rest".into(),
            model: "m".into(),
            served_by: None,
            http_status: 200,
            error_code: None,
            prompt_tokens: 1,
            completion_tokens: 1,
            neurons,
            billable_neurons: 0.0,
            duration_ms: 1,
            batch_item: None,
        }
    }

    #[tokio::test]
    async fn admissions_settle_at_their_start_or_give_back_when_dropped() {
        let stores = SqliteStore::in_memory().unwrap();
        let clock = Arc::new(ManualClock::new(5));
        let config = AccessConfig {
            open_without_accounts: false,
            ..AccessConfig::default()
        };
        let access = Access::new(stores.clone(), clock.clone(), config);
        let accounts = stores.accounts.as_ref();
        let account = credentials::create_account(accounts, "t", Plan::Free, 2.0, 0).await;
        let caller = Caller {
            account: account.unwrap(),
        };
        let catalog = Catalog::builtin().unwrap();
        let spec = &catalog.models()[0];

        let dropped = access.admit(&caller, spec, 2.0).await.unwrap();
        let refused = access.admit(&caller, spec, 1.0).await;
        assert!(matches!(refused, Err(AccessError::AllocationUsed)));
        drop(dropped);
        // The release runs as a task; let it.
        tokio::task::yield_now().await;
        let admission = access.admit(&caller, spec, 2.0).await.unwrap();
        clock.advance(1_000);
        let settled = record("r", &caller.account, 1.0);
        access.settle(Some(admission), settled).await.unwrap();
        let logged = stores.ledger.request("r").await.unwrap().unwrap();
        assert_eq!(logged.created_at_ms, 5, "dated when admitted");
        assert!(access.admit(&caller, spec, 1.0).await.is_ok());
    }
}
