//! Upcaster plugins: components of the `ferry:plugin@0.2.0` `upcaster` world, which convert an
//! event type's payload between schema versions (`contract::upcast` plans and applies the
//! chains; this module runs the wasm).
//!
//! An upcaster is sandboxed like any plugin: compiled through the same path and cache
//! ([`super::load::compile`]), linked with nothing but the sandbox's WASI (no files, network or
//! environment), run in a fresh store per conversion under the host's default limits (memory,
//! deadline, fuel), its stdout and stderr captured. Its `steps` export runs once at load under
//! the deadline too. The upcaster directory (`upcasters = "DIR"`) is watched and reloaded
//! whole; a set that fails to load is refused and the active one stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::bindings::upcaster as wit;
use super::bindings::upcaster::exports::ferry::plugin::upcast::Step as WitStep;
use super::capability::Grants;
use super::engine::Engine;
use super::failure::{classify, deadline_reason, with_stderr};
use super::load::{Compiled, compile, name_of};
use super::sandbox::HostState;
use super::schedule::cutoff;
use super::store::{arm, disarm, new_store};
use super::{PluginError, cache};
use crate::config::LimitsConfig;
use crate::contract::upcast::{Convert, Converting, Step, Upcasters};

/// The export an upcaster provides.
pub const EXPORT: &str = "ferry:plugin/upcast@0.2.0";

/// A loaded upcaster.
pub struct Upcaster {
    /// The file stem.
    pub name: String,
    /// Version id: the first 12 hex digits of the file's SHA-256.
    pub version: String,
    /// Where it was loaded from.
    pub path: PathBuf,
    pre: wit::UpcasterPre<HostState>,
    steps: Vec<Step>,
    engine: Engine,
    grants: Arc<Grants>,
}

impl std::fmt::Debug for Upcaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upcaster").field("name", &self.name).field("steps", &self.steps).finish_non_exhaustive()
    }
}

impl Upcaster {
    /// Load the upcaster at `path`: compile (through `cache`), check that it is one, and read
    /// its steps within `limits`.
    pub async fn load(
        engine: &Engine,
        path: &Path,
        cache: Option<&cache::Cache>,
        limits: &LimitsConfig,
    ) -> Result<Arc<Self>, PluginError> {
        let name = name_of(path)?;
        let bytes = tokio::fs::read(path).await.map_err(|source| PluginError::Read { path: path.into(), source })?;
        let Compiled { component, version, .. } = compile(engine, bytes, cache).await?;
        let exports: Vec<String> =
            component.component_type().exports(&engine.engine).map(|(name, _)| name.to_string()).collect();
        if !exports.iter().any(|e| e == EXPORT) {
            return Err(PluginError::NotUpcaster { found: exports.join(", ") });
        }
        let pre = engine.linker.instantiate_pre(&component).map_err(|e| PluginError::Link(format!("{e:#}")))?;
        let pre = wit::UpcasterPre::new(pre).map_err(|e| PluginError::Link(format!("{e:#}")))?;
        let grants = Arc::new(Grants::none(&name, &version, *limits));
        let mut upcaster = Upcaster {
            name,
            version,
            path: path.to_path_buf(),
            pre,
            steps: Vec::new(),
            engine: engine.clone(),
            grants,
        };
        let Output::Steps(declared) = upcaster.run(Call::Steps).await.map_err(PluginError::Steps)? else {
            return Err(PluginError::Steps("`steps` returned something else".into()));
        };
        upcaster.steps =
            declared.into_iter().map(|s| Step { event_type: s.event_type, from: s.from, to: s.to }).collect();
        Ok(Arc::new(upcaster))
    }

    /// Run `call` on a fresh instance in a fresh store, under the deadline: its output, or why
    /// it failed (the failure kind, then the reason with the captured stderr).
    async fn run(&self, call: Call<'_>) -> Result<Output, String> {
        let limits = self.grants.limits;
        let mut store = new_store(&self.engine, self.grants.clone());
        let started = arm(&mut store, &self.engine, limits.deadline, false);
        let result = tokio::time::timeout(cutoff(limits.deadline), async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            let guest = instance.ferry_plugin_upcast();
            wasmtime::Result::Ok(match call {
                Call::Steps => Output::Steps(guest.call_steps(&mut store).await?),
                Call::Convert(step, data) => Output::Converted(guest.call_convert(&mut store, step, data).await?),
            })
        })
        .await;
        let elapsed = started.elapsed();
        disarm(&mut store);
        let stderr = store.data_mut().drain_stdio();
        match result {
            Err(_) => Err(format!("deadline: {}", deadline_reason(limits.deadline, elapsed, true))),
            Ok(Err(e)) => {
                let (kind, reason) = classify(&e, limits.deadline, limits.memory, elapsed);
                Err(format!("{}: {}", kind.as_str(), with_stderr(reason, &stderr)))
            }
            Ok(Ok(output)) => Ok(output),
        }
    }
}

/// A call of an upcaster's exports.
enum Call<'a> {
    Steps,
    Convert(&'a WitStep, &'a [u8]),
}

/// What a call returned.
enum Output {
    Steps(Vec<WitStep>),
    Converted(Result<Vec<u8>, String>),
}

impl Convert for Upcaster {
    fn name(&self) -> String {
        format!("upcaster {} ({})", self.name, self.version)
    }

    fn steps(&self) -> &[Step] {
        &self.steps
    }

    fn convert<'a>(&'a self, step: &'a Step, data: &'a [u8]) -> Converting<'a> {
        Box::pin(async move {
            let wit_step = WitStep { event_type: step.event_type.clone(), from: step.from, to: step.to };
            let Output::Converted(converted) = self.run(Call::Convert(&wit_step, data)).await? else {
                return Err("`convert` returned something else".into());
            };
            match converted {
                Err(reason) => Err(crate::redact::printable(crate::redact::truncate(&reason, 1024)).into_owned()),
                Ok(out) if out.len() > crate::event::MAX_ENTRY_BYTES => Err(format!(
                    "the converted payload of {} bytes exceeds the maximum entry size of {} bytes",
                    out.len(),
                    crate::event::MAX_ENTRY_BYTES
                )),
                Ok(out) => Ok(out),
            }
        })
    }
}

/// Load every `.wasm` file in `dir` as an upcaster and make them `upcasters`' active set; on
/// any failure the active set stays and the reasons come back (one per file, or the conflict).
pub async fn reload(
    upcasters: &Upcasters,
    engine: &Engine,
    dir: &Path,
    cache: Option<&cache::Cache>,
    limits: &LimitsConfig,
) -> Result<usize, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read the upcaster directory {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .collect();
    files.sort();
    let mut loaded: Vec<Arc<dyn Convert>> = Vec::new();
    let mut refused = Vec::new();
    for path in &files {
        match Upcaster::load(engine, path, cache, limits).await {
            Ok(u) => loaded.push(u),
            Err(e) => refused.push(format!("{}: {e}", path.display())),
        }
    }
    if !refused.is_empty() {
        return Err(refused.join("; "));
    }
    let n = loaded.len();
    upcasters.replace(loaded).map_err(|e| e.to_string())?;
    Ok(n)
}
