//! The daily allocation of Neurons while requests run: the `Reservations` trait, and
//! `MemoryReservations`, which keeps each account's day (spent, and what running requests hold)
//! in process memory on top of any `Ledger`.
//!
//! Invariant: a free account is given a reservation only while spent + reserved < its
//! allocation, and a settled request's cost counts as spent before its reservation stops
//! counting, so with reservations at least the real cost the day's total passes the allocation
//! by less than the requests in flight when it ran out had reserved.

use crate::{Account, Ledger, Plan, RequestRecord, StoreError, utc_day};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Neurons held for running requests, against each account's daily allocation.
#[async_trait]
pub trait Reservations: Send + Sync {
    /// Holds `hold.neurons` of the account's allocation for the UTC day of `hold.at_ms`; none
    /// when the account is on the free plan and what it spent plus what is held (reservations
    /// not expired at `hold.at_ms`) already reaches its allocation. A paid account is never
    /// refused.
    async fn reserve(&self, hold: &Hold) -> Result<Option<Reservation>, StoreError>;
    /// Ends a reservation with its request's real cost, `record.neurons`: sets
    /// `record.billable_neurons` (what passes the day's allocation, on the paid plan) and
    /// writes `record` to the ledger (`Ledger::record_request`). The cost counts as spent from
    /// then on, in place of the reservation. Returns once the ledger row is committed.
    async fn settle(
        &self,
        reservation: &Reservation,
        record: RequestRecord,
    ) -> Result<(), StoreError>;
    /// Gives a reservation back unsettled (its request never ran).
    async fn release(&self, reservation: &Reservation) -> Result<(), StoreError>;
}

/// A request's claim on its account's allocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    /// The account as admitted: its plan and allocation decide.
    pub account: Account,
    /// The worst-case cost of the request.
    pub neurons: f64,
    /// When the request starts; its UTC day is the day charged.
    pub at_ms: i64,
    /// When the hold stops counting even if never settled, so the reservations of a server
    /// that was killed do not hold an allocation forever; later than any request can run.
    pub expires_at_ms: i64,
}

/// A hold granted.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    /// Unique within the backend.
    pub id: u64,
    pub hold: Hold,
}

/// Reservations in this process's memory, for one server (`SqliteStore`'s default): a
/// reservation is a map entry, so admission costs a lock and no write, and a killed server's
/// reservations end with it. Each account's spending on its current day is read from the
/// ledger once and then kept up to date by `settle`.
pub struct MemoryReservations {
    ledger: Arc<dyn Ledger>,
    // An async lock: the first request of an account's day reads the ledger while holding it,
    // so two first requests cannot both start the day from the ledger.
    days: tokio::sync::Mutex<HashMap<String, Day>>,
    next_id: AtomicU64,
}

/// One account's current UTC day.
struct Day {
    day: String,
    spent: f64,
    /// Running requests' reservations: id → (neurons, expires_at_ms).
    held: HashMap<u64, (f64, i64)>,
}

impl MemoryReservations {
    pub fn new(ledger: Arc<dyn Ledger>) -> MemoryReservations {
        MemoryReservations {
            ledger,
            days: tokio::sync::Mutex::default(),
            next_id: AtomicU64::new(1),
        }
    }
}

#[async_trait]
impl Reservations for MemoryReservations {
    async fn reserve(&self, hold: &Hold) -> Result<Option<Reservation>, StoreError> {
        let account = &hold.account;
        let day = utc_day(hold.at_ms);
        let mut days = self.days.lock().await;
        if days.get(&account.id).is_none_or(|d| d.day != day) {
            // First request of the day (or since the start): the ledger knows what was spent.
            let spent = self.ledger.neurons_spent(&account.id, &day).await?;
            let held = HashMap::new();
            days.insert(account.id.clone(), Day { day, spent, held });
        }
        let today = days.get_mut(&account.id).expect("inserted above");
        today
            .held
            .retain(|_, &mut (_, expires)| expires > hold.at_ms);
        let reserved: f64 = today.held.values().map(|&(neurons, _)| neurons).sum();
        if account.plan == Plan::Free && today.spent + reserved >= account.daily_free_neurons {
            return Ok(None);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        today.held.insert(id, (hold.neurons, hold.expires_at_ms));
        Ok(Some(Reservation {
            id,
            hold: hold.clone(),
        }))
    }

    async fn settle(
        &self,
        reservation: &Reservation,
        mut record: RequestRecord,
    ) -> Result<(), StoreError> {
        let account = &reservation.hold.account;
        {
            let mut days = self.days.lock().await;
            let day = utc_day(reservation.hold.at_ms);
            // A request that ran across midnight counts on the day it started, which is no
            // longer tracked here; its billable part is not known and stays 0.
            record.billable_neurons = match days.get_mut(&account.id).filter(|d| d.day == day) {
                None => 0.0,
                Some(today) => {
                    today.held.remove(&reservation.id);
                    let free_left = (account.daily_free_neurons - today.spent).max(0.0);
                    today.spent += record.neurons;
                    match account.plan {
                        Plan::Paid => (record.neurons - free_left).max(0.0),
                        Plan::Free => 0.0,
                    }
                }
            };
        }
        // Counted as spent above, before the ledger has it: the day is never undercounted. If
        // the write fails, the day stays overcounted by it, which refuses early, never late.
        self.ledger.record_request(&record).await
    }

    async fn release(&self, reservation: &Reservation) -> Result<(), StoreError> {
        let mut days = self.days.lock().await;
        if let Some(today) = days.get_mut(&reservation.hold.account.id) {
            today.held.remove(&reservation.id);
        }
        Ok(())
    }
}
