//! What AI Gateway keeps: the gateways of each account (`GatewayStore`), the log of the requests
//! that went through them (`GatewayLogs`) and the responses they cache (`ResponseCache`).
//! Plain records; the rules (defaults, TTL limits, what is cacheable) are `ember-ai-gateway`'s.

use crate::StoreError;
use async_trait::async_trait;

/// An account's gateways.
#[async_trait]
pub trait GatewayStore: Send + Sync {
    /// Adds a gateway; false (nothing written) if the account has one of that id.
    async fn create_gateway(&self, gateway: &Gateway) -> Result<bool, StoreError>;
    async fn gateway(&self, account_id: &str, id: &str) -> Result<Option<Gateway>, StoreError>;
    /// The account's gateways, oldest first.
    async fn gateways(&self, account_id: &str) -> Result<Vec<Gateway>, StoreError>;
    /// Replaces a gateway's settings; false if it does not exist.
    async fn update_gateway(&self, gateway: &Gateway) -> Result<bool, StoreError>;
    /// Deletes a gateway with its logs and cached responses; false if it did not exist.
    async fn delete_gateway(&self, account_id: &str, id: &str) -> Result<bool, StoreError>;
}

/// One gateway's settings, as its API object holds them.
#[derive(Debug, Clone, PartialEq)]
pub struct Gateway {
    pub account_id: String,
    pub id: String,
    /// Seconds a response stays cached; 0 turns caching off (unless a request asks for it).
    pub cache_ttl: u64,
    pub cache_invalidate_on_update: bool,
    pub collect_logs: bool,
    /// Requests allowed per `rate_limiting_interval` seconds; none for no limit.
    pub rate_limiting_limit: Option<u32>,
    pub rate_limiting_interval: Option<u32>,
    pub rate_limiting_technique: RateTechnique,
    /// Requests must carry `cf-aig-authorization` with a token of the account.
    pub authentication: bool,
    /// At most this many logs kept; none for no bound.
    pub log_management: Option<u64>,
    pub log_management_strategy: LogStrategy,
    pub created_at_ms: i64,
    pub modified_at_ms: i64,
    /// The guardrails setting as its API object (JSON), none when off; what it means is
    /// `ember-ai-gateway`'s.
    pub guardrails: Option<String>,
    /// How requests are retried when they do not say (`cf-aig-max-attempts`, `-retry-delay`,
    /// `-backoff`); none: once, no delay, constant.
    pub retry_max_attempts: Option<u8>,
    pub retry_delay_ms: Option<u64>,
    /// `constant`, `linear` or `exponential`.
    pub retry_backoff: Option<String>,
    /// The DLP setting as its API object (JSON), none when never set; what it means is
    /// `ember-ai-gateway`'s.
    pub dlp: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateTechnique {
    Fixed,
    Sliding,
}

impl RateTechnique {
    pub fn as_str(self) -> &'static str {
        match self {
            RateTechnique::Fixed => "fixed",
            RateTechnique::Sliding => "sliding",
        }
    }

    pub fn parse(text: &str) -> Option<RateTechnique> {
        [RateTechnique::Fixed, RateTechnique::Sliding]
            .into_iter()
            .find(|t| t.as_str() == text)
    }
}

/// What happens to a new log when a gateway holds `log_management` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStrategy {
    StopInserting,
    DeleteOldest,
}

impl LogStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStrategy::StopInserting => "STOP_INSERTING",
            LogStrategy::DeleteOldest => "DELETE_OLDEST",
        }
    }

    pub fn parse(text: &str) -> Option<LogStrategy> {
        [LogStrategy::StopInserting, LogStrategy::DeleteOldest]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// The requests that went through the gateways.
#[async_trait]
pub trait GatewayLogs: Send + Sync {
    /// Writes a log, keeping at most `keep_at_most` for its gateway: with `StopInserting` a log
    /// over the bound is not written (false), with `DeleteOldest` the oldest make room.
    async fn insert_log(
        &self,
        log: &GatewayLog,
        keep_at_most: Option<(u64, LogStrategy)>,
    ) -> Result<bool, StoreError>;
    async fn log(
        &self,
        account_id: &str,
        gateway_id: &str,
        id: &str,
    ) -> Result<Option<GatewayLog>, StoreError>;
    /// A page of a gateway's logs matching the query, and what all its matches add up to.
    async fn logs(&self, query: &LogQuery) -> Result<(Vec<GatewayLog>, LogTotals), StoreError>;
    /// Deletes a gateway's logs matching the filter; how many went.
    async fn delete_logs(&self, query: &LogQuery) -> Result<u64, StoreError>;
    /// The gateway's logged requests in `[since_ms, until_ms)`, added up per time bucket,
    /// provider and model, oldest bucket first.
    async fn analytics(&self, query: &AnalyticsQuery) -> Result<Vec<AnalyticsRow>, StoreError>;
    /// Sets a log's feedback, score or metadata (the fields given); false if no such log.
    async fn patch_log(
        &self,
        account_id: &str,
        gateway_id: &str,
        id: &str,
        patch: &LogPatch,
    ) -> Result<bool, StoreError>;
}

/// One request through a gateway.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GatewayLog {
    pub id: String,
    pub account_id: String,
    pub gateway_id: String,
    pub created_at_ms: i64,
    pub provider: String,
    pub model: String,
    /// The model's task (`Text Generation`, ...), where known.
    pub model_type: Option<String>,
    pub path: String,
    pub duration_ms: u64,
    pub status_code: u16,
    pub success: bool,
    pub cached: bool,
    /// The step of a universal request that served (0 otherwise).
    pub step: u32,
    /// Requests sent to providers for it, retries and fallen-back steps included (0 when
    /// cached).
    pub attempts: u32,
    pub tokens_in: u32,
    pub tokens_out: u32,
    /// In dollars.
    pub cost: f64,
    pub custom_cost: bool,
    /// `cf-aig-metadata` as it was given (a JSON object), or none.
    pub metadata: Option<String>,
    pub event_id: Option<String>,
    pub request_content_type: Option<String>,
    pub response_content_type: Option<String>,
    pub request_size: u64,
    pub response_size: u64,
    /// The bodies, unless the request asked for metadata-only logs.
    pub request_body: Option<Vec<u8>>,
    pub response_body: Option<Vec<u8>>,
    /// 1, -1 or none.
    pub feedback: Option<i8>,
    pub score: Option<u8>,
    /// What the guardrails found in the prompt and the response (a JSON object), where they ran.
    pub guardrails: Option<String>,
    /// What DLP found and did (the `cf-aig-dlp` header's object), where it found anything.
    pub dlp: Option<String>,
}

/// Which logs of a gateway, and which page of them (newest first).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LogQuery {
    pub account_id: String,
    pub gateway_id: String,
    pub success: Option<bool>,
    pub cached: Option<bool>,
    pub model: Option<String>,
    pub model_type: Option<String>,
    pub provider: Option<String>,
    pub feedback: Option<i8>,
    /// Logs created at or after this time.
    pub created_from_ms: Option<i64>,
    /// Logs created before this time.
    pub created_until_ms: Option<i64>,
    /// Pages count from 1.
    pub page: u32,
    pub per_page: u32,
}

/// What a query's matches add up to: the `result_info` of a log list.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LogTotals {
    pub count: u64,
    pub min_cost: f64,
    pub max_cost: f64,
    pub min_duration_ms: u64,
    pub max_duration_ms: u64,
    pub min_tokens_in: u32,
    pub max_tokens_in: u32,
    pub min_tokens_out: u32,
    pub max_tokens_out: u32,
    pub min_total_tokens: u32,
    pub max_total_tokens: u32,
}

/// Which logs to add up, and into buckets of what length.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalyticsQuery {
    pub account_id: String,
    pub gateway_id: String,
    pub since_ms: i64,
    pub until_ms: i64,
    /// Bucket length; buckets start at multiples of it since the Unix epoch.
    pub bucket_ms: i64,
}

/// One time bucket's requests of one provider and model.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AnalyticsRow {
    pub bucket_start_ms: i64,
    pub provider: String,
    pub model: String,
    pub requests: u64,
    pub errors: u64,
    pub cached: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost: f64,
    /// Request durations at the 50th, 95th and 99th percentiles (nearest rank).
    pub duration_ms_p50: u64,
    pub duration_ms_p95: u64,
    pub duration_ms_p99: u64,
}

impl AnalyticsRow {
    /// Fills the percentiles from the bucket's durations.
    pub fn with_durations(mut self, mut durations: Vec<u64>) -> AnalyticsRow {
        durations.sort_unstable();
        let rank = |q: f64| {
            let index = ((q * durations.len() as f64).ceil() as usize).saturating_sub(1);
            durations.get(index).copied().unwrap_or(0)
        };
        (
            self.duration_ms_p50,
            self.duration_ms_p95,
            self.duration_ms_p99,
        ) = (rank(0.50), rank(0.95), rank(0.99));
        self
    }
}

/// The fields a `PATCH` of a log sets; `Some(None)` clears one.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LogPatch {
    pub feedback: Option<Option<i8>>,
    pub score: Option<Option<u8>>,
    pub metadata: Option<Option<String>>,
}

/// Responses kept for identical requests, by key, until they expire or the bound evicts them.
#[async_trait]
pub trait ResponseCache: Send + Sync {
    /// The response under `key`, if it has not expired by `now_ms`.
    async fn cached(&self, key: &str, now_ms: i64) -> Result<Option<CachedResponse>, StoreError>;
    /// Keeps `response` under `key` until `expires_at_ms`, evicting what expired, then the
    /// oldest, while the cache holds more than its bound in bytes.
    async fn keep(
        &self,
        key: &str,
        response: &CachedResponse,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<(), StoreError>;
    /// Drops every response cached for a gateway (its settings changed).
    async fn forget_gateway(&self, gateway_key: &str) -> Result<(), StoreError>;
}

/// A response as it went out: status, the headers worth replaying, and the whole body (for a
/// stream, every event).
#[derive(Debug, Clone, PartialEq)]
pub struct CachedResponse {
    /// Which gateway it belongs to (`forget_gateway`'s key).
    pub gateway_key: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The key that ties cached responses to their gateway (`CachedResponse::gateway_key`).
pub fn gateway_cache_key(account_id: &str, gateway_id: &str) -> String {
    format!("{account_id}/{gateway_id}")
}

/// Dynamic routes: named, versioned graphs of a gateway that pick the provider and model for
/// `dynamic/<name>` requests. The store keeps each version's elements as the JSON it was given;
/// `ember-ai-gateway` reads them.
#[async_trait]
pub trait GatewayRoutes: Send + Sync {
    /// Adds a route with its first version, deployed; false if the gateway has one of that name.
    async fn create_route(&self, route: &Route, first: &RouteVersion) -> Result<bool, StoreError>;
    async fn routes(&self, account_id: &str, gateway_id: &str) -> Result<Vec<Route>, StoreError>;
    /// A route by id or by name.
    async fn route(
        &self,
        account_id: &str,
        gateway_id: &str,
        id_or_name: &str,
    ) -> Result<Option<Route>, StoreError>;
    /// Deletes a route with its versions; false if there was none.
    async fn delete_route(&self, route: &Route) -> Result<bool, StoreError>;
    async fn add_version(&self, route: &Route, version: &RouteVersion) -> Result<(), StoreError>;
    /// A route's versions, oldest first.
    async fn versions(&self, route: &Route) -> Result<Vec<RouteVersion>, StoreError>;
    /// Makes `version_id` the route's deployed version, recording the deployment; false if the
    /// route has no such version.
    async fn deploy(&self, route: &Route, deployment: &RouteDeployment)
    -> Result<bool, StoreError>;
    /// A route's deployments, oldest first.
    async fn deployments(&self, route: &Route) -> Result<Vec<RouteDeployment>, StoreError>;
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub account_id: String,
    pub gateway_id: String,
    pub id: String,
    pub name: String,
    /// The version requests follow.
    pub deployed_version_id: String,
    pub created_at_ms: i64,
    pub modified_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteVersion {
    pub id: String,
    /// The graph's elements, as JSON.
    pub elements: String,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteDeployment {
    pub id: String,
    pub version_id: String,
    pub created_at_ms: i64,
}
