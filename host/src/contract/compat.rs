//! Compatibility between the versions of an event type, decided on what each accepts.
//!
//! "Version B accepts every payload version A accepts" is a question about two sets of JSON
//! values, and the `jsonschema` crate's (experimental) canonical form can answer it:
//! `covers` proves it (`Yes`), refutes it with a value (`No`), or cannot tell (`Unknown`:
//! `if`/`then`, `unevaluated*`, some patterns). Only where it cannot tell do the structural
//! rules below decide, and every such pair is reported as decided structurally. That is
//! what a structural diff alone gets wrong: an enum widened or a `maximum` raised is a
//! backward-compatible change, a schema rewritten with `$defs` and `allOf` is no change at
//! all, and an optional property added to an open schema is forward-compatible but not
//! backward (an old producer could have sent any value under that name).
//!
//! Modes: `backward` (the new version accepts everything the previous accepted: consumers
//! may move first), `forward` (the previous accepts everything the new one does: producers
//! may move first), `full` (both), each against the previous version only or, `-transitive`,
//! against every earlier version; `none` checks nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use jsonschema::canonical::{CanonicalSchema, Containment};
use serde::Serialize;
use serde_json::Value;

pub use super::mode::Compatibility;
use super::set::{Retriever, Set};

/// How a pair of versions was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// On the sets of payloads (proved or refuted by the canonical form).
    Set,
    /// By the structural rules: the canonical form could not decide.
    Structural,
}

/// One way a version breaks its type's compatibility mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Event type.
    pub event_type: String,
    /// The version whose payloads must be accepted.
    pub accepted: u32,
    /// The version that must accept them.
    pub by: u32,
    /// JSON Pointer into the schemas where the difference is (best effort; `""`: the root).
    pub path: String,
    /// What differs.
    pub reason: String,
    /// How it was decided.
    pub method: Method,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() { "(root)" } else { &self.path };
        let how = match self.method {
            Method::Set => "",
            Method::Structural => " [structural rule: undecidable on sets]",
        };
        if self.accepted == self.by {
            return write!(f, "{}@{} against the base, at {path}: {}{how}", self.event_type, self.by, self.reason);
        }
        write!(
            f,
            "{}@{} does not accept every payload {}@{} accepts, at {path}: {}{how}",
            self.event_type, self.by, self.event_type, self.accepted, self.reason
        )
    }
}

/// The documents of one type as a check sees them: version -> (URI, document).
pub type Versions = BTreeMap<u32, (String, Value)>;

/// What checking one type found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    /// What breaks the mode.
    pub violations: Vec<Violation>,
    /// Pairs `(accepted, by)` decided by the structural rules.
    pub structural: Vec<(String, u32, u32)>,
}

fn versions_of(t: &super::TypeContract) -> Versions {
    t.versions.iter().map(|(v, s)| (*v, (s.uri.clone(), s.document.clone()))).collect()
}

/// Check every type of `set` against its mode.
pub fn check_set(set: &Set) -> Result<(), Vec<Violation>> {
    let violations = report(set).violations;
    if violations.is_empty() { Ok(()) } else { Err(violations) }
}

/// What checking every type of `set` against its mode found.
pub fn report(set: &Set) -> Report {
    let mut out = Report::default();
    for (name, t) in set.types() {
        let found = check_type(name, t.contract.compatibility, &versions_of(t), &set.documents);
        out.violations.extend(found.violations);
        out.structural.extend(found.structural);
    }
    out
}

/// What `current` breaks of `base` (the schemas already published): a version removed (its
/// producers and stored events still exist), or changed in place in a way its type's mode
/// refuses (the changed version is checked against what it was, as if it were the next one).
/// `$ref` resolves in `current`.
pub fn against_base(base: &Set, current: &Set) -> Report {
    let mut out = Report::default();
    for (name, old) in base.types() {
        let now = current.get(name);
        let mode = now.map_or(old.contract.compatibility, |t| t.contract.compatibility);
        for (version, was) in &old.versions {
            let violation = |path: String, reason: String, method| Violation {
                event_type: name.clone(),
                accepted: *version,
                by: *version,
                path,
                reason,
                method,
            };
            let Some(is) = now.and_then(|t| t.versions.get(version)) else {
                let reason = "the version was removed; producers and stored events may still use it".to_string();
                out.violations.push(violation(String::new(), reason, Method::Structural));
                continue;
            };
            if is.document == was.document || mode == Compatibility::None {
                continue;
            }
            let (was, is) = ((was.uri.clone(), was.document.clone()), (is.uri.clone(), is.document.clone()));
            let mut pairs = Vec::new();
            if mode.backward() {
                pairs.push((&is, &was, "it was changed in place and refuses payloads it accepted"));
            }
            if mode.forward() {
                pairs.push((&was, &is, "it was changed in place and accepts payloads it refused"));
            }
            for (wide, narrow, what) in pairs {
                let (found, method) = accepts_all(wide, narrow, &current.documents);
                if method == Method::Structural {
                    out.structural.push((name.clone(), *version, *version));
                }
                for (path, reason) in found {
                    out.violations.push(violation(path, format!("{what}: {reason}"), method));
                }
            }
        }
    }
    out
}

/// Check the versions of `event_type` against `mode`; `documents` resolve `$ref`.
pub fn check_type(
    event_type: &str,
    mode: Compatibility,
    versions: &Versions,
    documents: &Arc<BTreeMap<String, Value>>,
) -> Report {
    let mut report = Report::default();
    let order: Vec<u32> = versions.keys().copied().collect();
    for (k, newer) in order.iter().enumerate().skip(1) {
        let earlier: &[u32] = if mode.transitive() { &order[..k] } else { &order[k - 1..k] };
        for older in earlier {
            let mut pairs = Vec::new();
            if mode.backward() {
                pairs.push((*older, *newer));
            }
            if mode.forward() {
                pairs.push((*newer, *older));
            }
            for (accepted, by) in pairs {
                let (Some(narrow), Some(wide)) = (versions.get(&accepted), versions.get(&by)) else { continue };
                let (found, method) = accepts_all(wide, narrow, documents);
                if method == Method::Structural {
                    report.structural.push((event_type.to_string(), accepted, by));
                }
                report.violations.extend(found.into_iter().map(|(path, reason)| Violation {
                    event_type: event_type.to_string(),
                    accepted,
                    by,
                    path,
                    reason,
                    method,
                }));
            }
        }
    }
    report
}

fn canonical(uri: &str, document: &Value, documents: &Arc<BTreeMap<String, Value>>) -> Option<CanonicalSchema> {
    jsonschema::canonical::options()
        .with_base_uri(uri.to_string())
        .with_retriever(Retriever(documents.clone()))
        .canonicalize(document)
        .ok()
}

/// Whether `wide` accepts every payload `narrow` accepts: the differences found (path,
/// reason; none: it does) and how that was decided.
pub fn accepts_all(
    wide: &(String, Value),
    narrow: &(String, Value),
    documents: &Arc<BTreeMap<String, Value>>,
) -> (Vec<(String, String)>, Method) {
    let decided = canonical(&wide.0, &wide.1, documents)
        .zip(canonical(&narrow.0, &narrow.1, documents))
        .and_then(|(w, n)| Some((w.covers(&n).ok()?, w, n)));
    let mut structural = Vec::new();
    differences(&wide.1, &narrow.1, "", &mut structural);
    match decided {
        Some((Containment::Yes, ..)) => (Vec::new(), Method::Set),
        Some((Containment::No, w, n)) => {
            let example = n
                .subtract(&w)
                .ok()
                .map(|d| format!(" (for example, payloads matching {})", shown(&d.to_json_schema().to_string())))
                .unwrap_or_default();
            let found = if structural.is_empty() {
                vec![(String::new(), format!("some payloads are refused{example}"))]
            } else {
                // The example once, on the first difference.
                let mut found = structural;
                found[0].1.push_str(&example);
                found
            };
            (found, Method::Set)
        }
        _ => (structural, Method::Structural),
    }
}

/// Text from a schema for a message: control characters escaped, cut at 300 bytes.
fn shown(text: &str) -> String {
    let cut = crate::redact::truncate(text, 300);
    let more = if cut.len() < text.len() { "..." } else { "" };
    format!("{}{more}", crate::redact::printable(cut))
}

fn object(v: &Value) -> Option<&serde_json::Map<String, Value>> {
    v.as_object()
}

fn types(v: &Value) -> Option<Vec<String>> {
    match v.get("type")? {
        Value::String(t) => Some(vec![t.clone()]),
        Value::Array(a) => Some(a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect()),
        _ => None,
    }
}

/// The structural rules: where `wide` may refuse what `narrow` accepts, keyword by keyword
/// (the fallback where the sets cannot be compared; it reads `properties`, `required`,
/// `additionalProperties`, `items`, `type`, `enum`, `const` and the numeric, length, count and
/// pattern bounds, and treats a keyword it does not know that differs as a difference).
pub fn differences(wide: &Value, narrow: &Value, path: &str, out: &mut Vec<(String, String)>) {
    if wide == narrow || wide == &Value::Bool(true) || narrow == &Value::Bool(false) {
        return;
    }
    let (Some(w), Some(n)) = (object(wide), object(narrow)) else {
        out.push((path.into(), "the schema changed from or to a boolean schema".into()));
        return;
    };
    if w.is_empty() {
        return;
    }
    let at = |key: &str| format!("{path}/{key}");
    values(wide, narrow, path, out);
    bounds(w, n, path, out);
    let wr: Vec<&str> =
        w.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let nr: Vec<&str> =
        n.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    for name in wr.iter().filter(|r| !nr.contains(r)) {
        out.push((at("required"), format!("property `{name}` is required now")));
    }
    properties(w, n, path, out);
    if let (Some(wi), Some(ni)) = (w.get("items"), n.get("items")) {
        differences(wi, ni, &at("items"), out);
    } else if let Some(wi) = w.get("items") {
        differences(wi, &Value::Bool(true), &at("items"), out);
    }
    let known = [
        "type",
        "enum",
        "const",
        "required",
        "properties",
        "additionalProperties",
        "items",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "pattern",
        "$schema",
        "$id",
        "title",
        "description",
        "examples",
        "default",
        "$comment",
        "format",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$defs",
        "definitions",
    ];
    for (key, value) in w.iter().filter(|(k, _)| !known.contains(&k.as_str())) {
        if n.get(key) != Some(value) {
            out.push((at(key), format!("`{key}` changed and the structural rules cannot tell what it accepts")));
        }
    }
}

/// `type`, `enum` and `const`.
fn values(wide: &Value, narrow: &Value, path: &str, out: &mut Vec<(String, String)>) {
    let (Some(w), Some(n)) = (object(wide), object(narrow)) else { return };
    let at = |key: &str| format!("{path}/{key}");
    if let Some(wt) = types(wide) {
        let nt = types(narrow).unwrap_or_else(|| vec!["any".into()]);
        let covered = |t: &String| wt.contains(t) || (t == "integer" && wt.iter().any(|x| x == "number"));
        if let Some(t) = nt.iter().find(|t| !covered(t)) {
            out.push((at("type"), format!("type {t} is no longer accepted")));
        }
    }
    if let Some(Value::Array(we)) = w.get("enum") {
        match n.get("enum") {
            Some(Value::Array(ne)) => {
                for value in ne.iter().filter(|v| !we.contains(v)) {
                    out.push((at("enum"), format!("enum value {value} is no longer accepted")));
                }
            }
            _ => out.push((at("enum"), "an enum now restricts values that were free".into())),
        }
    }
    if let Some(c) = w.get("const")
        && n.get("const") != Some(c)
    {
        out.push((at("const"), format!("only {c} is accepted now")));
    }
}

/// Numeric, length and count bounds, and `pattern`.
fn bounds(
    w: &serde_json::Map<String, Value>,
    n: &serde_json::Map<String, Value>,
    path: &str,
    out: &mut Vec<(String, String)>,
) {
    let uppers = ["maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"];
    let lowers = ["minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"];
    for (keys, upper) in [(&uppers[..], true), (&lowers[..], false)] {
        for key in keys {
            let Some(wb) = w.get(*key).and_then(Value::as_f64) else { continue };
            match n.get(*key).and_then(Value::as_f64) {
                Some(nb) if (upper && nb <= wb) || (!upper && nb >= wb) => {}
                Some(nb) => out.push((format!("{path}/{key}"), format!("`{key}` went from {nb} to {wb}"))),
                None => out.push((format!("{path}/{key}"), format!("`{key}` {wb} is new"))),
            }
        }
    }
    if let Some(p) = w.get("pattern")
        && n.get("pattern") != Some(p)
    {
        out.push((format!("{path}/pattern"), format!("pattern {p} is new or changed")));
    }
}

/// `properties` and `additionalProperties`: each property `wide` constrains against what
/// `narrow` accepted under that name.
fn properties(
    w: &serde_json::Map<String, Value>,
    n: &serde_json::Map<String, Value>,
    path: &str,
    out: &mut Vec<(String, String)>,
) {
    let empty = serde_json::Map::new();
    let wp = w.get("properties").and_then(Value::as_object).unwrap_or(&empty);
    let np = n.get("properties").and_then(Value::as_object).unwrap_or(&empty);
    let n_extra = n.get("additionalProperties").cloned().unwrap_or(Value::Bool(true));
    let w_extra = w.get("additionalProperties").cloned().unwrap_or(Value::Bool(true));
    for (name, ws) in wp {
        let at = format!("{path}/properties/{name}");
        match np.get(name) {
            Some(ns) => differences(ws, ns, &at, out),
            None if n_extra == Value::Bool(false) => {}
            None => {
                let before = out.len();
                differences(ws, &n_extra, &at, out);
                if out.len() > before {
                    out.truncate(before);
                    out.push((at, format!("property `{name}` is new with constraints, where any value was accepted")));
                }
            }
        }
    }
    for (name, ns) in np.iter().filter(|(k, _)| !wp.contains_key(*k)) {
        let before = out.len();
        differences(&w_extra, ns, &format!("{path}/additionalProperties"), out);
        if out.len() > before {
            out.truncate(before);
            out.push((
                format!("{path}/properties/{name}"),
                format!("property `{name}` was removed and is not accepted any more"),
            ));
        }
    }
    if w_extra != n_extra && np.is_empty() && wp.is_empty() {
        differences(&w_extra, &n_extra, &format!("{path}/additionalProperties"), out);
    } else if w_extra == Value::Bool(false) && n_extra != Value::Bool(false) {
        out.push((format!("{path}/additionalProperties"), "other properties are refused now".into()));
    }
}
