//! The `ember` command line: `serve`, `run` (in-process, no server), `models list|pull`,
//! `accounts`, `tokens`, `usage` and `bench`. Every flag can also be set by the environment
//! variable shown in `--help`.

mod admin;
mod bench;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ember::config::{self, FileConfig};
use ember::pull::{self, Progress, PullOptions};
use ember::{ServeConfig, open_ember};
use ember_core::runner::TextEvent;
use ember_core::{Catalog, RunOptions, RunOutput};
use ember_http::wire;
use ember_store::SqliteStore;
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "ember", version, about = "Workers AI on your own machines")]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Common {
    /// Model cache (models live in <home>/models).
    #[arg(long, env = "EMBER_HOME", global = true)]
    home: Option<PathBuf>,
    /// A catalog file whose entries override or extend the built-in catalog.
    #[arg(long, env = "EMBER_CATALOG", global = true)]
    catalog: Option<PathBuf>,
    /// A TOML config file (listen, db, require_auth, catalog, aliases, ...).
    #[arg(long, env = "EMBER_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// SQLite database file: accounts, tokens, the request log and the usage ledger (created
    /// on first use).
    #[arg(long, env = "EMBER_DB", global = true)]
    db: Option<PathBuf>,
    /// Serve FROM with model TO, e.g. @cf/meta/llama-3.1-8b-instruct=@hf/qwen/qwen2.5-coder-0.5b-instruct.
    #[arg(long = "alias", env = "EMBER_ALIASES", value_delimiter = ',', value_parser = config::parse_alias, global = true)]
    aliases: Vec<(String, String)>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Workers AI REST API and the Worker binding protocol.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "EMBER_LISTEN")]
        listen: Option<SocketAddr>,
        /// Require API tokens even while no account exists. Without it, Ember on loopback with
        /// no account runs every request under a local account (dev mode).
        #[arg(long, env = "EMBER_REQUIRE_AUTH")]
        require_auth: bool,
        /// Turn the per-task rate limits off.
        #[arg(long, env = "EMBER_NO_RATE_LIMITS")]
        no_rate_limits: bool,
        /// Requests per minute for a task, replacing the published limit, e.g. text-generation=600.
        #[arg(long = "rate-limit", env = "EMBER_RATE_LIMITS", value_delimiter = ',', value_parser = config::parse_task_limit)]
        rate_limits: Vec<(ember_core::catalog::Task, u32)>,
        /// Seconds a non-streamed run may take before it fails with 3007.
        #[arg(long, env = "EMBER_REQUEST_TIMEOUT")]
        request_timeout: Option<u64>,
        /// Seconds in-flight requests get to finish after a shutdown signal.
        #[arg(long, env = "EMBER_SHUTDOWN_GRACE")]
        shutdown_grace: Option<u64>,
        /// Models to load at start instead of on first use.
        #[arg(long, value_delimiter = ',')]
        preload: Vec<String>,
        /// An upstream AI Gateway forwards to, NAME=URL (OpenAI-compatible, e.g.
        /// openai=https://api.openai.com/v1); its key is read from EMBER_PROVIDER_<NAME>_KEY.
        #[arg(long = "provider", env = "EMBER_PROVIDERS", value_delimiter = ',', value_parser = config::parse_provider)]
        providers: Vec<(String, String)>,
        #[command(flatten)]
        engine: config::EngineOptions,
    },
    /// Run a model once, in-process, and print its result.
    Run {
        /// Model id (or alias), e.g. @hf/qwen/qwen2.5-coder-0.5b-instruct.
        model: String,
        /// The task input as JSON, e.g. '{"prompt": "Hello"}'.
        #[arg(long)]
        input: String,
        /// Stream text as it is generated.
        #[arg(long)]
        stream: bool,
        #[command(flatten)]
        engine: config::EngineOptions,
    },
    /// List and fetch models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Manage accounts.
    Accounts {
        #[command(subcommand)]
        command: admin::AccountsCommand,
    },
    /// Manage API tokens.
    Tokens {
        #[command(subcommand)]
        command: admin::TokensCommand,
    },
    /// Manage AI Gateways (caching, logs, rate limits in front of the models).
    Gateways {
        #[command(subcommand)]
        command: admin::GatewaysCommand,
    },
    /// Manage finetunes: LoRA adapters that requests apply with `lora`.
    Finetunes {
        #[command(subcommand)]
        command: admin::FinetunesCommand,
    },
    /// Look at the async batch queue (`queueRequest`).
    Batch {
        #[command(subcommand)]
        command: admin::BatchCommand,
    },
    /// Print an account's usage: daily totals per model.
    Usage {
        #[arg(long)]
        account: String,
        /// First UTC day (YYYY-MM-DD) [default: 29 days ago].
        #[arg(long)]
        since: Option<String>,
        /// Last UTC day [default: today].
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        model: Option<String>,
    },
    /// Measure Ember against llama.cpp's own tools on the same models.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Show the catalog and which models are installed.
    List,
    /// Fetch, assemble and verify models.
    Pull {
        /// Model ids; with --defaults, every default model.
        models: Vec<String>,
        #[arg(long)]
        defaults: bool,
        /// Install the named model from this folder (its files in the catalog's layout, e.g. a
        /// diffusers folder downloaded elsewhere) instead of fetching it.
        #[arg(long, value_name = "FOLDER")]
        from: Option<std::path::PathBuf>,
    },
}

/// candle reads its thread count from `RAYON_NUM_THREADS` at every parallel operation and, when it
/// is unset, works the count out from the machine each time (tens of µs, many times per forward
/// pass of a small model). Sets it once, to `EMBER_THREADS` or every core, before any thread
/// starts, so the candle engines also follow `EMBER_THREADS`.
fn fix_candle_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let threads = ember_engines::cpu_threads();
    // SAFETY: no other thread exists yet (the runtime starts after this).
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string())
    };
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EMBER_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run_cli(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_cli(cli: Cli) -> anyhow::Result<()> {
    let file = FileConfig::load(cli.common.config.as_deref())?;
    let home = cli
        .common
        .home
        .clone()
        .unwrap_or_else(ember_core::installed::default_home);
    let catalog_file = cli.common.catalog.clone().or(file.catalog.clone());
    let mut aliases: HashMap<String, String> = file.aliases.clone();
    aliases.extend(cli.common.aliases.iter().cloned());
    let db = cli
        .common
        .db
        .clone()
        .or(file.db.clone())
        .unwrap_or_else(config::default_db);
    if let Command::Serve { engine, .. } | Command::Run { engine, .. } = &cli.command
        && engine.batch_invariant.or(file.engine.batch_invariant) == Some(true)
    {
        // SAFETY: no other thread exists yet (the runtime starts below).
        #[allow(unsafe_code)]
        unsafe {
            ember_engines::llm::use_batch_invariant_kernels()
        };
    }
    fix_candle_threads();
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Serve {
            listen,
            require_auth,
            no_rate_limits,
            rate_limits,
            request_timeout,
            shutdown_grace,
            preload,
            providers,
            engine,
        } => {
            let config = ServeConfig {
                listen: listen
                    .or(file.listen)
                    .unwrap_or_else(|| config::DEFAULT_LISTEN.parse().expect("valid default")),
                db,
                home,
                catalog: catalog_file,
                require_auth: require_auth || file.require_auth.unwrap_or(false),
                rate_limits: !no_rate_limits && file.rate_limits.unwrap_or(true),
                task_rate_limits: file
                    .task_rate_limits
                    .into_iter()
                    .chain(rate_limits)
                    .collect(),
                aliases,
                request_timeout: Duration::from_secs(
                    request_timeout.or(file.request_timeout_secs).unwrap_or(600),
                ),
                shutdown_grace: Duration::from_secs(
                    shutdown_grace.or(file.shutdown_grace_secs).unwrap_or(30),
                ),
                preload,
                providers: providers
                    .iter()
                    .map(|(name, url)| {
                        let key = std::env::var(config::provider_key_variable(name)).ok();
                        let provider = ember_http::OpenAiCompatible::new(name, url, key);
                        std::sync::Arc::new(provider) as std::sync::Arc<dyn ember_http::Provider>
                    })
                    .collect(),
                engine: engine.or(&file.engine).resolve(),
            };
            runtime.block_on(ember::serve(
                config,
                ember::server::shutdown_signal(),
                |_| {},
            ))
        }
        Command::Run {
            model,
            input,
            stream,
            engine,
        } => {
            let mut input: serde_json::Value =
                serde_json::from_str(&input).context("--input is not valid JSON")?;
            if stream {
                input
                    .as_object_mut()
                    .context("--stream needs an input object")?
                    .insert("stream".into(), true.into());
            }
            let engine = engine.or(&file.engine).resolve();
            let ember = open_ember(&home, catalog_file.as_deref(), aliases, &engine)?;
            runtime.block_on(run_once(&ember, &model, &input))
        }
        Command::Accounts { command } => {
            runtime.block_on(admin::accounts(&SqliteStore::open(&db)?, command))
        }
        Command::Tokens { command } => {
            runtime.block_on(admin::tokens(&SqliteStore::open(&db)?, command))
        }
        Command::Gateways { command } => {
            runtime.block_on(admin::gateways(&SqliteStore::open(&db)?, command))
        }
        Command::Finetunes { command } => {
            let catalog = Catalog::load(catalog_file.as_deref())?;
            let stores = SqliteStore::open(&db)?;
            runtime.block_on(admin::finetunes(&stores, &catalog, &home, command))
        }
        Command::Batch { command } => {
            runtime.block_on(admin::batch(&SqliteStore::open(&db)?, command))
        }
        Command::Usage {
            account,
            since,
            until,
            model,
        } => runtime.block_on(admin::usage(
            &SqliteStore::open(&db)?,
            account,
            since,
            until,
            model,
        )),
        Command::Models {
            command: ModelsCommand::List,
        } => {
            let catalog = Catalog::load(catalog_file.as_deref())?;
            match list(&catalog, &home) {
                // `ember models list | head` closes the pipe early; that is not an error.
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                other => Ok(other?),
            }
        }
        Command::Models {
            command:
                ModelsCommand::Pull {
                    models,
                    defaults,
                    from,
                },
        } => {
            let catalog = Catalog::load(catalog_file.as_deref())?;
            pull_models(&catalog, &home, &models, defaults, from.as_deref())
        }
        Command::Bench { command } => {
            let catalog = Catalog::load(catalog_file.as_deref())?;
            let env = bench::Env {
                catalog: &catalog,
                catalog_file: catalog_file.as_deref(),
                home: &home,
                runtime: &runtime,
            };
            bench::run(command, &env)
        }
    }
}

async fn run_once(
    ember: &ember_core::Ember,
    model: &str,
    input: &serde_json::Value,
) -> anyhow::Result<()> {
    let target = ember.target(model)?;
    let input = wire::parse(wire::Incoming::new(target, input, None))?;
    let run = ember.run(target, input, &RunOptions::default()).await?;
    if run.served_by != model {
        eprintln!("(served by {})", run.served_by);
    }
    match run.output {
        RunOutput::Task { output, .. } => match wire::result(&output) {
            wire::Answer::Json(result) => println!("{}", serde_json::to_string_pretty(&result)?),
            wire::Answer::Binary {
                bytes,
                content_type,
            } => {
                eprintln!("({content_type}, {} bytes)", bytes.len());
                std::io::stdout().write_all(&bytes)?;
            }
        },
        RunOutput::Completion(completion) => println!(
            "{}",
            serde_json::to_string_pretty(&wire::text_generation::result(&completion))?
        ),
        RunOutput::Stream(mut events) => {
            let mut stdout = std::io::stdout();
            while let Some(event) = events.recv().await {
                match event {
                    TextEvent::Text(text) => {
                        stdout.write_all(text.as_bytes())?;
                        stdout.flush()?;
                    }
                    // Calls are printed whole, from the completion.
                    TextEvent::ToolCallStart { .. } | TextEvent::ToolCallArguments { .. } => {}
                    TextEvent::Done(completion) => {
                        println!();
                        for call in &completion.tool_calls {
                            println!("tool call: {}", wire::tools::native_call(call));
                        }
                        eprintln!("usage: {}", serde_json::to_string(&completion.usage)?);
                    }
                    TextEvent::Failed(error) => return Err(error.into()),
                }
            }
        }
    }
    Ok(())
}

fn list(catalog: &Catalog, home: &std::path::Path) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<48} {:<20} {:<10} SOURCES",
        "MODEL", "TASK", "INSTALLED"
    )?;
    for spec in catalog.models() {
        let stand_in = spec.stand_in.as_deref().and_then(|id| catalog.get(id));
        let installed = if ember_core::installed::can_run(catalog, home, spec) {
            "yes"
        } else if stand_in.is_some_and(|s| ember_core::installed::can_run(catalog, home, s)) {
            "stand-in"
        } else {
            "no"
        };
        let sources: Vec<String> = spec
            .sources
            .iter()
            .map(|s| match s {
                ember_core::catalog::Source::Pypi { .. } => "pypi".to_string(),
                ember_core::catalog::Source::HuggingFace { .. } => "hugging-face".to_string(),
                ember_core::catalog::Source::Npm {
                    package, version, ..
                } => format!("npm:{package}@{version}"),
            })
            .collect();
        let task = serde_json::to_value(spec.task)?;
        let task = task.as_str().unwrap_or_default();
        writeln!(
            out,
            "{:<48} {:<20} {:<10} {}",
            spec.id,
            task,
            installed,
            sources.join(", ")
        )?;
    }
    Ok(())
}

fn pull_models(
    catalog: &Catalog,
    home: &std::path::Path,
    ids: &[String],
    defaults: bool,
    from: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if from.is_some() && (defaults || ids.len() != 1) {
        anyhow::bail!("--from installs one named model");
    }
    let mut specs: Vec<&ember_core::ModelSpec> = Vec::new();
    if defaults {
        specs.extend(catalog.models().iter().filter(|m| m.default));
    }
    for id in ids {
        let spec = catalog
            .get(id)
            .with_context(|| format!("{id} is not in the catalog (see `ember models list`)"))?;
        // A stand-in has no files of its own: what it needs is its base model.
        match spec.base.as_deref().and_then(|base| catalog.get(base)) {
            Some(base) => specs.push(base),
            None => specs.push(spec),
        }
    }
    if specs.is_empty() {
        anyhow::bail!("name the models to pull, or pass --defaults");
    }
    let options = PullOptions::from_env(home.to_path_buf());
    for spec in specs {
        eprintln!("pulling {}", spec.id);
        let mut last_report = Instant::now();
        let mut reporter = |progress: Progress| match progress {
            Progress::Downloading { what, done, total } => {
                if last_report.elapsed() >= Duration::from_millis(500) || total == Some(done) {
                    last_report = Instant::now();
                    match total {
                        Some(total) if total > 0 => eprintln!(
                            "  {what}: {:.1}/{:.1} MB ({}%)",
                            done as f64 / 1e6,
                            total as f64 / 1e6,
                            done * 100 / total
                        ),
                        _ => eprintln!("  {what}: {:.1} MB", done as f64 / 1e6),
                    }
                }
            }
            Progress::Checking { file } => eprintln!("  checking {file}"),
            Progress::Assembling { file } => eprintln!("  assembling {file}"),
            Progress::Verified { file } => eprintln!("  verified {file}"),
            Progress::AlreadyInstalled => eprintln!("  already installed and verified"),
            Progress::SourceFailed { source, error } => {
                eprintln!("  source {source} failed: {error}")
            }
        };
        let pulled = match from {
            Some(folder) => pull::pull_from_folder(spec, &options, folder, &mut reporter),
            None => pull::pull(spec, &options, &mut reporter),
        };
        pulled.with_context(|| match &spec.stand_in {
            Some(stand_in) => format!(
                "pulling {} (until it is installed, its stand-in {stand_in} serves its id)",
                spec.id
            ),
            None => format!("pulling {}", spec.id),
        })?;
        eprintln!(
            "  done: {}",
            ember_core::installed::model_dir(home, spec).display()
        );
    }
    Ok(())
}
