"""
lbproxy.upstream.tiers: primaries, backups used only while every primary is
out, panic mode when nothing is usable, a sticky cookie's server first.
"""

from __future__ import annotations

from typing import Iterator, List, Optional

from twisted.trial import unittest

from lbproxy.config import PoolConfig, parse
from lbproxy.upstream.server import ServerState
from lbproxy.upstream.tiers import Tiers


def pool(servers: str, extra: str = "") -> PoolConfig:
    lines = "".join(f"    {line}\n" for line in servers.strip().splitlines())
    return parse(
        f"[proxy]\nlisten = tcp:1\npool = web\n[pool:web]\n{extra}servers =\n{lines}", "t.ini"
    ).pools["web"]


def tiers(
    servers: str = "http://a:1 name=a\nhttp://b:1 name=b\nhttp://c:1 name=c backup", extra: str = ""
) -> Tiers:
    config = pool(servers, extra)
    return Tiers(config, [ServerState(s) for s in config.servers])


def names(candidates: Iterator[ServerState]) -> List[str]:
    return [s.name for s in candidates]


def out(server: ServerState, reason: str = "up", value: bool = False) -> None:
    setattr(server, reason, value)
    server.refresh()


class TiersTests(unittest.SynchronousTestCase):
    def test_primaries_and_backups(self) -> None:
        made = tiers()
        self.assertEqual([s.name for s in made.primaries], ["a", "b"])
        self.assertEqual([s.name for s in made.backups], ["c"])
        self.assertEqual(sorted(made.by_name), ["a", "b", "c"])
        self.assertEqual(names(made.candidates(None, None, 0)), ["a", "b"])

    def test_backups_only_while_every_primary_is_out(self) -> None:
        made = tiers()
        a, b, c = made.servers
        out(a)
        self.assertEqual(names(made.candidates(None, None, 0)), ["b"])
        out(b, "draining", True)
        self.assertEqual(names(made.candidates(None, None, 0)), ["c"])

    def test_a_busy_primary_does_not_bring_in_the_backups(self) -> None:
        made = tiers()
        a, b, c = made.servers
        out(a)
        out(b, "full", True)  # busy, not out: the request waits instead
        self.assertEqual(names(made.candidates(None, None, 0)), [])

    def test_panic_mode_tries_the_server_ejected_longest_ago(self) -> None:
        made = tiers("http://a:1 name=a\nhttp://b:1 name=b")
        a, b = made.servers
        for server, when in ((a, 5.0), (b, 2.0)):
            server.ejected, server.ejected_at = True, when
            server.refresh()
        self.assertEqual(names(made.candidates(None, None, 0)), ["b"])
        out(b)  # DOWN as well: not a panic choice
        self.assertEqual(names(made.candidates(None, None, 0)), ["a"])

    def test_the_preferred_server_goes_first_within_its_tier(self) -> None:
        made = tiers()
        a, b, c = made.servers
        self.assertEqual(names(made.candidates(None, b, 0)), ["b", "a"])
        # A backup while the primaries are in use: the primaries' own order.
        self.assertEqual(sorted(names(made.candidates(None, c, 0))), ["a", "b"])
        out(a)
        out(b)
        self.assertEqual(names(made.candidates(None, c, 0)), ["c"])

    def test_a_preferred_server_a_reload_removed_is_ignored(self) -> None:
        made = tiers()
        stale = ServerState(made.by_name["b"].config)  # same name, another object
        self.assertEqual(names(made.candidates(None, stale, 0)), ["a", "b"])

    def test_what_the_algorithm_needs(self) -> None:
        # algorithm -> (uses_weights, uses_key, observes_latency)
        cases = {
            "round_robin": (False, False, False),
            "weighted_round_robin": (True, False, False),
            "consistent_hash": (False, True, False),
            "peak_ewma": (True, False, True),
        }
        for algorithm, expected in cases.items():
            made = tiers(extra=f"algorithm = {algorithm}\n")
            seen = (made.uses_weights, made.uses_key, made.observes_latency)
            self.assertEqual(seen, expected, algorithm)

    def test_request_key_only_for_an_algorithm_that_hashes(self) -> None:
        def header(name: bytes) -> Optional[List[bytes]]:
            return [b"u1"] if name == b"x-user" else None

        self.assertIsNone(tiers().request_key(b"10.0.0.1", header, b"/p?q"))
        hashing = tiers(extra="algorithm = consistent_hash\nhash_key = header:X-User\n")
        self.assertEqual(hashing.request_key(b"10.0.0.1", header, b"/p?q"), b"u1")

    def test_sticky_cookie_only_when_configured(self) -> None:
        self.assertIsNone(tiers().sticky)
        sticky = tiers(extra="sticky_cookie = lb\n").sticky
        assert sticky is not None
        self.assertEqual(sticky.name, b"lb")

    def test_latency_goes_to_the_servers_tier(self) -> None:
        made = tiers(extra="algorithm = peak_ewma\n")
        a, b, c = made.servers
        made.observe(a, 5.0, 0.0)  # a slow primary
        self.assertEqual(names(made.candidates(None, None, 0.0))[0], "b")
        made.observe(c, 5.0, 0.0)  # a backup's latency: no error, the primaries unchanged
        self.assertEqual(names(made.candidates(None, None, 0.0))[0], "b")
