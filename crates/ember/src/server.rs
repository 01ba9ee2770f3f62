//! Wiring for `ember serve`: opens the store, the gateway and the engines, says loudly whether
//! requests need tokens, serves the router and shuts down gracefully (in-flight streams finish;
//! runs still going after the grace period are aborted with 3008).

use crate::config::EngineConfig;
use ember_access::clock::SystemClock;
use ember_access::{Access, AccessConfig};
use ember_ai_gateway::AiGateway;
use ember_core::catalog::Task;
use ember_core::{Catalog, Ember};
use ember_http::{AppState, HttpConfig};
use ember_store::SqliteStore;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Everything `serve` needs, already merged from defaults, file, environment and flags.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub db: PathBuf,
    pub home: PathBuf,
    pub catalog: Option<PathBuf>,
    /// Tokens are required even while no account exists (else only beyond loopback).
    pub require_auth: bool,
    pub rate_limits: bool,
    /// Requests per minute by task, replacing the published ones.
    pub task_rate_limits: HashMap<Task, u32>,
    pub aliases: HashMap<String, String>,
    pub request_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Models to load before listening, instead of on first use.
    pub preload: Vec<String>,
    /// Upstreams AI Gateway forwards to besides the local models.
    pub providers: Vec<Arc<dyn ember_http::Provider>>,
    pub engine: EngineConfig,
}

/// The `run()` API over the built-in (or user) catalog, with the real engines behind it.
pub fn open_ember(
    home: &Path,
    catalog: Option<&Path>,
    aliases: HashMap<String, String>,
    engine: &EngineConfig,
) -> anyhow::Result<Ember> {
    let catalog = Catalog::load(catalog)?;
    let llm = engine.llm.clone();
    Ember::new(
        catalog,
        aliases,
        home.to_path_buf(),
        Arc::new(move |spec, dir, metrics| ember_engines::load(spec, dir, &llm, metrics)),
        engine.memory,
    )
    .map_err(anyhow::Error::msg)
}

/// Serves until `shutdown` resolves, then drains. `ready` receives the bound address.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let ember = Arc::new(open_ember(
        &config.home,
        config.catalog.as_deref(),
        config.aliases.clone(),
        &config.engine,
    )?);
    if let Some(idle) = config.engine.idle_unload {
        let ember = ember.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(idle.min(Duration::from_secs(30)));
            loop {
                tick.tick().await;
                ember.unload_idle(idle);
            }
        });
    }
    for id in &config.preload {
        let spec = ember.resolve(id)?;
        ember
            .model(spec)
            .await
            .map_err(|e| anyhow::anyhow!("preloading {id}: {e}"))?;
    }
    let stores = SqliteStore::open(&config.db)?;
    let clock = Arc::new(SystemClock);
    let ai_gateway = Arc::new(AiGateway::new(stores.clone(), clock.clone()));
    let access = Arc::new(Access::new(
        stores,
        clock,
        AccessConfig {
            open_without_accounts: !config.require_auth && config.listen.ip().is_loopback(),
            rate_limits: config.rate_limits,
            task_limits: config.task_rate_limits.clone(),
            // A run ends at the request timeout; twice that (an hour at least) also covers
            // waiting for a model, so only a killed server's reservations expire.
            reservation_ttl: (2 * config.request_timeout).max(Duration::from_secs(3_600)),
        },
    ));
    let (abort_tx, abort) = watch::channel(false);
    let state = AppState {
        ember: ember.clone(),
        access: access.clone(),
        ai_gateway,
        config: Arc::new(HttpConfig {
            request_timeout: config.request_timeout,
            providers: config.providers.clone(),
            ..HttpConfig::default()
        }),
        abort,
        generated_images: Arc::default(),
        batches: Arc::default(),
    };
    // Queued batches run in the background until shutdown; what it cuts off runs at the next start.
    let batches = tokio::spawn(ember_http::process_batches(state.clone()));
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let address = listener.local_addr()?;
    banner(&config, &ember, &access, address).await?;
    ready(address);

    let grace = config.shutdown_grace;
    let drain = async move {
        shutdown.await;
        tracing::info!(
            grace_secs = grace.as_secs(),
            "shutting down: no new connections; in-flight requests may finish"
        );
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            tracing::warn!("shutdown grace period over: aborting runs still in flight");
            let _ = abort_tx.send(true);
        });
    };
    axum::serve(listener, ember_http::router(state))
        .with_graceful_shutdown(drain)
        .await?;
    batches.abort();
    tracing::info!("stopped");
    Ok(())
}

async fn banner(
    config: &ServeConfig,
    ember: &Ember,
    access: &Access,
    address: SocketAddr,
) -> anyhow::Result<()> {
    tracing::info!(
        "Ember listening on http://{address} (state in {})",
        config.db.display()
    );
    if access.is_open().await? {
        tracing::warn!(
            "DEV MODE: no accounts exist and Ember listens on loopback, so requests need no valid token and run under the local account. Create one (`ember accounts create`, then `ember tokens create`) to require tokens."
        );
    } else if !access.stores().accounts.has_accounts().await? {
        tracing::warn!(
            "API tokens are required but no account exists yet: every request is refused until you run `ember accounts create` and `ember tokens create --account <id>`"
        );
    } else {
        tracing::info!("API tokens required: send `Authorization: Bearer <token>`");
    }
    if !config.rate_limits {
        tracing::info!("rate limits are off");
    }
    for (from, to) in &config.aliases {
        tracing::info!("alias: {from} is served by {to}");
    }
    let installed: Vec<&str> = ember
        .catalog()
        .models()
        .iter()
        .filter(|m| ember.is_installed(m))
        .map(|m| m.id.as_str())
        .collect();
    tracing::info!(
        "installed models: {}",
        if installed.is_empty() {
            "none (run `ember models pull`)".to_string()
        } else {
            installed.join(", ")
        }
    );
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
