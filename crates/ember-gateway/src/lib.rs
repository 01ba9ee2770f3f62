//! What stands between a request and the models: who is calling (an account, proved by an API
//! token, or the local account of the open dev mode), whether they may run now (per-task rate
//! limits, the daily free allocation of Neurons) and what they used (each request's cost
//! settled into the ledger). Knows nothing of HTTP.

pub mod clock;
pub mod credentials;
mod limits;
mod meter;

use clock::Clock;
use credentials::{DEFAULT_DAILY_FREE_NEURONS, Refusal, VerifyError};
use ember_core::catalog::{ModelSpec, Task};
use ember_store::{Account, Plan, RequestRecord, Store, StoreError};
use limits::RateLimiter;
use meter::{Meter, MeterError, Reservation};
use std::collections::HashMap;
use std::sync::Arc;

/// The account requests run under in the open dev mode. Its plan is `paid`, so local work is
/// never refused, and the usage API shows what it would have cost.
pub const LOCAL_ACCOUNT_ID: &str = "local";

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// While the store holds no account, requests need no valid token (Ember listens on
    /// loopback only and `--require-auth` is off).
    pub open_without_accounts: bool,
    pub rate_limits: bool,
    /// Requests per minute per task, replacing the published ones.
    pub task_limits: HashMap<Task, u32>,
}

impl Default for GatewayConfig {
    fn default() -> GatewayConfig {
        GatewayConfig {
            open_without_accounts: true,
            rate_limits: true,
            task_limits: HashMap::new(),
        }
    }
}

/// Who a request runs for.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub account: Account,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
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

pub struct Gateway {
    store: Store,
    clock: Arc<dyn Clock>,
    config: GatewayConfig,
    meter: Meter,
    limiter: RateLimiter,
}

impl Gateway {
    pub fn new(store: Store, clock: Arc<dyn Clock>, config: GatewayConfig) -> Gateway {
        Gateway {
            store,
            clock,
            config,
            meter: Meter::default(),
            limiter: RateLimiter::default(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Whether requests run without a token now: the dev mode, which ends when the first
    /// account is created (checked on every request, so the CLI's change takes effect at once).
    pub fn is_open(&self) -> Result<bool, StoreError> {
        Ok(self.config.open_without_accounts && !self.store.has_accounts()?)
    }

    /// The caller a request's bearer token proves, checked against the account its path
    /// names (`/client/v4/accounts/{id}/...`), if any.
    pub fn authenticate(
        &self,
        bearer: Option<&str>,
        path_account: Option<&str>,
    ) -> Result<Caller, GatewayError> {
        if self.is_open()? {
            return Ok(Caller {
                account: local_account(),
            });
        }
        let token =
            credentials::verify(&self.store, bearer, self.now_ms()).map_err(|e| match e {
                VerifyError::Refused(refusal) => GatewayError::Unauthenticated(refusal),
                VerifyError::Store(error) => GatewayError::Store(error),
            })?;
        if path_account.is_some_and(|id| id != token.account_id) {
            return Err(GatewayError::WrongAccount);
        }
        let account = self
            .store
            .account(&token.account_id)?
            .ok_or(GatewayError::Unauthenticated(Refusal::Unknown))?;
        Ok(Caller { account })
    }

    /// Lets a request on `spec` run if its rate limit and allocation allow, holding
    /// `estimated_neurons` of the allocation until it settles.
    pub fn admit(
        &self,
        caller: &Caller,
        spec: &ModelSpec,
        estimated_neurons: f64,
    ) -> Result<Admission, GatewayError> {
        let now_ms = self.now_ms();
        if self.config.rate_limits {
            let (key, per_minute) = self.rate_limit(caller, spec);
            self.limiter
                .check(&key, per_minute, now_ms)
                .map_err(|retry_after_secs| GatewayError::RateLimited { retry_after_secs })?;
        }
        let reservation = self
            .meter
            .reserve(&self.store, &caller.account, now_ms, estimated_neurons)
            .map_err(|error| match error {
                MeterError::AllocationUsed => GatewayError::AllocationUsed,
                MeterError::Store(error) => GatewayError::Store(error),
            })?;
        Ok(Admission {
            reservation,
            started_ms: now_ms,
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
    /// real cost replaces the reservation first (`record.neurons`; the billable part is filled
    /// in here). Returns once the write is committed, so a client never sees a cost the
    /// ledger lacks.
    pub fn settle(
        &self,
        admission: Option<Admission>,
        mut record: RequestRecord,
    ) -> Result<(), StoreError> {
        if let Some(admission) = admission {
            record.created_at_ms = admission.started_ms;
            record.billable_neurons = admission.reservation.settle(record.neurons);
        }
        self.store.record_request(&record)
    }
}

/// A request let through: its reservation of the allocation, given back if it is dropped
/// unsettled.
pub struct Admission {
    reservation: Reservation,
    started_ms: i64,
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
