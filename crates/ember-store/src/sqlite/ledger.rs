//! `Ledger` on SQLite: the `requests` table (the log) and the `ledger` table (per account, UTC
//! day and model), written in one transaction, with a batch request's result when the record
//! is one's (`RequestRecord::batch_item`).

use super::SqliteStore;
use crate::{DailyUsage, Ledger, RequestRecord, StoreError, UsageQuery, utc_day};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

#[async_trait]
impl Ledger for SqliteStore {
    async fn record_request(&self, record: &RequestRecord) -> Result<(), StoreError> {
        let record = record.clone();
        self.run(move |connection| record_request(connection, &record))
            .await
    }

    async fn request(&self, id: &str) -> Result<Option<RequestRecord>, StoreError> {
        let id = id.to_string();
        self.run(move |connection| request(connection, &id)).await
    }

    async fn neurons_spent(&self, account_id: &str, day: &str) -> Result<f64, StoreError> {
        let (account_id, day) = (account_id.to_string(), day.to_string());
        self.run(move |connection| neurons_spent(connection, &account_id, &day))
            .await
    }

    async fn usage(&self, query: &UsageQuery) -> Result<Vec<DailyUsage>, StoreError> {
        let query = query.clone();
        self.run(move |connection| usage(connection, &query)).await
    }
}

fn record_request(connection: &mut Connection, record: &RequestRecord) -> Result<(), StoreError> {
    let tx = connection.transaction()?;
    if let Some(item) = &record.batch_item
        && !super::batches::finish_item(&tx, item, record)?
    {
        // It has its result and its charge already (dropping `tx` rolls back).
        return Ok(());
    }
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

fn request(connection: &Connection, id: &str) -> Result<Option<RequestRecord>, StoreError> {
    Ok(connection
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
                    batch_item: None,
                })
            },
        )
        .optional()?)
}

fn neurons_spent(connection: &Connection, account_id: &str, day: &str) -> Result<f64, StoreError> {
    Ok(connection.query_row(
        "SELECT COALESCE(SUM(neurons), 0) FROM ledger WHERE account_id = ?1 AND day = ?2",
        [account_id, day],
        |row| row.get(0),
    )?)
}

fn usage(connection: &Connection, query: &UsageQuery) -> Result<Vec<DailyUsage>, StoreError> {
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
