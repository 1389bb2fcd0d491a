//! The running host: loads plugins, runs their subscribers, swaps them in place, shuts down.
//!
//! [`Host::start`] and [`Host::stop_all`] bracket a host's life, so a test or an embedding
//! application can run a whole host in-process. The host knows nothing of the admin endpoint
//! or the plugin-directory watcher: those depend on it (`crate::admin`, `crate::reload`), and
//! the `ferry run` command wires the three together.
//!
//! Plugins load concurrently, each within its own deadline, after the admin endpoint is up:
//! a plugin that sleeps or loops while loading is refused in bounded time and never holds
//! up the host, the endpoint or another plugin. Loads of one plugin are serialized (its
//! versions apply in order); a file whose contents and settings did not change is not loaded
//! again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context as _;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, Effective};
use crate::consume::{self, Active, Context, RedisHealth, Subscriber};
use crate::handler::Subscription;
use crate::metrics::{Metrics, PluginLabels};
use crate::plugin::cache::Cache;
use crate::plugin::capability::Grants;
use crate::plugin::invoke::Runner;
use crate::plugin::{Engine, Plugin, PluginError};
use crate::stop::Stop;
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

/// Most streams one subscriber may read: each is a reader task, a consumer group and a set of
/// gauge series.
pub const MAX_STREAMS: usize = 16;
/// Most subscriptions one subscriber may have.
pub const MAX_SUBSCRIPTIONS: usize = 256;

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
    /// When the running version was loaded (Unix ms).
    #[serde(default)]
    pub last_reload_ms: Option<u64>,
    /// Why the state is not `running`: the refusal, or the throttle's limit.
    #[serde(default)]
    pub reason: Option<String>,
    /// What the running version was granted: `publish_streams`, `read_streams`, `config`
    /// (the keys, never the values), `http` (allow list and timeouts), `state` (its bounds).
    #[serde(default)]
    pub grants: Option<serde_json::Value>,
    /// Its bounds: the sandbox limits (memory, deadline, fuel, ...), `concurrency`, `ordered`,
    /// `retry`, and `throttle` (the adaptive limit of calls in flight now, and its maximum).
    #[serde(default)]
    pub limits: Option<serde_json::Value>,
}

/// What a subscriber was granted, as [`PluginStatus::grants`] shows it.
fn grants_of(settings: &crate::config::Effective) -> serde_json::Value {
    serde_json::json!({
        "publish_streams": settings.publish_streams,
        "read_streams": settings.read_streams,
        "config": settings.config.keys().collect::<Vec<_>>(),
        "http": settings.http,
        "state": settings.state,
    })
}

/// A subscriber's bounds, as [`PluginStatus::limits`] shows them.
fn limits_of(settings: &crate::config::Effective, throttle: Option<crate::handler::Throttling>) -> serde_json::Value {
    let mut limits = serde_json::to_value(settings.limits).unwrap_or_default();
    if let serde_json::Value::Object(fields) = &mut limits {
        fields.insert("concurrency".into(), settings.concurrency.into());
        fields.insert("ordered".into(), settings.ordered.into());
        fields.insert("retry".into(), serde_json::to_value(settings.retry).unwrap_or_default());
        if let Some(throttle) = throttle {
            fields.insert("throttle".into(), serde_json::to_value(throttle).unwrap_or_default());
        }
    }
    limits
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
    /// Per plugin: serializes its loads, and remembers the last contents and settings tried.
    loading: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<Option<Tried>>>>>,
    /// Plugin versions compiled (or taken from the cache) and validated, all plugins together.
    loads: std::sync::atomic::AtomicU64,
    /// Trims the streams with a retention of their own; stops with the host.
    _retention: consume::trim::Retention,
    /// Measures Redis's clock every [`crate::clock::SYNC_EVERY`] while the host lives.
    clock: tokio::task::JoinHandle<()>,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.clock.abort();
    }
}

/// What was last tried for a plugin: its file's hash and its settings.
#[derive(PartialEq)]
struct Tried {
    hash: String,
    effective: Effective,
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

impl Host {
    /// Connect, build the engine and start a subscriber for every valid plugin in the
    /// plugin directory; returns once each has loaded or been refused. Invalid plugins are
    /// refused with a log line; the rest run.
    pub async fn start(config: Config) -> anyhow::Result<Arc<Host>> {
        let host = Host::new(config).await?;
        host.load_all().await?;
        Ok(host)
    }

    /// Connect and build the engine; no plugin is loaded yet (see [`Host::load_all`]).
    pub async fn new(config: Config) -> anyhow::Result<Arc<Host>> {
        keys::check_name("stream", &config.stream).map_err(anyhow::Error::msg)?;
        config.validate()?;
        let (redis, mut shared) = crate::connection::connect(&config.target()).await?;
        check_partitions(&mut shared, &config).await?;
        // Leases, dedupe windows and retry due times are compared across hosts: on Redis's
        // clock, not this machine's (crate::clock).
        if let Err(e) = crate::clock::sync(&mut shared).await {
            tracing::warn!("cannot read Redis's clock ({e}); using this host's until it answers");
        }
        let clock = {
            let mut conn = shared.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(crate::clock::SYNC_EVERY).await;
                    let _ = crate::clock::sync(&mut conn).await;
                }
            })
        };
        let engine = Engine::new(&config.engine)?;
        let cache = Cache::from_config(&config);
        let upcasters = match &config.upcasters {
            Some(dir) => {
                let upcasters = Arc::new(crate::contract::upcast::Upcasters::default());
                let limits = config.defaults.fill().limits;
                let n = crate::plugin::upcaster::reload(&upcasters, &engine, dir, cache.as_ref(), &limits)
                    .await
                    .map_err(anyhow::Error::msg)
                    .context("loading the upcasters")?;
                tracing::info!(dir = %dir.display(), upcasters = n, steps = ?upcasters.steps(), "upcasters loaded");
                Some(upcasters)
            }
            None => None,
        };
        let consumer = config.consumer.clone().unwrap_or_else(default_consumer);
        let metrics = Metrics::new();
        metrics.redis_up.set(1);
        let ctx = Arc::new(Context {
            redis,
            shared,
            consumer,
            read: config.read.clone(),
            metrics,
            health: RedisHealth::default(),
            grace: config.shutdown_grace,
            retention: config.retention,
            stream_retention: config.stream_retention(),
            partitions: config.partitions(),
            replication: config.replication(),
            replicas: crate::replica::ReplicaWatch::new(config.durability_on_missing_replica),
            contracts: crate::contract::Registry::from_config(&config).context("loading the schema registry")?,
            upcasters,
        });
        let retention = consume::trim::Retention::spawn(ctx.clone(), config.retention_keys());
        Ok(Arc::new(Host {
            _retention: retention,
            config,
            engine,
            cache,
            ctx,
            running: Default::default(),
            refused: Default::default(),
            loading: Default::default(),
            loads: Default::default(),
            clock,
        }))
    }

    /// Load every plugin in the plugin directory, all at once; returns when each has loaded
    /// or been refused.
    pub async fn load_all(self: &Arc<Self>) -> anyhow::Result<()> {
        let dir = self.config.plugins.clone();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading plugin directory {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            tracing::warn!(dir = %dir.display(), "no *.wasm plugins found; waiting for some to be added");
        }
        let mut loads = tokio::task::JoinSet::new();
        for path in paths {
            let host = self.clone();
            loads.spawn(async move { host.apply(&path).await });
        }
        while loads.join_next().await.is_some() {}
        Ok(())
    }

    /// Load the upcaster directory again and make it the active set, or keep the active set
    /// and log why not. Nothing without `upcasters`.
    pub async fn reload_upcasters(&self) -> Result<usize, String> {
        let (Some(dir), Some(upcasters)) = (&self.config.upcasters, &self.ctx.upcasters) else { return Ok(0) };
        let limits = self.config.defaults.fill().limits;
        let result = crate::plugin::upcaster::reload(upcasters, &self.engine, dir, self.cache.as_ref(), &limits).await;
        match &result {
            Ok(n) => {
                tracing::info!(dir = %dir.display(), upcasters = n, steps = ?upcasters.steps(), "upcasters reloaded")
            }
            Err(e) => tracing::error!(dir = %dir.display(), "upcasters refused; the active set stays: {e}"),
        }
        result
    }

    /// Watch the upcaster directory and reload it on changes (nothing to watch without one).
    pub fn watch_upcasters(self: &Arc<Self>) -> anyhow::Result<Option<crate::fs_events::Watcher>> {
        let Some(dir) = self.config.upcasters.clone() else { return Ok(None) };
        let host = Arc::downgrade(self);
        let reload: crate::fs_events::Reload = Box::new(move || {
            let host = host.clone();
            Box::pin(async move {
                if let Some(host) = host.upgrade() {
                    let _ = host.reload_upcasters().await;
                }
            })
        });
        let counts = |p: &Path| p.extension().is_some_and(|x| x == "wasm");
        crate::fs_events::watch(&dir, "upcaster directory", counts, reload).map(Some)
    }

    /// How many plugin versions were compiled (or taken from the cache) and validated.
    pub fn loads(&self) -> u64 {
        self.loads.load(std::sync::atomic::Ordering::Relaxed)
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
        let lock = self.loading.lock().unwrap_or_else(|p| p.into_inner()).entry(name.clone()).or_default().clone();
        let mut tried = lock.lock().await;
        let wasm = self.config.plugins.join(format!("{name}.wasm"));
        if !wasm.exists() {
            *tried = None;
            self.remove(&name).await;
            return;
        }
        match self.prepare(&name, &wasm, &mut tried).await {
            // Unchanged since the last version that loaded: a refused edit was undone.
            Ok(None) => {
                if self.refused.lock().unwrap_or_else(|p| p.into_inner()).remove(&name).is_some() {
                    tracing::info!(subscriber = %name, plugin = %name, "plugin files are valid again; the running version and settings are unchanged");
                }
            }
            Ok(Some((plugin, effective))) => self.install(&name, plugin, effective).await,
            Err(e) => {
                self.ctx.metrics.plugin_refused.get_or_create(&PluginLabels { plugin: name.clone() }).inc();
                let kept =
                    if self.running.lock().await.contains_key(&name) { "; the running version stays" } else { "" };
                let message = format!("{e:#}");
                // One line per refusal, not one per file event that leads to it (an editor's
                // save touches the file more than once).
                let repeated =
                    self.refused.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), message.clone())
                        == Some(message);
                if repeated {
                    tracing::debug!(subscriber = %name, plugin = %name, "still refusing plugin: {e:#}");
                } else {
                    tracing::error!(subscriber = %name, plugin = %name, path = %wasm.display(), "refusing plugin: {e:#}{kept}");
                }
            }
        }
    }

    /// Compile and validate `wasm` with its settings; `None` when neither changed since the
    /// last try (reading a file must not reload it).
    async fn prepare(
        &self,
        name: &str,
        wasm: &Path,
        tried: &mut Option<Tried>,
    ) -> anyhow::Result<Option<(Arc<Plugin>, Effective)>> {
        let side = self.config.plugins.join(format!("{name}.toml"));
        // `symlink_metadata`: a dangling link is an error to report, not a missing file.
        let plugin_file = if std::fs::symlink_metadata(&side).is_ok() {
            Some(config::load_plugin_file(&self.config.plugins, &side)?)
        } else {
            None
        };
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
        let bytes = tokio::fs::read(wasm).await.with_context(|| format!("reading {}", wasm.display()))?;
        let attempt = Tried { hash: crate::plugin::version_hash(&bytes), effective: effective.clone() };
        if tried.as_ref() == Some(&attempt) {
            tracing::debug!(subscriber = %name, plugin = %name, "plugin file and settings unchanged; not reloaded");
            return Ok(None);
        }
        *tried = Some(attempt);
        let started = std::time::Instant::now();
        self.loads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let plugin =
            Plugin::from_bytes(&self.engine, name.to_string(), wasm, bytes, self.cache.as_ref(), &effective.limits)
                .await?;
        tracing::info!(
            subscriber = %name, plugin = %name,
            version = %plugin.version,
            cached = plugin.cached,
            "plugin compiled and validated in {:.0?}",
            started.elapsed()
        );
        Ok(Some((plugin, effective)))
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
        if declared.len() > MAX_SUBSCRIPTIONS {
            return Err(PluginError::NotGranted(format!(
                "{} subscriptions: at most {MAX_SUBSCRIPTIONS} are accepted",
                declared.len()
            )));
        }
        crate::plugin::capability::http::check(&self.engine.engine, plugin.pre.component(), &plugin.name, &effective)?;
        let mut subscriptions = Vec::new();
        let mut streams = std::collections::BTreeSet::new();
        for sub in declared {
            let stream = sub.stream.clone().unwrap_or_else(|| self.config.stream.clone());
            keys::check_name("stream", &stream).map_err(PluginError::Subscriptions)?;
            // Reading is a grant like publishing: a plugin naming another team's stream reads
            // it only if the operator (or, with plugin_files.grants, the plugin's own file)
            // lists it in read_streams.
            if stream != self.config.stream && !effective.read_streams.contains(&stream) {
                return Err(PluginError::NotGranted(format!(
                    "reading stream `{}` is not granted: list it in read_streams of [subscribers.{}]",
                    crate::redact::escape(&stream),
                    plugin.name
                )));
            }
            streams.insert(stream.clone());
            if streams.len() > MAX_STREAMS {
                return Err(PluginError::NotGranted(format!(
                    "reads more than {MAX_STREAMS} streams: at most {MAX_STREAMS} are accepted"
                )));
            }
            subscriptions.push((stream, sub));
        }
        let services = crate::plugin::capability::seam::Services {
            contracts: self.ctx.contracts.clone(),
            redis: Some(self.ctx.shared.clone()),
            http_metrics: Some(self.ctx.metrics.http.clone()),
            ..Default::default()
        };
        let grants = Arc::new(Grants::with(&plugin.name, &plugin.version, &effective, &services));
        let runner: Arc<dyn crate::handler::Invoke> =
            Arc::new(Runner::with_concurrency(self.engine.clone(), plugin, grants, effective.concurrency));
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
                tracing::error!(subscriber = %name, plugin = %name, "refusing plugin: {e}");
                self.refused.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), e.to_string());
                return;
            }
        };
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        self.ctx.metrics.plugin_loads.get_or_create(&PluginLabels { plugin: name.to_string() }).inc();
        // A partitioned stream is read as its partitions, each by a pipeline of its own.
        let wanted: Vec<String> = active
            .streams()
            .into_iter()
            .flat_map(|s| match self.ctx.partitions_of(&s) {
                1 => vec![s],
                n => (0..n).map(|p| keys::partition(&s, p)).collect(),
            })
            .collect();
        let describe: Vec<String> =
            active.subscriptions.iter().map(|(stream, s)| format!("{stream}:{}", s.event_type)).collect();
        let entry = match running.remove(name) {
            Some(mut current) => {
                let changed = changed_settings(&current.subscriber.active().settings, &active.settings);
                let old = current.subscriber.swap(active);
                let what = if old.runner.version() == version { "plugin settings changed" } else { "plugin replaced" };
                tracing::info!(
                    subscriber = %name, plugin = %name, from = %old.runner.version(), to = %version, changed = ?changed,
                    subscriptions = ?describe, "{what}; events in flight finish on the old version"
                );
                current.loaded_at = SystemTime::now();
                current
            }
            None => {
                tracing::info!(subscriber = %name, plugin = %name, %version, subscriptions = ?describe, "plugin loaded");
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
                let (stop, rx) = Stop::channel();
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
            tracing::info!(subscriber = %name, plugin = %name, "plugin removed; its consumer groups are kept");
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

    /// The running subscribers as the generated contract documents see them: what each
    /// receives and may publish (`contract::docs`).
    pub async fn parties(&self) -> Vec<crate::contract::docs::Party> {
        let running = self.running.lock().await;
        running
            .iter()
            .map(|(name, entry)| {
                let active = entry.subscriber.active();
                crate::contract::docs::Party {
                    name: name.clone(),
                    receives: active
                        .subscriptions
                        .iter()
                        .map(|(stream, s)| (stream.clone(), s.event_type.clone(), s.versions.clone()))
                        .collect(),
                    sends: active.settings.publish_streams.clone(),
                }
            })
            .collect()
    }

    /// Status of every plugin: running versions and refused files.
    pub async fn plugins(&self) -> Vec<PluginStatus> {
        let running = self.running.lock().await;
        let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut out = Vec::new();
        for (name, entry) in running.iter() {
            let active = entry.subscriber.active();
            let throttle = active.runner.throttle();
            let throttled = throttle.filter(|t| t.penalized);
            out.push(PluginStatus {
                name: name.clone(),
                version: Some(active.runner.version().to_string()),
                state: if throttled.is_some() { "throttled" } else { "running" }.into(),
                last_reload_ms: entry
                    .loaded_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_millis() as u64),
                reason: throttled.map(|t| {
                    format!("its calls fail (deadline, trap or limit): {} of {} calls at once", t.limit, t.max)
                }),
                grants: Some(grants_of(&active.settings)),
                limits: Some(limits_of(&active.settings, throttle)),
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
                    reason: Some(error.clone()),
                    error: Some(error),
                    loaded_at: None,
                    last_reload_ms: None,
                    grants: None,
                    limits: None,
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

/// Record each partitioned stream's partition count in Redis (`ferry:partitions:{STREAM}`),
/// and refuse to start with a different count while the stream has data: its events would be
/// read from the wrong keys and per-key order broken. docs/scale-out.md says how to migrate.
async fn check_partitions(conn: &mut crate::connection::Conn, config: &Config) -> anyhow::Result<()> {
    for (stream, settings) in &config.streams {
        keys::check_name("stream", stream).map_err(anyhow::Error::msg)?;
        let wanted = settings.partitions.max(1);
        let key = keys::partitions(stream);
        let recorded: Option<u32> = redis::cmd("GET").arg(&key).query_async(conn).await?;
        let current = recorded.unwrap_or(1);
        if current != wanted {
            let old_keys: Vec<String> = if current == 1 {
                vec![stream.clone()]
            } else {
                (0..current).map(|p| keys::partition(stream, p)).collect()
            };
            let mut entries = 0u64;
            for k in &old_keys {
                let n: u64 = redis::cmd("XLEN").arg(k).query_async(conn).await?;
                entries += n;
            }
            anyhow::ensure!(
                entries == 0,
                "stream `{stream}` has {current} partition(s) holding {entries} entries; changing it to {wanted} is refused \
                 (drain it first, or publish to a new stream name: see docs/scale-out.md)"
            );
        }
        let _: () = redis::cmd("SET").arg(&key).arg(wanted).query_async(conn).await?;
    }
    Ok(())
}

/// The settings that differ between two versions of a subscriber, by their key names, for
/// the reload's log line (an edit of `NAME.toml` says what it changed).
fn changed_settings(old: &Effective, new: &Effective) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! compare {
        ($($field:ident => $key:literal),* $(,)?) => {
            $(if old.$field != new.$field { changed.push($key); })*
        };
    }
    compare!(
        subscriptions => "subscriptions", start => "start", concurrency => "concurrency", ordered => "ordered",
        dedupe_window => "dedupe_window", retry => "retry", limits => "limits", config => "config",
        publish_streams => "publish_streams",
    );
    if changed.is_empty() && old != new {
        changed.push("other settings");
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_names_the_settings_it_changed() {
        let old = crate::config::SubscriberConfig::default().resolve().expect("defaults");
        let mut new = old.clone();
        assert!(changed_settings(&old, &new).is_empty());
        new.concurrency += 1;
        new.publish_streams.push("records".into());
        assert_eq!(changed_settings(&old, &new), ["concurrency", "publish_streams"]);
    }
}
