//! Cloudflare's AI Gateway in front of Ember's models: gateways per account (`default` made on
//! first use), per-gateway rate limits, the response cache's policy (which requests are cached,
//! under which key, for how long) and the request log with its bounds. Plain Rust over
//! `ember_store`; the `cf-aig-*` headers, the routes and the layer that applies this to a request
//! are ember-http's. (Auth, per-task limits and Neurons are `ember-access`'s, not this.)

pub mod dlp;
pub mod guardrails;
pub mod options;
pub mod routing;
pub mod settings;

pub use options::{Backoff, CustomCost, RequestOptions, Retries, RetryOptions};
pub use settings::{GatewaySettings, retry_defaults};

use ember_access::clock::Clock;
use ember_store::{
    CachedResponse, Gateway, GatewayLog, RateTechnique, Route, RouteDeployment, RouteVersion,
    StoreError, Stores, Window, gateway_cache_key,
};
use routing::RouteGraph;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The gateway made for an account on its first request through one.
pub const DEFAULT_GATEWAY: &str = "default";
/// A response cached by a `cf-aig-cache-key` alone, without a TTL, stays this long.
pub const KEY_ONLY_CACHE_TTL_SECS: u64 = 300;
/// Dollars per Neuron, for the log's `cost`.
pub const DOLLARS_PER_NEURON: f64 = 0.000_011;

#[derive(Debug, thiserror::Error)]
pub enum AiGatewayError {
    #[error("gateway '{0}' does not exist; create it with `ember gateways create {0}` or the API")]
    NotFound(String),
    #[error("gateway '{0}' already exists")]
    Exists(String),
    /// A setting or option out of its rules; `field` names it as the client wrote it.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("the gateway's rate limit is reached; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AiGatewayError {
    pub fn invalid(field: &str, message: impl Into<String>) -> AiGatewayError {
        AiGatewayError::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// A budget a request passed, to be charged its cost when it ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    key: String,
    window_ms: i64,
}

/// The window a count or budget named `name` uses now: a fixed window is a sliding one that
/// starts empty at each interval's start (and ends then).
fn window_key(
    name: &str,
    technique: RateTechnique,
    window_ms: i64,
    now_ms: i64,
) -> (String, Option<i64>) {
    match technique {
        RateTechnique::Sliding => (name.to_string(), None),
        RateTechnique::Fixed => {
            let start_ms = now_ms - now_ms.rem_euclid(window_ms);
            (format!("{name} {start_ms}"), Some(start_ms + window_ms))
        }
    }
}

/// Where a request's response is cached: its key and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct CachePlan {
    pub key: String,
    pub ttl_secs: u64,
}

pub struct AiGateway {
    stores: Stores,
    clock: Arc<dyn Clock>,
}

impl AiGateway {
    pub fn new(stores: Stores, clock: Arc<dyn Clock>) -> AiGateway {
        AiGateway { stores, clock }
    }

    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The gateway a request names; `default` is created on its first use.
    pub async fn open(&self, account_id: &str, id: &str) -> Result<Gateway, AiGatewayError> {
        if let Some(gateway) = self.stores.gateways.gateway(account_id, id).await? {
            return Ok(gateway);
        }
        if id != DEFAULT_GATEWAY {
            return Err(AiGatewayError::NotFound(id.to_string()));
        }
        let gateway = settings::new_gateway(account_id, id, self.now_ms());
        // Two first requests may race to create it; either's row is the same.
        self.stores.gateways.create_gateway(&gateway).await?;
        let stored = self.stores.gateways.gateway(account_id, id).await?;
        Ok(stored.unwrap_or(gateway))
    }

    pub async fn create(
        &self,
        account_id: &str,
        id: &str,
        settings: &GatewaySettings,
    ) -> Result<Gateway, AiGatewayError> {
        settings::check_id(id)?;
        let mut gateway = settings::new_gateway(account_id, id, self.now_ms());
        settings.apply(&mut gateway)?;
        if !self.stores.gateways.create_gateway(&gateway).await? {
            return Err(AiGatewayError::Exists(id.to_string()));
        }
        Ok(gateway)
    }

    /// Changes the settings given; with `cache_invalidate_on_update`, forgets its cache.
    pub async fn update(
        &self,
        account_id: &str,
        id: &str,
        settings: &GatewaySettings,
    ) -> Result<Gateway, AiGatewayError> {
        let mut gateway = self
            .stores
            .gateways
            .gateway(account_id, id)
            .await?
            .ok_or_else(|| AiGatewayError::NotFound(id.to_string()))?;
        settings.apply(&mut gateway)?;
        gateway.modified_at_ms = self.now_ms();
        if !self.stores.gateways.update_gateway(&gateway).await? {
            return Err(AiGatewayError::NotFound(id.to_string()));
        }
        if gateway.cache_invalidate_on_update {
            let key = gateway_cache_key(account_id, id);
            self.stores.response_cache.forget_gateway(&key).await?;
        }
        Ok(gateway)
    }

    /// Deletes a gateway with its logs and cache; returns what it was.
    pub async fn delete(&self, account_id: &str, id: &str) -> Result<Gateway, AiGatewayError> {
        let gateway = self
            .stores
            .gateways
            .gateway(account_id, id)
            .await?
            .ok_or_else(|| AiGatewayError::NotFound(id.to_string()))?;
        self.stores.gateways.delete_gateway(account_id, id).await?;
        Ok(gateway)
    }

    /// Counts a request against the gateway's rate limit, if it has one.
    pub async fn admit(&self, gateway: &Gateway) -> Result<(), AiGatewayError> {
        let (Some(limit), Some(interval)) =
            (gateway.rate_limiting_limit, gateway.rate_limiting_interval)
        else {
            return Ok(());
        };
        let name = format!(
            "gateway {}",
            gateway_cache_key(&gateway.account_id, &gateway.id)
        );
        let technique = gateway.rate_limiting_technique;
        self.count(&name, limit, interval, technique).await
    }

    /// Counts a request against a dynamic route's rate element for one value of its key.
    pub async fn admit_to_route(
        &self,
        route: &Route,
        element: &str,
        key_value: &str,
        limit: u32,
        interval_secs: u32,
        technique: RateTechnique,
    ) -> Result<(), AiGatewayError> {
        let name = format!("route {} {element} {key_value}", route.id);
        self.count(&name, limit, interval_secs, technique).await
    }

    /// Lets a request past a dynamic route's budget element if the key's spending in the window
    /// is under `dollars`; the budget its cost is then charged to (`charge`).
    pub async fn within_budget(
        &self,
        route: &Route,
        element: &str,
        key_value: &str,
        dollars: f64,
        interval_secs: u32,
        technique: RateTechnique,
    ) -> Result<Budget, AiGatewayError> {
        let now_ms = self.now_ms();
        let window_ms = i64::from(interval_secs.max(1)) * 1000;
        let name = format!("budget {} {element} {key_value}", route.id);
        let (key, window_ends_ms) = window_key(&name, technique, window_ms, now_ms);
        let spent = self.stores.windows.spent(&key, window_ms, now_ms).await?;
        if spent >= dollars {
            // A sliding budget frees up as old spending leaves; say a whole window to be safe.
            let wait_ms = window_ends_ms.map_or(window_ms, |end_ms| end_ms - now_ms);
            return Err(AiGatewayError::RateLimited {
                retry_after_secs: (wait_ms.max(1) as u64).div_ceil(1000),
            });
        }
        Ok(Budget { key, window_ms })
    }

    /// Charges a finished request's cost to the budgets it passed.
    pub async fn charge(&self, budgets: &[Budget], dollars: f64) -> Result<(), StoreError> {
        let now_ms = self.now_ms();
        for budget in budgets {
            let windows = &self.stores.windows;
            windows
                .spend(&budget.key, dollars, budget.window_ms, now_ms)
                .await?;
        }
        Ok(())
    }

    /// Counts a request in the window `name`, or says when to come back.
    async fn count(
        &self,
        name: &str,
        limit: u32,
        interval_secs: u32,
        technique: RateTechnique,
    ) -> Result<(), AiGatewayError> {
        let now_ms = self.now_ms();
        let window_ms = i64::from(interval_secs.max(1)) * 1000;
        let (key, window_ends_ms) = window_key(name, technique, window_ms, now_ms);
        let windows = &self.stores.windows;
        match windows.count_over(&key, limit, window_ms, now_ms).await? {
            Window::Allowed => Ok(()),
            Window::Full { retry_after_secs } => Err(AiGatewayError::RateLimited {
                retry_after_secs: window_ends_ms.map_or(retry_after_secs, |end_ms| {
                    ((end_ms - now_ms).max(1) as u64).div_ceil(1000)
                }),
            }),
        }
    }

    /// Adds a dynamic route with its first version, deployed. Its name is what requests use,
    /// as `dynamic/<name>`.
    pub async fn create_route(
        &self,
        gateway: &Gateway,
        name: &str,
        elements: &Value,
    ) -> Result<(Route, RouteVersion), AiGatewayError> {
        settings::check_name("name", name)?;
        RouteGraph::parse(elements)?;
        let now_ms = self.now_ms();
        let version = RouteVersion {
            id: new_id(),
            elements: elements.to_string(),
            created_at_ms: now_ms,
        };
        let route = Route {
            account_id: gateway.account_id.clone(),
            gateway_id: gateway.id.clone(),
            id: new_id(),
            name: name.to_string(),
            deployed_version_id: version.id.clone(),
            created_at_ms: now_ms,
            modified_at_ms: now_ms,
        };
        if !self.stores.routes.create_route(&route, &version).await? {
            return Err(AiGatewayError::Exists(format!("route {name}")));
        }
        Ok((route, version))
    }

    /// A gateway's route by id or name.
    pub async fn route(
        &self,
        gateway: &Gateway,
        id_or_name: &str,
    ) -> Result<Route, AiGatewayError> {
        self.stores
            .routes
            .route(&gateway.account_id, &gateway.id, id_or_name)
            .await?
            .ok_or_else(|| AiGatewayError::NotFound(format!("route {id_or_name}")))
    }

    /// A new version of a route (deployed separately).
    pub async fn add_version(
        &self,
        route: &Route,
        elements: &Value,
    ) -> Result<RouteVersion, AiGatewayError> {
        RouteGraph::parse(elements)?;
        let version = RouteVersion {
            id: new_id(),
            elements: elements.to_string(),
            created_at_ms: self.now_ms(),
        };
        self.stores.routes.add_version(route, &version).await?;
        Ok(version)
    }

    /// Makes a version the one requests follow.
    pub async fn deploy(
        &self,
        route: &Route,
        version_id: &str,
    ) -> Result<RouteDeployment, AiGatewayError> {
        let deployment = RouteDeployment {
            id: new_id(),
            version_id: version_id.to_string(),
            created_at_ms: self.now_ms(),
        };
        if !self.stores.routes.deploy(route, &deployment).await? {
            return Err(AiGatewayError::invalid(
                "version_id",
                format!("route {} has no version {version_id}", route.name),
            ));
        }
        Ok(deployment)
    }

    /// The graph a `dynamic/<name>` request follows: its route's deployed version.
    pub async fn deployed_graph(
        &self,
        gateway: &Gateway,
        name: &str,
    ) -> Result<(Route, RouteGraph), AiGatewayError> {
        let route = self.route(gateway, name).await?;
        let versions = self.stores.routes.versions(&route).await?;
        let deployed = versions
            .iter()
            .find(|v| v.id == route.deployed_version_id)
            .ok_or_else(|| AiGatewayError::NotFound(format!("route {name}'s deployed version")))?;
        let elements: Value = serde_json::from_str(&deployed.elements)
            .map_err(|e| StoreError::Conflict(format!("route {name} is not JSON: {e}")))?;
        Ok((route, RouteGraph::parse(&elements)?))
    }

    /// Whether and where a request's response is cached: not when it skips the cache; for the
    /// TTL it asks or the gateway's; for five minutes when it gives only a key. `fingerprint` is
    /// what makes two requests identical (route, model and body) when it gives no key.
    pub fn cache_plan(
        &self,
        gateway: &Gateway,
        options: &RequestOptions,
        fingerprint: &[u8],
    ) -> Option<CachePlan> {
        if options.skip_cache {
            return None;
        }
        let ttl_secs = options
            .cache_ttl_secs
            .or((gateway.cache_ttl > 0).then_some(gateway.cache_ttl))
            .or(options.cache_key.as_ref().map(|_| KEY_ONLY_CACHE_TTL_SECS))?;
        let mut hash = Sha256::new();
        for part in [gateway.account_id.as_bytes(), gateway.id.as_bytes()] {
            hash.update(part);
            hash.update([0]);
        }
        match &options.cache_key {
            Some(key) => hash.update(key.as_bytes()),
            None => hash.update(fingerprint),
        }
        Some(CachePlan {
            key: hex::encode(hash.finalize()),
            ttl_secs,
        })
    }

    pub async fn cached(&self, plan: &CachePlan) -> Result<Option<CachedResponse>, StoreError> {
        self.stores
            .response_cache
            .cached(&plan.key, self.now_ms())
            .await
    }

    pub async fn keep(
        &self,
        plan: &CachePlan,
        response: &CachedResponse,
    ) -> Result<(), StoreError> {
        let now_ms = self.now_ms();
        let expires_at_ms = now_ms + plan.ttl_secs as i64 * 1000;
        self.stores
            .response_cache
            .keep(&plan.key, response, now_ms, expires_at_ms)
            .await
    }

    /// Writes a request's log unless the gateway or the request turned logging off, without
    /// its bodies when the request asked for metadata only, within the gateway's bound.
    /// Returns whether it was written.
    pub async fn log(
        &self,
        gateway: &Gateway,
        options: &RequestOptions,
        mut log: GatewayLog,
    ) -> Result<bool, StoreError> {
        if !options.collect_log.unwrap_or(gateway.collect_logs) {
            return Ok(false);
        }
        if !options.collect_log_payload.unwrap_or(true) {
            (log.request_body, log.response_body) = (None, None);
        }
        let bound = gateway
            .log_management
            .map(|at_most| (at_most, gateway.log_management_strategy));
        self.stores.gateway_logs.insert_log(&log, bound).await
    }
}

/// A new object id.
fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_access::clock::ManualClock;
    use ember_store::SqliteStore;

    fn gateway_with(clock: &Arc<ManualClock>) -> AiGateway {
        AiGateway::new(SqliteStore::in_memory().unwrap(), clock.clone())
    }

    #[tokio::test]
    async fn default_is_made_on_first_use_and_others_must_exist() {
        let clock = Arc::new(ManualClock::new(7));
        let ai = gateway_with(&clock);
        let made = ai.open("a", DEFAULT_GATEWAY).await.unwrap();
        assert_eq!(
            (made.created_at_ms, made.collect_logs, made.cache_ttl),
            (7, true, 0)
        );
        clock.advance(5);
        assert_eq!(
            ai.open("a", DEFAULT_GATEWAY).await.unwrap().created_at_ms,
            7
        );
        assert!(matches!(
            ai.open("a", "mine").await,
            Err(AiGatewayError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn fixed_windows_restart_at_each_interval_and_sliding_ones_slide() {
        let clock = Arc::new(ManualClock::new(0));
        let ai = gateway_with(&clock);
        for technique in ["fixed", "sliding"] {
            let settings = GatewaySettings {
                rate_limiting_limit: Some(Some(2)),
                rate_limiting_interval: Some(Some(10)),
                rate_limiting_technique: RateTechnique::parse(technique),
                ..GatewaySettings::default()
            };
            let gateway = ai.create("a", technique, &settings).await.unwrap();
            clock.set(5_000);
            ai.admit(&gateway).await.unwrap();
            clock.set(9_000);
            ai.admit(&gateway).await.unwrap();
            let refused = ai.admit(&gateway).await;
            let Err(AiGatewayError::RateLimited { retry_after_secs }) = refused else {
                panic!("{technique}: the third request in the interval passed");
            };
            clock.set(10_000);
            let after_boundary = ai.admit(&gateway).await;
            match technique {
                "fixed" => {
                    assert_eq!(retry_after_secs, 1);
                    assert!(after_boundary.is_ok(), "a new interval starts empty");
                }
                _ => {
                    assert_eq!(retry_after_secs, 6, "the request at 5 s leaves at 15 s");
                    assert!(
                        after_boundary.is_err(),
                        "both requests are in the last 10 s"
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn the_cache_plan_follows_skip_ttl_and_key() {
        let clock = Arc::new(ManualClock::new(0));
        let ai = gateway_with(&clock);
        let mut gateway = ai.open("a", DEFAULT_GATEWAY).await.unwrap();
        let plain = RequestOptions::default();
        assert_eq!(ai.cache_plan(&gateway, &plain, b"x"), None, "cache off");
        let keyed = RequestOptions {
            cache_key: Some("k".into()),
            ..RequestOptions::default()
        };
        let by_key = ai.cache_plan(&gateway, &keyed, b"x").unwrap();
        assert_eq!(by_key.ttl_secs, KEY_ONLY_CACHE_TTL_SECS);
        assert_eq!(ai.cache_plan(&gateway, &keyed, b"other body"), Some(by_key));
        gateway.cache_ttl = 120;
        let planned = ai.cache_plan(&gateway, &plain, b"x").unwrap();
        assert_eq!(planned.ttl_secs, 120);
        assert_ne!(planned, ai.cache_plan(&gateway, &plain, b"y").unwrap());
        let skipping = RequestOptions {
            skip_cache: true,
            ..RequestOptions::default()
        };
        assert_eq!(ai.cache_plan(&gateway, &skipping, b"x"), None);
        gateway.id = "other".into();
        assert_ne!(planned, ai.cache_plan(&gateway, &plain, b"x").unwrap());
    }
}
