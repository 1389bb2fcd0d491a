//! Test fixture: an upcaster of `OrderPlaced` v1 → v2 → v3.
//!
//! - v1 `{"order_id", "cents"}` → v2 `{"order_id", "amount": {"cents"}}` (other fields kept);
//! - v2 → v3 adds `"currency": "EUR"` to the amount;
//! - a v1 payload with `"poison": true` cannot be converted (the step says why);
//! - a v1 payload with `"trap": true` makes the upcaster panic (a trap, as any guest may).
wit_bindgen::generate!({ world: "upcaster", path: "../../../plugin-sdk/wit-0.2.0" });

use exports::ferry::plugin::upcast::{Guest, Step};
use serde_json::{Value, json};

struct Upcaster;

fn step(from: u32, to: u32) -> Step {
    Step { event_type: "OrderPlaced".into(), from, to }
}

impl Guest for Upcaster {
    fn steps() -> Vec<Step> {
        vec![step(1, 2), step(2, 3)]
    }

    fn convert(step: Step, data: Vec<u8>) -> Result<Vec<u8>, String> {
        let mut v: Value = serde_json::from_slice(&data).map_err(|e| format!("not JSON: {e}"))?;
        match (step.from, step.to) {
            (1, 2) => {
                if v["poison"] == json!(true) {
                    return Err("order has no amount in cents that v2 could hold".into());
                }
                if v["trap"] == json!(true) {
                    panic!("the upcaster trapped on purpose");
                }
                // Other fields (a test's `act`) are kept as they are.
                let cents = v.as_object_mut().and_then(|o| o.remove("cents")).unwrap_or(Value::Null);
                v["amount"] = json!({"cents": cents});
            }
            (2, 3) => {
                v["amount"]["currency"] = json!("EUR");
            }
            (from, to) => return Err(format!("no step from {from} to {to}")),
        }
        serde_json::to_vec(&v).map_err(|e| e.to_string())
    }
}

export!(Upcaster);
