//! The registry's unit tests: loading, validation, modes, and compatibility on the cases that
//! fool structural diffs.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use super::*;
use crate::config::{ValidationConfig, ValidationMode};

/// Write `schemas` (`(type, version, document)`) and contracts (`(type, toml)`) under `dir`.
pub(crate) fn write(dir: &Path, schemas: &[(&str, u32, Value)], contracts: &[(&str, &str)]) {
    for (t, v, doc) in schemas {
        std::fs::create_dir_all(dir.join(t)).expect("mkdir");
        std::fs::write(dir.join(t).join(format!("{v}.json")), doc.to_string()).expect("write schema");
    }
    for (t, text) in contracts {
        std::fs::create_dir_all(dir.join(t)).expect("mkdir");
        std::fs::write(dir.join(t).join("contract.toml"), text).expect("write contract");
    }
}

fn order_v1() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {"order_id": {"type": "string"}, "amount": {"type": "integer", "minimum": 0}},
        "required": ["order_id", "amount"]
    })
}

fn event(t: &str, v: u32, data: Value) -> Event {
    let mut e = Event::new(t, "tests", data.to_string());
    e.schemaversion = v;
    e
}

#[test]
fn an_invalid_payload_names_path_keyword_and_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), &[("OrderCreated", 1, order_v1())], &[]);
    let registry = Registry::open(dir.path(), ValidationConfig::default()).expect("loads");
    assert!(registry.validate(&event("OrderCreated", 1, json!({"order_id": "o", "amount": 3}))).is_ok());
    let err = registry.validate(&event("OrderCreated", 1, json!({"order_id": "o", "amount": -1}))).unwrap_err();
    let Invalid::Schema { schema, errors } = &err else { panic!("schema error: {err}") };
    assert_eq!(schema, "OrderCreated@1");
    assert_eq!((errors[0].instance_path.as_str(), errors[0].keyword.as_str()), ("/amount", "minimum"));
    assert!(err.to_string().contains("at /amount (minimum)"), "{err}");
    let missing = registry.validate(&event("OrderCreated", 1, json!({"amount": 1}))).unwrap_err();
    assert!(missing.to_string().contains("(required)"), "{missing}");
}

#[test]
fn modes_and_unknown_types_are_applied_per_type() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        &[("OrderCreated", 1, order_v1()), ("Loose", 1, json!({"type": "object"}))],
        &[("Loose", "validation = \"warn\"\n")],
    );
    let bad = |t: &str| event(t, 1, json!([]));
    let registry = Registry::open(dir.path(), ValidationConfig::default()).expect("loads");
    assert!(registry.validate(&bad("OrderCreated")).is_err());
    assert!(registry.validate(&bad("Loose")).is_ok(), "contract.toml says warn");
    assert!(registry.validate(&bad("Unknown")).is_ok(), "no schema: passes");
    assert!(registry.validate(&event("OrderCreated", 9, json!(1))).is_ok(), "no schema for that version");
    let policy = ValidationConfig {
        refuse_unknown: true,
        types: BTreeMap::from([("OrderCreated".to_string(), ValidationMode::Off)]),
        ..Default::default()
    };
    let registry = Registry::open(dir.path(), policy).expect("loads");
    assert!(registry.validate(&bad("OrderCreated")).is_ok(), "[validation.types] says off");
    assert!(matches!(registry.validate(&bad("Unknown")), Err(Invalid::Unknown { .. })));
}

#[test]
fn prepare_fills_dataschema_only_when_empty_and_refs_resolve_inside_the_registry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let with_ref =
        json!({"type": "object", "properties": {"money": {"$ref": "../Money/1.json"}}, "required": ["money"]});
    let money = json!({"type": "object", "properties": {"cents": {"type": "integer"}}, "required": ["cents"]});
    write(dir.path(), &[("Paid", 1, with_ref), ("Money", 1, money)], &[]);
    let registry = Registry::open(dir.path(), ValidationConfig::default()).expect("loads");
    let mut e = event("Paid", 1, json!({"money": {"cents": 5}}));
    registry.prepare(&mut e).expect("valid");
    assert_eq!(e.dataschema.as_deref(), Some("ferry://schemas/Paid/1.json"));
    let err = registry.validate(&event("Paid", 1, json!({"money": {"cents": "5"}}))).unwrap_err();
    assert!(err.to_string().contains("/money/cents"), "{err}");
    let mut own = event("Paid", 1, json!({"money": {"cents": 5}}));
    own.dataschema = Some("https://example.com/paid".into());
    registry.prepare(&mut own).expect("valid");
    assert_eq!(own.dataschema.as_deref(), Some("https://example.com/paid"));
}

#[test]
fn a_remote_ref_does_not_compile() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), &[("Remote", 1, json!({"$ref": "https://example.com/schema.json"}))], &[]);
    let err = Registry::open(dir.path(), ValidationConfig::default()).expect_err("refused");
    assert!(matches!(err, ContractError::Compile { .. }), "{err}");
}

#[test]
fn a_reload_with_a_breaking_version_is_refused_and_the_set_stays() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), &[("OrderCreated", 1, order_v1())], &[]);
    let registry = Registry::open(dir.path(), ValidationConfig::default()).expect("loads");
    let mut v2 = order_v1();
    v2["required"] = json!(["order_id", "amount", "currency"]);
    write(dir.path(), &[("OrderCreated", 2, v2)], &[]);
    let err = registry.reload().expect_err("refused");
    assert!(err.to_string().contains("currency"), "{err}");
    assert!(registry.refused().is_some());
    assert!(registry.active().schema("OrderCreated", 2).is_none(), "old set kept");
    std::fs::remove_file(dir.path().join("OrderCreated/2.json")).expect("rm");
    registry.reload().expect("valid again");
    assert!(registry.refused().is_none());
}

/// `(mode ok?)` of v2 over v1 for every mode.
fn verdicts(v1: Value, v2: Value) -> BTreeMap<&'static str, bool> {
    let documents = std::sync::Arc::new(BTreeMap::new());
    let versions: compat::Versions = BTreeMap::from([
        (1, ("ferry://schemas/T/1.json".to_string(), v1)),
        (2, ("ferry://schemas/T/2.json".to_string(), v2)),
    ]);
    [Compatibility::Backward, Compatibility::Forward, Compatibility::Full, Compatibility::FullTransitive]
        .into_iter()
        .map(|mode| {
            let report = compat::check_type("T", mode, &versions, &documents);
            assert!(report.structural.is_empty(), "{} decided on sets: {report:?}", mode.as_str());
            (mode.as_str(), report.violations.is_empty())
        })
        .collect()
}

fn expect(v1: Value, v2: Value, backward: bool, forward: bool) {
    let got = verdicts(v1.clone(), v2.clone());
    let want = BTreeMap::from([
        ("backward", backward),
        ("forward", forward),
        ("full", backward && forward),
        ("full-transitive", backward && forward),
    ]);
    assert_eq!(got, want, "v1 {v1}\nv2 {v2}");
}

fn object(properties: Value, required: Value) -> Value {
    json!({"type": "object", "properties": properties, "required": required})
}

#[test]
fn an_optional_property_added_to_an_open_schema_is_forward_compatible_only() {
    // Structural diffs call this incompatible outright. On sets: v1 accepted `{"id":"x","note":5}`,
    // which v2 refuses (backward breaks), and every v2 payload is a v1 payload (forward holds).
    let v1 = object(json!({"id": {"type": "string"}}), json!(["id"]));
    let v2 = object(json!({"id": {"type": "string"}, "note": {"type": "string"}}), json!(["id"]));
    expect(v1.clone(), v2, false, true);
    // The same property without constraints changes nothing at all.
    let v2 = object(json!({"id": {"type": "string"}, "note": {}}), json!(["id"]));
    expect(v1, v2, true, true);
}

#[test]
fn a_required_property_removed_is_backward_compatible() {
    let v1 = object(json!({"id": {"type": "string"}, "at": {"type": "string"}}), json!(["id", "at"]));
    let v2 = object(json!({"id": {"type": "string"}, "at": {"type": "string"}}), json!(["id"]));
    expect(v1, v2, true, false);
}

#[test]
fn an_enum_widened_is_backward_compatible() {
    let v1 = object(json!({"state": {"enum": ["new", "paid"]}}), json!(["state"]));
    let v2 = object(json!({"state": {"enum": ["new", "paid", "refunded"]}}), json!(["state"]));
    expect(v1, v2, true, false);
}

#[test]
fn a_maximum_raised_is_backward_and_lowered_is_forward() {
    let with_max = |m: u32| object(json!({"n": {"type": "integer", "maximum": m}}), json!(["n"]));
    expect(with_max(10), with_max(20), true, false);
    expect(with_max(20), with_max(10), false, true);
}

#[test]
fn a_schema_rewritten_with_defs_and_allof_is_fully_compatible() {
    // A structural diff sees every keyword move; the sets are equal.
    let v1 = object(json!({"n": {"type": "integer", "minimum": 1, "maximum": 5}}), json!(["n"]));
    let v2 = json!({
        "$defs": {"small": {"type": "integer", "maximum": 5}},
        "allOf": [{"type": "object", "required": ["n"]}, {"properties": {"n": {"allOf": [{"$ref": "#/$defs/small"}, {"minimum": 1}]}}}]
    });
    expect(v1, v2, true, true);
}

#[test]
fn transitive_modes_compare_with_every_earlier_version() {
    let with_max = |m: u32| object(json!({"n": {"type": "integer", "maximum": m}}), json!(["n"]));
    let documents = std::sync::Arc::new(BTreeMap::new());
    let versions: compat::Versions = [(1, 20), (2, 10), (3, 15)]
        .into_iter()
        .map(|(v, m)| (v, (format!("ferry://schemas/T/{v}.json"), with_max(m))))
        .collect();
    // 2 over 1 lowers the maximum: forward holds step by step; 3 over 2 raises it: not forward.
    let forward = compat::check_type("T", Compatibility::Forward, &versions, &documents);
    assert_eq!(forward.violations.iter().map(|v| (v.accepted, v.by)).collect::<Vec<_>>(), vec![(3, 2)]);
    // Backward-transitive: 2 refuses 1's 11..20, 3 refuses 1's 16..20.
    let transitive = compat::check_type("T", Compatibility::BackwardTransitive, &versions, &documents);
    let pairs: Vec<(u32, u32)> = transitive.violations.iter().map(|v| (v.accepted, v.by)).collect();
    assert_eq!(pairs, vec![(1, 2), (1, 3)]);
    assert_eq!(transitive.violations[0].path, "/properties/n/maximum", "{:?}", transitive.violations[0]);
}

#[test]
fn what_the_sets_cannot_decide_falls_back_to_structural_rules_and_says_so() {
    // Containment of one regular expression in another is outside the canonical form (a
    // refutation by example is not): `^[ab]+$` does accept every `^a+$`, but only the
    // structural rules decide the pair, conservatively, and say so.
    let schema = |max: u32| {
        let pattern = if max == 5 { "^a+$" } else { "^[ab]+$" };
        json!({"type": "object", "properties": {"code": {"type": "string", "pattern": pattern}}})
    };
    let documents = std::sync::Arc::new(BTreeMap::new());
    let versions: compat::Versions = [(1, schema(5)), (2, schema(3))]
        .into_iter()
        .map(|(v, doc)| (v, (format!("ferry://schemas/T/{v}.json"), doc)))
        .collect();
    let report = compat::check_type("T", Compatibility::Backward, &versions, &documents);
    assert_eq!(report.structural, vec![("T".to_string(), 1, 2)], "{report:?}");
    assert_eq!(report.violations.len(), 1, "{report:?}");
    assert_eq!(report.violations[0].method, compat::Method::Structural);
    assert!(report.violations[0].to_string().contains("structural rule"), "{}", report.violations[0]);
}
