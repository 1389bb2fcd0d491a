//! `ferry bench` rows for event contracts (issue 26): the Rust plugin on a realistic 1 KB
//! payload with validation off and on (its schema checks every field, as a team's contract
//! would), the CPU per event of the one against the other (target ≤ 1.15×), and the same
//! plugin when each event needs one upcast step (the upcaster fixture, a fresh sandboxed
//! instance per conversion) before its handler runs.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use serde_json::json;

use super::cost;
use super::harness::{Bench, Shape, context, settings};
use super::report::Report;
use ferry::config::{InstanceMode, ValidationConfig};
use ferry::consume::Active;
use ferry::event::Event;
use ferry::handler::{Invoke, Subscription};
use ferry::plugin::Plugin;

/// The contract of the benchmark's padded `OrderCreated` payload (`shaped_event`).
fn order_schema() -> serde_json::Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "order_id": {"type": "string", "pattern": "^o-[0-9]{8}$"},
            "sku": {"type": "string", "pattern": "^sku-[0-9]{4}$"},
            "quantity": {"type": "integer", "minimum": 1, "maximum": 100},
            "price_cents": {"type": "integer", "minimum": 0},
            "sent_us": {"type": "integer", "minimum": 0},
            "note": {"type": "string", "maxLength": 4096}
        },
        "required": ["order_id", "sku", "quantity", "price_cents", "sent_us"],
        "additionalProperties": false
    })
}

/// A bench on `bench`'s Redis whose consumers validate against `registry` and upcast with
/// `upcasters`.
async fn bench_with(
    bench: &Bench,
    registry: Option<Arc<ferry::contract::Registry>>,
    upcasters: Option<Arc<ferry::contract::upcast::Upcasters>>,
) -> anyhow::Result<Bench> {
    let (redis, shared) = ferry::connection::connect(&ferry::connection::Target::node(bench.url.clone())).await?;
    Ok(Bench {
        url: bench.url.clone(),
        ctx: Arc::new(context(redis, shared, registry, upcasters)),
        engine: bench.engine.clone(),
    })
}

/// The contract rows.
pub async fn figures(
    bench: &Bench,
    noop: &Arc<Plugin>,
    guests: &Path,
    n: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    let shape = Shape::Padded(1024);
    let runner = |b: &Bench, name: &str| -> Arc<dyn Invoke> { b.runner(noop, name, InstanceMode::Reuse) };
    let (off, off_cost) = bench.throughput("contracts-off", runner(bench, "contracts-off"), n, shape).await?;

    let schemas = tempfile::tempdir()?;
    std::fs::create_dir_all(schemas.path().join("OrderCreated"))?;
    std::fs::write(schemas.path().join("OrderCreated/1.json"), order_schema().to_string())?;
    let registry = Arc::new(ferry::contract::Registry::open(schemas.path(), ValidationConfig::default())?);
    let validating = bench_with(bench, Some(registry.clone()), None).await?;
    let (on, on_cost) = validating.throughput("contracts-on", runner(&validating, "contracts-on"), n, shape).await?;

    report.add(format!("contracts: Rust plugin, 1 KB payload, validation off, {n} events"), off, "events/s", "");
    report.add(format!("contracts: Rust plugin, 1 KB payload, validation on, {n} events"), on, "events/s", "");
    report.add("contracts: validation off: host CPU", off_cost.host_us, "us/event", "");
    report.add("contracts: validation on: host CPU", on_cost.host_us, "us/event", "");
    let total = |c: &cost::Cost| c.host_us + c.redis_us;
    report.add(
        "contracts: validation on / off, CPU per event",
        total(&on_cost) / total(&off_cost).max(f64::MIN_POSITIVE),
        "x",
        "host + Redis CPU; target <= 1.15x",
    );

    // One upcast step per event: OrderPlaced v1 to a subscriber that accepts v2 only.
    let dir = tempfile::tempdir()?;
    std::fs::copy(guests.join("fixture_upcaster.wasm"), dir.path().join("orders.wasm"))
        .context("the upcaster fixture (tests/guests/upcaster)")?;
    let upcasters = Arc::new(ferry::contract::upcast::Upcasters::default());
    let limits = ferry::config::LimitsConfig::default();
    ferry::plugin::upcaster::reload(&upcasters, &bench.engine, dir.path(), None, &limits)
        .await
        .map_err(anyhow::Error::msg)?;
    let upcasting = bench_with(bench, Some(registry), Some(upcasters)).await?;
    let stream = "bench-upcast";
    let mut conn = upcasting.ctx.shared.clone();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            let data = json!({"order_id": format!("o-{i:08}"), "cents": 1999 + i % 100, "note": "x".repeat(900)});
            let mut event = Event::new("OrderPlaced", "orders", data.to_string());
            event.schemaversion = 1;
            ferry::outbox::add(&mut pipe, stream, &event);
            pipe.ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
    }
    let v2_only = |invoke| -> anyhow::Result<Active> {
        let sub = Subscription { event_type: "OrderPlaced".into(), versions: vec![2], stream: None };
        Ok(Active { runner: invoke, subscriptions: vec![(stream.to_string(), sub)], settings: settings()? })
    };
    let before = cost::sample(&mut conn).await?;
    let subscribers = vec![("upcast".to_string(), runner(&upcasting, "upcast"))];
    let secs = upcasting.drain_with(stream, subscribers, n, v2_only).await?;
    let after = cost::sample(&mut conn).await?;
    let upcast_cost = cost::Cost::between(&before, &after, n);
    report.add(
        format!("contracts: Rust plugin, one upcast step per event, {n} events"),
        n as f64 / secs,
        "events/s",
        "v1 -> v2 in a fresh upcaster instance per event",
    );
    report.add("contracts: one upcast step per event: host CPU", upcast_cost.host_us, "us/event", "");
    Ok(())
}
