//! The orders module of the PostgreSQL outbox example: it places orders, writing each order row
//! and its `OrderCreated` event in one PostgreSQL transaction (`ferry::outbox::postgres::add`).
//! `ferry relay` (here: the `[relay]` section of `ferry run`) publishes the event once
//! committed; an order whose transaction rolls back never produces an event.
//!
//! Usage: `orders POSTGRES_URL` (run.sh beside this file runs everything end to end).

use anyhow::Context as _;
use ferry::event::Event;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args().nth(1).context("usage: orders POSTGRES_URL")?;
    let (mut client, connection) =
        tokio_postgres::connect(&url, tokio_postgres::NoTls).await.with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("postgres connection: {e}");
        }
    });
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS orders (id text PRIMARY KEY, sku text NOT NULL, quantity int NOT NULL)",
        )
        .await?;

    for (order_id, sku, quantity, commit) in [("o-1001", "sku-42", 2, true), ("o-1002", "sku-7", 1, false)] {
        let tx = client.transaction().await?;
        tx.execute("INSERT INTO orders (id, sku, quantity) VALUES ($1, $2, $3)", &[&order_id, &sku, &quantity]).await?;
        let data = serde_json::json!({ "order_id": order_id, "sku": sku, "quantity": quantity });
        let mut event = Event::new("OrderCreated", "orders", data.to_string());
        event.partitionkey = Some(order_id.to_string());
        event.correlationid = Some(format!("checkout-{order_id}"));
        ferry::outbox::postgres::add(&tx, &event).await?;
        if commit {
            tx.commit().await?;
            println!("orders: placed {order_id} (event {}) in one transaction", event.id);
        } else {
            tx.rollback().await?;
            println!("orders: {order_id} rolled back: neither the order nor its event exists");
        }
    }
    Ok(())
}
