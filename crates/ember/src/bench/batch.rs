//! `ember bench batch`: what an async batch costs the interactive requests beside it. Closed-loop
//! interactive streams run for a while alone, then again right after a batch of embedding and
//! chat requests is queued (`?queueRequest=true`), alternating in rounds; each round waits for its
//! batch to finish before the next. The rows are the streams' time to first token with the batch
//! over without it (the anchor is Ember itself without a batch), and the batches' throughput.

use super::report::{Row, median, percentile, print_table, write_json};
use super::servers::{Server, ember_serve, free_port};
use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct BatchBench {
    /// The chat model of the interactive streams and of the batch's chat requests.
    #[arg(long, default_value = "@hf/qwen/qwen2.5-coder-0.5b-instruct")]
    chat_model: String,
    /// The model of the batch's embedding requests.
    #[arg(long, default_value = "@hf/sentence-transformers/all-minilm-l6-v2")]
    embedding_model: String,
    /// Embedding requests in each round's batch.
    #[arg(long, default_value_t = 1000)]
    embeddings: usize,
    /// Chat requests in each round's batch.
    #[arg(long, default_value_t = 50)]
    chats: usize,
    /// Concurrent interactive streams.
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Seconds the interactive streams run in each phase.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Rounds (alone, then with a batch); the median p99 is reported.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "batch-results.json")]
    out: PathBuf,
}

impl BatchBench {
    pub fn run(&self, env: &super::Env) -> Result<()> {
        super::warn_if_debug_build();
        for model in [&self.chat_model, &self.embedding_model] {
            let spec = super::catalog_spec(env, model)?;
            super::installed_dir(env, spec)?;
        }
        let work = std::env::temp_dir().join(format!("ember-bench-batch-{}", std::process::id()));
        std::fs::create_dir_all(&work)?;
        env.runtime.block_on(self.measure(env, &work))
    }

    async fn measure(&self, env: &super::Env<'_>, work: &Path) -> Result<()> {
        let client = reqwest::Client::new();
        let port = free_port()?;
        let models = format!("{},{}", self.chat_model, self.embedding_model);
        let db = work.join("ember.db");
        let command = ember_serve(env.home, env.catalog_file, port, &db, &models)?;
        let mut ember = Server::spawn(command, port, &work.join("ember.log"))?;
        ember.wait_ready(&client).await?;
        let base = format!("http://127.0.0.1:{port}/client/v4/accounts/local/ai/run");

        // Warm-up: the models' first requests (and the caches they fill) are not measured.
        stream_once(&client, &format!("{base}/{}", self.chat_model), 0, 0).await?;
        self.wait_done(&client, &base, &self.submit(&client, &base, 8).await?)
            .await?;

        let (mut alone, mut beside, mut batch_seconds) = (Vec::new(), Vec::new(), Vec::new());
        let mut results = Vec::new();
        for round in 0..self.rounds {
            let quiet = self.interactive(&client, &base).await?;
            let started = Instant::now();
            let batches = self.submit(&client, &base, 1).await?;
            let busy = self.interactive(&client, &base).await?;
            self.wait_done(&client, &base, &batches).await?;
            let took = started.elapsed().as_secs_f64();
            eprintln!(
                "round {round}: TTFT p99 {:.0} ms alone, {:.0} ms beside the batch; batch done in {took:.1} s",
                percentile(&quiet, 99.0).unwrap_or_default(),
                percentile(&busy, 99.0).unwrap_or_default()
            );
            results.push(json!({
                "alone_ttft_ms": {"p50": percentile(&quiet, 50.0), "p99": percentile(&quiet, 99.0), "count": quiet.len()},
                "beside_ttft_ms": {"p50": percentile(&busy, 50.0), "p99": percentile(&busy, 99.0), "count": busy.len()},
                "batch_seconds": took,
            }));
            alone.push(percentile(&quiet, 99.0).unwrap_or_default());
            beside.push(percentile(&busy, 99.0).unwrap_or_default());
            batch_seconds.push(took);
        }
        let requests = (self.embeddings + self.chats) as f64;
        let rows = vec![
            Row::new(
                &self.chat_model,
                format!("interactive TTFT p99, {} streams", self.streams),
                "ms",
                median(&beside),
                median(&alone),
                "<= 1.5 (batch beside / alone)",
            ),
            Row::new(
                &self.embedding_model,
                format!(
                    "batch of {} embeddings + {} chats",
                    self.embeddings, self.chats
                ),
                "req/s",
                median(&batch_seconds).map(|s| requests / s),
                None,
                "",
            ),
        ];
        print_table(&rows, "no batch");
        write_json(
            &self.out,
            &json!({"bench": "batch", "streams": self.streams, "duration_s": self.duration,
                    "load_average": super::load_average(), "rounds": results, "rows": rows}),
        )?;
        drop(ember);
        Ok(())
    }

    /// Runs the interactive streams for `duration`; their times to first token, in ms.
    async fn interactive(&self, client: &reqwest::Client, base: &str) -> Result<Vec<f64>> {
        let until = Instant::now() + Duration::from_secs(self.duration);
        let url = format!("{base}/{}", self.chat_model);
        let mut streams = Vec::new();
        for stream in 0..self.streams {
            let (client, url) = (client.clone(), url.clone());
            streams.push(tokio::spawn(async move {
                let mut ttft = Vec::new();
                let mut turn = 0;
                while Instant::now() < until {
                    ttft.extend(stream_once(&client, &url, stream, turn).await?);
                    turn += 1;
                }
                anyhow::Ok(ttft)
            }));
        }
        let mut ttft = Vec::new();
        for stream in streams {
            ttft.extend(stream.await??);
        }
        Ok(ttft)
    }

    /// Queues one batch of embeddings and one of chats, a `part` of the set sizes; their (model,
    /// request id).
    async fn submit(
        &self,
        client: &reqwest::Client,
        base: &str,
        part: usize,
    ) -> Result<Vec<(String, String)>> {
        let embeddings: Vec<Value> = (0..self.embeddings.div_ceil(part))
            .map(|i| json!({"text": format!("Sentence {i} of the batch, about mountains and rivers.")}))
            .collect();
        let chats: Vec<Value> = (0..self.chats.div_ceil(part))
            .map(|i| json!({"messages": [{"role": "user", "content": format!("Give fact {i} about the sea.")}], "max_tokens": 64}))
            .collect();
        let mut queued = Vec::new();
        for (model, requests) in [
            (&self.embedding_model, embeddings),
            (&self.chat_model, chats),
        ] {
            let url = format!("{base}/{model}?queueRequest=true");
            let reply = read(post(client, &url, &json!({ "requests": requests })).await?).await?;
            let id = reply["result"]["request_id"]
                .as_str()
                .with_context(|| format!("queueing a batch: {reply}"))?;
            queued.push((model.clone(), id.to_string()));
        }
        Ok(queued)
    }

    /// Polls the batches until each is done, and checks that every request succeeded.
    async fn wait_done(
        &self,
        client: &reqwest::Client,
        base: &str,
        batches: &[(String, String)],
    ) -> Result<()> {
        for (model, id) in batches {
            loop {
                let url = format!("{base}/{model}?queueRequest=true");
                let reply = read(post(client, &url, &json!({ "request_id": id })).await?).await?;
                if let Some(responses) = reply["result"]["responses"].as_array() {
                    let failed = responses.iter().filter(|r| r["success"] != true).count();
                    if failed > 0 {
                        bail!("{failed} requests of batch {id} failed");
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }
}

/// One streamed chat request, read to its end; its time to first token in ms.
async fn stream_once(
    client: &reqwest::Client,
    url: &str,
    stream: usize,
    turn: usize,
) -> Result<Option<f64>> {
    let body = json!({
        "messages": [{"role": "user", "content": format!("Write a short note number {stream}-{turn} about rivers.")}],
        "max_tokens": 32,
        "stream": true,
    });
    let sent = Instant::now();
    let mut response = post(client, url, &body).await?;
    if !response.status().is_success() {
        bail!("{url} answered {}", response.status());
    }
    let mut first = None;
    while let Some(chunk) = response.chunk().await? {
        if first.is_none() && chunk.windows(5).any(|w| w == b"data:") {
            first = Some(sent.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(first)
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> Result<reqwest::Response> {
    Ok(client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await?)
}

async fn read(response: reqwest::Response) -> Result<Value> {
    Ok(serde_json::from_slice(&response.bytes().await?)?)
}
