//! The daily allocation of Neurons: what each account has spent today (from the ledger) and
//! what its running requests have reserved. A request reserves its estimated cost before it
//! runs and settles its real cost after; a request that never settles gives its reservation
//! back when dropped.
//!
//! Invariant: a free account is admitted only while spent + reserved < its allocation, and an
//! estimate is at least the real cost, so the day's total can pass the allocation by at most
//! the cost of the requests already in flight when it ran out.

use ember_store::{Account, Plan, Store, StoreError, utc_day};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One account's day.
struct Budget {
    day: String,
    spent: f64,
    reserved: f64,
}

#[derive(Clone, Default)]
pub(crate) struct Meter {
    budgets: Arc<Mutex<HashMap<String, Budget>>>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum MeterError {
    #[error("the daily free allocation is used up")]
    AllocationUsed,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Meter {
    /// Reserves `estimate` neurons for a request of `account` starting at `now_ms`.
    pub(crate) fn reserve(
        &self,
        store: &Store,
        account: &Account,
        now_ms: i64,
        estimate: f64,
    ) -> Result<Reservation, MeterError> {
        let day = utc_day(now_ms);
        let mut budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        let stale = budgets.get(&account.id).is_none_or(|b| b.day != day);
        if stale {
            // First request of the day (or since the start): the ledger knows what was spent.
            let spent = store.neurons_spent(&account.id, &day)?;
            budgets.insert(
                account.id.clone(),
                Budget {
                    day: day.clone(),
                    spent,
                    reserved: 0.0,
                },
            );
        }
        let budget = budgets.get_mut(&account.id).expect("inserted above");
        if account.plan == Plan::Free
            && budget.spent + budget.reserved >= account.daily_free_neurons
        {
            return Err(MeterError::AllocationUsed);
        }
        budget.reserved += estimate;
        Ok(Reservation {
            budgets: self.budgets.clone(),
            account: account.clone(),
            day,
            estimate,
            open: true,
        })
    }
}

/// Neurons held for one running request.
pub(crate) struct Reservation {
    budgets: Arc<Mutex<HashMap<String, Budget>>>,
    account: Account,
    day: String,
    estimate: f64,
    open: bool,
}

impl Reservation {
    /// Charges the real cost in place of the estimate; returns the billable part (beyond the
    /// free allocation, on a paid plan).
    pub(crate) fn settle(mut self, neurons: f64) -> f64 {
        self.open = false;
        let mut budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        // A request that ran across midnight counts on the day it started, whose budget is
        // no longer tracked.
        let Some(budget) = budgets
            .get_mut(&self.account.id)
            .filter(|b| b.day == self.day)
        else {
            return 0.0;
        };
        budget.reserved = (budget.reserved - self.estimate).max(0.0);
        let free_left = (self.account.daily_free_neurons - budget.spent).max(0.0);
        budget.spent += neurons;
        match self.account.plan {
            Plan::Paid => (neurons - free_left).max(0.0),
            Plan::Free => 0.0,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let mut budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(budget) = budgets
            .get_mut(&self.account.id)
            .filter(|b| b.day == self.day)
        {
            budget.reserved = (budget.reserved - self.estimate).max(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_store::{RequestRecord, SqliteStore};

    const DAY_MS: i64 = 86_400_000;

    fn account(plan: Plan, allocation: f64) -> Account {
        Account {
            id: "a".into(),
            name: "team".into(),
            plan,
            daily_free_neurons: allocation,
            created_at_ms: 0,
        }
    }

    fn ledger(store: &Store, id: &str, at_ms: i64, neurons: f64) {
        store
            .record_request(&RequestRecord {
                id: id.into(),
                created_at_ms: at_ms,
                account_id: Some("a".into()),
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
            })
            .unwrap();
    }

    #[test]
    fn a_free_account_stops_exactly_at_its_allocation() {
        let store = SqliteStore::in_memory().unwrap();
        let meter = Meter::default();
        let free = account(Plan::Free, 3.0);
        for _ in 0..3 {
            let reservation = meter.reserve(&store, &free, 10, 1.0).unwrap();
            assert_eq!(reservation.settle(1.0), 0.0);
        }
        // 3.0 spent of 3.0: used up.
        assert!(matches!(
            meter.reserve(&store, &free, 10, 1.0),
            Err(MeterError::AllocationUsed)
        ));
        // Just below the allocation still runs.
        let below = Meter::default();
        for _ in 0..2 {
            below.reserve(&store, &free, 10, 1.0).unwrap().settle(1.0);
        }
        below.reserve(&store, &free, 10, 1.0).unwrap().settle(0.999);
        assert!(below.reserve(&store, &free, 10, 1.0).is_ok());
    }

    #[test]
    fn reservations_hold_the_allocation_until_settled_or_dropped() {
        let store = SqliteStore::in_memory().unwrap();
        let meter = Meter::default();
        let free = account(Plan::Free, 3.0);
        let held = meter.reserve(&store, &free, 10, 3.0).unwrap();
        assert!(meter.reserve(&store, &free, 10, 1.0).is_err());
        drop(held);
        let held = meter.reserve(&store, &free, 10, 3.0).unwrap();
        held.settle(0.5);
        assert!(meter.reserve(&store, &free, 10, 1.0).is_ok());
    }

    #[test]
    fn the_day_resets_at_midnight_utc_and_starts_from_the_ledger() {
        let store = SqliteStore::in_memory().unwrap();
        let free = account(Plan::Free, 2.0);
        let before_midnight = 20 * DAY_MS - 1;
        ledger(&store, "spent", before_midnight - 5, 2.0);
        // A restarted server learns the day's spending from the ledger.
        let meter = Meter::default();
        assert!(meter.reserve(&store, &free, before_midnight, 1.0).is_err());
        let next_day = meter.reserve(&store, &free, before_midnight + 1, 1.0);
        assert!(next_day.is_ok());
    }

    #[test]
    fn a_paid_account_goes_on_and_the_excess_is_billable() {
        let store = SqliteStore::in_memory().unwrap();
        let meter = Meter::default();
        let paid = account(Plan::Paid, 2.0);
        assert_eq!(
            meter.reserve(&store, &paid, 10, 1.5).unwrap().settle(1.5),
            0.0
        );
        assert_eq!(
            meter.reserve(&store, &paid, 10, 1.5).unwrap().settle(1.5),
            1.0
        );
        assert_eq!(
            meter.reserve(&store, &paid, 10, 1.5).unwrap().settle(1.5),
            1.5
        );
    }
}
