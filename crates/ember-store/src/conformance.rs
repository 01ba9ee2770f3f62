//! The checks every backend must pass: what the gateway, the HTTP routes and the admin commands
//! rely on. Each check takes a fresh `Stores`; `conformance_tests!` turns them all into tests
//! for one backend, so a new backend runs exactly this list.

use crate::{
    Account, DAY_MS, DailyUsage, Hold, Plan, RequestRecord, StoreError, Stores, Token, UsageQuery,
    Window,
};

/// Declares one `#[tokio::test]` per check, each on the stores `$open(test_name).await` gives.
#[macro_export]
macro_rules! conformance_tests {
    ($open:path) => {
        $crate::conformance_tests!(@each $open;
            accounts_and_tokens,
            the_ledger_adds_up_per_account_day_and_model,
            usage_queries_select_days_and_models,
            windows_slide_and_say_when_to_retry,
            a_free_account_stops_exactly_at_its_allocation,
            reservations_hold_until_settled_or_released,
            reservations_expire,
            the_day_starts_from_the_ledger_and_resets_at_midnight,
            a_paid_account_goes_on_and_the_excess_is_billable
        );
    };
    (@each $open:path; $($check:ident),*) => {
        $(
            #[tokio::test]
            async fn $check() {
                let stores = $open(stringify!($check)).await;
                $crate::conformance::$check(&stores).await;
            }
        )*
    };
}

/// 2026-11-23T00:00:00Z.
const MIDNIGHT: i64 = 1_795_392_000_000;

fn account(id: &str, plan: Plan, allocation: f64) -> Account {
    Account {
        id: id.into(),
        name: "team".into(),
        plan,
        daily_free_neurons: allocation,
        created_at_ms: 1,
    }
}

fn record(id: &str, account: Option<&str>, at_ms: i64, neurons: f64) -> RequestRecord {
    RequestRecord {
        id: id.into(),
        created_at_ms: at_ms,
        account_id: account.map(str::to_string),
        route: "rest".into(),
        model: "@cf/meta/llama-3.1-8b-instruct".into(),
        served_by: Some("@hf/qwen/qwen2.5-coder-0.5b-instruct".into()),
        http_status: 200,
        error_code: None,
        prompt_tokens: 10,
        completion_tokens: 5,
        neurons,
        billable_neurons: 0.0,
        duration_ms: 42,
    }
}

fn query(account: &str, since: &str, until: &str) -> UsageQuery {
    UsageQuery {
        account_id: account.into(),
        since: since.into(),
        until: until.into(),
        model: None,
    }
}

/// A hold of `neurons` at `at_ms` that expires an hour later.
fn hold(account: &Account, neurons: f64, at_ms: i64) -> Hold {
    Hold {
        account: account.clone(),
        neurons,
        at_ms,
        expires_at_ms: at_ms + 3_600_000,
    }
}

/// Reserves, runs and settles one request of `neurons` (estimated and real) at `at_ms`; false
/// if the allocation refused it.
async fn spend(stores: &Stores, account: &Account, id: &str, neurons: f64, at_ms: i64) -> bool {
    let reservations = &stores.reservations;
    let Some(reservation) = reservations
        .reserve(&hold(account, neurons, at_ms))
        .await
        .unwrap()
    else {
        return false;
    };
    let charged = record(id, Some(&account.id), at_ms, neurons);
    reservations.settle(&reservation, charged).await.unwrap();
    true
}

pub async fn accounts_and_tokens(stores: &Stores) {
    let store = &stores.accounts;
    assert!(!store.has_accounts().await.unwrap());
    let token = Token {
        id: "t1".into(),
        account_id: "a".into(),
        name: "ci".into(),
        secret_sha256: "00".into(),
        created_at_ms: 1,
        expires_at_ms: Some(100),
        revoked_at_ms: None,
    };
    assert!(matches!(
        store.create_token(&token).await,
        Err(StoreError::Conflict(_))
    ));
    let (mut a, b) = (
        account("a", Plan::Free, 10.0),
        account("b", Plan::Free, 10.0),
    );
    a.created_at_ms = 2;
    store.create_account(&a).await.unwrap();
    store.create_account(&b).await.unwrap();
    assert!(store.has_accounts().await.unwrap());
    assert_eq!(store.accounts().await.unwrap(), vec![b.clone(), a.clone()]);
    assert!(store.create_account(&a).await.is_err(), "ids are unique");

    store.create_token(&token).await.unwrap();
    let other = Token {
        id: "t2".into(),
        account_id: "b".into(),
        expires_at_ms: None,
        ..token.clone()
    };
    store.create_token(&other).await.unwrap();
    assert_eq!(store.token("t1").await.unwrap(), Some(token.clone()));
    assert_eq!(store.token("t3").await.unwrap(), None);
    assert_eq!(store.tokens(Some("a")).await.unwrap(), vec![token.clone()]);
    assert_eq!(store.tokens(None).await.unwrap().len(), 2);
    assert!(store.tokens(Some("c")).await.unwrap().is_empty());
    assert!(store.revoke_token("t1", 50).await.unwrap());
    assert!(!store.revoke_token("t1", 60).await.unwrap(), "revoked once");
    assert!(!store.revoke_token("t3", 60).await.unwrap());
    assert_eq!(
        store.token("t1").await.unwrap().unwrap().revoked_at_ms,
        Some(50)
    );
    assert_eq!(
        store.token("t2").await.unwrap().unwrap().revoked_at_ms,
        None
    );

    let paid = Account {
        name: "renamed".into(),
        plan: Plan::Paid,
        daily_free_neurons: 5.0,
        ..a.clone()
    };
    assert!(store.update_account(&paid).await.unwrap());
    assert_eq!(store.account("a").await.unwrap(), Some(paid));
    assert_eq!(store.account("missing").await.unwrap(), None);
    assert!(
        !store
            .update_account(&account("missing", Plan::Free, 1.0))
            .await
            .unwrap()
    );
}

pub async fn the_ledger_adds_up_per_account_day_and_model(stores: &Stores) {
    let ledger = &stores.ledger;
    // The last millisecond of one UTC day and the first of the next.
    let (late, early) = (MIDNIGHT - 1, MIDNIGHT);
    ledger
        .record_request(&record("1", Some("a"), late - 5, 1.0))
        .await
        .unwrap();
    ledger
        .record_request(&record("2", Some("a"), late, 2.0))
        .await
        .unwrap();
    let mut failed = record("3", Some("a"), late, 0.0);
    (failed.error_code, failed.http_status) = (Some(3036), 429);
    (failed.prompt_tokens, failed.completion_tokens) = (0, 0);
    ledger.record_request(&failed).await.unwrap();
    ledger
        .record_request(&record("4", Some("a"), early, 4.0))
        .await
        .unwrap();
    ledger
        .record_request(&record("5", Some("b"), late, 8.0))
        .await
        .unwrap();
    // Refused before an account was known, or before a model was: logged, not in any ledger.
    ledger
        .record_request(&record("6", None, late, 0.0))
        .await
        .unwrap();
    let mut unparsed = record("7", Some("a"), late, 0.0);
    (unparsed.model, unparsed.served_by) = (String::new(), None);
    ledger.record_request(&unparsed).await.unwrap();

    assert_eq!(ledger.request("3").await.unwrap(), Some(failed));
    assert_eq!(ledger.request("7").await.unwrap(), Some(unparsed));
    assert_eq!(ledger.request("8").await.unwrap(), None);
    assert_eq!(ledger.neurons_spent("a", "2026-11-22").await.unwrap(), 3.0);
    assert_eq!(ledger.neurons_spent("a", "2026-11-23").await.unwrap(), 4.0);
    assert_eq!(ledger.neurons_spent("b", "2026-11-22").await.unwrap(), 8.0);
    assert_eq!(ledger.neurons_spent("c", "2026-11-22").await.unwrap(), 0.0);

    let rows = ledger
        .usage(&query("a", "2026-11-22", "2026-11-23"))
        .await
        .unwrap();
    assert_eq!(
        rows[0],
        DailyUsage {
            day: "2026-11-22".into(),
            // The model that served, where one did.
            model: "@hf/qwen/qwen2.5-coder-0.5b-instruct".into(),
            requests: 3,
            errors: 1,
            input_tokens: 20,
            output_tokens: 10,
            neurons: 3.0,
            billable_neurons: 0.0,
        }
    );
    assert_eq!((rows[1].day.as_str(), rows[1].neurons), ("2026-11-23", 4.0));
    assert_eq!(rows.len(), 2);

    // A record whose id was logged before is refused as a whole: the ledger is unchanged.
    assert!(
        ledger
            .record_request(&record("1", Some("a"), late, 1.0))
            .await
            .is_err()
    );
    assert_eq!(ledger.neurons_spent("a", "2026-11-22").await.unwrap(), 3.0);
}

pub async fn usage_queries_select_days_and_models(stores: &Stores) {
    let ledger = &stores.ledger;
    for (id, day, model, billable) in [
        ("1", 0, "m1", 0.0),
        ("2", 1, "m2", 0.5),
        ("3", 1, "m1", 0.0),
        ("4", 2, "m1", 0.25),
    ] {
        let mut row = record(id, Some("a"), MIDNIGHT + day * DAY_MS, 1.0);
        (row.served_by, row.billable_neurons) = (Some(model.into()), billable);
        ledger.record_request(&row).await.unwrap();
    }
    let days_and_models = |rows: Vec<DailyUsage>| -> Vec<(String, String)> {
        rows.into_iter().map(|row| (row.day, row.model)).collect()
    };
    // Inclusive at both ends, by day then model.
    let middle = ledger
        .usage(&query("a", "2026-11-24", "2026-11-24"))
        .await
        .unwrap();
    assert_eq!(middle[1].billable_neurons, 0.5);
    assert_eq!(
        days_and_models(middle),
        [
            ("2026-11-24".into(), "m1".into()),
            ("2026-11-24".into(), "m2".into())
        ]
    );
    let all = ledger
        .usage(&query("a", "2026-11-23", "2026-11-25"))
        .await
        .unwrap();
    assert_eq!(all.len(), 4);
    let m1 = UsageQuery {
        model: Some("m1".into()),
        ..query("a", "2026-11-24", "2026-11-30")
    };
    assert_eq!(
        days_and_models(ledger.usage(&m1).await.unwrap()),
        [
            ("2026-11-24".into(), "m1".into()),
            ("2026-11-25".into(), "m1".into())
        ]
    );
    let empty = ledger.usage(&query("a", "2026-11-26", "2026-12-31")).await;
    assert!(empty.unwrap().is_empty());
    assert!(
        ledger
            .usage(&query("b", "2026-11-23", "2026-11-25"))
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn windows_slide_and_say_when_to_retry(stores: &Stores) {
    let windows = &stores.windows;
    let full = |secs| Window::Full {
        retry_after_secs: secs,
    };
    assert_eq!(windows.count("k", 2, 0).await.unwrap(), Window::Allowed);
    assert_eq!(
        windows.count("k", 2, 30_000).await.unwrap(),
        Window::Allowed
    );
    // The first request leaves the window at 60 s.
    assert_eq!(windows.count("k", 2, 45_000).await.unwrap(), full(15));
    assert_eq!(windows.count("k", 2, 59_999).await.unwrap(), full(1));
    // Refused requests are not counted.
    assert_eq!(
        windows.count("k", 2, 60_000).await.unwrap(),
        Window::Allowed
    );
    assert_eq!(windows.count("k", 2, 60_001).await.unwrap(), full(30));
    // Keys are independent.
    assert_eq!(
        windows.count("other", 2, 60_001).await.unwrap(),
        Window::Allowed
    );
}

pub async fn a_free_account_stops_exactly_at_its_allocation(stores: &Stores) {
    let free = account("a", Plan::Free, 3.0);
    let at = MIDNIGHT + 10;
    for id in ["1", "2", "3"] {
        assert!(spend(stores, &free, id, 1.0, at).await);
    }
    // Settling wrote the ledger.
    let spent = stores
        .ledger
        .neurons_spent("a", "2026-11-23")
        .await
        .unwrap();
    assert_eq!(spent, 3.0);
    // 3.0 spent of 3.0: used up.
    assert!(!spend(stores, &free, "4", 1.0, at).await);
    // Just below the allocation still runs.
    let below = account("b", Plan::Free, 3.0);
    assert!(spend(stores, &below, "5", 1.0, at).await);
    assert!(spend(stores, &below, "6", 1.0, at).await);
    let reservation = stores.reservations.reserve(&hold(&below, 1.0, at)).await;
    let reservation = reservation.unwrap().unwrap();
    let real = record("7", Some("b"), at, 0.999);
    stores
        .reservations
        .settle(&reservation, real)
        .await
        .unwrap();
    assert!(spend(stores, &below, "8", 1.0, at).await);
    assert!(!spend(stores, &below, "9", 1.0, at).await);
}

pub async fn reservations_hold_until_settled_or_released(stores: &Stores) {
    let reservations = &stores.reservations;
    let free = account("a", Plan::Free, 3.0);
    let at = MIDNIGHT + 10;
    let held = reservations.reserve(&hold(&free, 3.0, at)).await.unwrap();
    let held = held.expect("nothing spent yet");
    assert!(!spend(stores, &free, "1", 1.0, at).await, "all of it held");
    reservations.release(&held).await.unwrap();
    let held = reservations.reserve(&hold(&free, 2.5, at)).await.unwrap();
    let held = held.expect("released");
    // 2.5 held of 3.0: one more fits, then none.
    let more = reservations.reserve(&hold(&free, 1.0, at)).await.unwrap();
    assert!(more.is_some());
    assert!(
        reservations
            .reserve(&hold(&free, 1.0, at))
            .await
            .unwrap()
            .is_none()
    );
    reservations.release(&more.unwrap()).await.unwrap();
    // The real cost replaces the reservation: 0.5 spent, nothing held.
    let real = record("2", Some("a"), at, 0.5);
    reservations.settle(&held, real).await.unwrap();
    assert!(spend(stores, &free, "3", 2.5, at).await);
    assert!(!spend(stores, &free, "4", 1.0, at).await, "3.0 spent");
}

pub async fn reservations_expire(stores: &Stores) {
    let reservations = &stores.reservations;
    let free = account("a", Plan::Free, 3.0);
    let at = MIDNIGHT + 10;
    let forgotten = Hold {
        expires_at_ms: at + 1_000,
        ..hold(&free, 3.0, at)
    };
    // Never settled nor released, as when a server is killed mid-request.
    reservations.reserve(&forgotten).await.unwrap().unwrap();
    assert!(!spend(stores, &free, "1", 1.0, at + 999).await);
    assert!(spend(stores, &free, "2", 1.0, at + 1_000).await);
}

pub async fn the_day_starts_from_the_ledger_and_resets_at_midnight(stores: &Stores) {
    let free = account("a", Plan::Free, 2.0);
    let before_midnight = MIDNIGHT - 1;
    // Spent before this backend saw any reservation (another server, or before a restart).
    let earlier = record("spent", Some("a"), before_midnight - 5, 2.0);
    stores.ledger.record_request(&earlier).await.unwrap();
    assert!(!spend(stores, &free, "1", 1.0, before_midnight).await);
    // A new day starts from nothing spent.
    let held = stores
        .reservations
        .reserve(&hold(&free, 1.0, MIDNIGHT))
        .await;
    let held = held.unwrap().expect("a new day");
    assert!(spend(stores, &free, "2", 1.0, MIDNIGHT + 1).await);
    assert!(!spend(stores, &free, "3", 1.0, MIDNIGHT + 2).await);
    let real = record("4", Some("a"), MIDNIGHT, 1.0);
    stores.reservations.settle(&held, real).await.unwrap();
    let today = stores
        .ledger
        .neurons_spent("a", "2026-11-23")
        .await
        .unwrap();
    assert_eq!(today, 2.0);
    assert!(!spend(stores, &free, "5", 1.0, MIDNIGHT + DAY_MS - 1).await);
    assert!(spend(stores, &free, "6", 1.0, MIDNIGHT + DAY_MS).await);
}

pub async fn a_paid_account_goes_on_and_the_excess_is_billable(stores: &Stores) {
    let paid = account("a", Plan::Paid, 2.0);
    let at = MIDNIGHT + 10;
    for id in ["1", "2", "3"] {
        assert!(
            spend(stores, &paid, id, 1.5, at).await,
            "paid is never refused"
        );
    }
    let billable = async |id| {
        let row = stores.ledger.request(id).await.unwrap();
        row.expect("settled into the log").billable_neurons
    };
    assert_eq!(billable("1").await, 0.0);
    assert_eq!(billable("2").await, 1.0);
    assert_eq!(billable("3").await, 1.5);
    let rows = stores
        .ledger
        .usage(&query("a", "2026-11-23", "2026-11-23"))
        .await
        .unwrap();
    assert_eq!((rows[0].neurons, rows[0].billable_neurons), (4.5, 2.5));
}
