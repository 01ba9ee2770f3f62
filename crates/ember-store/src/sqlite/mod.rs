//! The embedded SQLite backend: one file in WAL mode, versioned migrations, one connection
//! shared behind a mutex (SQLite writes one transaction at a time anyway). Every call runs on
//! tokio's blocking pool, never on an async worker. Rate windows and reservations live in
//! process memory (`MemoryWindows`, `MemoryReservations`): one server owns the file, and a
//! request then pays a lock for them instead of three more SQLite write transactions.

mod accounts;
mod batches;
mod finetunes;
mod gateways;
mod ledger;
mod responses;
mod routes;

use crate::{MemoryReservations, MemoryWindows, StoreError, Stores};
use rusqlite::Connection;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Migrations in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE requests (
        id                TEXT PRIMARY KEY,
        created_at_ms     INTEGER NOT NULL,
        route             TEXT NOT NULL,
        model             TEXT NOT NULL,
        served_by         TEXT,
        http_status       INTEGER NOT NULL,
        error_code        INTEGER,
        prompt_tokens     INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        duration_ms       INTEGER NOT NULL
    );
    CREATE INDEX requests_by_time ON requests (created_at_ms);",
    "CREATE TABLE accounts (
        id                 TEXT PRIMARY KEY,
        name               TEXT NOT NULL,
        plan               TEXT NOT NULL,
        daily_free_neurons REAL NOT NULL,
        created_at_ms      INTEGER NOT NULL
    );
    CREATE TABLE tokens (
        id            TEXT PRIMARY KEY,
        account_id    TEXT NOT NULL REFERENCES accounts (id),
        name          TEXT NOT NULL,
        secret_sha256 TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER,
        revoked_at_ms INTEGER
    );
    CREATE TABLE ledger (
        account_id       TEXT NOT NULL,
        day              TEXT NOT NULL,
        model            TEXT NOT NULL,
        requests         INTEGER NOT NULL,
        errors           INTEGER NOT NULL,
        input_tokens     INTEGER NOT NULL,
        output_tokens    INTEGER NOT NULL,
        neurons          REAL NOT NULL,
        billable_neurons REAL NOT NULL,
        PRIMARY KEY (account_id, day, model)
    );
    ALTER TABLE requests ADD COLUMN account_id TEXT;
    ALTER TABLE requests ADD COLUMN neurons REAL NOT NULL DEFAULT 0;
    ALTER TABLE requests ADD COLUMN billable_neurons REAL NOT NULL DEFAULT 0;",
    "CREATE TABLE gateways (
        account_id                 TEXT NOT NULL,
        id                         TEXT NOT NULL,
        cache_ttl                  INTEGER NOT NULL,
        cache_invalidate_on_update INTEGER NOT NULL,
        collect_logs               INTEGER NOT NULL,
        rate_limiting_limit        INTEGER,
        rate_limiting_interval     INTEGER,
        rate_limiting_technique    TEXT NOT NULL,
        authentication             INTEGER NOT NULL,
        log_management             INTEGER,
        log_management_strategy    TEXT NOT NULL,
        created_at_ms              INTEGER NOT NULL,
        modified_at_ms             INTEGER NOT NULL,
        PRIMARY KEY (account_id, id)
    );
    CREATE TABLE gateway_logs (
        id                    TEXT PRIMARY KEY,
        account_id            TEXT NOT NULL,
        gateway_id            TEXT NOT NULL,
        created_at_ms         INTEGER NOT NULL,
        provider              TEXT NOT NULL,
        model                 TEXT NOT NULL,
        model_type            TEXT,
        path                  TEXT NOT NULL,
        duration_ms           INTEGER NOT NULL,
        status_code           INTEGER NOT NULL,
        success               INTEGER NOT NULL,
        cached                INTEGER NOT NULL,
        step                  INTEGER NOT NULL,
        attempts              INTEGER NOT NULL,
        tokens_in             INTEGER NOT NULL,
        tokens_out            INTEGER NOT NULL,
        cost                  REAL NOT NULL,
        custom_cost           INTEGER NOT NULL,
        metadata              TEXT,
        event_id              TEXT,
        request_content_type  TEXT,
        response_content_type TEXT,
        request_size          INTEGER NOT NULL,
        response_size         INTEGER NOT NULL,
        request_body          BLOB,
        response_body         BLOB,
        feedback              INTEGER,
        score                 INTEGER
    );
    CREATE INDEX gateway_logs_by_time ON gateway_logs (account_id, gateway_id, created_at_ms);
    CREATE TABLE response_cache (
        key           TEXT PRIMARY KEY,
        gateway_key   TEXT NOT NULL,
        status        INTEGER NOT NULL,
        headers       TEXT NOT NULL,
        body          BLOB NOT NULL,
        size          INTEGER NOT NULL,
        stored_at_ms  INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL
    );
    CREATE INDEX response_cache_by_age ON response_cache (stored_at_ms);
    CREATE INDEX response_cache_by_gateway ON response_cache (gateway_key);
    CREATE TABLE gateway_routes (
        id                  TEXT PRIMARY KEY,
        account_id          TEXT NOT NULL,
        gateway_id          TEXT NOT NULL,
        name                TEXT NOT NULL,
        deployed_version_id TEXT NOT NULL,
        created_at_ms       INTEGER NOT NULL,
        modified_at_ms      INTEGER NOT NULL,
        UNIQUE (account_id, gateway_id, name)
    );
    CREATE TABLE gateway_route_versions (
        id            TEXT PRIMARY KEY,
        route_id      TEXT NOT NULL REFERENCES gateway_routes (id) ON DELETE CASCADE,
        elements      TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE gateway_route_deployments (
        id            TEXT PRIMARY KEY,
        route_id      TEXT NOT NULL REFERENCES gateway_routes (id) ON DELETE CASCADE,
        version_id    TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL
    );",
    "CREATE TABLE batches (
        id                TEXT PRIMARY KEY,
        account_id        TEXT NOT NULL,
        model             TEXT NOT NULL,
        created_at_ms     INTEGER NOT NULL,
        requests          INTEGER NOT NULL,
        finished          INTEGER NOT NULL DEFAULT 0,
        started           INTEGER NOT NULL DEFAULT 0,
        finished_at_ms    INTEGER,
        prompt_tokens     INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        neurons           REAL NOT NULL DEFAULT 0
    );
    CREATE INDEX batches_by_account ON batches (account_id, created_at_ms);
    CREATE INDEX batches_by_finish ON batches (finished_at_ms) WHERE finished_at_ms IS NOT NULL;
    CREATE TABLE batch_items (
        batch_id           TEXT NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
        idx                INTEGER NOT NULL,
        input              TEXT NOT NULL,
        external_reference TEXT,
        claimed_until_ms   INTEGER,
        success            INTEGER,
        result             TEXT,
        PRIMARY KEY (batch_id, idx)
    );
    CREATE INDEX batch_items_pending ON batch_items (batch_id, idx) WHERE result IS NULL;
    CREATE TABLE stored_responses (
        id            TEXT PRIMARY KEY,
        account_id    TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        response      TEXT NOT NULL,
        conversation  TEXT NOT NULL
    );
    CREATE INDEX stored_responses_by_age ON stored_responses (created_at_ms);",
    "ALTER TABLE gateways ADD COLUMN guardrails TEXT;
    ALTER TABLE gateway_logs ADD COLUMN guardrails TEXT;",
    "ALTER TABLE gateways ADD COLUMN retry_max_attempts INTEGER;
    ALTER TABLE gateways ADD COLUMN retry_delay_ms INTEGER;
    ALTER TABLE gateways ADD COLUMN retry_backoff TEXT;",
    "ALTER TABLE gateways ADD COLUMN dlp TEXT;
    ALTER TABLE gateway_logs ADD COLUMN dlp TEXT;",
    "CREATE TABLE finetunes (
        id             TEXT PRIMARY KEY,
        account_id     TEXT NOT NULL,
        model          TEXT NOT NULL,
        name           TEXT NOT NULL,
        description    TEXT,
        created_at_ms  INTEGER NOT NULL,
        modified_at_ms INTEGER NOT NULL,
        UNIQUE (account_id, name)
    );",
];

/// How many bytes of response bodies the cache holds before it evicts the oldest.
pub const RESPONSE_CACHE_BYTES: u64 = 256 << 20;

/// A handle to the database; clones share one connection.
#[derive(Clone)]
pub struct SqliteStore {
    connection: Arc<Mutex<Connection>>,
    cache_bound_bytes: u64,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date: the
    /// stores of one server.
    pub fn open(path: &Path) -> Result<Stores, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::Folder {
                path: path.display().to_string(),
                source,
            })?;
        }
        let connection = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Ok(SqliteStore::init(connection)?.stores())
    }

    /// A private in-memory database, for tests.
    pub fn in_memory() -> Result<Stores, StoreError> {
        Ok(SqliteStore::init(Connection::open_in_memory()?)?.stores())
    }

    fn stores(self) -> Stores {
        let store = Arc::new(self);
        Stores {
            accounts: store.clone(),
            ledger: store.clone(),
            gateways: store.clone(),
            gateway_logs: store.clone(),
            response_cache: store.clone(),
            routes: store.clone(),
            batches: store.clone(),
            responses: store.clone(),
            finetunes: store.clone(),
            windows: Arc::new(MemoryWindows::default()),
            reservations: Arc::new(MemoryReservations::new(store)),
        }
    }

    fn init(mut connection: Connection) -> Result<SqliteStore, StoreError> {
        connection.pragma_update(None, "journal_mode", "WAL")?;
        // A commit is in the WAL before it returns, so a killed process loses nothing
        // committed; only a power cut may drop the last commits (FULL would fsync each one).
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        // The CLI and the server may write the same file at once.
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        let done: usize = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(done) {
            let tx = connection.transaction()?;
            tx.execute_batch(migration)?;
            tx.pragma_update(None, "user_version", index + 1)?;
            tx.commit()?;
        }
        Ok(SqliteStore {
            connection: Arc::new(Mutex::new(connection)),
            cache_bound_bytes: RESPONSE_CACHE_BYTES,
        })
    }

    /// Runs `work` on the connection on tokio's blocking pool: SQLite calls block (disk, the
    /// connection lock, another process's write), which an async worker must never do.
    async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = connection.lock().unwrap_or_else(|e| e.into_inner());
            work(&mut connection)
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RequestRecord;

    #[tokio::test]
    async fn records_and_the_ledger_survive_reopening_the_file() {
        let dir = std::env::temp_dir().join(format!("ember-store-{}", std::process::id()));
        let path = dir.join("nested").join("ember.db");
        let _ = std::fs::remove_dir_all(&dir);
        let record = RequestRecord {
            id: "r1".into(),
            created_at_ms: 5,
            account_id: Some("a".into()),
            route: "rest".into(),
            model: "m".into(),
            served_by: None,
            http_status: 200,
            error_code: None,
            prompt_tokens: 10,
            completion_tokens: 5,
            neurons: 1.5,
            billable_neurons: 0.0,
            duration_ms: 42,
            batch_item: None,
        };
        SqliteStore::open(&path)
            .unwrap()
            .ledger
            .record_request(&record)
            .await
            .unwrap();
        let stores = SqliteStore::open(&path).unwrap();
        assert_eq!(stores.ledger.request("r1").await.unwrap(), Some(record));
        let spent = stores.ledger.neurons_spent("a", "1970-01-01").await;
        assert_eq!(spent.unwrap(), 1.5);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn the_response_cache_evicts_the_oldest_beyond_its_bound() {
        use crate::{CachedResponse, ResponseCache};
        let mut store = SqliteStore::init(Connection::open_in_memory().unwrap()).unwrap();
        store.cache_bound_bytes = 10;
        let response = |size| CachedResponse {
            gateway_key: "a/g".into(),
            status: 200,
            headers: Vec::new(),
            body: vec![7; size],
        };
        store.keep("old", &response(4), 1, 100).await.unwrap();
        store.keep("mid", &response(4), 2, 100).await.unwrap();
        store.keep("new", &response(4), 3, 100).await.unwrap();
        assert_eq!(store.cached("old", 3).await.unwrap(), None, "evicted");
        assert!(store.cached("mid", 3).await.unwrap().is_some());
        assert!(store.cached("new", 3).await.unwrap().is_some());
        store.keep("huge", &response(11), 4, 100).await.unwrap();
        assert_eq!(store.cached("huge", 4).await.unwrap(), None, "never fits");
    }
}
