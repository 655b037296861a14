"""
lbproxy.upstream.server: one server's running state, and the one flag the
balancers read (C{usable}), worked out from every reason in one place.
"""

from __future__ import annotations

from typing import Optional

from twisted.trial import unittest

from lbproxy.config import ServerConfig
from lbproxy.upstream.server import WEIGHT_SCALE, ServerState


def config(
    weight: int = 1, max_connections: Optional[int] = None, backup: bool = False
) -> ServerConfig:
    return ServerConfig(
        "http://10.0.0.1:80",
        "http",
        "10.0.0.1",
        80,
        weight=weight,
        name="a",
        max_connections=max_connections,
        backup=backup,
    )


class ServerStateTests(unittest.SynchronousTestCase):
    def test_a_new_server_is_up_and_usable_at_its_configured_weight(self) -> None:
        server = ServerState(config(weight=3, backup=True), route="route")
        self.assertEqual((server.name, server.route, server.backup), ("a", "route", True))
        self.assertEqual((server.weight, server.base_weight), (3 * WEIGHT_SCALE, 3))
        self.assertEqual((server.state, server.usable, server.out), ("UP", True, False))
        self.assertEqual((server.active, server.fails, server.stats.served), (0, 0, 0))
        self.assertIn("<ServerState a active=0 usable=True>", repr(server))

    def test_state_usable_and_out_from_each_reason(self) -> None:
        # (attribute, value) -> (state, usable, out)
        cases = [
            ("up", False, ("DOWN", False, True)),
            ("ejected", True, ("DOWN", False, True)),
            ("draining", True, ("DRAINING", False, True)),
            ("maint", True, ("MAINT", False, True)),
            ("full", True, ("UP", False, False)),  # busy, not out
        ]
        for attribute, value, expected in cases:
            server = ServerState(config())
            setattr(server, attribute, value)
            self.assertTrue(server.usable, "usable changes only on refresh")
            server.refresh()
            self.assertEqual((server.state, server.usable, server.out), expected, attribute)

    def test_the_operators_state_is_shown_first(self) -> None:
        server = ServerState(config())
        server.up = False
        server.draining = True
        self.assertEqual(server.state, "DRAINING")
        server.maint = True
        self.assertEqual(server.state, "MAINT")

    def test_a_weight_set_at_run_time_is_the_base_weight(self) -> None:
        server = ServerState(config(weight=2))
        server.weight_override = 5
        self.assertEqual(server.base_weight, 5)

    def test_reconfigure_keeps_state_and_an_override_unless_the_file_changed_the_weight(
        self,
    ) -> None:
        server = ServerState(config(weight=2), route="old")
        server.weight_override = 5
        server.draining = True
        server.stats.served = 7
        server.reconfigure(config(weight=2, backup=True), "new")
        self.assertEqual((server.route, server.backup, server.weight_override), ("new", True, 5))
        self.assertEqual(server.weight, 5 * WEIGHT_SCALE)
        self.assertEqual((server.draining, server.usable, server.stats.served), (True, False, 7))
        server.reconfigure(config(weight=4), "new")
        self.assertIsNone(server.weight_override)
        self.assertEqual(server.weight, 4 * WEIGHT_SCALE)

    def test_reconfigure_works_out_whether_it_is_full(self) -> None:
        server = ServerState(config())
        server.active = 2
        server.reconfigure(config(max_connections=2), None)
        self.assertEqual((server.full, server.usable), (True, False))
        server.reconfigure(config(max_connections=3), None)
        self.assertEqual((server.full, server.usable), (False, True))
        server.reconfigure(config(), None)
        self.assertFalse(server.full)
