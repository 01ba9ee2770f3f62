//! The two servers as child processes on free loopback ports: `llama-server` and `ember serve`
//! with the same GGUF, threads, parallel sequences and KV cells. Waits until each is ready, reads
//! its peak RSS (VmHWM) and kills it when dropped.

use anyhow::{Context, Result, bail};
use ember_engines::llm::KvLayout;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub struct Server {
    child: Child,
    log: PathBuf,
    /// `http://127.0.0.1:<port>`
    pub base: String,
}

/// How both servers are configured for one concurrency level.
pub struct ServerConfig<'a> {
    pub gguf: &'a Path,
    pub threads: u32,
    pub sequences: u32,
    pub ctx_per_sequence: u32,
    pub kv_layout: KvLayout,
    pub batch_invariant: bool,
    /// Speculative decoding by n-grams of the context, on or off (`None`: each server's default,
    /// as its users get it: on for Ember, off for llama-server).
    pub speculative: Option<bool>,
    /// For server logs and Ember's database.
    pub work_dir: &'a Path,
}

impl Server {
    /// `llama-server` with one slot of `ctx_per_sequence` tokens per sequence (the KV cache is
    /// split evenly between slots: `--kv-unified` is off when `-np` is given).
    pub fn llama(bin: &Path, config: &ServerConfig) -> Result<Server> {
        Server::llama_with_loras(bin, config, &[])
    }

    /// `llama` with GGUF LoRA adapters loaded but not applied: each request names the ones it
    /// applies (ids in the order given).
    pub fn llama_with_loras(bin: &Path, config: &ServerConfig, loras: &[&Path]) -> Result<Server> {
        let port = free_port()?;
        let mut command = Command::new(bin.join("llama-server"));
        command
            .arg("-m")
            .arg(config.gguf)
            .args(["-t", &config.threads.to_string()])
            .args(["-tb", &config.threads.to_string()])
            .args(["-np", &config.sequences.to_string()])
            .args(["-c", &config.kv_cells().to_string()])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()]);
        if config.speculative == Some(true) {
            // Its prompt lookup: drafts from n-grams of the context, no draft model.
            command.args(["--spec-type", "ngram-simple"]);
        }
        if !loras.is_empty() {
            command.arg("--lora-init-without-apply");
        }
        for lora in loras {
            command.arg("--lora").arg(lora);
        }
        Server::spawn(command, port, &config.work_dir.join("llama-server.log"))
    }

    /// This executable's `serve`, with `model` preloaded.
    pub fn ember(
        model: &str,
        home: &Path,
        catalog: Option<&Path>,
        config: &ServerConfig,
    ) -> Result<Server> {
        let port = free_port()?;
        let db = config
            .work_dir
            .join(format!("ember-{}.db", config.sequences));
        let mut command = ember_serve(home, catalog, port, &db, model)?;
        command
            .args(["--max-sequences", &config.sequences.to_string()])
            .args(["--kv-cells", &config.kv_cells().to_string()])
            .args(["--kv-layout", config.kv_layout.name()])
            .args(config.batch_invariant.then_some("--batch-invariant"))
            .env("EMBER_THREADS", config.threads.to_string());
        if let Some(speculative) = config.speculative {
            let speculation = if speculative { "prompt-lookup" } else { "off" };
            command.args(["--speculation", speculation]);
        }
        Server::spawn(command, port, &config.work_dir.join("ember.log"))
    }

    /// Starts `command`, a server that will listen on `port`, its output going to `log`.
    pub fn spawn(mut command: Command, port: u16, log: &Path) -> Result<Server> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        command.stdout(out.try_clone()?).stderr(out);
        let child = command
            .spawn()
            .with_context(|| format!("starting {:?}", command.get_program()))?;
        Ok(Server {
            child,
            log: log.to_path_buf(),
            base: format!("http://127.0.0.1:{port}"),
        })
    }

    /// Waits until `GET /health` answers 200 (both servers answer 503 or nothing while loading).
    pub async fn wait_ready(&mut self, client: &reqwest::Client) -> Result<()> {
        self.wait_ready_at(client, "/health").await
    }

    /// Waits until `GET path` answers 200.
    pub async fn wait_ready_at(&mut self, client: &reqwest::Client, path: &str) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(300) {
            if let Some(status) = self.child.try_wait()? {
                bail!("server exited ({status}):\n{}", self.log_tail());
            }
            let health = client.get(format!("{}{path}", self.base)).send().await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("server not ready after 300 s:\n{}", self.log_tail())
    }

    /// The most resident memory the process has used so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .context("no VmHWM in /proc/<pid>/status")?;
        let kib: u64 = line.trim().trim_end_matches("kB").trim().parse()?;
        Ok(kib * 1024)
    }

    /// The end of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerConfig<'_> {
    fn kv_cells(&self) -> u32 {
        self.sequences * self.ctx_per_sequence
    }
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// This executable's `serve` on `port` and `db` with `models` (comma-separated) preloaded and no
/// rate limits (the anchors have none; requests per minute must not cap a measurement).
pub fn ember_serve(
    home: &Path,
    catalog: Option<&Path>,
    port: u16,
    db: &Path,
    models: &str,
) -> Result<Command> {
    let mut command = Command::new(std::env::current_exe()?);
    command.arg("--home").arg(home);
    if let Some(catalog) = catalog {
        command.arg("--catalog").arg(catalog);
    }
    command
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--db")
        .arg(db)
        .args(["--preload", models])
        .arg("--no-rate-limits");
    Ok(command)
}
