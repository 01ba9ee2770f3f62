//! Ember's durable state in an embedded SQLite file: schema migrations and the request log (one
//! row per `run`: which model was asked for and which served, outcome, tokens, duration).
//! Every write is a single statement, so a crash never leaves half a row.

use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Migrations in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &["CREATE TABLE requests (
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
    CREATE INDEX requests_by_time ON requests (created_at_ms);"];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("cannot create the folder for {path}: {source}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// One finished request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    pub id: String,
    pub created_at_ms: i64,
    pub route: String,
    pub model: String,
    pub served_by: Option<String>,
    pub http_status: u16,
    pub error_code: Option<u32>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub duration_ms: u64,
}

/// A handle to the database; clones share one connection.
#[derive(Clone)]
pub struct Store {
    connection: Arc<Mutex<Connection>>,
}

impl Store {
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
        Store::init(connection)
    }

    /// A private in-memory database, for tests.
    pub fn in_memory() -> Result<Store, StoreError> {
        Store::init(Connection::open_in_memory()?)
    }

    fn init(mut connection: Connection) -> Result<Store, StoreError> {
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        let done: usize = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(done) {
            let tx = connection.transaction()?;
            tx.execute_batch(migration)?;
            tx.pragma_update(None, "user_version", index + 1)?;
            tx.commit()?;
        }
        Ok(Store {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.connection.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record_request(&self, record: &RequestRecord) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO requests (id, created_at_ms, route, model, served_by, http_status, error_code,
                                   prompt_tokens, completion_tokens, duration_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                record.id,
                record.created_at_ms,
                record.route,
                record.model,
                record.served_by,
                record.http_status,
                record.error_code,
                record.prompt_tokens,
                record.completion_tokens,
                record.duration_ms as i64,
            ],
        )?;
        Ok(())
    }

    pub fn request(&self, id: &str) -> Result<Option<RequestRecord>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT id, created_at_ms, route, model, served_by, http_status, error_code,
                        prompt_tokens, completion_tokens, duration_ms
                 FROM requests WHERE id = ?1",
                [id],
                |row| {
                    Ok(RequestRecord {
                        id: row.get(0)?,
                        created_at_ms: row.get(1)?,
                        route: row.get(2)?,
                        model: row.get(3)?,
                        served_by: row.get(4)?,
                        http_status: row.get(5)?,
                        error_code: row.get(6)?,
                        prompt_tokens: row.get(7)?,
                        completion_tokens: row.get(8)?,
                        duration_ms: row.get::<_, i64>(9)? as u64,
                    })
                },
            )
            .optional()?)
    }

    pub fn request_count(&self) -> Result<u64, StoreError> {
        Ok(self
            .lock()
            .query_row("SELECT count(*) FROM requests", [], |row| {
                row.get::<_, i64>(0)
            })? as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> RequestRecord {
        RequestRecord {
            id: id.into(),
            created_at_ms: 1,
            route: "rest".into(),
            model: "@cf/meta/llama-3.1-8b-instruct".into(),
            served_by: Some("@hf/qwen/qwen2.5-coder-0.5b-instruct".into()),
            http_status: 200,
            error_code: None,
            prompt_tokens: 10,
            completion_tokens: 5,
            duration_ms: 42,
        }
    }

    #[test]
    fn records_survive_reopening_the_file() {
        let dir = std::env::temp_dir().join(format!("ember-store-{}", std::process::id()));
        let path = dir.join("nested").join("ember.db");
        let _ = std::fs::remove_dir_all(&dir);
        {
            let store = Store::open(&path).unwrap();
            store.record_request(&record("a")).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.request("a").unwrap(), Some(record("a")));
        assert_eq!(store.request_count().unwrap(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let store = Store::in_memory().unwrap();
        store.record_request(&record("a")).unwrap();
        assert!(store.record_request(&record("a")).is_err());
        assert_eq!(store.request("missing").unwrap(), None);
    }
}
