//! `ember accounts`, `ember tokens`, `ember gateways`, `ember finetunes`, `ember batch` and
//! `ember usage`: the administration commands. They act on the same SQLite file as `ember serve --db`, while it runs (the server checks tokens and
//! accounts on every request, so a change takes effect at once).

use anyhow::{Context, bail};
use clap::Subcommand;
use ember_access::LOCAL_ACCOUNT_ID;
use ember_access::clock::{Clock, SystemClock};
use ember_access::credentials::{self, DEFAULT_DAILY_FREE_NEURONS};
use ember_ai_gateway::dlp::Dlp;
use ember_ai_gateway::guardrails::Guardrails;
use ember_ai_gateway::{AiGateway, Backoff, GatewaySettings};
use ember_core::catalog::Catalog;
use ember_core::finetunes;
use ember_store::{
    DAY_MS, Finetune, LogStrategy, Plan, RateTechnique, Stores, UsageQuery, utc_day,
    utc_day_start_ms,
};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum AccountsCommand {
    /// Create an account and print its id.
    Create {
        #[arg(long, default_value = "default")]
        name: String,
        /// `free` stops at the daily allocation (429, code 3036); `paid` goes on and bills the rest.
        #[arg(long, default_value = "free", value_parser = parse_plan)]
        plan: Plan,
        /// Neurons free per UTC day.
        #[arg(long, default_value_t = DEFAULT_DAILY_FREE_NEURONS)]
        daily_free_neurons: f64,
    },
    /// List accounts.
    List,
    /// Change an account's plan or daily allocation.
    Update {
        id: String,
        #[arg(long, value_parser = parse_plan)]
        plan: Option<Plan>,
        #[arg(long)]
        daily_free_neurons: Option<f64>,
    },
}

#[derive(Subcommand)]
pub enum TokensCommand {
    /// Create an API token for an account and print it (it is shown only this once).
    Create {
        #[arg(long)]
        account: String,
        #[arg(long, default_value = "")]
        name: String,
        /// When it stops working: a duration (`30d`, `12h`, `90m`) or a UTC date (`2027-01-31`).
        #[arg(long)]
        expires: Option<String>,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long)]
        account: Option<String>,
    },
    /// Revoke a token by id; requests with it are refused at once.
    Revoke { id: String },
}

/// A gateway's settings as flags; those left out keep their value (on create, the default's).
#[derive(clap::Args)]
pub struct GatewayFlags {
    /// Seconds responses stay cached (0: off).
    #[arg(long)]
    cache_ttl: Option<u64>,
    /// Forget the cache whenever the settings change.
    #[arg(long)]
    cache_invalidate_on_update: Option<bool>,
    #[arg(long)]
    collect_logs: Option<bool>,
    /// Requests allowed per `--rate-limit-interval` seconds.
    #[arg(long, requires = "rate_limit_interval")]
    rate_limit: Option<u32>,
    #[arg(long)]
    rate_limit_interval: Option<u32>,
    /// `fixed` or `sliding`.
    #[arg(long, value_parser = |t: &str| RateTechnique::parse(t).ok_or("fixed or sliding"))]
    rate_limit_technique: Option<RateTechnique>,
    /// Provider URLs also need `cf-aig-authorization` with a token of the account.
    #[arg(long)]
    authentication: Option<bool>,
    /// Logs kept at most.
    #[arg(long)]
    log_management: Option<u64>,
    /// `STOP_INSERTING` or `DELETE_OLDEST`, when the logs are full.
    #[arg(long, value_parser = |t: &str| LogStrategy::parse(t).ok_or("STOP_INSERTING or DELETE_OLDEST"))]
    log_management_strategy: Option<LogStrategy>,
    /// Attempts at a provider that fails (1 to 5), for requests that do not say.
    #[arg(long)]
    retry_max_attempts: Option<u64>,
    /// Milliseconds before a retry (at most 5000), for requests that do not say.
    #[arg(long)]
    retry_delay: Option<u64>,
    /// `constant`, `linear` or `exponential`, for requests that do not say.
    #[arg(long, value_parser = |t: &str| Backoff::parse("--retry-backoff", t).map_err(|e| e.to_string()))]
    retry_backoff: Option<Backoff>,
    /// Guardrails as the API's object, e.g. '{"prompt": {"s1": "BLOCK"}, "response": {"s10": "FLAG"}}'
    /// ('{}' turns them off).
    #[arg(long, value_parser = parse_guardrails)]
    guardrails: Option<Guardrails>,
    /// Data Loss Prevention as the API's object, e.g. '{"enabled": true, "policies": [{"id":
    /// "no-cards", "action": "BLOCK", "check": ["REQUEST"], "profiles": ["financial-information"]}]}'
    /// (profiles: financial-information, credentials-and-secrets, government-identifiers,
    /// personal-information).
    #[arg(long, value_parser = parse_dlp)]
    dlp: Option<Dlp>,
}

fn parse_guardrails(text: &str) -> Result<Guardrails, String> {
    let value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Guardrails::from_json(&value).map_err(|e| e.to_string())
}

fn parse_dlp(text: &str) -> Result<Dlp, String> {
    let value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Dlp::from_json(&value).map_err(|e| e.to_string())
}

impl GatewayFlags {
    fn settings(self) -> GatewaySettings {
        GatewaySettings {
            cache_ttl: self.cache_ttl,
            cache_invalidate_on_update: self.cache_invalidate_on_update,
            collect_logs: self.collect_logs,
            rate_limiting_limit: self.rate_limit.map(Some),
            rate_limiting_interval: self.rate_limit_interval.map(Some),
            rate_limiting_technique: self.rate_limit_technique,
            authentication: self.authentication,
            log_management: self.log_management.map(Some),
            log_management_strategy: self.log_management_strategy,
            guardrails: self.guardrails.map(Some),
            dlp: self.dlp.map(Some),
            retry_max_attempts: self.retry_max_attempts.map(Some),
            retry_delay_ms: self.retry_delay.map(Some),
            retry_backoff: self.retry_backoff.map(Some),
        }
    }
}

#[derive(Subcommand)]
pub enum GatewaysCommand {
    /// Create an AI Gateway.
    Create {
        id: String,
        /// Its account [default: the dev mode's `local`].
        #[arg(long, default_value = LOCAL_ACCOUNT_ID)]
        account: String,
        #[command(flatten)]
        flags: GatewayFlags,
    },
    /// List an account's gateways.
    List {
        #[arg(long, default_value = LOCAL_ACCOUNT_ID)]
        account: String,
    },
    /// Change a gateway's settings.
    Update {
        id: String,
        #[arg(long, default_value = LOCAL_ACCOUNT_ID)]
        account: String,
        #[command(flatten)]
        flags: GatewayFlags,
    },
    /// Delete a gateway with its logs and cached responses.
    Rm {
        id: String,
        #[arg(long, default_value = LOCAL_ACCOUNT_ID)]
        account: String,
    },
}

pub async fn gateways(stores: &Stores, command: GatewaysCommand) -> anyhow::Result<()> {
    let gateways = AiGateway::new(stores.clone(), std::sync::Arc::new(SystemClock));
    let shown = match command {
        GatewaysCommand::Create { id, account, flags } => {
            vec![gateways.create(&account, &id, &flags.settings()).await?]
        }
        GatewaysCommand::Update { id, account, flags } => {
            vec![gateways.update(&account, &id, &flags.settings()).await?]
        }
        GatewaysCommand::Rm { id, account } => {
            gateways.delete(&account, &id).await?;
            println!("deleted gateway {id}");
            return Ok(());
        }
        GatewaysCommand::List { account } => stores.gateways.gateways(&account).await?,
    };
    println!(
        "{:<24}  {:>9}  {:<4}  {:<16}  {:<8}  {:<22}  {:<20}  {:<12}  logs kept",
        "id", "cache ttl", "logs", "rate limit", "auth", "retries", "guardrails", "dlp"
    );
    for gateway in shown {
        let rate = match (gateway.rate_limiting_limit, gateway.rate_limiting_interval) {
            (Some(limit), Some(interval)) => format!(
                "{limit}/{interval}s {}",
                gateway.rate_limiting_technique.as_str()
            ),
            _ => "-".into(),
        };
        let kept = gateway.log_management.map_or("all".into(), |at_most| {
            format!("{at_most} ({})", gateway.log_management_strategy.as_str())
        });
        let retries = ember_ai_gateway::retry_defaults(&gateway);
        let retries = format!(
            "{}x {} {}ms",
            retries.max_attempts,
            retries.backoff.as_str(),
            retries.delay_ms
        );
        let guardrails = Guardrails::parse_stored(gateway.guardrails.as_deref())
            .map_or("off".into(), |g| {
                format!("prompt {}, response {}", g.prompt.len(), g.response.len())
            });
        let dlp = Dlp::parse_stored(gateway.dlp.as_deref())
            .filter(|dlp| dlp.enabled)
            .map_or("off".into(), |dlp| {
                format!("{} policies", dlp.policies.len())
            });
        println!(
            "{:<24}  {:>9}  {:<4}  {:<16}  {:<8}  {retries:<22}  {guardrails:<20}  {dlp:<12}  {kept}",
            gateway.id,
            gateway.cache_ttl,
            if gateway.collect_logs { "on" } else { "off" },
            rate,
            if gateway.authentication {
                "required"
            } else {
                "token"
            },
        );
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum FinetunesCommand {
    /// Create a finetune from the folder PEFT wrote (adapter_config.json and
    /// adapter_model.safetensors), as `wrangler ai finetune create` does.
    Create {
        /// The base model's catalog id.
        model: String,
        name: String,
        folder: PathBuf,
        #[arg(long)]
        description: Option<String>,
        #[arg(long, default_value = LOCAL_ACCOUNT_ID)]
        account: String,
    },
    /// List an account's finetunes.
    List {
        #[arg(long, default_value = LOCAL_ACCOUNT_ID)]
        account: String,
    },
    /// Delete a finetune (by id or name) and its files.
    Rm {
        finetune: String,
        #[arg(long, default_value = LOCAL_ACCOUNT_ID)]
        account: String,
    },
}

pub async fn finetunes(
    stores: &Stores,
    catalog: &Catalog,
    home: &Path,
    command: FinetunesCommand,
) -> anyhow::Result<()> {
    let store = &stores.finetunes;
    let shown = match command {
        FinetunesCommand::Create {
            model,
            name,
            folder,
            description,
            account,
        } => {
            let spec = catalog
                .get(&model)
                .with_context(|| format!("no model {model} in the catalog"))?;
            if !finetunes::takes_lora(catalog, &model, spec) {
                bail!("{model} does not take LoRA adapters");
            }
            let files = [finetunes::CONFIG_FILE, finetunes::WEIGHTS_FILE]
                .map(|file| std::fs::read(folder.join(file)).map(|bytes| (file, bytes)));
            let now = SystemClock.now_ms();
            let finetune = Finetune {
                id: uuid::Uuid::new_v4().to_string(),
                account_id: account,
                model,
                name,
                description,
                created_at_ms: now,
                modified_at_ms: now,
            };
            let mut checked = Vec::new();
            for file in files {
                checked.push(file.with_context(|| {
                    format!(
                        "{} needs {} and {}",
                        folder.display(),
                        finetunes::CONFIG_FILE,
                        finetunes::WEIGHTS_FILE
                    )
                })?);
            }
            if !store.create_finetune(&finetune).await? {
                bail!("a finetune named {} exists already", finetune.name);
            }
            for (file, bytes) in checked {
                if let Err(error) = finetunes::keep_file(home, &finetune.id, file, &bytes) {
                    store
                        .delete_finetune(&finetune.account_id, &finetune.id)
                        .await?;
                    finetunes::remove_files(home, &finetune.id)?;
                    bail!("{error}");
                }
            }
            vec![finetune]
        }
        FinetunesCommand::List { account } => store.finetunes(&account).await?,
        FinetunesCommand::Rm { finetune, account } => {
            let found = store
                .finetune(&account, &finetune)
                .await?
                .with_context(|| format!("no finetune {finetune} in account {account}"))?;
            store.delete_finetune(&account, &found.id).await?;
            finetunes::remove_files(home, &found.id)?;
            println!("deleted finetune {} ({})", found.name, found.id);
            return Ok(());
        }
    };
    println!("{:<36}  {:<24}  {:<5}  model", "id", "name", "ready");
    for finetune in shown {
        // Ready once both of its files are uploaded.
        let ready = match finetunes::uploaded(home, &finetune.id) {
            Some(_) => "yes",
            None => "no",
        };
        println!(
            "{:<36}  {:<24}  {ready:<5}  {}",
            finetune.id, finetune.name, finetune.model
        );
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum BatchCommand {
    /// List batches, newest first.
    List {
        /// Only this account's [default: every account's].
        #[arg(long)]
        account: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show a batch's requests and their results (JSON, one line per request).
    Show { id: String },
}

pub async fn batch(stores: &Stores, command: BatchCommand) -> anyhow::Result<()> {
    let queue = &stores.batches;
    match command {
        BatchCommand::List { account, limit } => {
            println!(
                "{:<36}  {:<20}  {:<8}  {:>9}  {:>10}  model",
                "id", "account", "status", "done", "neurons"
            );
            for batch in queue.batches(account.as_deref(), limit).await? {
                println!(
                    "{:<36}  {:<20}  {:<8}  {:>9}  {:>10.2}  {}",
                    batch.id,
                    batch.account_id,
                    batch.status.as_str(),
                    format!("{}/{}", batch.finished, batch.requests),
                    batch.neurons,
                    batch.model
                );
            }
        }
        BatchCommand::Show { id } => {
            let batch = queue
                .batch(&id)
                .await?
                .with_context(|| format!("no batch {id}"))?;
            println!(
                "batch {} of {} on {}: {}, {}/{} requests done, {} + {} tokens, {:.2} neurons",
                batch.id,
                batch.account_id,
                batch.model,
                batch.status.as_str(),
                batch.finished,
                batch.requests,
                batch.prompt_tokens,
                batch.completion_tokens,
                batch.neurons
            );
            for item in queue.items(&id).await? {
                let (success, result) = match &item.outcome {
                    Some(outcome) => (
                        serde_json::Value::Bool(outcome.success),
                        serde_json::from_str(&outcome.result)?,
                    ),
                    None => (serde_json::Value::Null, serde_json::Value::Null),
                };
                let line = serde_json::json!({
                    "id": item.index,
                    "external_reference": item.external_reference,
                    "success": success,
                    "result": result,
                });
                println!("{line}");
            }
        }
    }
    Ok(())
}

fn parse_plan(text: &str) -> Result<Plan, String> {
    Plan::parse(text).ok_or_else(|| format!("plan '{text}' must be free or paid"))
}

pub async fn accounts(stores: &Stores, command: AccountsCommand) -> anyhow::Result<()> {
    let store = stores.accounts.as_ref();
    match command {
        AccountsCommand::Create {
            name,
            plan,
            daily_free_neurons,
        } => {
            check_allocation(daily_free_neurons)?;
            let account = credentials::create_account(
                store,
                &name,
                plan,
                daily_free_neurons,
                SystemClock.now_ms(),
            )
            .await?;
            println!("{}", account.id);
        }
        AccountsCommand::List => {
            println!(
                "{:<32}  {:<4}  {:>18}  name",
                "id", "plan", "daily free neurons"
            );
            for account in store.accounts().await? {
                println!(
                    "{:<32}  {:<4}  {:>18}  {}",
                    account.id,
                    account.plan.as_str(),
                    account.daily_free_neurons,
                    account.name
                );
            }
        }
        AccountsCommand::Update {
            id,
            plan,
            daily_free_neurons,
        } => {
            let mut account = store
                .account(&id)
                .await?
                .with_context(|| format!("no account {id}"))?;
            if let Some(plan) = plan {
                account.plan = plan;
            }
            if let Some(neurons) = daily_free_neurons {
                check_allocation(neurons)?;
                account.daily_free_neurons = neurons;
            }
            store.update_account(&account).await?;
            println!(
                "{}: {}, {} neurons free per day",
                account.id,
                account.plan.as_str(),
                account.daily_free_neurons
            );
        }
    }
    Ok(())
}

fn check_allocation(neurons: f64) -> anyhow::Result<()> {
    if !(neurons.is_finite() && neurons >= 0.0) {
        bail!("--daily-free-neurons must be a number of neurons, 0 or more");
    }
    Ok(())
}

pub async fn tokens(stores: &Stores, command: TokensCommand) -> anyhow::Result<()> {
    let store = stores.accounts.as_ref();
    let now_ms = SystemClock.now_ms();
    match command {
        TokensCommand::Create {
            account,
            name,
            expires,
        } => {
            if store.account(&account).await?.is_none() {
                bail!("no account {account} (see `ember accounts list`)");
            }
            let expires_at_ms = expires.map(|text| expiry_ms(&text, now_ms)).transpose()?;
            let issued =
                credentials::issue_token(store, &account, &name, expires_at_ms, now_ms).await?;
            eprintln!(
                "token {} for account {account}; it is shown only now:",
                issued.token.id
            );
            println!("{}", issued.bearer);
        }
        TokensCommand::List { account } => {
            println!(
                "{:<16}  {:<32}  {:<10}  {:<10}  name",
                "id", "account", "expires", "state"
            );
            for token in store.tokens(account.as_deref()).await? {
                let state = match (token.revoked_at_ms, token.expires_at_ms) {
                    (Some(_), _) => "revoked",
                    (None, Some(at)) if at <= now_ms => "expired",
                    _ => "live",
                };
                println!(
                    "{:<16}  {:<32}  {:<10}  {:<10}  {}",
                    token.id,
                    token.account_id,
                    token.expires_at_ms.map_or("never".to_string(), utc_day),
                    state,
                    token.name
                );
            }
        }
        TokensCommand::Revoke { id } => {
            if !store.revoke_token(&id, now_ms).await? {
                bail!("no live token {id} (see `ember tokens list`)");
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}

/// `30d`, `12h`, `90m` from now, or the start of a UTC date.
fn expiry_ms(text: &str, now_ms: i64) -> anyhow::Result<i64> {
    if let Some(start) = utc_day_start_ms(text) {
        return Ok(start);
    }
    let unit_ms = match text.chars().last() {
        Some('d') => DAY_MS,
        Some('h') => 3_600_000,
        Some('m') => 60_000,
        _ => bail!("--expires '{text}' must be a duration (30d, 12h, 90m) or a date (2027-01-31)"),
    };
    let count: i64 = text[..text.len() - 1]
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .with_context(|| format!("--expires '{text}' needs a positive number before its unit"))?;
    Ok(now_ms + count * unit_ms)
}

/// Prints an account's daily totals per model, as `GET .../ai/usage` returns them.
pub async fn usage(
    stores: &Stores,
    account: String,
    since: Option<String>,
    until: Option<String>,
    model: Option<String>,
) -> anyhow::Result<()> {
    let query = UsageQuery::new(account, since, until, model, SystemClock.now_ms())
        .map_err(|(field, problem)| anyhow::anyhow!("--{field}: {problem}"))?;
    println!(
        "{:<10}  {:<44}  {:>8}  {:>6}  {:>12}  {:>12}  {:>12}  {:>12}",
        "date", "model", "requests", "errors", "input tok", "output tok", "neurons", "billable"
    );
    let rows = stores.ledger.usage(&query).await?;
    for row in &rows {
        println!(
            "{:<10}  {:<44}  {:>8}  {:>6}  {:>12}  {:>12}  {:>12.4}  {:>12.4}",
            row.day,
            row.model,
            row.requests,
            row.errors,
            row.input_tokens,
            row.output_tokens,
            row.neurons,
            row.billable_neurons
        );
    }
    let total = rows.iter().fold(0.0, |total, row| total + row.neurons);
    println!("total neurons: {total:.4}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_are_durations_or_dates() {
        assert_eq!(expiry_ms("2d", 5).unwrap(), 5 + 2 * DAY_MS);
        assert_eq!(expiry_ms("90m", 0).unwrap(), 90 * 60_000);
        assert_eq!(expiry_ms("1970-01-03", 0).unwrap(), 2 * DAY_MS);
        assert!(expiry_ms("soon", 0).is_err());
        assert!(expiry_ms("0d", 0).is_err());
        assert!(expiry_ms("-3h", 0).is_err());
    }
}
