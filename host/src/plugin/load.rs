//! Plugins: loading a `.wasm` file into a validated, pre-instantiated component.
//!
//! A plugin is one file: the component carries the contract it was built against and the
//! subscriptions it declares (its `subscriptions` export), so no side file is needed. Loading
//! reads, hashes (the hash is the plugin's version id), compiles through the on-disk
//! compiled-artifact cache, checks the contract and pre-instantiates, or says precisely what
//! is wrong. Its `subscriptions` export is guest code like any other: it runs under the
//! plugin's deadline (see `invoke`), so a plugin that sleeps or loops there is refused in
//! bounded time instead of hanging whoever loads it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::cache;
use super::capability::Grants;
use super::contract::{Contract, PACKAGE};
use super::engine::{self, Engine};
pub use super::error::PluginError;
use super::failure::{classify, deadline_reason, with_stderr};
use super::instance::Pre;
use super::schedule::cutoff;
use super::store::{arm, disarm, new_store};
use crate::config::LimitsConfig;
use crate::handler::Subscription;

/// A loaded, validated plugin version.
pub struct Plugin {
    /// Subscriber name: the file stem.
    pub name: String,
    /// Version id: the first 12 hex digits of the file's SHA-256.
    pub version: String,
    /// Where it was loaded from.
    pub path: PathBuf,
    /// Pre-instantiated component, against the contract version it was built for.
    pub pre: Pre,
    /// Subscriptions the plugin itself declares.
    pub declared: Vec<Subscription>,
    /// Whether the compiled artifact came from the cache.
    pub cached: bool,
    /// What one instance takes from the pooling allocator.
    pub slots: engine::Slots,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("name", &self.name).field("version", &self.version).finish_non_exhaustive()
    }
}

/// The subscriber name a plugin file gets: its file stem.
pub fn name_of(path: &Path) -> Result<String, PluginError> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| PluginError::Name(format!("{} has no UTF-8 file stem", path.display())))?;
    crate::keys::check_name("plugin", stem).map_err(PluginError::Name)?;
    // The subscriber name is one segment of its keys (`ferry:parked:{S}:SUB:KEY`) and of the
    // patterns that find them (`ferry:dlq:*:SUB`): with a `:` in it, subscriber `x` with
    // partition key `y:z` and subscriber `x:y` with key `z` would share a key, and a glob
    // character would make a pattern match other subscribers' keys.
    if stem.contains([':', '*', '?', '[', ']', '\\']) {
        return Err(PluginError::Name(format!(
            "plugin name `{}` must not contain `:` or glob characters (`*?[]\\`): it is a segment of Redis key names",
            crate::redact::escape(stem)
        )));
    }
    Ok(stem.to_string())
}

impl Plugin {
    /// Load, compile (or fetch from `cache`), validate and pre-instantiate the plugin at `path`,
    /// then read its subscriptions within `limits` (its deadline above all). Compilation runs
    /// on a blocking thread.
    pub async fn load(
        engine: &Engine,
        path: &Path,
        cache: Option<&cache::Cache>,
        limits: &LimitsConfig,
    ) -> Result<Arc<Plugin>, PluginError> {
        let name = name_of(path)?;
        let bytes = tokio::fs::read(path).await.map_err(|source| PluginError::Read { path: path.into(), source })?;
        Self::from_bytes(engine, name, path, bytes, cache, limits).await
    }

    /// Like [`Plugin::load`] with the file already read.
    pub async fn from_bytes(
        engine: &Engine,
        name: String,
        path: &Path,
        bytes: Vec<u8>,
        cache: Option<&cache::Cache>,
        limits: &LimitsConfig,
    ) -> Result<Arc<Plugin>, PluginError> {
        let Compiled { component, version, cached } = compile(engine, bytes, cache).await?;
        let contract = check_contract(engine, &component)?;
        let slots = engine::Slots::of(&component, limits.instances);
        let pre = engine.linker.instantiate_pre(&component).map_err(|e| PluginError::Link(format!("{e:#}")))?;
        let pre = Pre::new(contract, pre).map_err(|e| PluginError::Link(format!("{e:#}")))?;
        let mut plugin = Plugin { name, version, path: path.to_path_buf(), pre, declared: Vec::new(), cached, slots };
        plugin.declared = plugin.read_subscriptions(engine, limits).await?;
        Ok(Arc::new(plugin))
    }

    async fn read_subscriptions(
        &self,
        engine: &Engine,
        limits: &LimitsConfig,
    ) -> Result<Vec<Subscription>, PluginError> {
        let grants = Arc::new(Grants::none(&self.name, &self.version, *limits));
        let mut store = new_store(engine, grants);
        let started = arm(&mut store, engine, limits.deadline, false);
        let pre = &self.pre;
        let result = tokio::time::timeout(cutoff(limits.deadline), async {
            let instance = pre.instantiate_async(&mut store).await?;
            instance.subscriptions(&mut store).await
        })
        .await;
        let elapsed = started.elapsed();
        disarm(&mut store);
        let stderr = store.data_mut().drain_stdio();
        let declared = match result {
            Err(_) => return Err(PluginError::Subscriptions(deadline_reason(limits.deadline, elapsed, true))),
            Ok(Err(e)) => {
                let (kind, reason) = classify(&e, limits.deadline, limits.memory, elapsed);
                let reason = with_stderr(reason, &stderr);
                return Err(PluginError::Subscriptions(format!("{}: {reason}", kind.as_str())));
            }
            Ok(Ok(declared)) => declared,
        };
        Ok(declared
            .into_iter()
            .map(|s| Subscription { event_type: s.event_type, versions: s.versions, stream: s.stream })
            .collect())
    }
}

/// A component compiled from a plugin file's bytes.
pub struct Compiled {
    /// The component.
    pub component: Component,
    /// Its version id: the first 12 hex digits of the bytes' SHA-256.
    pub version: String,
    /// Whether the compiled artifact came from the cache.
    pub cached: bool,
}

/// Check that `bytes` are a component, hash them (the version id) and compile them, through
/// `cache` when given, on a blocking thread: the one path from a file's bytes to code, for
/// subscribers and upcasters alike (the bytes hashed are the bytes compiled).
pub async fn compile(engine: &Engine, bytes: Vec<u8>, cache: Option<&cache::Cache>) -> Result<Compiled, PluginError> {
    if !bytes.starts_with(b"\0asm") {
        return Err(PluginError::NotWasm);
    }
    // Bytes 4..8 are the version and layer: a core module is layer 0, a component layer 1.
    if bytes.get(6..8) != Some(&[1, 0]) {
        return Err(PluginError::NotComponent);
    }
    let hash = version_hash(&bytes);
    let version = hash[..12].to_string();
    let (wasm, cache) = (engine.engine.clone(), cache.cloned());
    // Compilation is CPU-bound (seconds for a big component): keep it off the runtime threads.
    let (component, cached) = tokio::task::spawn_blocking(move || match cache {
        Some(cache) => cache.get_or_compile(&wasm, &hash, &bytes),
        None => Ok((Component::new(&wasm, &bytes).map_err(|e| PluginError::Compile(format!("{e:#}")))?, false)),
    })
    .await
    .map_err(|e| PluginError::Compile(format!("compiler thread failed: {e}")))??;
    Ok(Compiled { component, version, cached })
}

/// The SHA-256 of a plugin file in hex; its first 12 digits are the plugin's version id.
pub fn version_hash(bytes: &[u8]) -> String {
    super::cache::hex(&Sha256::digest(bytes))
}

/// The contract version `component` was built against, or why it fits none.
fn check_contract(engine: &Engine, component: &Component) -> Result<Contract, PluginError> {
    let ty = component.component_type();
    let prefix = format!("{PACKAGE}/");
    let supported = |version: &str| Contract::ALL.iter().any(|c| c.version() == version);
    let wrong_version = |name: &str| -> Option<PluginError> {
        let rest = name.strip_prefix(&prefix)?;
        let (_, found) = rest.split_once('@')?;
        (!supported(found)).then(|| PluginError::WrongContract {
            package: PACKAGE,
            found: found.to_string(),
            expected: Contract::all_names(),
        })
    };
    let Some(contract) = Contract::of(&engine.engine, component) else {
        let exports: Vec<String> = ty.exports(&engine.engine).map(|(name, _)| name.to_string()).collect();
        if let Some(err) = exports.iter().find_map(|e| wrong_version(e)) {
            return Err(err);
        }
        let found = if exports.is_empty() { "none".to_string() } else { exports.join(", ") };
        return Err(PluginError::MissingExport { found });
    };
    if let Some(err) = ty.imports(&engine.engine).find_map(|(name, _)| wrong_version(name)) {
        return Err(err);
    }
    Ok(contract)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    #[test]
    fn a_plugin_name_cannot_collide_with_another_subscribers_keys() {
        for bad in ["x:y", "a*", "a?b", "[a]", "a\\b"] {
            assert!(name_of(Path::new(&format!("/p/{bad}.wasm"))).is_err(), "{bad}");
        }
        assert_eq!(name_of(Path::new("/p/orders-v2_x.wasm")).expect("fine"), "orders-v2_x");
    }

    #[test]
    fn subscriptions_match_type_prefix_and_version() {
        let mut event = Event::new("OrderCreated", "orders", "{}");
        event.schemaversion = 2;
        let exact = Subscription { event_type: "OrderCreated".into(), versions: vec![], stream: None };
        let prefix = Subscription { event_type: "Order*".into(), versions: vec![2], stream: None };
        let old = Subscription { event_type: "OrderCreated".into(), versions: vec![1], stream: None };
        let all = Subscription { event_type: "*".into(), versions: vec![], stream: None };
        assert!(exact.matches(&event) && prefix.matches(&event) && all.matches(&event));
        assert!(!old.matches(&event));
    }

    /// Issue 23, "checked and sound": the version is the hash of the very bytes compiled, from
    /// one buffer. The hostile fixture's bytes handed in under the noop's path load as the
    /// hostile plugin (its declared subscription) with the hostile bytes' hash: nothing reads
    /// the file again to hash or to compile it. Through the cache too, where the hash is the
    /// entry's key: a hit gives the same plugin, and other bytes never get its entry.
    #[tokio::test]
    async fn the_version_is_the_hash_of_the_bytes_compiled_from_one_buffer() {
        use crate::config::EngineConfig;
        let engine = Engine::new(&EngineConfig { pooling: false, ..EngineConfig::default() }).expect("engine");
        let limits = LimitsConfig::default();
        let hostile = std::fs::read(ferry_test_fixtures::HOSTILE).expect("hostile fixture");
        let noop = std::fs::read(ferry_test_fixtures::NOOP).expect("noop fixture");
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = cache::Cache::open(dir.path().join("cache"), &dir.path().join("key")).expect("cache");
        let noop_path = Path::new(ferry_test_fixtures::NOOP);
        let types = |plugin: &Plugin| plugin.declared.iter().map(|s| s.event_type.clone()).collect::<Vec<_>>();
        for (cache, hit) in [(None, false), (Some(&cache), false), (Some(&cache), true)] {
            let plugin = Plugin::from_bytes(&engine, "noop".into(), noop_path, hostile.clone(), cache, &limits)
                .await
                .expect("load");
            assert_eq!(plugin.version, version_hash(&hostile)[..12], "the hash of the bytes given");
            assert_eq!(types(&plugin), ["Hostile"], "compiled from the bytes given, not from {noop_path:?}");
            assert_eq!(plugin.cached, hit);
        }
        let plugin = Plugin::from_bytes(&engine, "noop".into(), noop_path, noop.clone(), Some(&cache), &limits)
            .await
            .expect("load");
        assert_eq!(plugin.version, version_hash(&noop)[..12]);
        assert_eq!(types(&plugin), ["*"], "other bytes are compiled anew, never given another's entry");
        assert!(!plugin.cached);
    }
}
