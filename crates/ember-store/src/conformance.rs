//! The checks every backend must pass: what the gateway, the HTTP routes and the admin commands
//! rely on. Each check takes a fresh `Stores`; `conformance_tests!` turns them all into tests
//! for one backend, so a new backend runs exactly this list.

use crate::{
    Account, AnalyticsQuery, BatchItemResult, BatchStatus, CachedResponse, DAY_MS, DailyUsage,
    Finetune, Gateway, GatewayLog, Hold, ItemOutcome, LogPatch, LogQuery, LogStrategy, NewBatch,
    NewBatchRequest, Plan, RESPONSE_KEEP_MS, RateTechnique, RequestRecord, Route, RouteDeployment,
    RouteVersion, StoreError, StoredResponse, Stores, Token, UsageQuery, Window, gateway_cache_key,
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
            a_paid_account_goes_on_and_the_excess_is_billable,
            windows_of_any_length,
            spending_adds_up_within_its_window,
            gateways_are_per_account,
            gateway_logs_filter_page_and_add_up,
            gateway_logs_keep_their_bound,
            gateway_logs_take_feedback_and_go,
            gateway_analytics_add_up_per_bucket_and_model,
            routes_keep_versions_and_deployments,
            cached_responses_expire_and_go_with_their_gateway,
            batches_queue_claim_and_finish_each_request_once,
            responses_are_kept_per_account_for_30_days,
            finetunes_are_per_account_by_id_or_name
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
        batch_item: None,
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

pub async fn windows_of_any_length(stores: &Stores) {
    let windows = &stores.windows;
    let over = async |at| windows.count_over("gw", 1, 10_000, at).await.unwrap();
    assert_eq!(over(0).await, Window::Allowed);
    assert_eq!(
        over(9_999).await,
        Window::Full {
            retry_after_secs: 1
        }
    );
    assert_eq!(over(10_000).await, Window::Allowed);
}

fn gateway(account: &str, id: &str) -> Gateway {
    Gateway {
        account_id: account.into(),
        id: id.into(),
        cache_ttl: 0,
        cache_invalidate_on_update: false,
        collect_logs: true,
        rate_limiting_limit: None,
        rate_limiting_interval: None,
        rate_limiting_technique: RateTechnique::Fixed,
        authentication: false,
        log_management: None,
        log_management_strategy: LogStrategy::StopInserting,
        created_at_ms: 1,
        modified_at_ms: 1,
        guardrails: None,
        retry_max_attempts: None,
        retry_delay_ms: None,
        retry_backoff: None,
        dlp: None,
    }
}

pub async fn gateways_are_per_account(stores: &Stores) {
    let store = &stores.gateways;
    assert!(
        store
            .create_gateway(&gateway("a", "default"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .create_gateway(&gateway("a", "default"))
            .await
            .unwrap()
    );
    assert!(
        store
            .create_gateway(&gateway("b", "default"))
            .await
            .unwrap()
    );
    let mut second = gateway("a", "second");
    second.created_at_ms = 2;
    assert!(store.create_gateway(&second).await.unwrap());
    let ids = |list: Vec<Gateway>| list.into_iter().map(|g| g.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.gateways("a").await.unwrap()),
        ["default", "second"]
    );

    second.cache_ttl = 300;
    second.rate_limiting_limit = Some(5);
    second.rate_limiting_interval = Some(60);
    second.rate_limiting_technique = RateTechnique::Sliding;
    second.log_management = Some(10);
    second.log_management_strategy = LogStrategy::DeleteOldest;
    second.modified_at_ms = 9;
    second.guardrails = Some(r#"{"prompt":{"S1":"BLOCK"},"response":{}}"#.into());
    second.retry_max_attempts = Some(3);
    second.retry_delay_ms = Some(250);
    second.retry_backoff = Some("linear".into());
    second.dlp = Some(r#"{"enabled":true,"policies":[]}"#.into());
    assert!(store.update_gateway(&second).await.unwrap());
    assert_eq!(store.gateway("a", "second").await.unwrap(), Some(second));
    assert!(!store.update_gateway(&gateway("a", "none")).await.unwrap());

    assert!(store.delete_gateway("a", "second").await.unwrap());
    assert!(!store.delete_gateway("a", "second").await.unwrap());
    assert_eq!(store.gateway("a", "second").await.unwrap(), None);
    assert!(store.gateway("b", "default").await.unwrap().is_some());
}

fn log(id: &str, gateway: &str, at_ms: i64) -> GatewayLog {
    GatewayLog {
        id: id.into(),
        account_id: "a".into(),
        gateway_id: gateway.into(),
        created_at_ms: at_ms,
        provider: "workers-ai".into(),
        model: "@cf/meta/llama-3.1-8b-instruct".into(),
        model_type: Some("Text Generation".into()),
        path: "@cf/meta/llama-3.1-8b-instruct".into(),
        duration_ms: 10,
        status_code: 200,
        success: true,
        tokens_in: 3,
        tokens_out: 4,
        cost: 0.5,
        request_size: 2,
        request_body: Some(b"{}".to_vec()),
        response_body: Some(vec![0, 159, 146, 150]),
        guardrails: Some(r#"{"prompt":{"safe":true,"categories":[]}}"#.into()),
        dlp: Some(r#"{"findings":[],"action":"FLAG"}"#.into()),
        ..GatewayLog::default()
    }
}

fn logs_of(gateway: &str) -> LogQuery {
    LogQuery {
        account_id: "a".into(),
        gateway_id: gateway.into(),
        page: 1,
        per_page: 20,
        ..LogQuery::default()
    }
}

pub async fn gateway_logs_filter_page_and_add_up(stores: &Stores) {
    let logs = &stores.gateway_logs;
    let mut failed = log("2", "g", 20);
    (failed.success, failed.status_code, failed.duration_ms) = (false, 500, 90);
    let mut cached = log("3", "g", 30);
    (cached.cached, cached.tokens_in, cached.cost) = (true, 30, 0.0);
    for entry in [
        log("1", "g", 10),
        failed,
        cached.clone(),
        log("4", "other", 40),
    ] {
        assert!(logs.insert_log(&entry, None).await.unwrap());
    }
    assert_eq!(logs.log("a", "g", "3").await.unwrap(), Some(cached));
    assert_eq!(logs.log("a", "other", "3").await.unwrap(), None);

    let (page, totals) = logs.logs(&logs_of("g")).await.unwrap();
    let ids: Vec<_> = page.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(ids, ["3", "2", "1"], "newest first");
    assert_eq!(totals.count, 3);
    assert_eq!((totals.min_cost, totals.max_cost), (0.0, 0.5));
    assert_eq!((totals.min_duration_ms, totals.max_duration_ms), (10, 90));
    assert_eq!((totals.min_tokens_in, totals.max_tokens_in), (3, 30));
    assert_eq!((totals.min_total_tokens, totals.max_total_tokens), (7, 34));

    let second_page = LogQuery {
        page: 2,
        per_page: 2,
        ..logs_of("g")
    };
    let (page, totals) = logs.logs(&second_page).await.unwrap();
    assert_eq!((page.len(), page[0].id.as_str(), totals.count), (1, "1", 3));
    let failures = LogQuery {
        success: Some(false),
        ..logs_of("g")
    };
    let (page, _) = logs.logs(&failures).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].id, "2");
    let hits = LogQuery {
        cached: Some(true),
        ..logs_of("g")
    };
    assert_eq!(logs.logs(&hits).await.unwrap().0[0].id, "3");
    let window = LogQuery {
        created_from_ms: Some(20),
        created_until_ms: Some(30),
        model_type: Some("Text Generation".into()),
        ..logs_of("g")
    };
    let (page, _) = logs.logs(&window).await.unwrap();
    assert_eq!(
        page.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
        ["2"]
    );
    let older = LogQuery {
        created_until_ms: Some(30),
        ..logs_of("g")
    };
    assert_eq!(logs.delete_logs(&older).await.unwrap(), 2);
    assert_eq!(logs.logs(&logs_of("g")).await.unwrap().1.count, 1);
}

pub async fn gateway_logs_keep_their_bound(stores: &Stores) {
    let logs = &stores.gateway_logs;
    let stop = Some((2, LogStrategy::StopInserting));
    assert!(logs.insert_log(&log("1", "stop", 1), stop).await.unwrap());
    assert!(logs.insert_log(&log("2", "stop", 2), stop).await.unwrap());
    assert!(!logs.insert_log(&log("3", "stop", 3), stop).await.unwrap());
    assert_eq!(logs.logs(&logs_of("stop")).await.unwrap().1.count, 2);

    let rotate = Some((2, LogStrategy::DeleteOldest));
    for (id, at) in [("4", 4), ("5", 5), ("6", 6)] {
        assert!(
            logs.insert_log(&log(id, "rotate", at), rotate)
                .await
                .unwrap()
        );
    }
    let (kept, _) = logs.logs(&logs_of("rotate")).await.unwrap();
    let ids: Vec<_> = kept.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(ids, ["6", "5"]);
}

pub async fn gateway_logs_take_feedback_and_go(stores: &Stores) {
    let logs = &stores.gateway_logs;
    assert!(logs.insert_log(&log("1", "g", 1), None).await.unwrap());
    assert!(logs.insert_log(&log("2", "g", 2), None).await.unwrap());
    let patch = LogPatch {
        feedback: Some(Some(-1)),
        score: Some(Some(80)),
        metadata: Some(Some(r#"{"user":1}"#.into())),
    };
    assert!(logs.patch_log("a", "g", "1", &patch).await.unwrap());
    assert!(!logs.patch_log("a", "g", "9", &patch).await.unwrap());
    let patched = logs.log("a", "g", "1").await.unwrap().unwrap();
    assert_eq!((patched.feedback, patched.score), (Some(-1), Some(80)));
    assert_eq!(patched.metadata.as_deref(), Some(r#"{"user":1}"#));
    let cleared = LogPatch {
        feedback: Some(None),
        ..LogPatch::default()
    };
    assert!(logs.patch_log("a", "g", "1", &cleared).await.unwrap());
    let patched = logs.log("a", "g", "1").await.unwrap().unwrap();
    assert_eq!((patched.feedback, patched.score), (None, Some(80)));

    let unhappy = LogQuery {
        success: Some(true),
        feedback: Some(-1),
        ..logs_of("g")
    };
    assert!(logs.patch_log("a", "g", "2", &patch).await.unwrap());
    assert_eq!(logs.delete_logs(&unhappy).await.unwrap(), 1);
    assert_eq!(logs.logs(&logs_of("g")).await.unwrap().1.count, 1);
    assert!(
        stores
            .gateways
            .create_gateway(&gateway("a", "g"))
            .await
            .unwrap()
    );
    assert!(stores.gateways.delete_gateway("a", "g").await.unwrap());
    assert_eq!(logs.logs(&logs_of("g")).await.unwrap().1.count, 0);
}

pub async fn cached_responses_expire_and_go_with_their_gateway(stores: &Stores) {
    let cache = &stores.response_cache;
    let response = |gateway: &str| CachedResponse {
        gateway_key: gateway_cache_key("a", gateway),
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        body: b"data: {}\n\ndata: [DONE]\n\n".to_vec(),
    };
    cache.keep("k1", &response("g"), 0, 1_000).await.unwrap();
    cache.keep("k2", &response("h"), 0, 1_000).await.unwrap();
    assert_eq!(cache.cached("k1", 999).await.unwrap(), Some(response("g")));
    assert_eq!(cache.cached("k1", 1_000).await.unwrap(), None, "expired");
    assert_eq!(cache.cached("nothing", 0).await.unwrap(), None);
    cache
        .keep("k1", &response("g"), 1_000, 2_000)
        .await
        .unwrap();
    assert!(
        cache.cached("k1", 1_500).await.unwrap().is_some(),
        "kept again"
    );
    cache
        .forget_gateway(&gateway_cache_key("a", "g"))
        .await
        .unwrap();
    assert_eq!(cache.cached("k1", 1_500).await.unwrap(), None);
    assert!(cache.cached("k2", 500).await.unwrap().is_some());
}

pub async fn gateway_analytics_add_up_per_bucket_and_model(stores: &Stores) {
    let logs = &stores.gateway_logs;
    let minute = 60_000;
    let mut entries = Vec::new();
    for (i, duration) in [10, 20, 30, 40].into_iter().enumerate() {
        let mut entry = log(&format!("a{i}"), "g", i as i64 * 1_000);
        entry.duration_ms = duration;
        entries.push(entry);
    }
    entries[1].success = false;
    entries[2].cached = true;
    let mut other_model = log("b", "g", 2_000);
    other_model.model = "@cf/baai/bge-small-en-v1.5".into();
    let mut next_minute = log("c", "g", minute + 1);
    next_minute.duration_ms = 99;
    let mut outside = log("d", "g", 3 * minute);
    outside.tokens_in = 1_000;
    entries.extend([other_model, next_minute, outside, log("e", "other", 0)]);
    for entry in &entries {
        assert!(logs.insert_log(entry, None).await.unwrap());
    }
    let query = AnalyticsQuery {
        account_id: "a".into(),
        gateway_id: "g".into(),
        since_ms: 0,
        until_ms: 3 * minute,
        bucket_ms: minute,
    };
    let rows = logs.analytics(&query).await.unwrap();
    let shape: Vec<_> = rows
        .iter()
        .map(|r| (r.bucket_start_ms, r.model.as_str(), r.requests))
        .collect();
    assert_eq!(
        shape,
        [
            (0, "@cf/baai/bge-small-en-v1.5", 1),
            (0, "@cf/meta/llama-3.1-8b-instruct", 4),
            (minute, "@cf/meta/llama-3.1-8b-instruct", 1)
        ]
    );
    let first = &rows[1];
    assert_eq!((first.errors, first.cached), (1, 1));
    assert_eq!(
        (first.tokens_in, first.tokens_out, first.cost),
        (12, 16, 2.0)
    );
    assert_eq!(
        (
            first.duration_ms_p50,
            first.duration_ms_p95,
            first.duration_ms_p99
        ),
        (20, 40, 40)
    );
    assert_eq!(rows[2].duration_ms_p99, 99);
}

pub async fn routes_keep_versions_and_deployments(stores: &Stores) {
    let routes = &stores.routes;
    let route = Route {
        account_id: "a".into(),
        gateway_id: "g".into(),
        id: "r1".into(),
        name: "support".into(),
        deployed_version_id: "v1".into(),
        created_at_ms: 1,
        modified_at_ms: 1,
    };
    let version = |id: &str, at| RouteVersion {
        id: id.into(),
        elements: format!("[{{\"version\": \"{id}\"}}]"),
        created_at_ms: at,
    };
    assert!(
        routes
            .create_route(&route, &version("v1", 1))
            .await
            .unwrap()
    );
    let same_name = Route {
        id: "r2".into(),
        ..route.clone()
    };
    assert!(
        !routes
            .create_route(&same_name, &version("v9", 1))
            .await
            .unwrap()
    );
    assert_eq!(
        routes.route("a", "g", "support").await.unwrap(),
        Some(route.clone())
    );
    assert_eq!(
        routes.route("a", "g", "r1").await.unwrap(),
        Some(route.clone())
    );
    assert_eq!(routes.route("a", "other", "r1").await.unwrap(), None);

    routes.add_version(&route, &version("v2", 2)).await.unwrap();
    let ids = |list: Vec<RouteVersion>| list.into_iter().map(|v| v.id).collect::<Vec<_>>();
    assert_eq!(ids(routes.versions(&route).await.unwrap()), ["v1", "v2"]);
    let deployment = |version: &str| RouteDeployment {
        id: format!("d-{version}"),
        version_id: version.into(),
        created_at_ms: 3,
    };
    assert!(routes.deploy(&route, &deployment("v2")).await.unwrap());
    assert!(!routes.deploy(&route, &deployment("v7")).await.unwrap());
    let deployed = routes.route("a", "g", "support").await.unwrap().unwrap();
    assert_eq!(
        (
            deployed.deployed_version_id.as_str(),
            deployed.modified_at_ms
        ),
        ("v2", 3)
    );
    let deployments = routes.deployments(&route).await.unwrap();
    let versions: Vec<_> = deployments.iter().map(|d| d.version_id.as_str()).collect();
    assert_eq!(versions, ["v1", "v2"]);
    assert_eq!(routes.routes("a", "g").await.unwrap().len(), 1);

    assert!(
        stores
            .gateways
            .create_gateway(&gateway("a", "g"))
            .await
            .unwrap()
    );
    assert!(stores.gateways.delete_gateway("a", "g").await.unwrap());
    assert!(
        routes.routes("a", "g").await.unwrap().is_empty(),
        "gone with the gateway"
    );
    assert!(!routes.delete_route(&route).await.unwrap());
}

pub async fn spending_adds_up_within_its_window(stores: &Stores) {
    let windows = &stores.windows;
    windows.spend("user", 0.25, 10_000, 0).await.unwrap();
    windows.spend("user", 0.5, 10_000, 4_000).await.unwrap();
    windows.spend("other", 9.0, 10_000, 4_000).await.unwrap();
    assert_eq!(windows.spent("user", 10_000, 9_999).await.unwrap(), 0.75);
    assert_eq!(windows.spent("user", 10_000, 10_000).await.unwrap(), 0.5);
    assert_eq!(windows.spent("user", 10_000, 14_000).await.unwrap(), 0.0);
    assert_eq!(windows.spent("nobody", 10_000, 0).await.unwrap(), 0.0);
}

fn new_batch(id: &str, account: &str, created_at_ms: i64, requests: usize) -> NewBatch {
    NewBatch {
        id: id.into(),
        account_id: account.into(),
        model: "@cf/baai/bge-small-en-v1.5".into(),
        created_at_ms,
        requests: (0..requests)
            .map(|i| NewBatchRequest {
                input: format!("{{\"text\": \"request {i}\"}}"),
                external_reference: (i == 0).then(|| "first".to_string()),
            })
            .collect(),
    }
}

/// Writes a batch request's result with its charge, as the batch processor does.
async fn finish(stores: &Stores, batch: &str, index: u32, id: &str, neurons: f64) {
    let mut charged = record(id, Some("a"), MIDNIGHT, neurons);
    charged.batch_item = Some(BatchItemResult {
        batch_id: batch.into(),
        index,
        outcome: ItemOutcome {
            success: true,
            result: format!("{{\"ran\": \"{id}\"}}"),
        },
    });
    stores.ledger.record_request(&charged).await.unwrap();
}

pub async fn batches_queue_claim_and_finish_each_request_once(stores: &Stores) {
    let queue = &stores.batches;
    assert!(
        queue
            .enqueue(&new_batch("b1", "a", 1, 3), 10)
            .await
            .unwrap()
    );
    assert!(
        !queue
            .enqueue(&new_batch("b2", "a", 2, 8), 10)
            .await
            .unwrap(),
        "3 pending + 8 would pass the bound"
    );
    assert!(
        queue
            .enqueue(&new_batch("b2", "a", 2, 1), 10)
            .await
            .unwrap()
    );
    let batch = queue.batch("b1").await.unwrap().unwrap();
    assert_eq!(
        (batch.status, batch.requests, batch.finished),
        (BatchStatus::Queued, 3, 0)
    );
    assert_eq!(batch.account_id, "a");

    // Claims: oldest batch first, each request once until its claim lapses.
    let taken = queue.claim(2, None, 100, 200).await.unwrap();
    let taken: Vec<_> = taken
        .iter()
        .map(|i| (i.batch_id.as_str(), i.index))
        .collect();
    assert_eq!(taken, [("b1", 0), ("b1", 1)]);
    let status = queue.batch("b1").await.unwrap().unwrap().status;
    assert_eq!(status, BatchStatus::Running);
    let next = queue.claim(10, None, 150, 300).await.unwrap();
    let next: Vec<_> = next
        .iter()
        .map(|i| (i.batch_id.as_str(), i.index))
        .collect();
    assert_eq!(next, [("b1", 2), ("b2", 0)]);
    assert!(queue.claim(10, None, 199, 400).await.unwrap().is_empty());
    let only_b2 = queue.claim(10, Some("b2"), 300, 400).await.unwrap();
    assert_eq!(
        only_b2
            .iter()
            .map(|i| i.batch_id.as_str())
            .collect::<Vec<_>>(),
        ["b2"]
    );
    assert_eq!(
        queue.claim(10, None, 200, 400).await.unwrap().len(),
        2,
        "lapsed"
    );

    // A result is stored with its charge, once.
    finish(stores, "b1", 0, "b1:0", 2.0).await;
    finish(stores, "b1", 0, "b1:0 again", 5.0).await;
    assert_eq!(
        stores
            .ledger
            .neurons_spent("a", "2026-11-23")
            .await
            .unwrap(),
        2.0
    );
    assert_eq!(stores.ledger.request("b1:0 again").await.unwrap(), None);
    let items = queue.items("b1").await.unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0].external_reference.as_deref(), Some("first"));
    assert_eq!(
        items[0].outcome.as_ref().unwrap().result,
        "{\"ran\": \"b1:0\"}"
    );
    assert_eq!(items[1].outcome, None);

    // Requests given back are claimable at once.
    assert_eq!(queue.claim(1, None, 400, 900).await.unwrap()[0].index, 1);
    queue.unclaim("b1", &[1]).await.unwrap();
    assert_eq!(queue.claim(1, None, 400, 900).await.unwrap()[0].index, 1);

    // A restarted server takes the unfinished requests again at once.
    queue.release_stale_claims().await.unwrap();
    let again = queue.claim(10, None, 0, 1).await.unwrap();
    let again: Vec<_> = again
        .iter()
        .map(|i| (i.batch_id.as_str(), i.index))
        .collect();
    assert_eq!(again, [("b1", 1), ("b1", 2), ("b2", 0)]);

    finish(stores, "b1", 1, "b1:1", 1.0).await;
    finish(stores, "b1", 2, "b1:2", 1.0).await;
    let done = queue.batch("b1").await.unwrap().unwrap();
    assert_eq!((done.status, done.finished), (BatchStatus::Done, 3));
    assert_eq!(
        (done.prompt_tokens, done.completion_tokens, done.neurons),
        (30, 15, 4.0)
    );
    let finished_at = done.finished_at_ms.unwrap();
    assert_eq!(finished_at, MIDNIGHT + 42);

    let listed = queue.batches(Some("a"), 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
        ["b2", "b1"]
    );
    assert!(queue.batches(Some("other"), 10).await.unwrap().is_empty());
    assert_eq!(
        queue.expire(finished_at).await.unwrap(),
        0,
        "not before it finished"
    );
    assert_eq!(queue.expire(finished_at + 1).await.unwrap(), 1);
    assert_eq!(queue.batch("b1").await.unwrap(), None);
    assert!(queue.items("b1").await.unwrap().is_empty());
    assert_eq!(
        queue.batches(None, 10).await.unwrap().len(),
        1,
        "b2 is unfinished"
    );
}

pub async fn responses_are_kept_per_account_for_30_days(stores: &Stores) {
    let kept = |id: &str, account: &str, at_ms: i64| StoredResponse {
        id: id.into(),
        account_id: account.into(),
        created_at_ms: at_ms,
        response: format!("{{\"id\": \"{id}\"}}"),
        conversation: "[]".into(),
    };
    let responses = &stores.responses;
    responses
        .keep_response(&kept("resp_1", "a", MIDNIGHT))
        .await
        .unwrap();
    responses
        .keep_response(&kept("resp_2", "b", MIDNIGHT + 1))
        .await
        .unwrap();
    assert_eq!(
        responses.response("a", "resp_1").await.unwrap(),
        Some(kept("resp_1", "a", MIDNIGHT))
    );
    assert_eq!(
        responses.response("b", "resp_1").await.unwrap(),
        None,
        "another account's"
    );
    assert!(!responses.forget_response("b", "resp_1").await.unwrap());
    assert!(responses.forget_response("b", "resp_2").await.unwrap());
    assert_eq!(responses.response("b", "resp_2").await.unwrap(), None);
    // A response kept 30 days later forgets the first.
    let later = MIDNIGHT + RESPONSE_KEEP_MS + 1;
    responses
        .keep_response(&kept("resp_3", "a", later))
        .await
        .unwrap();
    assert_eq!(responses.response("a", "resp_1").await.unwrap(), None);
    assert!(responses.response("a", "resp_3").await.unwrap().is_some());
}

pub async fn finetunes_are_per_account_by_id_or_name(stores: &Stores) {
    let finetune = |id: &str, account: &str, name: &str, at_ms: i64| Finetune {
        id: id.into(),
        account_id: account.into(),
        model: "@hf/qwen/qwen2.5-coder-0.5b-instruct".into(),
        name: name.into(),
        description: (id == "ft-1").then(|| "first".into()),
        created_at_ms: at_ms,
        modified_at_ms: at_ms,
    };
    let finetunes = &stores.finetunes;
    let first = finetune("ft-1", "a", "tone", MIDNIGHT);
    assert!(finetunes.create_finetune(&first).await.unwrap());
    // Names are unique per account, not across accounts.
    let taken = finetune("ft-2", "a", "tone", MIDNIGHT + 1);
    assert!(!finetunes.create_finetune(&taken).await.unwrap());
    let other = finetune("ft-3", "b", "tone", MIDNIGHT + 2);
    assert!(finetunes.create_finetune(&other).await.unwrap());
    // A name that is another finetune's id: the id wins.
    let tricky = finetune("ft-4", "a", "ft-1", MIDNIGHT + 3);
    assert!(finetunes.create_finetune(&tricky).await.unwrap());
    assert_eq!(
        finetunes.finetune("a", "tone").await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(finetunes.finetune("a", "ft-1").await.unwrap(), Some(first));
    assert_eq!(finetunes.finetune("b", "ft-1").await.unwrap(), None);
    let ids = |list: Vec<Finetune>| list.into_iter().map(|f| f.id).collect::<Vec<_>>();
    assert_eq!(
        ids(finetunes.finetunes("a").await.unwrap()),
        vec!["ft-1", "ft-4"]
    );
    assert!(
        finetunes
            .touch_finetune("a", "ft-1", MIDNIGHT + 9)
            .await
            .unwrap()
    );
    assert!(
        !finetunes
            .touch_finetune("b", "ft-1", MIDNIGHT + 9)
            .await
            .unwrap()
    );
    let touched = finetunes.finetune("a", "ft-1").await.unwrap().unwrap();
    assert_eq!(touched.modified_at_ms, MIDNIGHT + 9);
    assert!(!finetunes.delete_finetune("b", "ft-1").await.unwrap());
    assert!(finetunes.delete_finetune("a", "ft-1").await.unwrap());
    assert_eq!(finetunes.finetune("a", "tone").await.unwrap(), None);
    assert_eq!(ids(finetunes.finetunes("a").await.unwrap()), vec!["ft-4"]);
}
