//! Documents generated from the registry: an AsyncAPI 3.0 document and a catalog page per
//! event type, so the contracts teams read are the ones the host enforces.
//!
//! AsyncAPI: each stream is a channel; each `type@version` a message (`TYPE.vVERSION`) with
//! the CloudEvents attributes as its headers schema and its schema as payload; each
//! subscriber's subscriptions are receive operations, each publish grant a send operation.
//! The payload schemas are the registry's, with every `$ref` inlined (the AsyncAPI document
//! resolves `#` against itself) and labelled `draft-07`, the latest JSON Schema the AsyncAPI
//! tooling knows; the authoritative 2020-12 document is served per version
//! (`/api/schemas/TYPE/VERSION`, [`schema_document`]).
//!
//! Who takes part comes from the caller as [`Party`] values (the running host's subscribers
//! for the admin endpoint, the configuration for `ferry schemas docs`): this module reads no
//! plugin.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use super::set::{Retriever, Schema, Set};
use super::{compat, name};

/// A subscriber as the documents show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Party {
    /// Subscriber (plugin) name.
    pub name: String,
    /// Its subscriptions: (stream, type pattern with an optional trailing `*`, accepted
    /// versions; empty: all).
    pub receives: Vec<(String, String, Vec<u32>)>,
    /// Streams it may publish follow-ups to.
    pub sends: Vec<String>,
}

/// Whether `pattern` (a trailing `*` is a prefix match) names `event_type`.
fn matches(pattern: &str, event_type: &str) -> bool {
    pattern.strip_suffix('*').map_or(pattern == event_type, |prefix| event_type.starts_with(prefix))
}

/// An identifier AsyncAPI accepts as a component or channel key.
fn key(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect()
}

fn message_key(schema: &Schema) -> String {
    key(&format!("{}.v{}", schema.event_type, schema.version))
}

/// The CloudEvents attributes of `schema`'s events, as stream fields (strings).
fn headers(schema: &Schema) -> Value {
    let text = json!({"type": "string"});
    json!({
        "type": "object",
        "description": "CloudEvents 1.0 attributes, one stream field each (docs/contracts.md)",
        "properties": {
            "id": text, "source": text, "specversion": {"const": "1.0"},
            "type": {"const": schema.event_type},
            "time": {"type": "string", "format": "date-time"},
            "datacontenttype": {"type": "string", "default": "application/json"},
            "schemaversion": {"const": schema.version.to_string()},
            "dataschema": {"type": "string", "default": schema.uri},
            "subject": text, "correlationid": text, "causationid": text, "partitionkey": text, "traceparent": text
        },
        "required": ["id", "source", "specversion", "type", "time"]
    })
}

/// `schema` with every `$ref` inlined and the keywords that would tie it to another document
/// removed; as written when it cannot be inlined (a recursive schema).
fn inlined(set: &Set, schema: &Schema) -> Value {
    let mut value = jsonschema::options()
        .with_base_uri(schema.uri.clone())
        .with_retriever(Retriever(set.documents.clone()))
        .dereference(&schema.document)
        .unwrap_or_else(|_| schema.document.clone());
    if let Value::Object(map) = &mut value {
        for k in ["$schema", "$id", "$defs", "definitions"] {
            map.remove(k);
        }
    }
    value
}

fn message(set: &Set, schema: &Schema) -> Value {
    let contract = set.get(&schema.event_type).map(|t| &t.contract);
    let mut m = json!({
        "name": schema.event_type,
        "title": name(&schema.event_type, schema.version),
        "contentType": crate::event::JSON,
        "headers": headers(schema),
        "payload": {"schemaFormat": "application/schema+json;version=draft-07", "schema": inlined(set, schema)},
        "x-ferry-dataschema": schema.uri,
    });
    if let Some(description) = contract.and_then(|c| c.description.clone()) {
        m["summary"] = description.into();
    }
    if let Some(owner) = contract.and_then(|c| c.owner.clone()) {
        m["x-ferry-owner"] = owner.into();
    }
    m
}

/// The streams each type is read from (by some subscription), else `default_stream`.
fn streams_of(set: &Set, parties: &[Party], default_stream: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut channels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in parties {
        for s in &p.sends {
            channels.entry(s.clone()).or_default();
        }
    }
    for (t, _) in set.types() {
        let read: Vec<&String> =
            parties.iter().flat_map(|p| &p.receives).filter(|(_, pat, _)| matches(pat, t)).map(|(s, ..)| s).collect();
        if read.is_empty() {
            channels.entry(default_stream.to_string()).or_default().insert(t.clone());
        }
        for stream in read {
            channels.entry(stream.clone()).or_default().insert(t.clone());
        }
    }
    channels
}

/// The AsyncAPI 3.0 document of `set`, with `parties`' operations; types no subscription
/// reads are shown on `default_stream`.
pub fn asyncapi(set: &Set, parties: &[Party], default_stream: &str) -> Value {
    let mut messages = Map::new();
    let mut channels = Map::new();
    let streams = streams_of(set, parties, default_stream);
    for (stream, types) in &streams {
        let mut refs = Map::new();
        for schema in types.iter().filter_map(|t| set.get(t)).flat_map(|t| t.versions.values()) {
            let k = message_key(schema);
            messages.insert(k.clone(), message(set, schema));
            refs.insert(k.clone(), json!({"$ref": format!("#/components/messages/{k}")}));
        }
        channels.insert(key(stream), json!({"address": stream, "title": format!("stream {stream}"), "messages": refs}));
    }
    let mut operations = Map::new();
    for p in parties {
        for (stream, pattern, versions) in &p.receives {
            let refs: Vec<Value> = streams
                .get(stream)
                .into_iter()
                .flatten()
                .filter(|t| matches(pattern, t))
                .filter_map(|t| set.get(t))
                .flat_map(|t| t.versions.values())
                .filter(|s| versions.is_empty() || versions.contains(&s.version))
                .map(|s| json!({"$ref": format!("#/channels/{}/messages/{}", key(stream), message_key(s))}))
                .collect();
            let id = key(&format!("{}.receive.{stream}.{pattern}", p.name));
            let summary = format!("{} handles {pattern} from {stream}", p.name);
            let op = json!({"action": "receive", "channel": {"$ref": format!("#/channels/{}", key(stream))}, "summary": summary, "messages": refs});
            operations.insert(id, op);
        }
        for stream in &p.sends {
            let id = key(&format!("{}.send.{stream}", p.name));
            let summary = format!("{} may publish follow-ups to {stream}", p.name);
            operations.insert(id, json!({"action": "send", "channel": {"$ref": format!("#/channels/{}", key(stream))}, "summary": summary}));
        }
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {"title": "ferry event contracts", "version": version(set), "description": "Generated from the schema registry by ferry (docs/contracts.md)."},
        "defaultContentType": crate::event::JSON,
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages}
    })
}

/// A version string of the set's contents: the same documents give the same string.
fn version(set: &Set) -> String {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    for (uri, doc) in set.documents.iter() {
        hash.update(uri.as_bytes());
        hash.update(doc.to_string().as_bytes());
    }
    let hex: String = hash.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("0.0.0+{hex}")
}

/// The schema of `event_type@version` as written (what `/api/schemas/TYPE/VERSION` serves).
pub fn schema_document(set: &Set, event_type: &str, version: u32) -> Option<Value> {
    set.schema(event_type, version).map(|s| s.document.clone())
}

/// The catalog page (Markdown) of `event_type`: owner, description, mode, versions, what
/// changed between them, who produces and who subscribes.
pub fn catalog(set: &Set, parties: &[Party], event_type: &str) -> Option<String> {
    let t = set.get(event_type)?;
    let mut page = format!("# {event_type}\n\n");
    if let Some(d) = &t.contract.description {
        let _ = writeln!(page, "{d}\n");
    }
    let owner = t.contract.owner.as_deref().unwrap_or("(not set)");
    let _ = writeln!(page, "- owner: {owner}\n- compatibility: `{}`\n", t.contract.compatibility.as_str());
    let _ = writeln!(page, "## Versions\n\n| version | schema |\n|---|---|");
    for s in t.versions.values() {
        let _ = writeln!(page, "| {} | `{}` |", s.version, s.uri);
    }
    let pairs: Vec<(&Schema, &Schema)> = t.versions.values().zip(t.versions.values().skip(1)).collect();
    if !pairs.is_empty() {
        let _ = writeln!(page, "\n## What changed");
    }
    for (old, new) in pairs {
        let _ = writeln!(page, "\n### {} → {}\n", old.version, new.version);
        let one = |wide: &Schema, narrow: &Schema| {
            compat::accepts_all(
                &(wide.uri.clone(), wide.document.clone()),
                &(narrow.uri.clone(), narrow.document.clone()),
                &set.documents,
            )
        };
        let (refused, _) = one(new, old);
        let (accepted, _) = one(old, new);
        let verdict = |found: &[(String, String)]| if found.is_empty() { "yes" } else { "no" };
        let _ =
            writeln!(page, "- v{} reads every v{} payload (backward): {}", new.version, old.version, verdict(&refused));
        let _ =
            writeln!(page, "- v{} reads every v{} payload (forward): {}", old.version, new.version, verdict(&accepted));
        let labelled = refused.iter().map(|f| (new.version, f)).chain(accepted.iter().map(|f| (old.version, f)));
        for (by, (path, reason)) in labelled {
            let path = if path.is_empty() { "(root)" } else { path };
            let _ = writeln!(page, "- refused by v{by} at `{path}`: {reason}");
        }
    }
    let readers: Vec<String> = parties
        .iter()
        .flat_map(|p| p.receives.iter().map(move |r| (p, r)))
        .filter(|(_, (_, pattern, _))| matches(pattern, event_type))
        .map(|(p, (stream, _, versions))| {
            let v = if versions.is_empty() { "all versions".to_string() } else { format!("versions {versions:?}") };
            format!("- {} (stream `{stream}`, {v})", p.name)
        })
        .collect();
    let streams: BTreeSet<&String> = parties
        .iter()
        .flat_map(|p| &p.receives)
        .filter(|(_, pat, _)| matches(pat, event_type))
        .map(|(s, ..)| s)
        .collect();
    let writers: Vec<String> = parties
        .iter()
        .filter(|p| p.sends.iter().any(|s| streams.contains(s)))
        .map(|p| format!("- {} (follow-ups)", p.name))
        .collect();
    let none = || "- (none known to this host)".to_string();
    let _ = writeln!(
        page,
        "\n## Who produces\n\nApplications through `ferry::outbox`, `ferry publish` or the relay; plugins granted its streams:\n\n{}",
        if writers.is_empty() { none() } else { writers.join("\n") }
    );
    let _ = writeln!(page, "\n## Who subscribes\n\n{}", if readers.is_empty() { none() } else { readers.join("\n") });
    Some(page)
}

/// The catalog's index page: one line per type with its newest version.
pub fn index(set: &Set) -> String {
    let mut page = "# Event catalog\n\n| type | versions | owner |\n|---|---|---|\n".to_string();
    for (t, c) in set.types() {
        let versions: Vec<String> = c.versions.keys().map(u32::to_string).collect();
        let owner = c.contract.owner.as_deref().unwrap_or("");
        let _ = writeln!(page, "| [{t}]({}.md) | {} | {owner} |", key(t), versions.join(", "));
    }
    page
}

/// The file name of `event_type`'s catalog page.
pub fn page_name(event_type: &str) -> String {
    format!("{}.md", key(event_type))
}
