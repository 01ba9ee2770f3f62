//! `FinetuneStore` on SQLite: the `finetunes` table.

use super::SqliteStore;
use crate::{Finetune, FinetuneStore, StoreError};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, params};

const COLUMNS: &str = "id, account_id, model, name, description, created_at_ms, modified_at_ms";

fn finetune(row: &Row) -> rusqlite::Result<Finetune> {
    Ok(Finetune {
        id: row.get(0)?,
        account_id: row.get(1)?,
        model: row.get(2)?,
        name: row.get(3)?,
        description: row.get(4)?,
        created_at_ms: row.get(5)?,
        modified_at_ms: row.get(6)?,
    })
}

#[async_trait]
impl FinetuneStore for SqliteStore {
    async fn create_finetune(&self, finetune: &Finetune) -> Result<bool, StoreError> {
        let f = finetune.clone();
        self.run(move |connection| {
            let inserted = connection.execute(
                &format!(
                    "INSERT INTO finetunes ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (account_id, name) DO NOTHING"
                ),
                params![
                    f.id,
                    f.account_id,
                    f.model,
                    f.name,
                    f.description,
                    f.created_at_ms,
                    f.modified_at_ms
                ],
            )?;
            Ok(inserted > 0)
        })
        .await
    }

    async fn finetunes(&self, account_id: &str) -> Result<Vec<Finetune>, StoreError> {
        let account_id = account_id.to_string();
        self.run(move |connection| {
            let mut statement = connection.prepare(&format!(
                "SELECT {COLUMNS} FROM finetunes WHERE account_id = ?1
                 ORDER BY created_at_ms, id"
            ))?;
            let rows = statement.query_map([account_id], finetune)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn finetune(
        &self,
        account_id: &str,
        id_or_name: &str,
    ) -> Result<Option<Finetune>, StoreError> {
        let (account_id, key) = (account_id.to_string(), id_or_name.to_string());
        self.run(move |connection| {
            // An id wins over another finetune's name that happens to equal it.
            Ok(connection
                .query_row(
                    &format!(
                        "SELECT {COLUMNS} FROM finetunes
                         WHERE account_id = ?1 AND (id = ?2 OR name = ?2)
                         ORDER BY id = ?2 DESC LIMIT 1"
                    ),
                    [account_id, key],
                    finetune,
                )
                .optional()?)
        })
        .await
    }

    async fn touch_finetune(
        &self,
        account_id: &str,
        id: &str,
        modified_at_ms: i64,
    ) -> Result<bool, StoreError> {
        let (account_id, id) = (account_id.to_string(), id.to_string());
        self.run(move |connection| {
            let updated = connection.execute(
                "UPDATE finetunes SET modified_at_ms = ?3 WHERE account_id = ?1 AND id = ?2",
                params![account_id, id, modified_at_ms],
            )?;
            Ok(updated > 0)
        })
        .await
    }

    async fn delete_finetune(&self, account_id: &str, id: &str) -> Result<bool, StoreError> {
        let (account_id, id) = (account_id.to_string(), id.to_string());
        self.run(move |connection| {
            let deleted = connection.execute(
                "DELETE FROM finetunes WHERE account_id = ?1 AND id = ?2",
                [account_id, id],
            )?;
            Ok(deleted > 0)
        })
        .await
    }
}
