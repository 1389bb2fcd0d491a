//! The producer side of the outbox pattern, as the orders module would do it: the order and
//! its `OrderCreated` event are written in one `MULTI`/`EXEC`, so the event exists exactly
//! when the order does. Run: `cargo run -p ferry-example-producer -- redis://127.0.0.1:6379`.

use anyhow::Context as _;
use ferry::event::Event;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let client = redis::Client::open(url.as_str()).context("parsing the Redis URL")?;
    let mut conn = client.get_multiplexed_async_connection().await.with_context(|| format!("connecting to {url}"))?;

    let order_id = format!("o-{}", std::process::id());
    let order = serde_json::json!({ "order_id": order_id, "sku": "sku-42", "quantity": 2 });
    let mut event = Event::new("OrderCreated", "orders", order.to_string());
    event.partitionkey = Some(order_id.clone());
    event.correlationid = Some(format!("checkout-{order_id}"));

    let mut tx = redis::pipe();
    tx.atomic().hset_multiple(format!("order:{order_id}"), &[("status", "created"), ("sku", "sku-42")]).ignore();
    ferry::outbox::add(&mut tx, "events", &event);
    let (entry_id,): (String,) = tx.query_async(&mut conn).await.context("writing the order and its event")?;
    println!("order {order_id} created; event {} is entry {entry_id} of stream events", event.id);
    Ok(())
}
