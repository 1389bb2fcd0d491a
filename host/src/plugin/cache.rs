//! The on-disk compiled-artifact cache.
//!
//! Compiling an 18 MB Python component takes seconds; deserializing its compiled artifact
//! takes tens of milliseconds. Entries are keyed by the plugin's SHA-256 and the engine's
//! compatibility hash (wasmtime version and every setting that affects code), and each file
//! starts with the SHA-256 of the artifact that follows, checked before use: a corrupt or
//! truncated entry is detected, removed and rebuilt, never trusted. Entries are written to a
//! temporary file and renamed into place, so a reader never sees a half-written file and a
//! file in use is never modified.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::{PluginError, hex};

/// A compiled-artifact cache in one directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, engine: &wasmtime::Engine, source_hash: &str) -> PathBuf {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        self.dir.join(format!("{source_hash}-{:016x}.cwasm", hasher.finish()))
    }

    /// The compiled component for `bytes` (whose SHA-256 is `source_hash`), from the cache
    /// when a valid entry exists, else compiled and stored. Returns whether it was a hit.
    pub fn get_or_compile(
        &self,
        engine: &wasmtime::Engine,
        source_hash: &str,
        bytes: &[u8],
    ) -> Result<(Component, bool), PluginError> {
        let path = self.path(engine, source_hash);
        match self.read(engine, &path) {
            Ok(Some(component)) => return Ok((component, true)),
            Ok(None) => {}
            Err(reason) => {
                tracing::warn!(path = %path.display(), "discarding compiled-artifact cache entry: {reason}");
                let _ = std::fs::remove_file(&path);
            }
        }
        let component = Component::new(engine, bytes).map_err(|e| PluginError::Compile(format!("{e:#}")))?;
        if let Err(e) = self.write(&component, &path) {
            tracing::warn!(path = %path.display(), "cannot write compiled-artifact cache entry: {e}");
        }
        Ok((component, false))
    }

    fn read(&self, engine: &wasmtime::Engine, path: &Path) -> Result<Option<Component>, String> {
        let data = match std::fs::read(path) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        if data.len() < 32 {
            return Err("truncated".into());
        }
        let (digest, artifact) = data.split_at(32);
        if Sha256::digest(artifact).as_slice() != digest {
            return Err("checksum mismatch (corrupt entry)".into());
        }
        deserialize(engine, artifact).map(Some)
    }

    fn write(&self, component: &Component, path: &Path) -> std::io::Result<()> {
        let artifact = component.serialize().map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        std::fs::create_dir_all(&self.dir)?;
        let digest = Sha256::digest(&artifact);
        let tmp = self.dir.join(format!(".{}.{}.tmp", hex(&digest[..8]), std::process::id()));
        let mut data = Vec::with_capacity(32 + artifact.len());
        data.extend_from_slice(&digest);
        data.extend_from_slice(&artifact);
        std::fs::write(&tmp, &data)?;
        std::fs::rename(&tmp, path)
    }
}

#[expect(unsafe_code, reason = "deserializing an artifact this host wrote, after verifying its SHA-256")]
fn deserialize(engine: &wasmtime::Engine, artifact: &[u8]) -> Result<Component, String> {
    // SAFETY: `artifact` was produced by `Component::serialize` of an engine with the same
    // compatibility hash (it is in the file name) and its checksum was verified just before,
    // so it is the exact byte sequence wasmtime wrote. wasmtime also checks its own header and
    // refuses an artifact from an incompatible engine.
    unsafe { Component::deserialize(engine, artifact) }.map_err(|e| format!("stale entry: {e:#}"))
}
