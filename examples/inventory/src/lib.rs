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
