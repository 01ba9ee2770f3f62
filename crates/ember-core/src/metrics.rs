//! Serving metrics per model (queue, sequences, KV cells, prefix cache, tokens, latency) and AI
//! Gateway's per gateway, provider and model (requests by result, tokens, cost, duration), kept
//! in one Prometheus registry and written out as OpenMetrics text for `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

type Latency = Family<ModelLabel, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    gateway: String,
    provider: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    gateway: String,
    provider: String,
    model: String,
    /// `success`, `error` or `cached`.
    result: String,
}

/// One request through an AI Gateway, as its metrics count it.
pub struct GatewayRequest<'a> {
    /// `{account}/{gateway}`.
    pub gateway: &'a str,
    pub provider: &'a str,
    pub model: &'a str,
    pub cached: bool,
    pub success: bool,
    pub seconds: f64,
    pub tokens_in: u32,
    pub tokens_out: u32,
    /// Dollars.
    pub cost: f64,
}

/// AI Gateway's metric families.
struct GatewayFamilies {
    requests: Family<ResultLabels, Counter>,
    tokens_in: Family<RouteLabels, Counter>,
    tokens_out: Family<RouteLabels, Counter>,
    cost: Family<RouteLabels, Counter<f64, AtomicU64>>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl GatewayFamilies {
    fn register(registry: &mut Registry) -> GatewayFamilies {
        let families = GatewayFamilies {
            requests: Family::default(),
            tokens_in: Family::default(),
            tokens_out: Family::default(),
            cost: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
        };
        let r = registry;
        r.register(
            "gateway_requests",
            "Requests through AI Gateway, by result (success, error, cached)",
            families.requests.clone(),
        );
        r.register(
            "gateway_tokens_in",
            "Prompt tokens of requests through AI Gateway",
            families.tokens_in.clone(),
        );
        r.register(
            "gateway_tokens_out",
            "Completion tokens of requests through AI Gateway",
            families.tokens_out.clone(),
        );
        r.register(
            "gateway_cost_dollars",
            "Cost of requests through AI Gateway, in dollars",
            families.cost.clone(),
        );
        r.register(
            "gateway_request_duration_seconds",
            "From a gateway request's arrival to its whole answer",
            families.duration.clone(),
        );
        families
    }
}

/// Latency buckets from 1 ms to about 65 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every serving metric, labelled by model.
pub struct Metrics {
    registry: Registry,
    loaded: Family<ModelLabel, Gauge>,
    queue_depth: Family<ModelLabel, Gauge>,
    running: Family<ModelLabel, Gauge>,
    kv_used: Family<ModelLabel, Gauge>,
    kv_cached: Family<ModelLabel, Gauge>,
    kv_free: Family<ModelLabel, Gauge>,
    prompt_tokens: Family<ModelLabel, Counter>,
    cached_tokens: Family<ModelLabel, Counter>,
    hit_ratio: Family<ModelLabel, Gauge<f64, AtomicU64>>,
    generated: Family<ModelLabel, Counter>,
    rejected: Family<ModelLabel, Counter>,
    restarts: Family<ModelLabel, Counter>,
    ttft: Latency,
    itl: Latency,
    denoising_steps: Latency,
    gateway: GatewayFamilies,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("ember");
        let loaded = Family::default();
        let queue_depth = Family::default();
        let running = Family::default();
        let kv_used = Family::default();
        let kv_cached = Family::default();
        let kv_free = Family::default();
        let prompt_tokens = Family::default();
        let cached_tokens = Family::default();
        let hit_ratio = Family::default();
        let generated = Family::default();
        let rejected = Family::default();
        let restarts = Family::default();
        let ttft = Latency::new_with_constructor(latency_histogram);
        let itl = Latency::new_with_constructor(latency_histogram);
        let denoising_steps = Latency::new_with_constructor(latency_histogram);
        let gateway = GatewayFamilies::register(&mut registry);
        let r = &mut registry;
        r.register(
            "model_loaded",
            "1 while the model is in memory",
            loaded.clone(),
        );
        r.register(
            "queue_depth",
            "Requests waiting for a free sequence slot",
            queue_depth.clone(),
        );
        r.register(
            "running_sequences",
            "Sequences being generated",
            running.clone(),
        );
        r.register(
            "kv_cells_used",
            "KV cache cells held by running sequences",
            kv_used.clone(),
        );
        r.register(
            "kv_cells_cached",
            "KV cells held by the prefix cache (reclaimable; in host memory with per-sequence streams)",
            kv_cached.clone(),
        );
        r.register("kv_cells_free", "Unused KV cache cells", kv_free.clone());
        r.register("prompt_tokens", "Prompt tokens read", prompt_tokens.clone());
        r.register(
            "prefix_cache_hit_tokens",
            "Prompt tokens served from the prefix cache",
            cached_tokens.clone(),
        );
        r.register(
            "prefix_cache_hit_ratio",
            "Share of all prompt tokens served from the prefix cache",
            hit_ratio.clone(),
        );
        r.register("generated_tokens", "Tokens generated", generated.clone());
        r.register(
            "rejected_requests",
            "Requests refused with 3040 (over capacity)",
            rejected.clone(),
        );
        r.register(
            "model_restarts",
            "Times the model was loaded again after its engine panicked",
            restarts.clone(),
        );
        r.register(
            "time_to_first_token_seconds",
            "From arrival to the first generated token",
            ttft.clone(),
        );
        r.register(
            "inter_token_latency_seconds",
            "Between consecutive generated tokens of a sequence",
            itl.clone(),
        );
        r.register(
            "denoising_step_seconds",
            "Each denoising step of an image generation (its count: steps run)",
            denoising_steps.clone(),
        );
        Arc::new(Metrics {
            registry,
            loaded,
            queue_depth,
            running,
            kv_used,
            kv_cached,
            kv_free,
            prompt_tokens,
            cached_tokens,
            hit_ratio,
            generated,
            rejected,
            restarts,
            ttft,
            itl,
            denoising_steps,
            gateway,
        })
    }

    /// Counts a request through an AI Gateway.
    pub fn gateway_request(&self, request: &GatewayRequest) {
        let route = RouteLabels {
            gateway: request.gateway.to_string(),
            provider: request.provider.to_string(),
            model: request.model.to_string(),
        };
        let result = match (request.cached, request.success) {
            (true, _) => "cached",
            (false, true) => "success",
            (false, false) => "error",
        };
        let families = &self.gateway;
        families
            .requests
            .get_or_create(&ResultLabels {
                gateway: route.gateway.clone(),
                provider: route.provider.clone(),
                model: route.model.clone(),
                result: result.to_string(),
            })
            .inc();
        families
            .tokens_in
            .get_or_create(&route)
            .inc_by(u64::from(request.tokens_in));
        families
            .tokens_out
            .get_or_create(&route)
            .inc_by(u64::from(request.tokens_out));
        families.cost.get_or_create(&route).inc_by(request.cost);
        families
            .duration
            .get_or_create(&route)
            .observe(request.seconds);
    }

    /// The handles for one model's metrics.
    pub fn model(self: &Arc<Metrics>, model: &str) -> ModelMetrics {
        let label = ModelLabel {
            model: model.to_string(),
        };
        ModelMetrics {
            loaded: self.loaded.get_or_create(&label).clone(),
            queue_depth: self.queue_depth.get_or_create(&label).clone(),
            running: self.running.get_or_create(&label).clone(),
            kv_used: self.kv_used.get_or_create(&label).clone(),
            kv_cached: self.kv_cached.get_or_create(&label).clone(),
            kv_free: self.kv_free.get_or_create(&label).clone(),
            prompt_tokens: self.prompt_tokens.get_or_create(&label).clone(),
            cached_tokens: self.cached_tokens.get_or_create(&label).clone(),
            hit_ratio: self.hit_ratio.get_or_create(&label).clone(),
            generated: self.generated.get_or_create(&label).clone(),
            rejected: self.rejected.get_or_create(&label).clone(),
            restarts: self.restarts.get_or_create(&label).clone(),
            ttft: self.ttft.get_or_create(&label).clone(),
            denoising_steps: self.denoising_steps.get_or_create(&label).clone(),
            itl: self.itl.get_or_create(&label).clone(),
        }
    }

    /// How often `model` was loaded again after its engine panicked.
    pub fn restarts(&self, model: &str) -> u64 {
        let label = ModelLabel {
            model: model.to_string(),
        };
        self.restarts.get_or_create(&label).get()
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// One model's metric handles; cheap to clone, safe to update from any thread.
#[derive(Clone)]
pub struct ModelMetrics {
    loaded: Gauge,
    queue_depth: Gauge,
    running: Gauge,
    kv_used: Gauge,
    kv_cached: Gauge,
    kv_free: Gauge,
    prompt_tokens: Counter,
    cached_tokens: Counter,
    hit_ratio: Gauge<f64, AtomicU64>,
    generated: Counter,
    rejected: Counter,
    restarts: Counter,
    ttft: Histogram,
    itl: Histogram,
    denoising_steps: Histogram,
}

impl ModelMetrics {
    /// The model was found dead and is being loaded again.
    pub fn restarted(&self) {
        self.restarts.inc();
    }

    pub fn set_loaded(&self, loaded: bool) {
        self.loaded.set(i64::from(loaded));
    }

    pub fn set_queue_depth(&self, waiting: usize) {
        self.queue_depth.set(waiting as i64);
    }

    pub fn set_running(&self, sequences: usize) {
        self.running.set(sequences as i64);
    }

    pub fn set_kv_cells(&self, used: u32, cached: u32, free: u32) {
        self.kv_used.set(i64::from(used));
        self.kv_cached.set(i64::from(cached));
        self.kv_free.set(i64::from(free));
    }

    /// A prompt was admitted; `cached` of its `tokens` came from the prefix cache.
    pub fn prompt(&self, tokens: u32, cached: u32) {
        let total = self.prompt_tokens.inc_by(u64::from(tokens)) + u64::from(tokens);
        let hits = self.cached_tokens.inc_by(u64::from(cached)) + u64::from(cached);
        self.hit_ratio.set(hits as f64 / total.max(1) as f64);
    }

    pub fn generated_token(&self) {
        self.generated.inc();
    }

    pub fn rejected(&self) {
        self.rejected.inc();
    }

    pub fn time_to_first_token(&self, seconds: f64) {
        self.ttft.observe(seconds);
    }

    pub fn inter_token_latency(&self, seconds: f64) {
        self.itl.observe(seconds);
    }

    /// An image generation ran one denoising step.
    pub fn denoising_step(&self, seconds: f64) {
        self.denoising_steps.observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_labelled_metrics() {
        let metrics = Metrics::new();
        let model = metrics.model("@cf/test/model");
        model.set_queue_depth(3);
        model.prompt(100, 40);
        model.prompt(100, 0);
        model.time_to_first_token(0.2);
        let text = metrics.encode();
        assert!(
            text.contains("ember_queue_depth{model=\"@cf/test/model\"} 3"),
            "{text}"
        );
        assert!(text.contains("ember_prompt_tokens_total{model=\"@cf/test/model\"} 200"));
        assert!(text.contains("ember_prefix_cache_hit_ratio{model=\"@cf/test/model\"} 0.2"));
        assert!(
            text.contains("ember_time_to_first_token_seconds_count{model=\"@cf/test/model\"} 1")
        );
    }
}
