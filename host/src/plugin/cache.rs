//! The on-disk compiled-artifact cache.
//!
//! Compiling an 18 MB Python component takes seconds; deserializing its compiled artifact
//! takes tens of milliseconds. An entry is named by its key: the plugin's SHA-256 and a
//! SHA-256 of the engine's compatibility hash (wasmtime version and every setting that affects
//! code). Each file starts with a format tag and the SHA-256 of the key followed by the
//! artifact, checked before use: a corrupt or truncated entry, or an entry copied under
//! another plugin's name, is detected, removed and rebuilt, never trusted. Entries are written
//! to a temporary file of their own and renamed into place, so a reader never sees a
//! half-written file and a file in use is never modified.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::{PluginError, hex};

/// First bytes of every entry: the format, so a future layout is refused, not misread.
const MAGIC: &[u8; 8] = b"ferryc2\n";
/// Format tag plus the SHA-256 of key and artifact.
const HEADER: usize = MAGIC.len() + 32;

/// A compiled-artifact cache in one directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

/// Why a cache entry was not used.
#[derive(Debug, thiserror::Error)]
enum Rejected {
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    #[error("truncated ({0} bytes)")]
    Truncated(usize),
    #[error("not a ferry cache entry of this format")]
    Format,
    #[error("checksum mismatch (corrupt, or not the entry for this plugin and engine)")]
    Checksum,
    #[error("refused by wasmtime (stale): {0}")]
    Stale(String),
}

/// A [`Hasher`] feeding SHA-256, so the engine's compatibility hash gives the same file name
/// with every build of ferry (std's `DefaultHasher` may change between Rust releases, which
/// would turn every entry into a miss).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_be_bytes(digest[..8].try_into().unwrap_or_default())
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Distinguishes temporary files of concurrent writers in one process.
static WRITES: AtomicU64 = AtomicU64::new(0);

impl Cache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry's key (and file stem): plugin hash and engine compatibility.
    fn key(engine: &wasmtime::Engine, source_hash: &str) -> String {
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_hash = hex(&hasher.0.finalize()[..8]);
        format!("{source_hash}-{engine_hash}")
    }

    /// Where the entry for `source_hash` compiled by `engine` lives.
    pub fn path(&self, engine: &wasmtime::Engine, source_hash: &str) -> PathBuf {
        self.dir.join(format!("{}.cwasm", Self::key(engine, source_hash)))
    }

    /// The compiled component for `bytes` (whose SHA-256 is `source_hash`), from the cache
    /// when a valid entry exists, else compiled and stored. Returns whether it was a hit.
    pub fn get_or_compile(
        &self,
        engine: &wasmtime::Engine,
        source_hash: &str,
        bytes: &[u8],
    ) -> Result<(Component, bool), PluginError> {
        let key = Self::key(engine, source_hash);
        let path = self.dir.join(format!("{key}.cwasm"));
        match read(engine, &key, &path) {
            Ok(Some(component)) => return Ok((component, true)),
            Ok(None) => {}
            Err(reason) => {
                tracing::warn!(path = %path.display(), "compiled-artifact cache entry discarded, rebuilding: {reason}");
                let _ = std::fs::remove_file(&path);
            }
        }
        let component = Component::new(engine, bytes).map_err(|e| PluginError::Compile(format!("{e:#}")))?;
        if let Err(e) = self.write(&component, &key, &path) {
            tracing::warn!(path = %path.display(), "cannot write compiled-artifact cache entry: {e}");
        }
        Ok((component, false))
    }

    fn write(&self, component: &Component, key: &str, path: &Path) -> std::io::Result<()> {
        let artifact = component.serialize().map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        std::fs::create_dir_all(&self.dir)?;
        let mut data = Vec::with_capacity(HEADER + artifact.len());
        data.extend_from_slice(MAGIC);
        data.extend_from_slice(&digest(key, &artifact));
        data.extend_from_slice(&artifact);
        // A temporary name per writer: two loads of the same plugin at once (two hosts in one
        // process, or two names for one file) must not write into each other's file.
        let n = WRITES.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(".{key}.{}.{n}.tmp", std::process::id()));
        let written = std::fs::write(&tmp, &data).and_then(|()| std::fs::rename(&tmp, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}

/// SHA-256 of the entry's key and its artifact: binds the bytes to the name they are stored
/// under, so an entry copied or renamed onto another plugin's name is refused too.
fn digest(key: &str, artifact: &[u8]) -> [u8; 32] {
    let mut sha = Sha256::new();
    sha.update(key.as_bytes());
    sha.update([0]);
    sha.update(artifact);
    sha.finalize().into()
}

/// The entry at `path` if present and valid; `Err` says why it is not to be trusted.
fn read(engine: &wasmtime::Engine, key: &str, path: &Path) -> Result<Option<Component>, Rejected> {
    let data = match std::fs::read(path) {
        Ok(data) => data,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if data.len() <= HEADER {
        return Err(Rejected::Truncated(data.len()));
    }
    let (magic, rest) = data.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err(Rejected::Format);
    }
    let (checksum, artifact) = rest.split_at(32);
    if checksum != digest(key, artifact) {
        return Err(Rejected::Checksum);
    }
    deserialize(engine, artifact).map(Some).map_err(Rejected::Stale)
}

#[expect(unsafe_code, reason = "deserializing an artifact this host wrote, after verifying its SHA-256")]
fn deserialize(engine: &wasmtime::Engine, artifact: &[u8]) -> Result<Component, String> {
    // SAFETY: `artifact` was produced by `Component::serialize` of an engine with the same
    // compatibility hash (it is in the key) and its checksum over key and bytes was verified
    // just before, so it is the exact byte sequence ferry wrote for this plugin and engine.
    // wasmtime also checks its own header and refuses an artifact from an incompatible
    // engine. The bytes are copied into wasmtime's own memory, so later changes to the file
    // cannot affect the loaded code.
    unsafe { Component::deserialize(engine, artifact) }.map_err(|e| format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAT: &str = r#"(component (core module (func (export "f"))))"#;
    const HASH: &str = "ab";

    fn engine(fuel: bool) -> wasmtime::Engine {
        let mut config = wasmtime::Config::new();
        config.consume_fuel(fuel);
        wasmtime::Engine::new(&config).expect("engine")
    }

    fn entry(cache: &Cache, engine: &wasmtime::Engine) -> PathBuf {
        cache.path(engine, HASH)
    }

    #[test]
    fn a_hit_needs_the_same_plugin_and_engine() {
        let dir = tempfile::tempdir().expect("dir");
        let cache = Cache::new(dir.path());
        let (plain, fuel) = (engine(false), engine(true));
        assert!(!cache.get_or_compile(&plain, HASH, WAT.as_bytes()).expect("compile").1);
        assert!(cache.get_or_compile(&plain, HASH, WAT.as_bytes()).expect("load").1, "hit");
        assert!(!cache.get_or_compile(&fuel, HASH, WAT.as_bytes()).expect("compile").1, "other engine: miss");
        assert!(!cache.get_or_compile(&plain, "cd", WAT.as_bytes()).expect("compile").1, "other plugin: miss");
        assert_ne!(entry(&cache, &plain), entry(&cache, &fuel));
        // The name is a pure function of the engine's settings: two equal engines agree.
        assert_eq!(entry(&cache, &plain), entry(&cache, &engine(false)));
    }

    #[test]
    fn corrupt_truncated_foreign_and_stale_entries_are_rebuilt() {
        let dir = tempfile::tempdir().expect("dir");
        let cache = Cache::new(dir.path());
        let (plain, fuel) = (engine(false), engine(true));
        cache.get_or_compile(&plain, HASH, WAT.as_bytes()).expect("compile");
        let path = entry(&cache, &plain);
        let good = std::fs::read(&path).expect("entry");

        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let mut header = good.clone();
        header[MAGIC.len()] ^= 1;
        // Another plugin's valid entry, copied under this one's name.
        cache.get_or_compile(&plain, "cd", WAT.as_bytes()).expect("compile");
        let foreign = std::fs::read(cache.path(&plain, "cd")).expect("entry");
        // An entry whose checksum is right but whose artifact another engine compiled.
        let other = Component::new(&fuel, WAT).expect("compile").serialize().expect("serialize");
        let key = Cache::key(&plain, HASH);
        let stale = [MAGIC.as_slice(), &digest(&key, &other), &other].concat();

        for (what, bytes) in [
            ("flipped byte", flipped),
            ("flipped checksum", header),
            ("truncated", good[..good.len() / 2].to_vec()),
            ("empty", Vec::new()),
            ("old format", good[MAGIC.len()..].to_vec()),
            ("foreign", foreign),
            ("stale", stale),
        ] {
            std::fs::write(&path, &bytes).expect("write");
            let err = read(&plain, &key, &path).err().map(|e| e.to_string());
            assert!(err.is_some(), "{what}: refused");
            let (_, hit) = cache.get_or_compile(&plain, HASH, WAT.as_bytes()).expect("rebuilt");
            assert!(!hit, "{what}: never trusted");
            assert!(read(&plain, &key, &path).expect("valid again").is_some(), "{what}: rebuilt");
        }
    }

    #[test]
    fn concurrent_writers_never_expose_a_partial_entry() {
        let dir = tempfile::tempdir().expect("dir");
        let cache = Cache::new(dir.path());
        let plain = engine(false);
        let key = Cache::key(&plain, HASH);
        let path = entry(&cache, &plain);
        let component = Component::new(&plain, WAT).expect("compile");
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let writers: Vec<_> = (0..3)
                .map(|_| {
                    s.spawn(|| {
                        for _ in 0..50 {
                            cache.write(&component, &key, &path).expect("write");
                        }
                    })
                })
                .collect();
            s.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    if let Err(e) = read(&plain, &key, &path) {
                        panic!("a reader saw a bad entry while others wrote: {e}");
                    }
                }
            });
            let written: Vec<_> = writers.into_iter().map(|w| w.join()).collect();
            done.store(true, Ordering::Relaxed);
            assert!(written.iter().all(Result::is_ok), "every writer succeeded");
        });
        assert!(read(&plain, &key, &path).expect("valid").is_some());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
