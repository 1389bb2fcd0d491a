"""Inventory: reserves stock when an order is created.

Payload: {"order_id": "o-1", "sku": "sku-1", "quantity": 2}

Stock is kept in the subscriber's state (grant ``state = true``): ``reserved:SKU`` counts the
units reserved so far, and config ``stock`` (default 100) is what each SKU has. An order that
would reserve more than is left is rejected, and its increment is discarded with it (state
changes only with an acknowledged event).

If config ``warehouse_url`` is granted (and its origin in ``[http] allow``), the reservation
is POSTed there as JSON; the request carries ``Idempotency-Key`` (the same on every attempt),
so the warehouse can dedupe a retried event's second call. A warehouse that cannot be reached
or answers 5xx is a retry (the reservation is discarded and made again), a 4xx a reject.

Test switches in the payload, checked after the reservation: "fail": "retry" | "reject" |
"raise" (each leaves no state behind).
If the operator grants config key "publish" (a stream name), a StockReserved follow-up
{"order_id": ...} is published to that stream.
"""

from ferry_handler import Event, FerryHandler, HttpError, Reject, Retry, config, http, log, publish, state


class Handler(FerryHandler):
    subscribe = ["OrderCreated"]

    def on_event(self, event: Event) -> None:
        order = event.json()  # malformed JSON -> Reject
        if not isinstance(order, dict):
            raise Reject("OrderCreated payload must be a JSON object")
        try:
            order_id, sku, quantity = order["order_id"], order["sku"], int(order["quantity"])
        except (KeyError, TypeError, ValueError) as e:
            raise Reject(f"OrderCreated payload is missing or has a bad field: {e}") from None

        stock = int(config.get("stock", "100"))
        reserved = state.increment(f"reserved:{sku}", quantity)
        if reserved > stock:
            raise Reject(f"order {order_id}: {quantity} x {sku} wanted, {stock - reserved + quantity} left")

        fail = order.get("fail")
        if fail == "retry":
            raise Retry(f"stock service unavailable (attempt {event.attempt})", delay_ms=1000)
        if fail == "reject":
            raise Reject(f"order {order_id} cannot be reserved")
        if fail == "raise":
            raise RuntimeError("inventory handler crashed on purpose")

        log.info(f"reserving {quantity} x {sku} for order {order_id} ({stock - reserved} left)")
        warehouse = config.get("warehouse_url")
        if warehouse:
            self.tell_warehouse(warehouse, {"order_id": order_id, "sku": sku, "quantity": quantity,
                                            "left": stock - reserved})

        stream = config.get("publish")
        if stream:
            # `handled` echoes what the handler received (provenance; the tests check it).
            handled = {
                "id": event.id, "type": event.type, "source": event.source, "time": event.time,
                "schemaversion": event.schema_version, "subject": event.subject,
                "correlationid": event.correlation_id, "partitionkey": event.partition_key,
                "attempt": event.attempt, "stream": event.stream, "data": event.text(),
            }
            reserved_event = {"order_id": order_id, "sku": sku, "quantity": quantity, "handled": handled}
            new_id = publish.send_json("StockReserved", reserved_event, stream=stream)
            log.debug(f"published StockReserved {new_id} to {stream}")

    @staticmethod
    def tell_warehouse(url: str, reservation: dict) -> None:
        try:
            response = http.post_json(url, reservation)
        except HttpError as e:
            raise Retry(f"warehouse unreachable: {e}") from None
        if response.status >= 500:
            raise Retry(f"warehouse answered {response.status}")
        if not response.ok:
            raise Reject(f"warehouse refused the reservation: {response.status} {response.text()[:200]}")
        log.info(f"warehouse accepted {reservation['order_id']}: {response.status}")
