//! `AccountStore` on SQLite: the `accounts` and `tokens` tables.

use super::SqliteStore;
use crate::{Account, AccountStore, Plan, StoreError, Token};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, params};

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

#[async_trait]
impl AccountStore for SqliteStore {
    async fn create_account(&self, account: &Account) -> Result<(), StoreError> {
        let account = account.clone();
        self.run(move |connection| {
            connection.execute(
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
        })
        .await
    }

    async fn update_account(&self, account: &Account) -> Result<bool, StoreError> {
        let account = account.clone();
        self.run(move |connection| {
            let changed = connection.execute(
                "UPDATE accounts SET name = ?2, plan = ?3, daily_free_neurons = ?4 WHERE id = ?1",
                params![
                    account.id,
                    account.name,
                    account.plan.as_str(),
                    account.daily_free_neurons
                ],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn account(&self, id: &str) -> Result<Option<Account>, StoreError> {
        let id = id.to_string();
        self.run(move |connection| {
            Ok(connection
                .query_row(
                    &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?1"),
                    [id],
                    account_row,
                )
                .optional()?)
        })
        .await
    }

    async fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        self.run(|connection| {
            let mut statement = connection.prepare(&format!(
                "SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY created_at_ms, id"
            ))?;
            let rows = statement.query_map([], account_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn has_accounts(&self) -> Result<bool, StoreError> {
        self.run(|connection| {
            Ok(
                connection.query_row("SELECT EXISTS (SELECT 1 FROM accounts)", [], |row| {
                    row.get(0)
                })?,
            )
        })
        .await
    }

    async fn create_token(&self, token: &Token) -> Result<(), StoreError> {
        let token = token.clone();
        self.run(move |connection| {
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
                &format!(
                    "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                ),
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
        })
        .await
    }

    async fn token(&self, id: &str) -> Result<Option<Token>, StoreError> {
        let id = id.to_string();
        self.run(move |connection| {
            Ok(connection
                .query_row(
                    &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"),
                    [id],
                    token_row,
                )
                .optional()?)
        })
        .await
    }

    async fn tokens(&self, account_id: Option<&str>) -> Result<Vec<Token>, StoreError> {
        let account_id = account_id.map(str::to_string);
        self.run(move |connection| {
            let mut statement = connection.prepare(&format!(
                "SELECT {TOKEN_COLUMNS} FROM tokens WHERE ?1 IS NULL OR account_id = ?1
                 ORDER BY created_at_ms, id"
            ))?;
            let rows = statement.query_map([account_id], token_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn revoke_token(&self, id: &str, at_ms: i64) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.run(move |connection| {
            let changed = connection.execute(
                "UPDATE tokens SET revoked_at_ms = ?2 WHERE id = ?1 AND revoked_at_ms IS NULL",
                params![id, at_ms],
            )?;
            Ok(changed == 1)
        })
        .await
    }
}
