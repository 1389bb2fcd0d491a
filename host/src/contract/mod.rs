//! Event contracts: a JSON Schema per event type and version, checked where events are made
//! and read.
//!
//! Integration events are contracts between teams; this module is where ferry keeps them. The
//! registry reads `schemas/<type>/<version>.json` (JSON Schema 2020-12) and an optional
//! `schemas/<type>/contract.toml` (compatibility mode, owner, description, validation mode),
//! compiles one validator per (type, version) and keeps the compiled set active until a
//! reload swaps in a new one. A reload whose schemas do not compile, or break their type's
//! compatibility mode, is refused with the reason and the active set stays.
//!
//! The rest of the host calls a narrow API: [`Registry::validate`] (before dispatch),
//! [`Registry::prepare`] (at publish: validate and fill `dataschema`), [`Registry::active`]
//! (the documents). `$ref` resolves only inside the registry: the `jsonschema` crate is built
//! without its network and file features, and its retriever is ours.
//!
//! - [`set`]: loading and compiling a directory into a [`Set`];
//! - [`compat`]: compatibility modes, decided on the sets of payloads each version accepts;
//! - [`docs`]: the AsyncAPI 3.0 document and the catalog pages;
//! - [`watch`]: reloading on changes to the directory.

pub mod compat;
pub mod docs;
pub mod mode;
pub mod set;
pub mod upcast;
pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::config::{ValidationConfig, ValidationMode};
use crate::event::Event;

pub use self::compat::Violation;
pub use self::mode::Compatibility;
pub use self::set::{Contract, Schema, Set, TypeContract};

/// Most validation errors kept for one event (the first ones): enough to fix the producer,
/// bounded so a dead letter stays small.
pub const MAX_ERRORS: usize = 5;

/// One way a payload fails its schema.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Error {
    /// JSON Pointer into the payload (`""`: the payload itself).
    pub instance_path: String,
    /// The schema keyword that refused it (`required`, `maximum`, ...).
    pub keyword: String,
    /// What is wrong, in words.
    pub message: String,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.instance_path.is_empty() { "(payload)" } else { &self.instance_path };
        write!(f, "at {path} ({}): {}", self.keyword, self.message)
    }
}

/// Why an event is refused by its contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    /// The payload does not match the schema of its `type@version`.
    #[error("payload does not match schema {schema}: {}", join(errors))]
    Schema {
        /// `type@version` of the schema it failed.
        schema: String,
        /// The first errors (at most [`MAX_ERRORS`]).
        errors: Vec<Error>,
    },
    /// The payload is not JSON, or not declared as JSON, but its type has a schema.
    #[error("payload of {schema} is not JSON: {reason}")]
    NotJson {
        /// `type@version`.
        schema: String,
        /// Why.
        reason: String,
    },
    /// No schema for this `type@version`, and `validation.refuse_unknown` is set.
    #[error("no schema for {schema} (validation.refuse_unknown is set)")]
    Unknown {
        /// `type@version`.
        schema: String,
    },
}

fn join(errors: &[Error]) -> String {
    errors.iter().map(Error::to_string).collect::<Vec<_>>().join("; ")
}

impl Invalid {
    /// `type@version` of the schema the event was checked against.
    pub fn schema(&self) -> &str {
        match self {
            Invalid::Schema { schema, .. } | Invalid::NotJson { schema, .. } | Invalid::Unknown { schema } => schema,
        }
    }
}

/// Why a schema directory cannot become the active set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContractError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file's name, JSON or TOML is not acceptable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A schema is not a valid JSON Schema, or a `$ref` does not resolve inside the registry.
    #[error("schema {schema} does not compile: {reason}")]
    Compile {
        /// `type@version`.
        schema: String,
        /// The compiler's message.
        reason: String,
    },
    /// Versions of a type break its compatibility mode.
    #[error("{} compatibility violation(s): {}", .0.len(), .0.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("; "))]
    Incompatible(Vec<Violation>),
}

/// `type@version`: how a schema is named in messages, dead letters and documents.
pub fn name(event_type: &str, version: u32) -> String {
    format!("{event_type}@{version}")
}

/// The schema registry: the active [`Set`], swapped whole on reload.
pub struct Registry {
    dir: Option<PathBuf>,
    policy: ValidationConfig,
    active: RwLock<Arc<Set>>,
    /// Why the newest directory contents were refused, while they are.
    refused: Mutex<Option<String>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("dir", &self.dir).field("schemas", &self.active().len()).finish()
    }
}

impl Registry {
    /// A registry of the schemas in `dir` under `policy`. Fails when they do not compile or
    /// break a compatibility mode: a host does not start with a contract it cannot keep.
    pub fn open(dir: &Path, policy: ValidationConfig) -> Result<Self, ContractError> {
        let set = Set::load(dir)?;
        compat::check_set(&set).map_err(ContractError::Incompatible)?;
        Ok(Self::with(Some(dir.to_path_buf()), policy, set))
    }

    /// A registry holding `set` (no directory: [`Registry::reload`] keeps it).
    pub fn with(dir: Option<PathBuf>, policy: ValidationConfig, set: Set) -> Self {
        Self { dir, policy, active: RwLock::new(Arc::new(set)), refused: Mutex::new(None) }
    }

    /// The registry the configuration asks for: `None` without `schemas`.
    pub fn from_config(config: &crate::config::Config) -> Result<Option<Arc<Self>>, ContractError> {
        match &config.schemas {
            None => Ok(None),
            Some(dir) => Ok(Some(Arc::new(Self::open(dir, config.validation.clone())?))),
        }
    }

    /// The directory it reads, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The active set.
    pub fn active(&self) -> Arc<Set> {
        self.active.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Why the directory's newest contents were refused, if they are.
    pub fn refused(&self) -> Option<String> {
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Read the directory again and make it the active set, or refuse it (the active set
    /// stays) with the reason, which is also logged.
    pub fn reload(&self) -> Result<(), ContractError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let result = Set::load(dir).and_then(|set| {
            compat::check_set(&set).map_err(ContractError::Incompatible)?;
            Ok(set)
        });
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(set) => {
                tracing::info!(dir = %dir.display(), schemas = set.len(), "schema set reloaded");
                *self.active.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
                *refused = None;
                Ok(())
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), "schema set refused; the active set stays: {e}");
                *refused = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// The validation mode of `event_type`: `[validation.types]`, else its `contract.toml`,
    /// else `validation.mode`.
    pub fn mode(&self, set: &Set, event_type: &str) -> ValidationMode {
        self.policy
            .types
            .get(event_type)
            .copied()
            .or_else(|| set.get(event_type).and_then(|t| t.contract.validation))
            .unwrap_or(self.policy.mode)
    }

    /// Check `event` against its schema under its type's mode: `Err` only when the mode
    /// enforces it (a `warn` type's failure is logged and passes).
    pub fn validate(&self, event: &Event) -> Result<(), Invalid> {
        let set = self.active();
        let mode = self.mode(&set, &event.event_type);
        if mode == ValidationMode::Off {
            return Ok(());
        }
        match set.check(event, self.policy.refuse_unknown) {
            Ok(()) => Ok(()),
            Err(invalid) if mode == ValidationMode::Warn => {
                tracing::warn!(event_id = %crate::redact::escape(&event.id), "event passes under validation mode warn: {invalid}");
                Ok(())
            }
            Err(invalid) => Err(invalid),
        }
    }

    /// What a producer's path calls: [`Registry::validate`], then `dataschema` filled with
    /// the schema's URI when the producer left it empty.
    pub fn prepare(&self, event: &mut Event) -> Result<(), Invalid> {
        self.validate(event)?;
        if event.dataschema.as_deref().is_none_or(str::is_empty)
            && let Some(schema) = self.active().schema(&event.event_type, event.schemaversion)
        {
            event.dataschema = Some(schema.uri.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
