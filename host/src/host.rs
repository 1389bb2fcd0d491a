//! The running host: loads plugins, runs their subscribers, reloads them, shuts down.
//!
//! [`run`] takes the shutdown signal as a future (as mini-redis's `server::run` does), so a
//! test can start a whole host in-process and stop it when it likes.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use redis::aio::ConnectionManagerConfig;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, Effective};
use crate::consume::{self, Active, Context, RedisHealth, Subscriber};
use crate::metrics::{Metrics, PluginLabels};
use crate::plugin::cache::Cache;
use crate::plugin::invoke::Runner;
use crate::plugin::sandbox::Grants;
use crate::plugin::{Engine, Plugin, PluginError, Subscription};
use crate::{config, keys};

/// One stream consumer task and its stop switch.
struct StreamTask {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

/// A subscriber the host runs.
struct Running {
    subscriber: Arc<Subscriber>,
    streams: BTreeMap<String, StreamTask>,
    loaded_at: SystemTime,
}

/// What `ferry plugins list` and the admin endpoint show of one plugin.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct PluginStatus {
    /// Plugin (subscriber) name.
    pub name: String,
    /// Version id (content hash) running now, if any.
    pub version: Option<String>,
    /// `running`, or `refused` when the file in the directory could not be loaded.
    pub state: String,
    /// Subscriptions of the running version.
    pub subscriptions: Vec<SubscriptionStatus>,
    /// Why the newest file was refused, if it was.
    pub error: Option<String>,
    /// When the running version was loaded (RFC 3339).
    pub loaded_at: Option<String>,
}

/// One subscription as shown in status views.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct SubscriptionStatus {
    /// Stream read.
    pub stream: String,
    /// Event type pattern.
    pub event_type: String,
    /// Accepted versions; empty: all.
    pub versions: Vec<u32>,
}

/// The running host.
pub struct Host {
    config: Config,
    engine: Engine,
    cache: Option<Cache>,
    ctx: Arc<Context>,
    running: tokio::sync::Mutex<BTreeMap<String, Running>>,
    refused: Mutex<BTreeMap<String, String>>,
}

/// The default consumer name: the host name, stable across restarts so a restarted host
/// re-reads its own pending entries at once. Run several hosts on one machine with distinct
/// `--consumer` names.
pub fn default_consumer() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ferry".to_string())
}

/// Connect to Redis, failing with a clear message when it is unreachable.
pub async fn connect(url: &str) -> anyhow::Result<(redis::Client, redis::aio::ConnectionManager)> {
    let client = redis::Client::open(url).with_context(|| format!("invalid Redis URL {url:?}"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1));
    let mut manager = tokio::time::timeout(Duration::from_secs(5), client.get_connection_manager_with_config(config))
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(|| format!("cannot reach Redis at {url}"))?;
    let _: String =
        redis::cmd("PING").query_async(&mut manager).await.with_context(|| format!("cannot reach Redis at {url}"))?;
    Ok((client, manager))
}

/// Run a host with `config` until `shutdown` completes, then stop gracefully.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // Checked before anything starts, so a bad section fails fast.
    let relay_settings = match &config.relay {
        Some(section) => Some(
            crate::relay::Settings::from_config(section, &config.redis, &config.stream)
                .context("invalid [relay] section")?,
        ),
        None => None,
    };
    let host = Host::start(config).await?;
    let admin = crate::admin::spawn(host.clone()).await?;
    let watcher = if host.config.watch { Some(crate::reload::watch(host.clone())?) } else { None };
    let relay = match relay_settings {
        Some(settings) => {
            let relay = crate::relay::Relay::new(settings, host.ctx.metrics.relay.clone());
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
    host.stop_all().await;
    if let Some(admin) = admin {
        admin.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

impl Host {
    /// Connect, build the engine and start a subscriber for every valid plugin in the
    /// plugin directory. Invalid plugins are refused with a log line; the rest run.
    pub async fn start(config: Config) -> anyhow::Result<Arc<Host>> {
        keys::check_name("stream", &config.stream).map_err(anyhow::Error::msg)?;
        let (client, shared) = connect(&config.redis).await?;
        let engine = Engine::new(&config.engine)?;
        let cache = config.cache_dir().map(Cache::new);
        let consumer = config.consumer.clone().unwrap_or_else(default_consumer);
        let metrics = Metrics::new();
        metrics.redis_up.set(1);
        let ctx = Arc::new(Context {
            client,
            shared,
            consumer,
            read: config.read.clone(),
            metrics,
            health: RedisHealth::default(),
            grace: config.shutdown_grace,
            retention: config.retention.clone(),
        });
        let host =
            Arc::new(Host { config, engine, cache, ctx, running: Default::default(), refused: Default::default() });
        let dir = host.config.plugins.clone();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading plugin directory {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            tracing::warn!(dir = %dir.display(), "no *.wasm plugins found; waiting for some to be added");
        }
        for path in paths {
            host.apply(&path).await;
        }
        Ok(host)
    }

    /// The shared consumer context (metrics, health, connections).
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// The configuration the host runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether at least one plugin is running.
    pub async fn ready_plugins(&self) -> bool {
        !self.running.lock().await.is_empty()
    }

    /// Load (or reload) the plugin at `path`, or stop it if the file is gone. A version that
    /// fails to load is refused and the running version, if any, keeps running.
    pub async fn apply(&self, path: &Path) {
        let name = match crate::plugin::name_of(path) {
            Ok(name) => name,
            Err(e) => {
                tracing::error!(path = %path.display(), "refusing plugin: {e}");
                return;
            }
        };
        let wasm = self.config.plugins.join(format!("{name}.wasm"));
        if !wasm.exists() {
            self.remove(&name).await;
            return;
        }
        match self.prepare(&name, &wasm).await {
            Ok((plugin, effective)) => self.install(&name, plugin, effective).await,
            Err(e) => {
                self.ctx.metrics.plugin_refused.get_or_create(&PluginLabels { plugin: name.clone() }).inc();
                let kept =
                    if self.running.lock().await.contains_key(&name) { "; the running version stays" } else { "" };
                tracing::error!(plugin = %name, path = %wasm.display(), "refusing plugin: {e:#}{kept}");
                self.refused.lock().unwrap_or_else(|p| p.into_inner()).insert(name, format!("{e:#}"));
            }
        }
    }

    async fn prepare(&self, name: &str, wasm: &Path) -> anyhow::Result<(Arc<Plugin>, Effective)> {
        let side = self.config.plugins.join(format!("{name}.toml"));
        let plugin_file = if side.exists() { Some(config::load_plugin_file(&side)?) } else { None };
        let effective = self.config.subscriber(name, plugin_file.as_ref())?;
        if effective.limits.memory > self.config.engine.max_memory {
            anyhow::bail!(
                "limits.memory ({}) exceeds engine.max_memory ({})",
                effective.limits.memory,
                self.config.engine.max_memory
            );
        }
        if effective.limits.fuel.is_some() && !self.config.engine.fuel {
            anyhow::bail!("limits.fuel is set but engine.fuel is off");
        }
        let engine = self.engine.clone();
        let cache = self.cache.clone();
        let path = wasm.to_path_buf();
        let started = std::time::Instant::now();
        // Compilation is CPU-bound (seconds for a big component): keep it off the runtime threads.
        let plugin = tokio::task::spawn_blocking(move || Plugin::load(&engine, &path, cache.as_ref()))
            .await
            .context("plugin loader thread failed")??;
        tracing::info!(
            plugin = %name,
            version = %plugin.version,
            cached = plugin.cached,
            "plugin compiled and validated in {:.0?}",
            started.elapsed()
        );
        Ok((plugin, effective))
    }

    fn active(&self, plugin: Arc<Plugin>, effective: Effective) -> Result<Active, PluginError> {
        let declared: Vec<Subscription> = match &effective.subscriptions {
            Some(over) => over
                .iter()
                .map(|s| Subscription {
                    event_type: s.event_type.clone(),
                    versions: s.versions.clone(),
                    stream: s.stream.clone(),
                })
                .collect(),
            None => plugin.declared.clone(),
        };
        if declared.is_empty() {
            return Err(PluginError::NoSubscriptions);
        }
        let mut subscriptions = Vec::new();
        for sub in declared {
            let stream = sub.stream.clone().unwrap_or_else(|| self.config.stream.clone());
            keys::check_name("stream", &stream).map_err(PluginError::Subscriptions)?;
            subscriptions.push((stream, sub));
        }
        let grants = Arc::new(Grants {
            subscriber: plugin.name.as_str().into(),
            version: plugin.version.as_str().into(),
            config: effective.config.clone(),
            publish_streams: effective.publish_streams.clone(),
            limits: effective.limits,
        });
        let runner: Arc<dyn crate::plugin::invoke::Invoke> = Arc::new(Runner::new(self.engine.clone(), plugin, grants));
        Ok(Active { runner, subscriptions, settings: effective })
    }

    async fn install(&self, name: &str, plugin: Arc<Plugin>, effective: Effective) {
        let version = plugin.version.clone();
        let mut running = self.running.lock().await;
        if let Some(current) = running.get(name) {
            let active = current.subscriber.active();
            if active.runner.version() == version && active.settings == effective {
                return;
            }
        }
        let active = match self.active(plugin, effective) {
            Ok(active) => active,
            Err(e) => {
                drop(running);
                self.ctx.metrics.plugin_refused.get_or_create(&PluginLabels { plugin: name.to_string() }).inc();
                tracing::error!(plugin = %name, "refusing plugin: {e}");
                self.refused.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), e.to_string());
                return;
            }
        };
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        self.ctx.metrics.plugin_loads.get_or_create(&PluginLabels { plugin: name.to_string() }).inc();
        let wanted = active.streams();
        let describe: Vec<String> =
            active.subscriptions.iter().map(|(stream, s)| format!("{stream}:{}", s.event_type)).collect();
        let entry = match running.remove(name) {
            Some(mut current) => {
                let old = current.subscriber.swap(active);
                tracing::info!(
                    plugin = %name, from = %old.runner.version(), to = %version,
                    subscriptions = ?describe, "plugin replaced; events in flight finish on the old version"
                );
                current.loaded_at = SystemTime::now();
                current
            }
            None => {
                tracing::info!(plugin = %name, %version, subscriptions = ?describe, "plugin loaded");
                Running {
                    subscriber: Arc::new(Subscriber::new(name.to_string(), active)),
                    streams: BTreeMap::new(),
                    loaded_at: SystemTime::now(),
                }
            }
        };
        let mut entry = entry;
        // Follow subscription changes: stop streams no longer read, start new ones.
        let gone: Vec<String> = entry.streams.keys().filter(|s| !wanted.contains(s)).cloned().collect();
        for stream in gone {
            if let Some(task) = entry.streams.remove(&stream) {
                let _ = task.stop.send(true);
                let _ = task.handle.await;
            }
        }
        for stream in wanted {
            if !entry.streams.contains_key(&stream) {
                let (stop, rx) = watch::channel(false);
                let handle =
                    tokio::spawn(consume::run_stream(self.ctx.clone(), entry.subscriber.clone(), stream.clone(), rx));
                entry.streams.insert(stream, StreamTask { stop, handle });
            }
        }
        running.insert(name.to_string(), entry);
    }

    /// Stop the subscriber `name` (its file was removed). Its consumer groups stay, so its
    /// events wait in Redis until it returns.
    pub async fn remove(&self, name: &str) {
        let entry = self.running.lock().await.remove(name);
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        if let Some(entry) = entry {
            tracing::info!(plugin = %name, "plugin removed; its consumer groups are kept");
            stop_streams(entry.streams).await;
        }
    }

    /// Stop every subscriber, letting in-flight events finish within the grace period.
    pub async fn stop_all(&self) {
        let all = std::mem::take(&mut *self.running.lock().await);
        let mut tasks = BTreeMap::new();
        for (name, entry) in all {
            for (stream, task) in entry.streams {
                tasks.insert(format!("{name}/{stream}"), task);
            }
        }
        stop_streams(tasks).await;
    }

    /// Status of every plugin: running versions and refused files.
    pub async fn plugins(&self) -> Vec<PluginStatus> {
        let running = self.running.lock().await;
        let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut out = Vec::new();
        for (name, entry) in running.iter() {
            let active = entry.subscriber.active();
            out.push(PluginStatus {
                name: name.clone(),
                version: Some(active.runner.version().to_string()),
                state: "running".into(),
                subscriptions: active
                    .subscriptions
                    .iter()
                    .map(|(stream, s)| SubscriptionStatus {
                        stream: stream.clone(),
                        event_type: s.event_type.clone(),
                        versions: s.versions.clone(),
                    })
                    .collect(),
                error: refused.get(name).cloned(),
                loaded_at: Some(humantime::format_rfc3339_seconds(entry.loaded_at).to_string()),
            });
        }
        for (name, error) in refused {
            if !running.contains_key(&name) {
                out.push(PluginStatus {
                    name,
                    version: None,
                    state: "refused".into(),
                    subscriptions: Vec::new(),
                    error: Some(error),
                    loaded_at: None,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

async fn stop_streams(tasks: BTreeMap<String, StreamTask>) {
    for task in tasks.values() {
        let _ = task.stop.send(true);
    }
    for (_, task) in tasks {
        let _ = task.handle.await;
    }
}
