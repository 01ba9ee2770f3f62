//! The embedded SQLite backend: one file in WAL mode, versioned migrations, one connection
//! shared behind a mutex (SQLite writes one transaction at a time anyway).

use crate::{
    Account, DailyUsage, Plan, RequestRecord, Storage, Store, StoreError, Token, UsageQuery,
    utc_day,
};
use rusqlite::{Connection, OptionalExtension, Row, params};
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
];

/// A handle to the database; clones share one connection.
#[derive(Clone)]
pub struct SqliteStore {
    connection: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
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
        Ok(Arc::new(SqliteStore::init(connection)?))
    }

    /// A private in-memory database, for tests.
    pub fn in_memory() -> Result<Store, StoreError> {
        Ok(Arc::new(SqliteStore::init(Connection::open_in_memory()?)?))
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
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.connection.lock().unwrap_or_else(|e| e.into_inner())
    }
}

const ACCOUNT_COLUMNS: &str = "id, name, plan, daily_free_neurons, created_at_ms";
const TOKEN_COLUMNS: &str =
    "id, account_id, name, secret_sha256, created_at_ms, expires_at_ms, revoked_at_ms";

fn account_row(row: &Row) -> rusqlite::Result<Account> {
    let plan: String = row.get(2)?;
    Ok(Account {
        id: row.get(0)?,
        name: row.get(1)?,
        plan: Plan::parse(&plan).unwrap_or(Plan::Free),
        daily_free_neurons: row.get(3)?,
        created_at_ms: row.get(4)?,
    })
}

fn token_row(row: &Row) -> rusqlite::Result<Token> {
    Ok(Token {
        id: row.get(0)?,
        account_id: row.get(1)?,
        name: row.get(2)?,
        secret_sha256: row.get(3)?,
        created_at_ms: row.get(4)?,
        expires_at_ms: row.get(5)?,
        revoked_at_ms: row.get(6)?,
    })
}

impl Storage for SqliteStore {
    fn create_account(&self, account: &Account) -> Result<(), StoreError> {
        self.lock().execute(
            &format!("INSERT INTO accounts ({ACCOUNT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)"),
            params![
                account.id,
                account.name,
                account.plan.as_str(),
                account.daily_free_neurons,
                account.created_at_ms
            ],
        )?;
        Ok(())
    }

    fn update_account(&self, account: &Account) -> Result<bool, StoreError> {
        let changed = self.lock().execute(
            "UPDATE accounts SET name = ?2, plan = ?3, daily_free_neurons = ?4 WHERE id = ?1",
            params![
                account.id,
                account.name,
                account.plan.as_str(),
                account.daily_free_neurons
            ],
        )?;
        Ok(changed == 1)
    }

    fn account(&self, id: &str) -> Result<Option<Account>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?1"),
                [id],
                account_row,
            )
            .optional()?)
    }

    fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY created_at_ms, id"
        ))?;
        let rows = statement.query_map([], account_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn has_accounts(&self) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .query_row("SELECT EXISTS (SELECT 1 FROM accounts)", [], |row| {
                row.get(0)
            })?)
    }

    fn create_token(&self, token: &Token) -> Result<(), StoreError> {
        let connection = self.lock();
        let exists: bool = connection.query_row(
            "SELECT EXISTS (SELECT 1 FROM accounts WHERE id = ?1)",
            [&token.account_id],
            |row| row.get(0),
        )?;
        if !exists {
            return Err(StoreError::Conflict(format!(
                "no account {}",
                token.account_id
            )));
        }
        connection.execute(
            &format!("INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
            params![
                token.id,
                token.account_id,
                token.name,
                token.secret_sha256,
                token.created_at_ms,
                token.expires_at_ms,
                token.revoked_at_ms
            ],
        )?;
        Ok(())
    }

    fn token(&self, id: &str) -> Result<Option<Token>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"),
                [id],
                token_row,
            )
            .optional()?)
    }

    fn tokens(&self, account_id: Option<&str>) -> Result<Vec<Token>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE ?1 IS NULL OR account_id = ?1
             ORDER BY created_at_ms, id"
        ))?;
        let rows = statement.query_map([account_id], token_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn revoke_token(&self, id: &str, at_ms: i64) -> Result<bool, StoreError> {
        let changed = self.lock().execute(
            "UPDATE tokens SET revoked_at_ms = ?2 WHERE id = ?1 AND revoked_at_ms IS NULL",
            params![id, at_ms],
        )?;
        Ok(changed == 1)
    }

    fn record_request(&self, record: &RequestRecord) -> Result<(), StoreError> {
        let mut connection = self.lock();
        let tx = connection.transaction()?;
        tx.execute(
            "INSERT INTO requests (id, created_at_ms, account_id, route, model, served_by,
                                   http_status, error_code, prompt_tokens, completion_tokens,
                                   neurons, billable_neurons, duration_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                record.id,
                record.created_at_ms,
                record.account_id,
                record.route,
                record.model,
                record.served_by,
                record.http_status,
                record.error_code,
                record.prompt_tokens,
                record.completion_tokens,
                record.neurons,
                record.billable_neurons,
                record.duration_ms as i64,
            ],
        )?;
        let model = record.served_by.as_deref().unwrap_or(&record.model);
        // A request that named no model (its body did not parse) stays in the log only.
        if let Some(account_id) = record.account_id.as_ref().filter(|_| !model.is_empty()) {
            tx.execute(
                "INSERT INTO ledger (account_id, day, model, requests, errors, input_tokens,
                                     output_tokens, neurons, billable_neurons)
                 VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (account_id, day, model) DO UPDATE SET
                     requests = requests + 1,
                     errors = errors + excluded.errors,
                     input_tokens = input_tokens + excluded.input_tokens,
                     output_tokens = output_tokens + excluded.output_tokens,
                     neurons = neurons + excluded.neurons,
                     billable_neurons = billable_neurons + excluded.billable_neurons",
                params![
                    account_id,
                    utc_day(record.created_at_ms),
                    model,
                    i64::from(record.error_code.is_some()),
                    record.prompt_tokens,
                    record.completion_tokens,
                    record.neurons,
                    record.billable_neurons,
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn request(&self, id: &str) -> Result<Option<RequestRecord>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT id, created_at_ms, account_id, route, model, served_by, http_status,
                        error_code, prompt_tokens, completion_tokens, neurons, billable_neurons,
                        duration_ms
                 FROM requests WHERE id = ?1",
                [id],
                |row| {
                    Ok(RequestRecord {
                        id: row.get(0)?,
                        created_at_ms: row.get(1)?,
                        account_id: row.get(2)?,
                        route: row.get(3)?,
                        model: row.get(4)?,
                        served_by: row.get(5)?,
                        http_status: row.get(6)?,
                        error_code: row.get(7)?,
                        prompt_tokens: row.get(8)?,
                        completion_tokens: row.get(9)?,
                        neurons: row.get(10)?,
                        billable_neurons: row.get(11)?,
                        duration_ms: row.get::<_, i64>(12)? as u64,
                    })
                },
            )
            .optional()?)
    }

    fn neurons_spent(&self, account_id: &str, day: &str) -> Result<f64, StoreError> {
        Ok(self.lock().query_row(
            "SELECT COALESCE(SUM(neurons), 0) FROM ledger WHERE account_id = ?1 AND day = ?2",
            [account_id, day],
            |row| row.get(0),
        )?)
    }

    fn usage(&self, query: &UsageQuery) -> Result<Vec<DailyUsage>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare(
            "SELECT day, model, requests, errors, input_tokens, output_tokens, neurons,
                    billable_neurons
             FROM ledger
             WHERE account_id = ?1 AND day >= ?2 AND day <= ?3 AND (?4 IS NULL OR model = ?4)
             ORDER BY day, model",
        )?;
        let rows = statement.query_map(
            params![query.account_id, query.since, query.until, query.model],
            |row| {
                Ok(DailyUsage {
                    day: row.get(0)?,
                    model: row.get(1)?,
                    requests: row.get::<_, i64>(2)? as u64,
                    errors: row.get::<_, i64>(3)? as u64,
                    input_tokens: row.get::<_, i64>(4)? as u64,
                    output_tokens: row.get::<_, i64>(5)? as u64,
                    neurons: row.get(6)?,
                    billable_neurons: row.get(7)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: i64 = 86_400_000;

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

    fn account(id: &str) -> Account {
        Account {
            id: id.into(),
            name: "team".into(),
            plan: Plan::Free,
            daily_free_neurons: 10_000.0,
            created_at_ms: 1,
        }
    }

    fn query(account: &str) -> UsageQuery {
        UsageQuery {
            account_id: account.into(),
            since: "1970-01-01".into(),
            until: "1970-12-31".into(),
            model: None,
        }
    }

    #[test]
    fn records_and_the_ledger_survive_reopening_the_file() {
        let dir = std::env::temp_dir().join(format!("ember-store-{}", std::process::id()));
        let path = dir.join("nested").join("ember.db");
        let _ = std::fs::remove_dir_all(&dir);
        {
            let store = SqliteStore::open(&path).unwrap();
            store.create_account(&account("a")).unwrap();
            store
                .record_request(&record("r1", Some("a"), 5, 1.5))
                .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(
            store.request("r1").unwrap(),
            Some(record("r1", Some("a"), 5, 1.5))
        );
        assert_eq!(store.neurons_spent("a", "1970-01-01").unwrap(), 1.5);
        assert_eq!(store.accounts().unwrap(), vec![account("a")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_ledger_adds_up_per_account_day_and_model() {
        let store = SqliteStore::in_memory().unwrap();
        store
            .record_request(&record("1", Some("a"), 5, 1.0))
            .unwrap();
        store
            .record_request(&record("2", Some("a"), 6, 2.0))
            .unwrap();
        let mut failed = record("3", Some("a"), 7, 0.0);
        failed.error_code = Some(3036);
        failed.prompt_tokens = 0;
        failed.completion_tokens = 0;
        store.record_request(&failed).unwrap();
        store
            .record_request(&record("4", Some("a"), DAY_MS + 1, 4.0))
            .unwrap();
        store
            .record_request(&record("5", Some("b"), 5, 8.0))
            .unwrap();
        // Refused before an account was known, or before a model was: logged, not in any ledger.
        store.record_request(&record("6", None, 5, 0.0)).unwrap();
        let mut unparsed = record("7", Some("a"), 5, 0.0);
        (unparsed.model, unparsed.served_by) = (String::new(), None);
        store.record_request(&unparsed).unwrap();

        let rows = store.usage(&query("a")).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            DailyUsage {
                day: "1970-01-01".into(),
                model: "@hf/qwen/qwen2.5-coder-0.5b-instruct".into(),
                requests: 3,
                errors: 1,
                input_tokens: 20,
                output_tokens: 10,
                neurons: 3.0,
                billable_neurons: 0.0,
            }
        );
        assert_eq!((rows[1].day.as_str(), rows[1].neurons), ("1970-01-02", 4.0));
        assert_eq!(store.neurons_spent("a", "1970-01-02").unwrap(), 4.0);
        assert_eq!(store.neurons_spent("b", "1970-01-01").unwrap(), 8.0);
        let only_other_model = UsageQuery {
            model: Some("@cf/other".into()),
            ..query("a")
        };
        assert!(store.usage(&only_other_model).unwrap().is_empty());
        assert!(
            store
                .record_request(&record("1", Some("a"), 5, 1.0))
                .is_err()
        );
        // The refused duplicate rolled back as a whole: the ledger is unchanged.
        assert_eq!(store.neurons_spent("a", "1970-01-01").unwrap(), 3.0);
    }

    #[test]
    fn tokens_belong_to_accounts_and_revoke_once() {
        let store = SqliteStore::in_memory().unwrap();
        assert!(!store.has_accounts().unwrap());
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
            store.create_token(&token),
            Err(StoreError::Conflict(_))
        ));
        store.create_account(&account("a")).unwrap();
        assert!(store.has_accounts().unwrap());
        store.create_token(&token).unwrap();
        assert_eq!(store.token("t1").unwrap(), Some(token.clone()));
        assert_eq!(store.tokens(Some("a")).unwrap().len(), 1);
        assert!(store.tokens(Some("b")).unwrap().is_empty());
        assert!(store.revoke_token("t1", 50).unwrap());
        assert!(!store.revoke_token("t1", 60).unwrap());
        assert_eq!(store.token("t1").unwrap().unwrap().revoked_at_ms, Some(50));
        let mut paid = account("a");
        paid.plan = Plan::Paid;
        paid.daily_free_neurons = 5.0;
        assert!(store.update_account(&paid).unwrap());
        assert_eq!(store.account("a").unwrap(), Some(paid));
        assert!(!store.update_account(&account("missing")).unwrap());
    }
}
