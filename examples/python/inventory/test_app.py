"""The inventory handler's own tests: no host, no Redis (``python3 -m unittest`` here)."""

import json
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import ferry_testing as ft  # noqa: E402  (installs the test doubles before the handler loads)
from ferry_handler import HttpError, Reject, Retry  # noqa: E402

from app import Handler  # noqa: E402

WAREHOUSE = "http://warehouse.test/reservations"


def order(order_id="o-1", sku="A", quantity=2, **extra):
    return ft.event("OrderCreated", {"order_id": order_id, "sku": sku, "quantity": quantity, **extra})


class InventoryTest(unittest.TestCase):
    def test_an_order_is_reserved_in_state_told_to_the_warehouse_and_published_where_granted(self):
        ft.reset(config={"publish": "stock", "stock": "10", "warehouse_url": WAREHOUSE},
                 state={"reserved:A": "3"}, http=lambda request: (201, '{"ok":true}'))
        self.assertEqual(ft.handle(Handler(), order()), "ack")
        self.assertEqual(ft.state(), {"reserved:A": b"5"})
        [request] = ft.requests()
        self.assertEqual((request.method, request.url), ("POST", WAREHOUSE))
        self.assertEqual(request.header("content-type"), "application/json")
        self.assertEqual(request.json(), {"order_id": "o-1", "sku": "A", "quantity": 2, "left": 5})
        [follow_up] = ft.published()
        self.assertEqual((follow_up.event_type, follow_up.stream), ("StockReserved", "stock"))
        self.assertEqual(json.loads(follow_up.data)["order_id"], "o-1")
        self.assertTrue(ft.logs()[0].startswith("INFO reserving 2 x A for order o-1 (5 left)"), ft.logs())

    def test_an_order_over_the_stock_left_is_rejected_and_reserves_nothing(self):
        ft.reset(config={"stock": "4", "warehouse_url": WAREHOUSE}, state={"reserved:A": "3"},
                 http=lambda request: (200, ""))
        self.assertEqual(ft.handle(Handler(), order(quantity=2)), "reject")
        self.assertEqual(ft.state(), {"reserved:A": b"3"}, "the increment is discarded with the event")
        self.assertEqual(ft.requests(), [], "the warehouse is not told")
        self.assertEqual(ft.handle(Handler(), order(quantity=1)), "ack")
        self.assertEqual(ft.state(), {"reserved:A": b"4"})

    def test_a_warehouse_down_is_a_retry_that_leaves_no_reservation(self):
        def down(request):
            return HttpError("ConnectionRefused")

        ft.reset(config={"warehouse_url": WAREHOUSE}, http=down)
        self.assertEqual(ft.handle(Handler(), order()), "retry")
        ft.reset(config={"warehouse_url": WAREHOUSE}, http=lambda request: (503, "busy"))
        self.assertEqual(ft.handle(Handler(), order()), "retry")
        self.assertEqual(ft.state(), {})
        ft.reset(config={"warehouse_url": WAREHOUSE}, http=lambda request: (422, "unknown sku"))
        self.assertEqual(ft.handle(Handler(), order()), "reject")
        self.assertEqual(ft.state(), {})

    def test_without_the_state_grant_the_event_is_retried(self):
        ft.reset(state_granted=False)
        with self.assertRaises(Retry) as raised:
            Handler().on_event(order())
        self.assertIn("state = true", raised.exception.reason)

    def test_a_malformed_order_is_rejected(self):
        ft.reset()
        with self.assertRaises(Reject):
            Handler().on_event(ft.event("OrderCreated", "{not json"))

    def test_a_transient_failure_asks_for_a_retry_and_a_crash_leaves_no_state(self):
        ft.reset()
        self.assertEqual(ft.handle(Handler(), order(fail="retry")), "retry")
        with self.assertRaises(RuntimeError):
            ft.handle(Handler(), order(fail="raise"))
        self.assertEqual(ft.state(), {})

    def test_the_wit_handle_turns_a_reject_into_the_error_the_host_reads(self):
        ft.reset()
        with self.assertRaises(ft.Err) as raised:
            e = order(fail="reject")
            Handler().handle(e.raw, e.delivery)
        self.assertIn("cannot be reserved", raised.exception.value.value)


if __name__ == "__main__":
    unittest.main()
