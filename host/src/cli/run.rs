//! `ferry run`: the one place that wires the runtime together: the [`Host`], its admin
//! endpoint and the plugin-directory watcher, until SIGINT or SIGTERM.
//!
//! The library's runtime modules never import the admin endpoint or the reloader; this
//! command (and a test or an embedding application doing the same) composes them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use ferry::config::Config;
use ferry::host::Host;

use super::ConfigFile;

/// `ferry run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub file: ConfigFile,
    /// Redis URL (overrides the file). With --cluster, a comma-separated list of seed nodes.
    #[arg(long, env = "FERRY_REDIS", hide_env_values = true)]
    pub redis: Option<String>,
    /// Talk to a Redis Cluster (overrides the file).
    #[arg(long, env = "FERRY_CLUSTER")]
    pub cluster: bool,
    /// PEM file of the CA certificates rediss:// trusts instead of the system's roots
    /// (overrides the file's tls_ca).
    #[arg(long, env = "FERRY_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// What writes must reach before they count as done: primary or replicated (overrides
    /// the file; replicated waits for one replica with WAIT).
    #[arg(long, env = "FERRY_DURABILITY")]
    pub durability: Option<ferry::connection::Durability>,
    /// Under replicated durability, when no replica confirms a write: wait (no progress,
    /// nothing unconfirmed) or continue (progress, unconfirmed writes counted). Overrides the
    /// file; default wait.
    #[arg(long, env = "FERRY_DURABILITY_ON_MISSING_REPLICA")]
    pub durability_on_missing_replica: Option<ferry::connection::OnMissingReplica>,
    /// Plugin directory (overrides the file).
    #[arg(long, env = "FERRY_PLUGINS")]
    pub plugins: Option<PathBuf>,
    /// Default stream (overrides the file).
    #[arg(long, env = "FERRY_STREAM")]
    pub stream: Option<String>,
    /// Consumer name of this instance (overrides the file).
    #[arg(long, env = "FERRY_CONSUMER")]
    pub consumer: Option<String>,
    /// Admin endpoint address, "" to turn it off (overrides the file).
    #[arg(long, env = "FERRY_ADMIN")]
    pub admin: Option<String>,
    /// Compiled-artifact cache directory, "" to turn it off (overrides the file).
    #[arg(long, env = "FERRY_CACHE_DIR", value_parser = super::path_or_empty)]
    pub cache_dir: Option<PathBuf>,
    /// Do not watch the plugin directory.
    #[arg(long, env = "FERRY_NO_WATCH")]
    pub no_watch: bool,
}

impl RunArgs {
    /// The configuration: file (if any), then flags and environment on top.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut config = self.file.load()?;
        if let Some(v) = &self.redis {
            config.redis = v.clone();
        }
        config.cluster |= self.cluster;
        if let Some(v) = &self.tls_ca {
            config.tls_ca = Some(v.clone());
        }
        if let Some(v) = self.durability {
            config.durability = v;
        }
        if let Some(v) = self.durability_on_missing_replica {
            config.durability_on_missing_replica = v;
        }
        if let Some(v) = &self.plugins {
            config.plugins = v.clone();
        }
        if let Some(v) = &self.stream {
            config.stream = v.clone();
        }
        if let Some(v) = &self.consumer {
            config.consumer = Some(v.clone());
        }
        if let Some(v) = &self.admin {
            config.admin.listen = v.clone();
        }
        if let Some(v) = &self.cache_dir {
            config.cache_dir = Some(v.clone());
        }
        if self.no_watch {
            config.watch = false;
        }
        Ok(config)
    }
}

/// Run `ferry run`.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    serve(args.config()?, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Run a host with `config`, its admin endpoint and (if configured) the plugin-directory
/// watcher until `shutdown` completes, then stop gracefully.
///
/// Plugins load after the admin endpoint is up, all at once and each within its deadline, so
/// a plugin that sleeps or loops while loading never holds up the host or its neighbours.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // Checked before anything starts, so a bad [relay] section fails fast.
    let relay_settings = match &config.relay {
        Some(section) => Some(ferry::relay::Settings::for_host(&config, section).context("invalid [relay] section")?),
        None => None,
    };
    let host = Host::new(config).await?;
    let admin = ferry::admin::spawn(host.clone()).await?;
    let watcher = if host.config().watch { Some(ferry::reload::watch(host.clone())?) } else { None };
    let schema_watcher = match (&host.context().contracts, host.config().watch) {
        (Some(registry), true) => ferry::contract::watch::watch(registry.clone())?,
        _ => None,
    };
    let upcaster_watcher = if host.config().watch { host.watch_upcasters()? } else { None };
    let loader = host.clone();
    let loading = tokio::spawn(async move { loader.load_all().await });
    let relay = match relay_settings {
        Some(mut settings) => {
            settings.contracts = host.context().contracts.clone();
            let relay = ferry::relay::Relay::new(settings, host.context().metrics.relay.clone());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                relay
                    .run(async move {
                        let _ = stopped.await;
                    })
                    .await
            });
            Some((stop, task))
        }
        None => None,
    };
    shutdown.await;
    tracing::info!("shutting down: no new reads; letting in-flight events finish");
    if let Some((stop, task)) = relay {
        let _ = stop.send(());
        let _ = task.await;
    }
    drop(watcher);
    drop(schema_watcher);
    drop(upcaster_watcher);
    // Loads are bounded (compile, then the plugin's deadline); finish them so every started
    // stream is known and stopped below.
    let _ = loading.await;
    host.stop_all().await;
    if let Some(admin) = admin {
        admin.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
