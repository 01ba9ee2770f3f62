//! `StoredResponses` on SQLite: the `stored_responses` table.

use super::SqliteStore;
use crate::{RESPONSE_KEEP_MS, StoreError, StoredResponse, StoredResponses};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

#[async_trait]
impl StoredResponses for SqliteStore {
    async fn keep_response(&self, response: &StoredResponse) -> Result<(), StoreError> {
        let response = response.clone();
        self.run(move |connection| {
            let tx = connection.transaction()?;
            tx.execute(
                "DELETE FROM stored_responses WHERE created_at_ms < ?1",
                [response.created_at_ms - RESPONSE_KEEP_MS],
            )?;
            tx.execute(
                "INSERT INTO stored_responses (id, account_id, created_at_ms, response, conversation)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    response.id,
                    response.account_id,
                    response.created_at_ms,
                    response.response,
                    response.conversation
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn response(
        &self,
        account_id: &str,
        id: &str,
    ) -> Result<Option<StoredResponse>, StoreError> {
        let (account_id, id) = (account_id.to_string(), id.to_string());
        self.run(move |connection| {
            Ok(connection
                .query_row(
                    "SELECT id, account_id, created_at_ms, response, conversation
                     FROM stored_responses WHERE account_id = ?1 AND id = ?2",
                    [account_id, id],
                    |row| {
                        Ok(StoredResponse {
                            id: row.get(0)?,
                            account_id: row.get(1)?,
                            created_at_ms: row.get(2)?,
                            response: row.get(3)?,
                            conversation: row.get(4)?,
                        })
                    },
                )
                .optional()?)
        })
        .await
    }

    async fn forget_response(&self, account_id: &str, id: &str) -> Result<bool, StoreError> {
        let (account_id, id) = (account_id.to_string(), id.to_string());
        self.run(move |connection| {
            let deleted = connection.execute(
                "DELETE FROM stored_responses WHERE account_id = ?1 AND id = ?2",
                [account_id, id],
            )?;
            Ok(deleted > 0)
        })
        .await
    }
}
