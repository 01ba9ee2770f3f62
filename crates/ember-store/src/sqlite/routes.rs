//! `GatewayRoutes` on SQLite: the `gateway_routes`, `gateway_route_versions` and
//! `gateway_route_deployments` tables.

use super::SqliteStore;
use crate::{GatewayRoutes, Route, RouteDeployment, RouteVersion, StoreError};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, params};

const ROUTE_COLUMNS: &str =
    "account_id, gateway_id, id, name, deployed_version_id, created_at_ms, modified_at_ms";

fn route_row(row: &Row) -> rusqlite::Result<Route> {
    Ok(Route {
        account_id: row.get(0)?,
        gateway_id: row.get(1)?,
        id: row.get(2)?,
        name: row.get(3)?,
        deployed_version_id: row.get(4)?,
        created_at_ms: row.get(5)?,
        modified_at_ms: row.get(6)?,
    })
}

#[async_trait]
impl GatewayRoutes for SqliteStore {
    async fn create_route(&self, route: &Route, first: &RouteVersion) -> Result<bool, StoreError> {
        let (route, first) = (route.clone(), first.clone());
        self.run(move |connection| {
            let tx = connection.transaction()?;
            let written = tx.execute(
                &format!(
                    "INSERT OR IGNORE INTO gateway_routes ({ROUTE_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                ),
                params![
                    route.account_id,
                    route.gateway_id,
                    route.id,
                    route.name,
                    first.id,
                    route.created_at_ms,
                    route.modified_at_ms
                ],
            )?;
            if written == 0 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO gateway_route_versions (id, route_id, elements, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4)",
                params![first.id, route.id, first.elements, first.created_at_ms],
            )?;
            tx.execute(
                "INSERT INTO gateway_route_deployments (id, route_id, version_id, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    format!("{}-first", route.id),
                    route.id,
                    first.id,
                    first.created_at_ms
                ],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn routes(&self, account_id: &str, gateway_id: &str) -> Result<Vec<Route>, StoreError> {
        let keys = [account_id, gateway_id].map(str::to_string);
        self.run(move |connection| {
            let mut statement = connection.prepare(&format!(
                "SELECT {ROUTE_COLUMNS} FROM gateway_routes
                 WHERE account_id = ?1 AND gateway_id = ?2 ORDER BY created_at_ms, name"
            ))?;
            let rows = statement.query_map(params![keys[0], keys[1]], route_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn route(
        &self,
        account_id: &str,
        gateway_id: &str,
        id_or_name: &str,
    ) -> Result<Option<Route>, StoreError> {
        let keys = [account_id, gateway_id, id_or_name].map(str::to_string);
        self.run(move |connection| {
            Ok(connection
                .query_row(
                    &format!(
                        "SELECT {ROUTE_COLUMNS} FROM gateway_routes
                         WHERE account_id = ?1 AND gateway_id = ?2 AND (id = ?3 OR name = ?3)"
                    ),
                    params![keys[0], keys[1], keys[2]],
                    route_row,
                )
                .optional()?)
        })
        .await
    }

    async fn delete_route(&self, route: &Route) -> Result<bool, StoreError> {
        let id = route.id.clone();
        self.run(move |connection| {
            Ok(connection.execute("DELETE FROM gateway_routes WHERE id = ?1", [id])? == 1)
        })
        .await
    }

    async fn add_version(&self, route: &Route, version: &RouteVersion) -> Result<(), StoreError> {
        let (route_id, version) = (route.id.clone(), version.clone());
        self.run(move |connection| {
            connection.execute(
                "INSERT INTO gateway_route_versions (id, route_id, elements, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    version.id,
                    route_id,
                    version.elements,
                    version.created_at_ms
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn versions(&self, route: &Route) -> Result<Vec<RouteVersion>, StoreError> {
        let route_id = route.id.clone();
        self.run(move |connection| {
            let mut statement = connection.prepare(
                "SELECT id, elements, created_at_ms FROM gateway_route_versions
                 WHERE route_id = ?1 ORDER BY created_at_ms, rowid",
            )?;
            let rows = statement.query_map([route_id], |row| {
                Ok(RouteVersion {
                    id: row.get(0)?,
                    elements: row.get(1)?,
                    created_at_ms: row.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn deploy(
        &self,
        route: &Route,
        deployment: &RouteDeployment,
    ) -> Result<bool, StoreError> {
        let (route_id, deployment) = (route.id.clone(), deployment.clone());
        self.run(move |connection| {
            let tx = connection.transaction()?;
            let changed = tx.execute(
                "UPDATE gateway_routes SET deployed_version_id = ?2, modified_at_ms = ?3
                 WHERE id = ?1 AND EXISTS (
                    SELECT 1 FROM gateway_route_versions WHERE route_id = ?1 AND id = ?2)",
                params![route_id, deployment.version_id, deployment.created_at_ms],
            )?;
            if changed == 0 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO gateway_route_deployments (id, route_id, version_id, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    deployment.id,
                    route_id,
                    deployment.version_id,
                    deployment.created_at_ms
                ],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn deployments(&self, route: &Route) -> Result<Vec<RouteDeployment>, StoreError> {
        let route_id = route.id.clone();
        self.run(move |connection| {
            let mut statement = connection.prepare(
                "SELECT id, version_id, created_at_ms FROM gateway_route_deployments
                 WHERE route_id = ?1 ORDER BY created_at_ms, rowid",
            )?;
            let rows = statement.query_map([route_id], |row| {
                Ok(RouteDeployment {
                    id: row.get(0)?,
                    version_id: row.get(1)?,
                    created_at_ms: row.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }
}
