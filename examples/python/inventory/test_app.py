"""The inventory handler's own tests: no host, no Redis (``python3 -m unittest`` here)."""

import json
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import ferry_testing as ft  # noqa: E402  (installs the test doubles before the handler loads)
from ferry_handler import Reject, Retry  # noqa: E402

from app import Handler  # noqa: E402


class InventoryTest(unittest.TestCase):
    def test_an_order_is_reserved_and_its_follow_up_published_where_granted(self):
        ft.reset(config={"publish": "stock"})
        Handler().on_event(ft.event("OrderCreated", {"order_id": "o-1", "sku": "A", "quantity": 2}))
        [follow_up] = ft.published()
        self.assertEqual((follow_up.event_type, follow_up.stream), ("StockReserved", "stock"))
        self.assertEqual(json.loads(follow_up.data)["order_id"], "o-1")
        self.assertTrue(ft.logs()[0].startswith("INFO reserving 2 x A"), ft.logs())

    def test_a_malformed_order_is_rejected(self):
        ft.reset()
        with self.assertRaises(Reject):
            Handler().on_event(ft.event("OrderCreated", "{not json"))

    def test_a_transient_failure_asks_for_a_retry(self):
        ft.reset()
        with self.assertRaises(Retry):
            Handler().on_event(ft.event("OrderCreated", {"order_id": "o-1", "fail": "retry"}, attempt=2))

    def test_the_wit_handle_turns_a_reject_into_the_error_the_host_reads(self):
        ft.reset()
        with self.assertRaises(ft.Err) as raised:
            e = ft.event("OrderCreated", {"order_id": "o-1", "fail": "reject"})
            Handler().handle(e.raw, e.delivery)
        self.assertIn("cannot be reserved", raised.exception.value.value)


if __name__ == "__main__":
    unittest.main()
