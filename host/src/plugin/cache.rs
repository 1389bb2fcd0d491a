//! The on-disk compiled-artifact cache.
//!
//! Compiling an 18 MB Python component takes seconds; deserializing its compiled artifact
//! takes tens of milliseconds. But deserializing is loading native code: whoever can write an
//! entry that ferry deserializes runs code in the host, with its Redis and PostgreSQL
//! credentials. So nothing in the cache directory is trusted:
//!
//! - Every entry carries an HMAC-SHA256 over the format tag, its key and the artifact, keyed
//!   by a 32-byte secret kept *outside* the cache directory (`cache_key`, by default
//!   `$XDG_STATE_HOME/ferry/cache.key`, mode 0600, created on first use). Someone who can
//!   write the cache but not read the key cannot make an entry ferry accepts; a corrupt or
//!   truncated entry, or one copied under another plugin's name, fails the same check and is
//!   removed and rebuilt.
//! - The directory is created 0700, and a directory (or key file) that is a symbolic link, is
//!   not owned by the host's user, or is writable by group or others is refused: the host
//!   then runs without a cache (compiling every plugin) and says why.
//! - Entries are written to a temporary file with a random name, opened with
//!   `O_CREAT|O_EXCL|O_NOFOLLOW` (a planted file or symlink is never written through), and
//!   renamed into place, so a reader never sees a half-written file and a file in use is never
//!   modified. Entries are read with `O_NOFOLLOW`.
//!
//! An entry is named by the plugin's SHA-256 and a SHA-256 of the engine's compatibility hash
//! (wasmtime version and every setting that affects code).

use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::error::PluginError;

/// First bytes of every entry: the format, so a future layout is refused, not misread.
/// (`ferryc2` entries carried an unkeyed SHA-256 and are refused and rebuilt.)
const MAGIC: &[u8; 8] = b"ferryc3\n";
/// Format tag plus the HMAC-SHA256 of key and artifact.
const HEADER: usize = MAGIC.len() + 32;
/// Length of the secret in the key file.
const SECRET: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// A compiled-artifact cache in one directory, authenticated by a secret kept outside it.
#[derive(Clone)]
pub struct Cache {
    dir: PathBuf,
    secret: Arc<[u8; SECRET]>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// Why the cache cannot be used at all (the host then compiles without it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// Creating or inspecting a path failed.
    #[error("{path}: {source}")]
    Io {
        /// The directory or key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A symbolic link where a directory or key file was expected.
    #[error("{0} is a symbolic link: give the real path")]
    Symlink(PathBuf),
    /// Not a directory / not a regular file.
    #[error("{0} is not a {1}")]
    Kind(PathBuf, &'static str),
    /// Owned by another user.
    #[error("{path} is owned by uid {owner}, not by this user (uid {me})")]
    NotOwned {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The host's effective uid.
        me: u32,
    },
    /// Mode too open.
    #[error("{path} has mode {mode:03o}: {need}")]
    Mode {
        /// The path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// What it must be.
        need: &'static str,
    },
    /// The key file has the wrong length.
    #[error("{0} is not a ferry cache key ({1} bytes, expected {SECRET})")]
    BadKey(PathBuf, u64),
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
    #[error("authentication failed (forged, corrupt, or not the entry for this plugin and engine)")]
    Forged,
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
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io { path: path.to_path_buf(), source }
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// `O_NOFOLLOW` for `OpenOptions::custom_flags`.
fn nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// Check that `meta` (from `lstat`) is a `kind` owned by this user whose mode has none of
/// the bits in `forbidden`.
fn check_owner_mode(
    path: &Path,
    meta: &std::fs::Metadata,
    dir: bool,
    forbidden: u32,
    need: &'static str,
) -> Result<(), CacheError> {
    if meta.file_type().is_symlink() {
        return Err(CacheError::Symlink(path.to_path_buf()));
    }
    if dir && !meta.is_dir() {
        return Err(CacheError::Kind(path.to_path_buf(), "directory"));
    }
    if !dir && !meta.is_file() {
        return Err(CacheError::Kind(path.to_path_buf(), "regular file"));
    }
    let me = euid();
    if meta.uid() != me {
        return Err(CacheError::NotOwned { path: path.to_path_buf(), owner: meta.uid(), me });
    }
    let mode = meta.mode() & 0o7777;
    if mode & forbidden != 0 {
        return Err(CacheError::Mode { path: path.to_path_buf(), mode, need });
    }
    Ok(())
}

/// Create `dir` (and missing parents) with mode 0700 and check it is a private directory.
fn private_dir(dir: &Path) -> Result<(), CacheError> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir))?;
    let meta = std::fs::symlink_metadata(dir).map_err(io(dir))?;
    check_owner_mode(dir, &meta, true, 0o022, "must not be writable by group or others (chmod 700)")
}

/// A fresh file with a random name in `dir`, created exclusively without following links.
fn exclusive_temp(dir: &Path, stem: &str) -> std::io::Result<(PathBuf, File)> {
    loop {
        let tmp = dir.join(format!(".{stem}.{:016x}.tmp", rand::random::<u64>()));
        match OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(nofollow()).open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The secret in `path`, created (32 random bytes, mode 0600) if there is none.
fn load_or_create_key(path: &Path) -> Result<[u8; SECRET], CacheError> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent).map_err(io(parent))?;
    for _ in 0..2 {
        match OpenOptions::new().read(true).custom_flags(nofollow()).open(path) {
            Ok(mut file) => {
                let meta = file.metadata().map_err(io(path))?;
                check_owner_mode(path, &meta, false, 0o077, "must be readable by its owner only (chmod 600)")?;
                if meta.len() != SECRET as u64 {
                    return Err(CacheError::BadKey(path.to_path_buf(), meta.len()));
                }
                let mut secret = [0u8; SECRET];
                file.read_exact(&mut secret).map_err(io(path))?;
                return Ok(secret);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Write it under a temporary name, then link it into place: linking fails if
                // the name exists, so two hosts starting at once agree on one key and nobody
                // ever reads a half-written one.
                let (tmp, mut file) = exclusive_temp(parent, "cache.key").map_err(io(parent))?;
                let secret: [u8; SECRET] = rand::random();
                let linked = file
                    .write_all(&secret)
                    .and_then(|()| file.sync_all())
                    .and_then(|()| std::fs::hard_link(&tmp, path));
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => return Ok(secret),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(io(path)(e)),
                }
            }
            Err(e) if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) => {
                let _ = e;
                return Err(CacheError::Symlink(path.to_path_buf()));
            }
            Err(e) => return Err(io(path)(e)),
        }
    }
    Err(io(path)(std::io::Error::other("created and removed concurrently")))
}

impl Cache {
    /// The cache in `dir` (created 0700 if missing), authenticated with the secret in
    /// `key_file` (created 0600 if missing). Refuses a directory or key file that is a
    /// symbolic link, is not this user's, or is open to others.
    pub fn open(dir: impl Into<PathBuf>, key_file: &Path) -> Result<Self, CacheError> {
        let dir = dir.into();
        private_dir(&dir)?;
        let secret = load_or_create_key(key_file)?;
        Ok(Self { dir, secret: Arc::new(secret) })
    }

    /// The cache `config` asks for, or `None` when it is off or cannot be used safely (said
    /// in a warning: plugins are then compiled on every load).
    pub fn from_config(config: &crate::config::Config) -> Option<Self> {
        let dir = config.cache_dir()?;
        let key = config.cache_key_file(&dir);
        match Self::open(&dir, &key) {
            Ok(cache) => Some(cache),
            Err(e) => {
                tracing::warn!("compiled-artifact cache not used, plugins are compiled on every load: {e}");
                None
            }
        }
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
    /// when an authentic entry exists, else compiled and stored. Returns whether it was a hit.
    pub fn get_or_compile(
        &self,
        engine: &wasmtime::Engine,
        source_hash: &str,
        bytes: &[u8],
    ) -> Result<(Component, bool), PluginError> {
        let key = Self::key(engine, source_hash);
        let path = self.dir.join(format!("{key}.cwasm"));
        match self.read(engine, &key, &path) {
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
        let mut data = Vec::with_capacity(HEADER + artifact.len());
        data.extend_from_slice(MAGIC);
        data.extend_from_slice(&self.tag(key, &artifact));
        data.extend_from_slice(&artifact);
        // A random temporary name per writer, created exclusively: two loads of the same
        // plugin at once never write into each other's file, and a name planted in advance
        // (a symlink to a file of the host's user) is never written through.
        let (tmp, mut file) = exclusive_temp(&self.dir, key)?;
        let written = file.write_all(&data).and_then(|()| std::fs::rename(&tmp, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// The HMAC-SHA256 of the format, the entry's key and its artifact: binds the bytes to
    /// this host's secret and to the name they are stored under, so an entry written by
    /// anyone else, or copied or renamed onto another plugin's name, is refused.
    fn mac(&self, key: &str, artifact: &[u8]) -> HmacSha256 {
        let mut mac = match HmacSha256::new_from_slice(&self.secret[..]) {
            Ok(mac) => mac,
            // HMAC takes keys of any length; this cannot fail.
            Err(_) => unreachable!("HMAC accepts a key of any length"),
        };
        mac.update(MAGIC);
        mac.update(key.as_bytes());
        mac.update(&[0]);
        mac.update(artifact);
        mac
    }

    fn tag(&self, key: &str, artifact: &[u8]) -> [u8; 32] {
        let mut tag = [0u8; 32];
        tag.copy_from_slice(&self.mac(key, artifact).finalize().into_bytes()[..]);
        tag
    }

    /// The entry at `path` if present and authentic; `Err` says why it is not to be trusted.
    fn read(&self, engine: &wasmtime::Engine, key: &str, path: &Path) -> Result<Option<Component>, Rejected> {
        let mut file = match OpenOptions::new().read(true).custom_flags(nofollow()).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        if data.len() <= HEADER {
            return Err(Rejected::Truncated(data.len()));
        }
        let (magic, rest) = data.split_at(MAGIC.len());
        if magic != MAGIC {
            return Err(Rejected::Format);
        }
        let (tag, artifact) = rest.split_at(32);
        // Constant-time comparison.
        self.mac(key, artifact).verify_slice(tag).map_err(|_| Rejected::Forged)?;
        deserialize(engine, artifact).map(Some).map_err(Rejected::Stale)
    }
}

#[expect(unsafe_code, reason = "deserializing an artifact this host wrote, after verifying its HMAC")]
fn deserialize(engine: &wasmtime::Engine, artifact: &[u8]) -> Result<Component, String> {
    // SAFETY: `artifact` carries a valid HMAC-SHA256 under this host's secret (kept outside
    // the cache, readable by its owner only) over its key, which names the plugin and the
    // engine's compatibility hash: it is a byte sequence ferry itself produced with
    // `Component::serialize` for this plugin and an engine with these settings. wasmtime also
    // checks its own header and refuses an artifact from an incompatible engine. The bytes are
    // copied into wasmtime's own memory, so later changes to the file cannot affect the
    // loaded code.
    unsafe { Component::deserialize(engine, artifact) }.map_err(|e| format!("{e:#}"))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    const WAT: &str = r#"(component (core module (func (export "f"))))"#;
    const HASH: &str = "ab";

    fn engine(fuel: bool) -> wasmtime::Engine {
        let mut config = wasmtime::Config::new();
        config.consume_fuel(fuel);
        wasmtime::Engine::new(&config).expect("engine")
    }

    /// A cache in `root/cache` with its key in `root/cache.key`.
    fn open(root: &Path) -> Cache {
        Cache::open(root.join("cache"), &root.join("cache.key")).expect("open")
    }

    fn entry(cache: &Cache, engine: &wasmtime::Engine) -> PathBuf {
        cache.path(engine, HASH)
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).expect("stat").mode() & 0o777
    }

    #[test]
    fn a_hit_needs_the_same_plugin_and_engine() {
        let dir = tempfile::tempdir().expect("dir");
        let cache = open(dir.path());
        let (plain, fuel) = (engine(false), engine(true));
        assert!(!cache.get_or_compile(&plain, HASH, WAT.as_bytes()).expect("compile").1);
        assert!(cache.get_or_compile(&plain, HASH, WAT.as_bytes()).expect("load").1, "hit");
        assert!(open(dir.path()).get_or_compile(&plain, HASH, WAT.as_bytes()).expect("load").1, "same key: hit");
        assert!(!cache.get_or_compile(&fuel, HASH, WAT.as_bytes()).expect("compile").1, "other engine: miss");
        assert!(!cache.get_or_compile(&plain, "cd", WAT.as_bytes()).expect("compile").1, "other plugin: miss");
        assert_ne!(entry(&cache, &plain), entry(&cache, &fuel));
        // The name is a pure function of the engine's settings: two equal engines agree.
        assert_eq!(entry(&cache, &plain), entry(&cache, &engine(false)));
    }

    #[test]
    fn corrupt_truncated_foreign_and_stale_entries_are_rebuilt() {
        let dir = tempfile::tempdir().expect("dir");
        let cache = open(dir.path());
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
        // An authentic entry whose artifact another engine compiled.
        let other = Component::new(&fuel, WAT).expect("compile").serialize().expect("serialize");
        let key = Cache::key(&plain, HASH);
        let stale = [MAGIC.as_slice(), &cache.tag(&key, &other), &other].concat();

        for (what, bytes) in [
            ("flipped byte", flipped),
            ("flipped tag", header),
            ("truncated", good[..good.len() / 2].to_vec()),
            ("empty", Vec::new()),
            ("old format", [b"ferryc2\n".as_slice(), &good[MAGIC.len()..]].concat()),
            ("foreign", foreign),
            ("stale", stale),
        ] {
            std::fs::write(&path, &bytes).expect("write");
            let err = cache.read(&plain, &key, &path).err().map(|e| e.to_string());
            assert!(err.is_some(), "{what}: refused");
            let (_, hit) = cache.get_or_compile(&plain, HASH, WAT.as_bytes()).expect("rebuilt");
            assert!(!hit, "{what}: never trusted");
            assert!(cache.read(&plain, &key, &path).expect("valid again").is_some(), "{what}: rebuilt");
        }
    }

    /// The attack of issue 23: whoever can write the cache directory plants an artifact of
    /// its own. It knows the layout and the key (the file name), so it can compute any unkeyed
    /// checksum; without the secret it cannot compute the HMAC.
    #[test]
    fn a_planted_entry_is_never_deserialized() {
        let dir = tempfile::tempdir().expect("dir");
        let cache = open(dir.path());
        let engine = engine(false);
        let evil = r#"(component (core module (func (export "evil"))))"#;
        let artifact = Component::new(&engine, evil).expect("compile").serialize().expect("serialize");
        let key = Cache::key(&engine, HASH);
        let mut sha = Sha256::new();
        sha.update(key.as_bytes());
        sha.update([0]);
        sha.update(&artifact);
        let unkeyed: [u8; 32] = sha.finalize().into();
        // And one authenticated under another host's secret.
        let other = tempfile::tempdir().expect("dir");
        let other_tag = open(other.path()).tag(&key, &artifact);
        let path = entry(&cache, &engine);
        for (what, tag) in [("unkeyed sha-256", unkeyed), ("another secret", other_tag)] {
            std::fs::write(&path, [MAGIC.as_slice(), &tag, &artifact].concat()).expect("plant");
            assert!(
                matches!(cache.read(&engine, &key, &path), Err(Rejected::Forged)),
                "{what}: refused before deserializing"
            );
            let (_, hit) = cache.get_or_compile(&engine, HASH, WAT.as_bytes()).expect("load");
            assert!(!hit, "{what}: a planted entry must never be deserialized");
        }
    }

    #[test]
    fn the_cache_dir_is_created_private_and_the_key_outside_it() {
        let dir = tempfile::tempdir().expect("dir");
        let cache = Cache::open(dir.path().join("a/b/cache"), &dir.path().join("state/cache.key")).expect("open");
        assert_eq!(mode(cache.dir()), 0o700);
        assert_eq!(mode(&dir.path().join("state")), 0o700);
        let key = dir.path().join("state/cache.key");
        assert_eq!(mode(&key), 0o600);
        assert_eq!(std::fs::read(&key).expect("key").len(), SECRET);
        cache.get_or_compile(&engine(false), HASH, WAT.as_bytes()).expect("compile");
        for e in std::fs::read_dir(cache.dir()).expect("dir") {
            let path = e.expect("entry").path();
            assert_eq!(mode(&path), 0o600, "{path:?}");
        }
    }

    #[test]
    fn a_cache_dir_or_key_open_to_others_or_behind_a_symlink_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let root = dir.path();
        open(root);
        let cache = root.join("cache");
        let key = root.join("cache.key");
        for bits in [0o777, 0o720, 0o702] {
            std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(bits)).expect("chmod");
            let err = Cache::open(&cache, &key).expect_err("open dir");
            assert!(matches!(err, CacheError::Mode { .. }), "{bits:o}: {err}");
        }
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Cache::open(&cache, &key).expect("0755 is fine: nobody else can write it");
        for bits in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(bits)).expect("chmod");
            let err = Cache::open(&cache, &key).expect_err("open key");
            assert!(matches!(err, CacheError::Mode { .. }), "{bits:o}: {err}");
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let link = root.join("link");
        std::os::unix::fs::symlink(&cache, &link).expect("symlink");
        assert!(matches!(Cache::open(&link, &key), Err(CacheError::Symlink(_))));
        let key_link = root.join("key-link");
        std::os::unix::fs::symlink(&key, &key_link).expect("symlink");
        assert!(matches!(Cache::open(&cache, &key_link), Err(CacheError::Symlink(_))));
        std::fs::write(root.join("short.key"), b"x").expect("write");
        std::fs::set_permissions(root.join("short.key"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(matches!(Cache::open(&cache, &root.join("short.key")), Err(CacheError::BadKey(..))));
    }

    #[test]
    fn a_symlink_planted_in_the_cache_is_never_written_through() {
        let dir = tempfile::tempdir().expect("dir");
        let cache = open(dir.path());
        let engine = engine(false);
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").expect("write");
        std::os::unix::fs::symlink(&victim, entry(&cache, &engine)).expect("symlink");
        let (_, hit) = cache.get_or_compile(&engine, HASH, WAT.as_bytes()).expect("compile");
        assert!(!hit);
        assert_eq!(std::fs::read(&victim).expect("victim"), b"precious", "the link's target was not written");
        assert!(std::fs::symlink_metadata(entry(&cache, &engine)).expect("entry").is_file(), "replaced by a file");
        assert!(cache.get_or_compile(&engine, HASH, WAT.as_bytes()).expect("load").1);
    }

    #[test]
    fn concurrent_writers_never_expose_a_partial_entry() {
        let dir = tempfile::tempdir().expect("dir");
        let cache = open(dir.path());
        let plain = engine(false);
        let key = Cache::key(&plain, HASH);
        let path = entry(&cache, &plain);
        let component = Component::new(&plain, WAT).expect("compile");
        let done = AtomicBool::new(false);
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
                    if let Err(e) = cache.read(&plain, &key, &path) {
                        panic!("a reader saw a bad entry while others wrote: {e}");
                    }
                }
            });
            let written: Vec<_> = writers.into_iter().map(|w| w.join()).collect();
            done.store(true, Ordering::Relaxed);
            assert!(written.iter().all(Result::is_ok), "every writer succeeded");
        });
        assert!(cache.read(&plain, &key, &path).expect("valid").is_some());
        let leftovers: Vec<_> = std::fs::read_dir(cache.dir())
            .expect("dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
