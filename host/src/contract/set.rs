//! A schema directory read and compiled: every `TYPE/VERSION.json` with its validator, every
//! `TYPE/contract.toml`, and the retriever that lets `$ref` reach the other schemas of the
//! directory and nothing else.
//!
//! A set is built whole or not at all, so the active set is never half a directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::mode::Compatibility;
use super::{ContractError, Error, Invalid, MAX_ERRORS};
use crate::config::ValidationMode;
use crate::event::Event;

/// Largest schema or contract file read.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// A type's `contract.toml`.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Contract {
    /// How versions of the type must relate. Default `backward-transitive`.
    pub compatibility: Compatibility,
    /// The team or person who owns the type.
    pub owner: Option<String>,
    /// What the event means.
    pub description: Option<String>,
    /// The validation mode of the type (under `[validation.types]` in the host file).
    pub validation: Option<ValidationMode>,
}

/// One compiled schema.
pub struct Schema {
    /// Event type.
    pub event_type: String,
    /// Schema version (the event's `schemaversion`).
    pub version: u32,
    /// Its URI: its `$id`, else `ferry://schemas/TYPE/VERSION.json`; what `dataschema` is
    /// filled with.
    pub uri: String,
    /// The document as written.
    pub document: Value,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema").field("event_type", &self.event_type).field("version", &self.version).finish()
    }
}

impl Schema {
    /// The errors of `payload` against this schema, the first [`MAX_ERRORS`].
    pub fn errors(&self, payload: &Value) -> Vec<Error> {
        self.validator
            .iter_errors(payload)
            .take(MAX_ERRORS)
            .map(|e| Error {
                instance_path: e.instance_path().as_str().to_string(),
                keyword: e.kind().keyword().to_string(),
                message: crate::redact::printable(crate::redact::truncate(&e.to_string(), 300)).into_owned(),
            })
            .collect()
    }

    /// `type@version`.
    pub fn name(&self) -> String {
        super::name(&self.event_type, self.version)
    }
}

/// The versions of one event type.
#[derive(Debug, Default)]
pub struct TypeContract {
    /// Its `contract.toml` (defaults without one).
    pub contract: Contract,
    /// Schemas by version.
    pub versions: BTreeMap<u32, Schema>,
}

/// A compiled schema directory.
#[derive(Debug, Default)]
pub struct Set {
    types: BTreeMap<String, TypeContract>,
    /// Every document by URI (for `$ref` and for canonicalizing in compatibility checks).
    pub(crate) documents: Arc<BTreeMap<String, Value>>,
}

/// The URI of a schema without an `$id`.
pub fn default_uri(event_type: &str, version: u32) -> String {
    format!("ferry://schemas/{event_type}/{version}.json")
}

/// Resolves `$ref` to the documents of one directory, and refuses everything else.
#[derive(Clone)]
pub(crate) struct Retriever(pub(crate) Arc<BTreeMap<String, Value>>);

impl jsonschema::Retrieve for Retriever {
    fn retrieve(&self, uri: &jsonschema::Uri<String>) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let text = uri.as_str();
        let bare = text.split('#').next().unwrap_or(text);
        self.0.get(bare).cloned().ok_or_else(|| format!("`{bare}` is not a schema of the registry").into())
    }
}

fn read_capped(path: &Path) -> Result<String, ContractError> {
    use std::io::Read as _;
    let read = |source| ContractError::Read { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text).map_err(read)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(ContractError::File { path: path.into(), reason: format!("larger than {MAX_FILE_BYTES} bytes") });
    }
    Ok(text)
}

fn entries(dir: &Path) -> Result<Vec<PathBuf>, ContractError> {
    let read = |source| ContractError::Read { path: dir.to_path_buf(), source };
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| !n.starts_with('.')))
        .collect();
    out.sort();
    Ok(out)
}

/// The documents of one type directory: its contract and its versions.
fn read_type(dir: &Path) -> Result<(Contract, BTreeMap<u32, Value>), ContractError> {
    let mut contract = Contract::default();
    let mut versions = BTreeMap::new();
    for path in entries(dir)? {
        let file = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let bad = |reason: String| ContractError::File { path: path.clone(), reason };
        if file == "contract.toml" {
            contract = toml::from_str(&read_capped(&path)?).map_err(|e| bad(e.message().to_string()))?;
            continue;
        }
        let Some(stem) = file.strip_suffix(".json") else { continue };
        let version: u32 =
            stem.parse().map_err(|_| bad("a schema file is named VERSION.json (1.json, 2.json, ...)".into()))?;
        let document: Value = serde_json::from_str(&read_capped(&path)?).map_err(|e| bad(format!("not JSON: {e}")))?;
        if !matches!(document, Value::Object(_) | Value::Bool(_)) {
            return Err(bad("a schema is a JSON object or boolean".into()));
        }
        versions.insert(version, document);
    }
    Ok((contract, versions))
}

impl Set {
    /// Read and compile every schema under `dir`.
    pub fn load(dir: &Path) -> Result<Self, ContractError> {
        let mut raw = BTreeMap::new();
        for path in entries(dir)? {
            if !path.is_dir() {
                continue;
            }
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            raw.insert(name, read_type(&path)?);
        }
        Self::build(raw)
    }

    /// Compile documents given by type: `(contract, version -> document)`.
    pub fn build(raw: BTreeMap<String, (Contract, BTreeMap<u32, Value>)>) -> Result<Self, ContractError> {
        let mut documents = BTreeMap::new();
        for (event_type, (_, versions)) in &raw {
            for (version, document) in versions {
                documents.insert(uri_of(event_type, *version, document), document.clone());
            }
        }
        let documents = Arc::new(documents);
        let mut types = BTreeMap::new();
        for (event_type, (contract, versions)) in raw {
            let mut compiled = BTreeMap::new();
            for (version, document) in versions {
                let uri = uri_of(&event_type, version, &document);
                let validator = jsonschema::options()
                    .with_base_uri(uri.clone())
                    .with_retriever(Retriever(documents.clone()))
                    .build(&document)
                    .map_err(|e| ContractError::Compile {
                        schema: super::name(&event_type, version),
                        reason: e.to_string(),
                    })?;
                compiled.insert(version, Schema { event_type: event_type.clone(), version, uri, document, validator });
            }
            types.insert(event_type, TypeContract { contract, versions: compiled });
        }
        Ok(Self { types, documents })
    }

    /// The versions of `event_type`.
    pub fn get(&self, event_type: &str) -> Option<&TypeContract> {
        self.types.get(event_type)
    }

    /// Every type, by name.
    pub fn types(&self) -> impl Iterator<Item = (&String, &TypeContract)> {
        self.types.iter()
    }

    /// The schema of `event_type@version`.
    pub fn schema(&self, event_type: &str, version: u32) -> Option<&Schema> {
        self.types.get(event_type)?.versions.get(&version)
    }

    /// How many schemas it holds.
    pub fn len(&self) -> usize {
        self.types.values().map(|t| t.versions.len()).sum()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Check `event` against its schema, whatever the mode. Without one: passes unless
    /// `refuse_unknown`.
    pub fn check(&self, event: &Event, refuse_unknown: bool) -> Result<(), Invalid> {
        let schema_name = || super::name(&event.event_type, event.schemaversion);
        let Some(schema) = self.schema(&event.event_type, event.schemaversion) else {
            return if refuse_unknown { Err(Invalid::Unknown { schema: schema_name() }) } else { Ok(()) };
        };
        if !crate::event::is_json(&event.datacontenttype) {
            let reason = format!("datacontenttype is {}", crate::redact::escape(&event.datacontenttype));
            return Err(Invalid::NotJson { schema: schema_name(), reason });
        }
        let payload: Value = serde_json::from_slice(&event.data)
            .map_err(|e| Invalid::NotJson { schema: schema_name(), reason: e.to_string() })?;
        let errors = schema.errors(&payload);
        if errors.is_empty() { Ok(()) } else { Err(Invalid::Schema { schema: schema_name(), errors }) }
    }
}

/// A document's URI: its `$id` (absolute), else the default one.
fn uri_of(event_type: &str, version: u32, document: &Value) -> String {
    match document.get("$id").and_then(Value::as_str) {
        Some(id) if id.contains(':') => id.split('#').next().unwrap_or(id).to_string(),
        _ => default_uri(event_type, version),
    }
}
