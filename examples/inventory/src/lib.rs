//! Inventory module: reserves stock when the orders module says an order was created.
//!
//! Reservation is idempotent per order id (ferry delivers at least once). When the operator
//! grants a `publish` config value naming a stream, a `StockReserved` follow-up is published
//! there, atomically with the acknowledgement of the `OrderCreated` event.

use ferry_plugin_sdk::publish::{self, Outgoing};
use ferry_plugin_sdk::{Error, Event, Handler, Result, Subscription, config, log};
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
}

struct Inventory;

impl Handler for Inventory {
    fn subscriptions() -> Vec<Subscription> {
        vec![Subscription::to("OrderCreated").versions([1])]
    }

    fn handle(event: Event) -> Result {
        let order: OrderCreated = event.json()?;
        if order.quantity == 0 {
            return Err(Error::reject(format!("order {} has no quantity", order.order_id)));
        }
        if order.quantity > 100 {
            return Err(Error::reject(format!("insufficient stock for {} x {}", order.quantity, order.sku)));
        }
        log::info(&format!("reserved {} x {} for order {}", order.quantity, order.sku, order.order_id));
        if let Some(stream) = config::get("publish") {
            let reserved = StockReserved { order_id: &order.order_id, sku: &order.sku, quantity: order.quantity };
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
    use ferry_plugin_sdk::{Event, Handler, testing};

    use super::Inventory;

    fn order(quantity: u32) -> Event {
        Event::builder("OrderCreated")
            .data(format!(r#"{{"order_id":"o-1","sku":"A-1","quantity":{quantity}}}"#))
            .build()
    }

    #[test]
    fn an_order_is_reserved_and_its_follow_up_published_where_granted() {
        testing::reset();
        testing::set_config("publish", "stock");
        Inventory::handle(order(2)).expect("reserved");
        let published = testing::published();
        assert_eq!(published.len(), 1);
        assert_eq!(
            (published[0].event_type.as_str(), published[0].stream.as_deref()),
            ("StockReserved", Some("stock"))
        );
        assert_eq!(published[0].partition_key.as_deref(), Some("o-1"));
        assert!(testing::logs()[0].starts_with("INFO reserved 2 x A-1"), "{:?}", testing::logs());
    }

    #[test]
    fn an_order_it_cannot_serve_is_rejected_and_publishes_nothing() {
        testing::reset();
        testing::set_config("publish", "stock");
        let error = Inventory::handle(order(500)).expect_err("too many");
        assert!(error.is_reject(), "{error}");
        assert!(testing::published().is_empty());
    }

    #[test]
    fn without_the_grant_nothing_is_published() {
        testing::reset();
        Inventory::handle(order(1)).expect("reserved");
        assert!(testing::published().is_empty());
    }
}
