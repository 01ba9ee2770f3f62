//! `ember bench gateway`: AI Gateway's cached path against LiteLLM's proxy (PyPI `litellm`, with
//! its in-memory cache), both in front of the same upstream (Ember serving a small model on its
//! OpenAI route). After one request fills each cache, identical chat requests are sent closed-loop
//! at a few concurrencies, alternating between the two in rounds; the rows are cached requests
//! per second and latency. The stack's own overhead is a cached request's latency less that of
//! `GET /health` on the same server, one request at a time.

use super::report::{Row, median, percentile, print_table, write_json};
use super::servers::{Server, ember_serve, free_port};
use anyhow::{Result, bail};
use clap::Args;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct GatewayBench {
    /// The upstream's model (pulled first if missing).
    #[arg(long, default_value = "@hf/huggingfacetb/smollm2-135m-instruct")]
    model: String,
    /// Cached requests per round and concurrency.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Concurrent clients of the timed runs.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 8, 32])]
    concurrency: Vec<usize>,
    /// Rounds per concurrency, alternating between the two; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "gateway-results.json")]
    out: PathBuf,
}

/// What one timed run measured.
struct Run {
    per_second: f64,
    latencies_ms: Vec<f64>,
}

impl GatewayBench {
    pub fn run(&self, env: &super::Env) -> Result<()> {
        super::warn_if_debug_build();
        let spec = super::catalog_spec(env, &self.model)?;
        super::installed_dir(env, spec)?;
        let litellm = super::setup_script("litellm.sh")?;
        let work = std::env::temp_dir().join(format!("ember-bench-gateway-{}", std::process::id()));
        std::fs::create_dir_all(&work)?;
        env.runtime.block_on(self.measure(env, &litellm, &work))
    }

    async fn measure(&self, env: &super::Env<'_>, litellm: &Path, work: &Path) -> Result<()> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?;
        // Ember: its own OpenAI route is the upstream, reached as provider `upstream`.
        let port = free_port()?;
        let base = format!("http://127.0.0.1:{port}");
        let db = work.join("ember.db");
        let mut command = ember_serve(env.home, env.catalog_file, port, &db, &self.model)?;
        command.args(["--provider", &format!("upstream={base}/v1")]);
        let mut ember = Server::spawn(command, port, &work.join("ember.log"))?;
        ember.wait_ready(&client).await?;

        let lite_port = free_port()?;
        let config = work.join("litellm.yaml");
        std::fs::write(
            &config,
            format!(
                "model_list:\n  - model_name: bench\n    litellm_params:\n      model: openai/{}\n      \
                 api_base: {base}/v1\n      api_key: unused\nlitellm_settings:\n  cache: true\n  \
                 cache_params:\n    type: local\n",
                self.model
            ),
        )?;
        let mut command = Command::new(litellm);
        command.arg("--config").arg(&config).args([
            "--host",
            "127.0.0.1",
            "--port",
            &lite_port.to_string(),
        ]);
        let mut lite = Server::spawn(command, lite_port, &work.join("litellm.log"))?;
        lite.wait_ready_at(&client, "/health/liveliness").await?;

        let body = |model: &str| {
            json!({"model": model, "max_tokens": 16, "temperature": 0,
                   "messages": [{"role": "user", "content": "Say hello."}]})
            .to_string()
        };
        let ember_request = Target {
            url: format!("{base}/v1/local/default/upstream/chat/completions"),
            body: body(&self.model),
            headers: vec![("cf-aig-cache-ttl", "3600")],
        };
        let lite_request = Target {
            url: format!("http://127.0.0.1:{lite_port}/v1/chat/completions"),
            body: body("bench"),
            headers: vec![],
        };
        // Fill both caches, and check that the next request is a hit.
        for target in [&ember_request, &lite_request] {
            target.send(&client).await?;
        }
        let hit = ember_request.send(&client).await?;
        if hit
            .headers()
            .get("cf-aig-cache-status")
            .and_then(|v| v.to_str().ok())
            != Some("HIT")
        {
            bail!("Ember's gateway did not answer the repeat from its cache");
        }
        let health = Target {
            url: format!("{base}/health"),
            body: String::new(),
            headers: vec![],
        };

        let mut rows = Vec::new();
        let mut results = Vec::new();
        for &concurrency in &self.concurrency {
            let (mut ember_runs, mut lite_runs) = (Vec::new(), Vec::new());
            for _ in 0..self.rounds {
                ember_runs.push(
                    ember_request
                        .load(&client, self.requests, concurrency)
                        .await?,
                );
                lite_runs.push(
                    lite_request
                        .load(&client, self.requests, concurrency)
                        .await?,
                );
            }
            let rate =
                |runs: &[Run]| median(&runs.iter().map(|r| r.per_second).collect::<Vec<_>>());
            let pooled = |runs: &[Run]| {
                runs.iter()
                    .flat_map(|r| r.latencies_ms.clone())
                    .collect::<Vec<_>>()
            };
            let (ember_ms, lite_ms) = (pooled(&ember_runs), pooled(&lite_runs));
            let label = format!("c={concurrency}");
            rows.push(Row::new(
                &label,
                "cached requests/s".into(),
                "req/s",
                rate(&ember_runs),
                rate(&lite_runs),
                ">= 1",
            ));
            rows.push(Row::new(
                &label,
                "cached p50 latency".into(),
                "ms",
                percentile(&ember_ms, 50.0),
                percentile(&lite_ms, 50.0),
                "<= 1",
            ));
            rows.push(Row::new(
                &label,
                "cached p99 latency".into(),
                "ms",
                percentile(&ember_ms, 99.0),
                percentile(&lite_ms, 99.0),
                "<= 1",
            ));
            results.push(json!({"concurrency": concurrency,
                "ember": {"requests_per_s": rate(&ember_runs), "p50_ms": percentile(&ember_ms, 50.0), "p99_ms": percentile(&ember_ms, 99.0)},
                "litellm": {"requests_per_s": rate(&lite_runs), "p50_ms": percentile(&lite_ms, 50.0), "p99_ms": percentile(&lite_ms, 99.0)}}));
        }
        // The stack's own cost: a cached answer against the server's cheapest route.
        let (cached, bare) = (
            ember_request.load(&client, self.requests, 1).await?,
            health.load(&client, self.requests, 1).await?,
        );
        let overhead = |p| {
            percentile(&cached.latencies_ms, p)
                .zip(percentile(&bare.latencies_ms, p))
                .map(|(c, b)| c - b)
        };
        rows.push(Row::new(
            "c=1",
            "gateway overhead p50 (vs /health)".into(),
            "ms",
            overhead(50.0),
            None,
            "",
        ));
        rows.push(Row::new(
            "c=1",
            "gateway overhead p99 (vs /health)".into(),
            "ms",
            overhead(99.0),
            None,
            "< 1 ms",
        ));
        print_table(&rows, "LiteLLM");
        write_json(
            &self.out,
            &json!({"bench": "gateway", "model": self.model, "requests": self.requests,
                    "load_average": super::load_average(), "runs": results,
                    "overhead_ms": {"p50": overhead(50.0), "p99": overhead(99.0)}, "rows": rows}),
        )?;
        drop((ember, lite));
        Ok(())
    }
}

/// One kind of request, sent again and again.
struct Target {
    url: String,
    /// Empty: a GET.
    body: String,
    headers: Vec<(&'static str, &'static str)>,
}

impl Target {
    async fn send(&self, client: &reqwest::Client) -> Result<reqwest::Response> {
        let mut request = match self.body.is_empty() {
            true => client.get(&self.url),
            false => client
                .post(&self.url)
                .header("content-type", "application/json")
                .body(self.body.clone()),
        };
        for (name, value) in &self.headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await?;
        if !response.status().is_success() {
            bail!("{} answered {}", self.url, response.status());
        }
        Ok(response)
    }

    /// `requests` requests from `concurrency` clients, each sending its next when its last is
    /// read whole.
    async fn load(
        &self,
        client: &reqwest::Client,
        requests: usize,
        concurrency: usize,
    ) -> Result<Run> {
        let left = Arc::new(std::sync::atomic::AtomicUsize::new(requests));
        let target = Arc::new(Target {
            url: self.url.clone(),
            body: self.body.clone(),
            headers: self.headers.clone(),
        });
        let started = Instant::now();
        let mut clients = Vec::new();
        for _ in 0..concurrency.max(1) {
            let (left, target, client) = (left.clone(), target.clone(), client.clone());
            clients.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                while left
                    .fetch_update(
                        std::sync::atomic::Ordering::SeqCst,
                        std::sync::atomic::Ordering::SeqCst,
                        |n| n.checked_sub(1),
                    )
                    .is_ok()
                {
                    let sent = Instant::now();
                    target.send(&client).await?.bytes().await?;
                    latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                }
                anyhow::Ok(latencies)
            }));
        }
        let mut latencies_ms = Vec::new();
        for client in clients {
            latencies_ms.extend(client.await??);
        }
        let seconds = started
            .elapsed()
            .max(Duration::from_micros(1))
            .as_secs_f64();
        Ok(Run {
            per_second: requests as f64 / seconds,
            latencies_ms,
        })
    }
}
