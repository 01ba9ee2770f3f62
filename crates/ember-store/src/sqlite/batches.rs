//! `BatchQueue` on SQLite: the `batches` table (one row a batch, with running totals) and
//! `batch_items` (one row a request, its claim and its result). Results are written by
//! `ledger::record_request`, in the transaction of their charge (`finish_item`).

use super::SqliteStore;
use crate::{
    Batch, BatchItem, BatchItemResult, BatchQueue, BatchStatus, ClaimedItem, ItemOutcome, NewBatch,
    RequestRecord, StoreError,
};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

#[async_trait]
impl BatchQueue for SqliteStore {
    async fn enqueue(&self, batch: &NewBatch, max_pending: u64) -> Result<bool, StoreError> {
        let batch = batch.clone();
        self.run(move |connection| enqueue(connection, &batch, max_pending))
            .await
    }

    async fn batch(&self, id: &str) -> Result<Option<Batch>, StoreError> {
        let id = id.to_string();
        self.run(move |connection| {
            let sql = format!("SELECT {BATCH_COLUMNS} FROM batches WHERE id = ?1");
            Ok(connection.query_row(&sql, [id], batch_row).optional()?)
        })
        .await
    }

    async fn batches(
        &self,
        account_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Batch>, StoreError> {
        let account_id = account_id.map(str::to_string);
        self.run(move |connection| {
            let sql = format!(
                "SELECT {BATCH_COLUMNS} FROM batches WHERE ?1 IS NULL OR account_id = ?1
                 ORDER BY created_at_ms DESC, id LIMIT ?2"
            );
            let mut statement = connection.prepare(&sql)?;
            let rows = statement.query_map(params![account_id, limit], batch_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn items(&self, batch_id: &str) -> Result<Vec<BatchItem>, StoreError> {
        let batch_id = batch_id.to_string();
        self.run(move |connection| {
            let mut statement = connection.prepare(
                "SELECT idx, input, external_reference, success, result FROM batch_items
                 WHERE batch_id = ?1 ORDER BY idx",
            )?;
            let rows = statement.query_map([batch_id], |row| {
                let result: Option<String> = row.get(4)?;
                Ok(BatchItem {
                    index: row.get(0)?,
                    input: row.get(1)?,
                    external_reference: row.get(2)?,
                    outcome: match result {
                        Some(result) => Some(ItemOutcome {
                            success: row.get(3)?,
                            result,
                        }),
                        None => None,
                    },
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn claim(
        &self,
        limit: u32,
        batch_id: Option<&str>,
        now_ms: i64,
        claimed_until_ms: i64,
    ) -> Result<Vec<ClaimedItem>, StoreError> {
        let batch_id = batch_id.map(str::to_string);
        self.run(move |connection| claim(connection, limit, batch_id, now_ms, claimed_until_ms))
            .await
    }

    async fn release_stale_claims(&self) -> Result<(), StoreError> {
        self.run(|connection| {
            connection.execute(
                "UPDATE batch_items SET claimed_until_ms = NULL
                 WHERE result IS NULL AND claimed_until_ms IS NOT NULL",
                [],
            )?;
            Ok(())
        })
        .await
    }

    async fn unclaim(&self, batch_id: &str, indexes: &[u32]) -> Result<(), StoreError> {
        let (batch_id, indexes) = (batch_id.to_string(), indexes.to_vec());
        self.run(move |connection| {
            let tx = connection.transaction()?;
            for index in indexes {
                tx.execute(
                    "UPDATE batch_items SET claimed_until_ms = NULL WHERE batch_id = ?1 AND idx = ?2",
                    params![batch_id, index],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn expire(&self, finished_before_ms: i64) -> Result<u64, StoreError> {
        self.run(move |connection| {
            // The items go with their batch (ON DELETE CASCADE).
            let deleted = connection.execute(
                "DELETE FROM batches WHERE finished_at_ms < ?1",
                [finished_before_ms],
            )?;
            Ok(deleted as u64)
        })
        .await
    }
}

const BATCH_COLUMNS: &str = "id, account_id, model, created_at_ms, requests, finished, started,
    finished_at_ms, prompt_tokens, completion_tokens, neurons";

fn batch_row(row: &Row) -> rusqlite::Result<Batch> {
    let requests: u32 = row.get(4)?;
    let finished: u32 = row.get(5)?;
    let started: bool = row.get(6)?;
    Ok(Batch {
        id: row.get(0)?,
        account_id: row.get(1)?,
        model: row.get(2)?,
        created_at_ms: row.get(3)?,
        status: match (finished == requests, started) {
            (true, _) => BatchStatus::Done,
            (false, true) => BatchStatus::Running,
            (false, false) => BatchStatus::Queued,
        },
        requests,
        finished,
        finished_at_ms: row.get(7)?,
        prompt_tokens: row.get::<_, i64>(8)? as u64,
        completion_tokens: row.get::<_, i64>(9)? as u64,
        neurons: row.get(10)?,
    })
}

fn enqueue(
    connection: &mut Connection,
    batch: &NewBatch,
    max_pending: u64,
) -> Result<bool, StoreError> {
    let tx = connection.transaction()?;
    let pending: i64 = tx.query_row(
        "SELECT COUNT(*) FROM batch_items WHERE result IS NULL",
        [],
        |row| row.get(0),
    )?;
    if pending as u64 + batch.requests.len() as u64 > max_pending {
        return Ok(false);
    }
    tx.execute(
        "INSERT INTO batches (id, account_id, model, created_at_ms, requests)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            batch.id,
            batch.account_id,
            batch.model,
            batch.created_at_ms,
            batch.requests.len() as i64
        ],
    )?;
    {
        let mut insert = tx.prepare(
            "INSERT INTO batch_items (batch_id, idx, input, external_reference)
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (index, request) in batch.requests.iter().enumerate() {
            insert.execute(params![
                batch.id,
                index as i64,
                request.input,
                request.external_reference
            ])?;
        }
    }
    tx.commit()?;
    Ok(true)
}

fn claim(
    connection: &mut Connection,
    limit: u32,
    batch_id: Option<String>,
    now_ms: i64,
    claimed_until_ms: i64,
) -> Result<Vec<ClaimedItem>, StoreError> {
    let tx = connection.transaction()?;
    let claimed: Vec<ClaimedItem> = {
        let mut statement = tx.prepare(
            "SELECT i.batch_id, b.account_id, b.model, i.idx, i.input
             FROM batch_items i JOIN batches b ON b.id = i.batch_id
             WHERE i.result IS NULL AND (i.claimed_until_ms IS NULL OR i.claimed_until_ms <= ?1)
                   AND (?3 IS NULL OR i.batch_id = ?3)
             ORDER BY b.created_at_ms, i.batch_id, i.idx LIMIT ?2",
        )?;
        let rows = statement.query_map(params![now_ms, limit, batch_id], |row| {
            Ok(ClaimedItem {
                batch_id: row.get(0)?,
                account_id: row.get(1)?,
                model: row.get(2)?,
                index: row.get(3)?,
                input: row.get(4)?,
            })
        })?;
        rows.collect::<Result<_, _>>()?
    };
    for item in &claimed {
        tx.execute(
            "UPDATE batch_items SET claimed_until_ms = ?1 WHERE batch_id = ?2 AND idx = ?3",
            params![claimed_until_ms, item.batch_id, item.index],
        )?;
        tx.execute(
            "UPDATE batches SET started = 1 WHERE id = ?1",
            [&item.batch_id],
        )?;
    }
    tx.commit()?;
    Ok(claimed)
}

/// Stores a batch request's result within `record`'s transaction, and adds its usage to its
/// batch. False when the request already has a result: the caller rolls back, so it is neither
/// stored nor charged twice.
pub(super) fn finish_item(
    tx: &Transaction,
    item: &BatchItemResult,
    record: &RequestRecord,
) -> Result<bool, StoreError> {
    let stored = tx.execute(
        "UPDATE batch_items SET success = ?1, result = ?2, claimed_until_ms = NULL
         WHERE batch_id = ?3 AND idx = ?4 AND result IS NULL",
        params![
            item.outcome.success,
            item.outcome.result,
            item.batch_id,
            item.index
        ],
    )?;
    if stored == 0 {
        return Ok(false);
    }
    let finished_at_ms = record.created_at_ms + record.duration_ms as i64;
    tx.execute(
        "UPDATE batches SET
             finished = finished + 1,
             prompt_tokens = prompt_tokens + ?1,
             completion_tokens = completion_tokens + ?2,
             neurons = neurons + ?3,
             finished_at_ms = CASE WHEN finished + 1 = requests THEN ?4 END
         WHERE id = ?5",
        params![
            record.prompt_tokens,
            record.completion_tokens,
            record.neurons,
            finished_at_ms,
            item.batch_id
        ],
    )?;
    Ok(true)
}
