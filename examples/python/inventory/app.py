"""Inventory: reserves stock when an order is created.

Payload: {"order_id": "o-1", "sku": "sku-1", "quantity": 2}

Test switches in the payload: "fail": "retry" | "reject" | "raise".
If the operator grants config key "publish" (a stream name), a StockReserved
follow-up {"order_id": ...} is published to that stream.
"""

from ferry_handler import Event, FerryHandler, Reject, Retry, config, log, publish


class Handler(FerryHandler):
    subscribe = ["OrderCreated"]

    def on_event(self, event: Event) -> None:
        order = event.json()  # malformed JSON -> Reject
        if not isinstance(order, dict):
            raise Reject("OrderCreated payload must be a JSON object")

        fail = order.get("fail")
        if fail == "retry":
            raise Retry(f"stock service unavailable (attempt {event.attempt})", delay_ms=1000)
        if fail == "reject":
            raise Reject(f"order {order.get('order_id')} cannot be reserved")
        if fail == "raise":
            raise RuntimeError("inventory handler crashed on purpose")

        try:
            order_id, sku, quantity = order["order_id"], order["sku"], int(order["quantity"])
        except (KeyError, TypeError, ValueError) as e:
            raise Reject(f"OrderCreated payload is missing or has a bad field: {e}") from None

        log.info(f"reserving {quantity} x {sku} for order {order_id}")

        stream = config.get("publish")
        if stream:
            # `handled` echoes what the handler received (provenance; the tests check it).
            handled = {
                "id": event.id, "type": event.type, "source": event.source, "time": event.time,
                "schemaversion": event.schema_version, "subject": event.subject,
                "correlationid": event.correlation_id, "partitionkey": event.partition_key,
                "attempt": event.attempt, "stream": event.stream, "data": event.text(),
            }
            reserved = {"order_id": order_id, "sku": sku, "quantity": quantity, "handled": handled}
            new_id = publish.send_json("StockReserved", reserved, stream=stream)
            log.debug(f"published StockReserved {new_id} to {stream}")
