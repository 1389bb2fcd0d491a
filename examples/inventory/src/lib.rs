//! Inventory module: reserves stock when the orders module says an order was created, and
//! keeps the stock levels in ferry's handler state.
//!
//! Stock of a SKU is the state key `stock:SKU` (absent: config `initial_stock`, default 100).
//! An order takes its quantity from it, or is rejected (dead-lettered with the reason) when
//! there is not enough: the event's state writes are dropped with it, so a rejected order
//! takes nothing. The writes commit with the event's acknowledgement, so a retried,
//! duplicated or crashed delivery changes the stock exactly once; `order:ID` records what an
//! order took, so a producer that sends the same order twice is served once.
//!
//! When the operator grants a `publish` config value naming a stream, a `StockReserved`
//! follow-up is published there, atomically with the acknowledgement. Grants: `state = true`
//! (and on a partitioned stream, partition by SKU: state is per partition).

use ferry_plugin_sdk::publish::{self, Outgoing};
use ferry_plugin_sdk::{Error, Event, Handler, Result, Subscription, config, log, state};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct OrderCreated {
    order_id: String,
    sku: String,
    quantity: u32,
}

#[derive(Serialize)]
struct StockReserved<'a> {
    order_id: &'a str,
    sku: &'a str,
    quantity: u32,
    left: i64,
}

struct Inventory;

/// The stock of `sku` before any order touched it.
fn initial_stock() -> i64 {
    config::get("initial_stock").and_then(|s| s.parse().ok()).unwrap_or(100)
}

impl Handler for Inventory {
    fn subscriptions() -> Vec<Subscription> {
        vec![Subscription::to("OrderCreated").versions([1])]
    }

    fn handle(event: Event) -> Result {
        let order: OrderCreated = event.json()?;
        if order.quantity == 0 {
            return Err(Error::reject(format!("order {} has no quantity", order.order_id)));
        }
        let (stock_key, order_key) = (format!("stock:{}", order.sku), format!("order:{}", order.order_id));
        if state::exists(&order_key)? {
            log::info(&format!("order {} was served already", order.order_id));
            return Ok(());
        }
        if !state::exists(&stock_key)? {
            state::set(&stock_key, initial_stock().to_string())?;
        }
        let left = state::increment(&stock_key, -i64::from(order.quantity))?;
        if left < 0 {
            // The decrement above is dropped with the rejection: the stock stays as it was.
            let had = left + i64::from(order.quantity);
            return Err(Error::reject(format!(
                "insufficient stock for {} x {} ({had} left)",
                order.quantity, order.sku
            )));
        }
        state::set(&order_key, order.quantity.to_string())?;
        log::info(&format!("reserved {} x {} for order {} ({left} left)", order.quantity, order.sku, order.order_id));
        if let Some(stream) = config::get("publish") {
            let reserved = StockReserved { order_id: &order.order_id, sku: &order.sku, quantity: order.quantity, left };
            publish::send(Outgoing::json("StockReserved", &reserved)?.to_stream(&stream).key(&order.order_id))?;
        }
        Ok(())
    }
}

ferry_plugin_sdk::plugin!(Inventory);

// The handler's own tests, with no host and no Redis:
// `cargo test --target x86_64-unknown-linux-gnu` (the machine's target, not wasm32-wasip2).
#[cfg(test)]
mod tests {
    use ferry_plugin_sdk::{Event, testing};

    use super::Inventory;

    fn order(id: &str, quantity: u32) -> Event {
        Event::builder("OrderCreated")
            .data(format!(r#"{{"order_id":"{id}","sku":"A-1","quantity":{quantity}}}"#))
            .build()
    }

    #[test]
    fn an_order_takes_its_stock_and_its_follow_up_is_published_where_granted() {
        testing::reset();
        testing::set_config("publish", "stock");
        testing::set_state("stock:A-1", "10");
        testing::handle::<Inventory>(order("o-1", 2)).expect("reserved");
        assert_eq!(testing::state_value("stock:A-1"), Some(b"8".to_vec()));
        let published = testing::published();
        assert_eq!(published.len(), 1);
        assert_eq!(
            (published[0].event_type.as_str(), published[0].stream.as_deref()),
            ("StockReserved", Some("stock"))
        );
        assert_eq!(published[0].partition_key.as_deref(), Some("o-1"));
        assert!(
            testing::logs()[0].starts_with("INFO reserved 2 x A-1 for order o-1 (8 left)"),
            "{:?}",
            testing::logs()
        );
    }

    #[test]
    fn an_order_it_cannot_serve_is_rejected_and_takes_nothing() {
        testing::reset();
        testing::set_config("publish", "stock");
        testing::set_state("stock:A-1", "3");
        let error = testing::handle::<Inventory>(order("o-1", 5)).expect_err("too many");
        assert!(error.is_reject() && error.to_string().contains("(3 left)"), "{error}");
        assert_eq!(testing::state_value("stock:A-1"), Some(b"3".to_vec()), "the decrement was dropped");
        assert!(testing::published().is_empty());
    }

    #[test]
    fn unknown_stock_starts_at_the_configured_level_and_an_order_is_served_once() {
        testing::reset();
        testing::set_config("initial_stock", "4");
        testing::handle::<Inventory>(order("o-1", 3)).expect("reserved");
        testing::handle::<Inventory>(order("o-1", 3)).expect("the same order again: served already");
        assert_eq!(testing::state_value("stock:A-1"), Some(b"1".to_vec()));
        assert!(testing::published().is_empty(), "no publish grant");
    }
}
