//! AI Gateway's stores on SQLite: the `gateways`, `gateway_logs` and `response_cache` tables.

use super::SqliteStore;
use crate::{
    AnalyticsQuery, AnalyticsRow, CachedResponse, Gateway, GatewayLog, GatewayLogs, GatewayStore,
    LogPatch, LogQuery, LogStrategy, LogTotals, RateTechnique, ResponseCache, StoreError,
};
use async_trait::async_trait;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};

const GATEWAY_COLUMNS: &str = "account_id, id, cache_ttl, cache_invalidate_on_update, \
    collect_logs, rate_limiting_limit, rate_limiting_interval, rate_limiting_technique, \
    authentication, log_management, log_management_strategy, created_at_ms, modified_at_ms, \
    guardrails, retry_max_attempts, retry_delay_ms, retry_backoff, dlp";

fn gateway_row(row: &Row) -> rusqlite::Result<Gateway> {
    let technique: String = row.get(7)?;
    let strategy: String = row.get(10)?;
    Ok(Gateway {
        account_id: row.get(0)?,
        id: row.get(1)?,
        cache_ttl: row.get(2)?,
        cache_invalidate_on_update: row.get(3)?,
        collect_logs: row.get(4)?,
        rate_limiting_limit: row.get(5)?,
        rate_limiting_interval: row.get(6)?,
        rate_limiting_technique: RateTechnique::parse(&technique).unwrap_or(RateTechnique::Fixed),
        authentication: row.get(8)?,
        log_management: row.get(9)?,
        log_management_strategy: LogStrategy::parse(&strategy)
            .unwrap_or(LogStrategy::StopInserting),
        created_at_ms: row.get(11)?,
        modified_at_ms: row.get(12)?,
        guardrails: row.get(13)?,
        retry_max_attempts: row.get(14)?,
        retry_delay_ms: row.get(15)?,
        retry_backoff: row.get(16)?,
        dlp: row.get(17)?,
    })
}

fn gateway_values(gateway: &Gateway) -> [SqlValue; 18] {
    [
        gateway.account_id.clone().into(),
        gateway.id.clone().into(),
        (gateway.cache_ttl as i64).into(),
        gateway.cache_invalidate_on_update.into(),
        gateway.collect_logs.into(),
        gateway.rate_limiting_limit.map(i64::from).into(),
        gateway.rate_limiting_interval.map(i64::from).into(),
        gateway.rate_limiting_technique.as_str().to_string().into(),
        gateway.authentication.into(),
        gateway.log_management.map(|n| n as i64).into(),
        gateway.log_management_strategy.as_str().to_string().into(),
        gateway.created_at_ms.into(),
        gateway.modified_at_ms.into(),
        gateway.guardrails.clone().into(),
        gateway.retry_max_attempts.map(i64::from).into(),
        gateway.retry_delay_ms.map(|ms| ms as i64).into(),
        gateway.retry_backoff.clone().into(),
        gateway.dlp.clone().into(),
    ]
}

#[async_trait]
impl GatewayStore for SqliteStore {
    async fn create_gateway(&self, gateway: &Gateway) -> Result<bool, StoreError> {
        let values = gateway_values(gateway);
        self.run(move |connection| {
            let placeholders = (1..=values.len())
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let written = connection.execute(
                &format!(
                    "INSERT OR IGNORE INTO gateways ({GATEWAY_COLUMNS}) VALUES ({placeholders})"
                ),
                params_from_iter(values),
            )?;
            Ok(written == 1)
        })
        .await
    }

    async fn gateway(&self, account_id: &str, id: &str) -> Result<Option<Gateway>, StoreError> {
        let (account_id, id) = (account_id.to_string(), id.to_string());
        self.run(move |connection| {
            Ok(connection
                .query_row(
                    &format!(
                        "SELECT {GATEWAY_COLUMNS} FROM gateways WHERE account_id = ?1 AND id = ?2"
                    ),
                    params![account_id, id],
                    gateway_row,
                )
                .optional()?)
        })
        .await
    }

    async fn gateways(&self, account_id: &str) -> Result<Vec<Gateway>, StoreError> {
        let account_id = account_id.to_string();
        self.run(move |connection| {
            let mut statement = connection.prepare(&format!(
                "SELECT {GATEWAY_COLUMNS} FROM gateways WHERE account_id = ?1
                 ORDER BY created_at_ms, id"
            ))?;
            let rows = statement.query_map([account_id], gateway_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn update_gateway(&self, gateway: &Gateway) -> Result<bool, StoreError> {
        let values = gateway_values(gateway);
        self.run(move |connection| {
            let changed = connection.execute(
                "UPDATE gateways SET cache_ttl = ?3, cache_invalidate_on_update = ?4,
                    collect_logs = ?5, rate_limiting_limit = ?6, rate_limiting_interval = ?7,
                    rate_limiting_technique = ?8, authentication = ?9, log_management = ?10,
                    log_management_strategy = ?11, modified_at_ms = ?13, guardrails = ?14,
                    retry_max_attempts = ?15, retry_delay_ms = ?16, retry_backoff = ?17, dlp = ?18
                 WHERE account_id = ?1 AND id = ?2",
                params_from_iter(values),
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn delete_gateway(&self, account_id: &str, id: &str) -> Result<bool, StoreError> {
        let (account_id, id) = (account_id.to_string(), id.to_string());
        self.run(move |connection| {
            let tx = connection.transaction()?;
            let deleted = tx.execute(
                "DELETE FROM gateways WHERE account_id = ?1 AND id = ?2",
                params![account_id, id],
            )?;
            tx.execute(
                "DELETE FROM gateway_logs WHERE account_id = ?1 AND gateway_id = ?2",
                params![account_id, id],
            )?;
            tx.execute(
                "DELETE FROM gateway_routes WHERE account_id = ?1 AND gateway_id = ?2",
                params![account_id, id],
            )?;
            tx.execute(
                "DELETE FROM response_cache WHERE gateway_key = ?1",
                [crate::gateway_cache_key(&account_id, &id)],
            )?;
            tx.commit()?;
            Ok(deleted == 1)
        })
        .await
    }
}

const LOG_COLUMNS: &str = "id, account_id, gateway_id, created_at_ms, provider, model, \
    model_type, path, duration_ms, status_code, success, cached, step, attempts, tokens_in, \
    tokens_out, cost, custom_cost, metadata, event_id, request_content_type, response_content_type, \
    request_size, response_size, request_body, response_body, feedback, score, guardrails, dlp";

fn log_row(row: &Row) -> rusqlite::Result<GatewayLog> {
    Ok(GatewayLog {
        id: row.get(0)?,
        account_id: row.get(1)?,
        gateway_id: row.get(2)?,
        created_at_ms: row.get(3)?,
        provider: row.get(4)?,
        model: row.get(5)?,
        model_type: row.get(6)?,
        path: row.get(7)?,
        duration_ms: row.get(8)?,
        status_code: row.get(9)?,
        success: row.get(10)?,
        cached: row.get(11)?,
        step: row.get(12)?,
        attempts: row.get(13)?,
        tokens_in: row.get(14)?,
        tokens_out: row.get(15)?,
        cost: row.get(16)?,
        custom_cost: row.get(17)?,
        metadata: row.get(18)?,
        event_id: row.get(19)?,
        request_content_type: row.get(20)?,
        response_content_type: row.get(21)?,
        request_size: row.get(22)?,
        response_size: row.get(23)?,
        request_body: row.get(24)?,
        response_body: row.get(25)?,
        feedback: row.get(26)?,
        score: row.get(27)?,
        guardrails: row.get(28)?,
        dlp: row.get(29)?,
    })
}

/// The `WHERE` clause of a log query and its parameters.
fn log_filter(query: &LogQuery) -> (String, Vec<SqlValue>) {
    let mut clause = "account_id = ? AND gateway_id = ?".to_string();
    let mut values: Vec<SqlValue> = vec![
        query.account_id.clone().into(),
        query.gateway_id.clone().into(),
    ];
    let mut add = |column: &str, value: SqlValue| {
        clause.push_str(&format!(" AND {column} ?"));
        values.push(value);
    };
    if let Some(success) = query.success {
        add("success =", success.into());
    }
    if let Some(cached) = query.cached {
        add("cached =", cached.into());
    }
    if let Some(model) = &query.model {
        add("model =", model.clone().into());
    }
    if let Some(model_type) = &query.model_type {
        add("model_type =", model_type.clone().into());
    }
    if let Some(provider) = &query.provider {
        add("provider =", provider.clone().into());
    }
    if let Some(feedback) = query.feedback {
        add("feedback =", i64::from(feedback).into());
    }
    if let Some(from_ms) = query.created_from_ms {
        add("created_at_ms >=", from_ms.into());
    }
    if let Some(until_ms) = query.created_until_ms {
        add("created_at_ms <", until_ms.into());
    }
    (clause, values)
}

fn insert_log(
    connection: &mut Connection,
    log: &GatewayLog,
    keep_at_most: Option<(u64, LogStrategy)>,
) -> Result<bool, StoreError> {
    let tx = connection.transaction()?;
    if let Some((bound, strategy)) = keep_at_most {
        let held: u64 = tx.query_row(
            "SELECT COUNT(*) FROM gateway_logs WHERE account_id = ?1 AND gateway_id = ?2",
            params![log.account_id, log.gateway_id],
            |row| row.get(0),
        )?;
        if held >= bound {
            match strategy {
                LogStrategy::StopInserting => return Ok(false),
                LogStrategy::DeleteOldest => {
                    tx.execute(
                        "DELETE FROM gateway_logs WHERE id IN (
                            SELECT id FROM gateway_logs WHERE account_id = ?1 AND gateway_id = ?2
                            ORDER BY created_at_ms, rowid LIMIT ?3)",
                        params![log.account_id, log.gateway_id, held + 1 - bound],
                    )?;
                }
            }
        }
    }
    tx.execute(
        &format!("INSERT INTO gateway_logs ({LOG_COLUMNS}) VALUES ({})", {
            (1..=LOG_COLUMNS.split(',').count())
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        }),
        params![
            log.id,
            log.account_id,
            log.gateway_id,
            log.created_at_ms,
            log.provider,
            log.model,
            log.model_type,
            log.path,
            log.duration_ms,
            log.status_code,
            log.success,
            log.cached,
            log.step,
            log.attempts,
            log.tokens_in,
            log.tokens_out,
            log.cost,
            log.custom_cost,
            log.metadata,
            log.event_id,
            log.request_content_type,
            log.response_content_type,
            log.request_size,
            log.response_size,
            log.request_body,
            log.response_body,
            log.feedback,
            log.score,
            log.guardrails,
            log.dlp,
        ],
    )?;
    tx.commit()?;
    Ok(true)
}

fn logs(
    connection: &Connection,
    query: &LogQuery,
) -> Result<(Vec<GatewayLog>, LogTotals), StoreError> {
    let (clause, values) = log_filter(query);
    let totals = connection.query_row(
        &format!(
            "SELECT COUNT(*), MIN(cost), MAX(cost), MIN(duration_ms), MAX(duration_ms),
                    MIN(tokens_in), MAX(tokens_in), MIN(tokens_out), MAX(tokens_out),
                    MIN(tokens_in + tokens_out), MAX(tokens_in + tokens_out)
             FROM gateway_logs WHERE {clause}"
        ),
        params_from_iter(values.iter()),
        |row| {
            Ok(LogTotals {
                count: row.get(0)?,
                min_cost: row.get::<_, Option<f64>>(1)?.unwrap_or(0.0),
                max_cost: row.get::<_, Option<f64>>(2)?.unwrap_or(0.0),
                min_duration_ms: row.get::<_, Option<u64>>(3)?.unwrap_or(0),
                max_duration_ms: row.get::<_, Option<u64>>(4)?.unwrap_or(0),
                min_tokens_in: row.get::<_, Option<u32>>(5)?.unwrap_or(0),
                max_tokens_in: row.get::<_, Option<u32>>(6)?.unwrap_or(0),
                min_tokens_out: row.get::<_, Option<u32>>(7)?.unwrap_or(0),
                max_tokens_out: row.get::<_, Option<u32>>(8)?.unwrap_or(0),
                min_total_tokens: row.get::<_, Option<u32>>(9)?.unwrap_or(0),
                max_total_tokens: row.get::<_, Option<u32>>(10)?.unwrap_or(0),
            })
        },
    )?;
    let per_page = query.per_page.max(1);
    let offset = i64::from(query.page.max(1) - 1) * i64::from(per_page);
    let mut statement = connection.prepare(&format!(
        "SELECT {LOG_COLUMNS} FROM gateway_logs WHERE {clause}
         ORDER BY created_at_ms DESC, rowid DESC LIMIT {per_page} OFFSET {offset}"
    ))?;
    let rows = statement.query_map(params_from_iter(values.iter()), log_row)?;
    Ok((rows.collect::<Result<_, _>>()?, totals))
}

#[async_trait]
impl GatewayLogs for SqliteStore {
    async fn insert_log(
        &self,
        log: &GatewayLog,
        keep_at_most: Option<(u64, LogStrategy)>,
    ) -> Result<bool, StoreError> {
        let log = log.clone();
        self.run(move |connection| insert_log(connection, &log, keep_at_most))
            .await
    }

    async fn log(
        &self,
        account_id: &str,
        gateway_id: &str,
        id: &str,
    ) -> Result<Option<GatewayLog>, StoreError> {
        let keys = [account_id, gateway_id, id].map(str::to_string);
        self.run(move |connection| {
            Ok(connection
                .query_row(
                    &format!(
                        "SELECT {LOG_COLUMNS} FROM gateway_logs
                         WHERE account_id = ?1 AND gateway_id = ?2 AND id = ?3"
                    ),
                    params_from_iter(keys),
                    log_row,
                )
                .optional()?)
        })
        .await
    }

    async fn logs(&self, query: &LogQuery) -> Result<(Vec<GatewayLog>, LogTotals), StoreError> {
        let query = query.clone();
        self.run(move |connection| logs(connection, &query)).await
    }

    async fn analytics(&self, query: &AnalyticsQuery) -> Result<Vec<AnalyticsRow>, StoreError> {
        let query = query.clone();
        self.run(move |connection| {
            let bucket = query.bucket_ms.max(1);
            let mut statement = connection.prepare(
                "SELECT (created_at_ms / ?1) * ?1 AS bucket, provider, model, COUNT(*),
                        SUM(NOT success), SUM(cached), SUM(tokens_in), SUM(tokens_out), SUM(cost),
                        GROUP_CONCAT(duration_ms)
                 FROM gateway_logs
                 WHERE account_id = ?2 AND gateway_id = ?3
                   AND created_at_ms >= ?4 AND created_at_ms < ?5
                 GROUP BY bucket, provider, model ORDER BY bucket, provider, model",
            )?;
            let rows = statement.query_map(
                params![
                    bucket,
                    query.account_id,
                    query.gateway_id,
                    query.since_ms,
                    query.until_ms
                ],
                |row| {
                    let durations: String = row.get(9)?;
                    let row = AnalyticsRow {
                        bucket_start_ms: row.get(0)?,
                        provider: row.get(1)?,
                        model: row.get(2)?,
                        requests: row.get(3)?,
                        errors: row.get(4)?,
                        cached: row.get(5)?,
                        tokens_in: row.get(6)?,
                        tokens_out: row.get(7)?,
                        cost: row.get(8)?,
                        ..AnalyticsRow::default()
                    };
                    let durations = durations.split(',').filter_map(|d| d.parse().ok());
                    Ok(row.with_durations(durations.collect()))
                },
            )?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn delete_logs(&self, query: &LogQuery) -> Result<u64, StoreError> {
        let (clause, values) = log_filter(query);
        self.run(move |connection| {
            let deleted = connection.execute(
                &format!("DELETE FROM gateway_logs WHERE {clause}"),
                params_from_iter(values),
            )?;
            Ok(deleted as u64)
        })
        .await
    }

    async fn patch_log(
        &self,
        account_id: &str,
        gateway_id: &str,
        id: &str,
        patch: &LogPatch,
    ) -> Result<bool, StoreError> {
        let keys = [account_id, gateway_id, id].map(str::to_string);
        let patch = patch.clone();
        self.run(move |connection| {
            let mut sets = Vec::new();
            let mut values: Vec<SqlValue> = Vec::new();
            if let Some(feedback) = patch.feedback {
                sets.push("feedback = ?");
                values.push(feedback.map(i64::from).into());
            }
            if let Some(score) = patch.score {
                sets.push("score = ?");
                values.push(score.map(i64::from).into());
            }
            if let Some(metadata) = patch.metadata {
                sets.push("metadata = ?");
                values.push(metadata.into());
            }
            // An empty patch still says whether the log exists.
            sets.push("id = id");
            values.extend(keys.map(SqlValue::from));
            let changed = connection.execute(
                &format!(
                    "UPDATE gateway_logs SET {} WHERE account_id = ? AND gateway_id = ? AND id = ?",
                    sets.join(", ")
                ),
                params_from_iter(values),
            )?;
            Ok(changed == 1)
        })
        .await
    }
}

/// Headers kept one per line as `name: value` (header values hold no line breaks).
fn encode_headers(headers: &[(String, String)]) -> String {
    headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\n"))
        .collect()
}

fn decode_headers(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.split_once(": "))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

#[async_trait]
impl ResponseCache for SqliteStore {
    async fn cached(&self, key: &str, now_ms: i64) -> Result<Option<CachedResponse>, StoreError> {
        let key = key.to_string();
        self.run(move |connection| {
            Ok(connection
                .query_row(
                    "SELECT gateway_key, status, headers, body FROM response_cache
                     WHERE key = ?1 AND expires_at_ms > ?2",
                    params![key, now_ms],
                    |row| {
                        Ok(CachedResponse {
                            gateway_key: row.get(0)?,
                            status: row.get(1)?,
                            headers: decode_headers(&row.get::<_, String>(2)?),
                            body: row.get(3)?,
                        })
                    },
                )
                .optional()?)
        })
        .await
    }

    async fn keep(
        &self,
        key: &str,
        response: &CachedResponse,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        let (key, response) = (key.to_string(), response.clone());
        let bound = self.cache_bound_bytes;
        self.run(move |connection| {
            let tx = connection.transaction()?;
            tx.execute(
                "INSERT OR REPLACE INTO response_cache
                    (key, gateway_key, status, headers, body, size, stored_at_ms, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    key,
                    response.gateway_key,
                    response.status,
                    encode_headers(&response.headers),
                    response.body,
                    response.body.len() as i64,
                    now_ms,
                    expires_at_ms
                ],
            )?;
            let held = |tx: &rusqlite::Transaction| -> rusqlite::Result<u64> {
                tx.query_row(
                    "SELECT COALESCE(SUM(size), 0) FROM response_cache",
                    [],
                    |row| row.get(0),
                )
            };
            if held(&tx)? > bound {
                tx.execute(
                    "DELETE FROM response_cache WHERE expires_at_ms <= ?1",
                    [now_ms],
                )?;
                while held(&tx)? > bound {
                    tx.execute(
                        "DELETE FROM response_cache WHERE key =
                            (SELECT key FROM response_cache ORDER BY stored_at_ms, rowid LIMIT 1)",
                        [],
                    )?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn forget_gateway(&self, gateway_key: &str) -> Result<(), StoreError> {
        let gateway_key = gateway_key.to_string();
        self.run(move |connection| {
            connection.execute(
                "DELETE FROM response_cache WHERE gateway_key = ?1",
                [gateway_key],
            )?;
            Ok(())
        })
        .await
    }
}
