"""
Reloading a running proxy (L{ProxyService.reload}, L{ProcessControl.reload})
and stopping it gracefully, with real backends and clients on loopback.
"""

from __future__ import annotations

import http.client
import socket

from twisted.internet import defer, reactor, threads

from lbproxy import config
from lbproxy.ops.process import ProcessControl
from lbproxy.service import StartError
from tests.support import (
    CLIENT_TIMEOUT,
    HOST,
    ProxyTestCase,
    fetch,
    held_handler,
    proxy_config,
    refused,
    wait_until,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class ReloadTests(ProxyTestCase):
    def reload(self, text: str) -> None:
        self.proxy.reload(config.parse(text, "test.ini"))

    @defer.inlineCallbacks
    def send(self, n: int):  # type: ignore[no-untyped-def]
        bodies = []
        for _ in range(n):
            response = yield self.fetch("GET", "/")
            self.assertEqual(response.status, 200)
            bodies.append(response.body)
        return bodies

    @defer.inlineCallbacks
    def test_servers_added_and_removed_state_kept_for_those_that_stay(self):  # type: ignore[no-untyped-def]
        a, b, c = self.backend("a"), self.backend("b"), self.backend("c")
        self.start_proxy(proxy_config([f"{a.url} name=a", f"{b.url} name=b"]))
        yield self.send(4)
        pool = self.proxy.pools["test"]
        kept = pool.by_name["b"]
        self.assertEqual(kept.stats.served, 2)
        pool.drain(pool.by_name["a"])
        self.reload(proxy_config([f"{b.url} name=b", f"{c.url} name=c"]))
        self.assertIs(self.proxy.pools["test"], pool)
        self.assertEqual([s.name for s in pool.servers], ["b", "c"])
        self.assertIs(pool.by_name["b"], kept)
        bodies = yield self.send(4)
        self.assertEqual(sorted(bodies), [b"b\n", b"b\n", b"c\n", b"c\n"])
        self.assertEqual(kept.stats.served, 4)
        self.assertEqual(len(a.seen), 2)
        self.assertEqual(self.proxy.reloads["ok"], 1)

    @defer.inlineCallbacks
    def test_operator_state_survives_a_reload(self):  # type: ignore[no-untyped-def]
        a, b = self.backend("a"), self.backend("b")
        text = proxy_config(
            [f"{a.url} name=a", f"{b.url} name=b weight=2"], algorithm="weighted_round_robin"
        )
        self.start_proxy(text)
        pool = self.proxy.pools["test"]
        pool.drain(pool.by_name["a"])
        pool.set_weight(pool.by_name["b"], 7)
        self.reload(text.replace("[pool:test]", "[pool:test]\nretries = 1"))
        self.assertEqual(pool.by_name["a"].state, "DRAINING")
        self.assertEqual(pool.by_name["b"].base_weight, 7)
        bodies = yield self.send(3)
        self.assertEqual(bodies, [b"b\n"] * 3)
        # A weight changed in the file wins over one set at run time.
        self.reload(text.replace("weight=2", "weight=3"))
        self.assertEqual(pool.by_name["b"].base_weight, 3)
        self.assertEqual(pool.by_name["b"].weight, 300)

    @defer.inlineCallbacks
    def test_request_in_flight_to_a_removed_server_finishes(self):  # type: ignore[no-untyped-def]
        a = self.backend("a", held_handler)
        b = self.backend("b")
        self.start_proxy(proxy_config([f"{a.url} name=a", f"{b.url} name=b"]))
        pending = self.fetch("GET", "/slow")
        yield wait_until(lambda: a.held)
        removed = self.proxy.pools["test"].by_name["a"]
        self.reload(proxy_config([f"{b.url} name=b"]))
        bodies = yield self.send(2)
        self.assertEqual(bodies, [b"b\n", b"b\n"])
        a.held[0].callback(b"still here")
        response = yield pending
        self.assertEqual((response.status, response.body), (200, b"still here"))
        self.assertEqual(removed.active, 0)

    @defer.inlineCallbacks
    def test_listeners_added_and_removed_open_connections_stay(self):  # type: ignore[no-untyped-def]
        a = self.backend("a")
        self.start_proxy(proxy_config([a.url]))
        old_port = self.port
        # A keep-alive connection on the old listener, open across the reload.
        conn = http.client.HTTPConnection(HOST, old_port, timeout=CLIENT_TIMEOUT)
        self.addCleanup(conn.close)

        def get() -> bytes:
            conn.request("GET", "/", headers={"Host": "x"})
            return conn.getresponse().read()

        body = yield threads.deferToThread(get)
        self.assertEqual(body, b"a\n")
        new_port = free_port()
        text = proxy_config([a.url]).replace(
            f"listen = tcp:0:interface={HOST}", f"listen = tcp:{new_port}:interface={HOST}"
        )
        self.reload(text)
        response = yield threads.deferToThread(fetch, new_port)
        self.assertEqual(response.body, b"a\n")
        # The old listener is closed to new connections...
        yield wait_until(lambda: refused(old_port))
        # ...but the connection it accepted is still served.
        body = yield threads.deferToThread(get)
        self.assertEqual(body, b"a\n")

    @defer.inlineCallbacks
    def test_a_reload_that_cannot_listen_changes_nothing(self):  # type: ignore[no-untyped-def]
        a, b = self.backend("a"), self.backend("b")
        self.start_proxy(proxy_config([f"{a.url} name=a"]))
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind((HOST, 0))
        busy.listen(1)
        taken = busy.getsockname()[1]
        text = proxy_config([f"{b.url} name=b"]).replace(
            f"listen = tcp:0:interface={HOST}",
            f"listen = tcp:0:interface={HOST}\n    tcp:{taken}:interface={HOST}",
        )
        with self.assertRaises(StartError) as caught:
            self.reload(text)
        self.assertIn(f"cannot listen on tcp:{taken}", str(caught.exception))
        self.assertEqual([s.name for s in self.proxy.pools["test"].servers], ["a"])
        bodies = yield self.send(2)
        self.assertEqual(bodies, [b"a\n", b"a\n"])

    @defer.inlineCallbacks
    def test_pools_algorithm_and_health_checks_change(self):  # type: ignore[no-untyped-def]
        a, b = self.backend("a"), self.backend("b")
        self.start_proxy(proxy_config([f"{a.url} name=a", f"{b.url} name=b"]))
        self.assertEqual(self.proxy.checkers, {})
        text = proxy_config(
            [f"{a.url} name=a weight=3", f"{b.url} name=b"],
            algorithm="weighted_round_robin",
            pool={"health_check": "GET /hc", "health_interval": "50ms", "health_timeout": "50ms"},
        )
        text = text.replace("[pool:test]", "pool = test\n[pool:test]")
        self.reload(
            text
            + f"[pool:other]\nservers = {b.url}\n[route:o]\nhost = other.invalid\npool = other\n"
        )
        self.assertEqual(set(self.proxy.pools), {"test", "other"})
        self.assertEqual(self.proxy.pools["test"].config.algorithm, "weighted_round_robin")
        yield wait_until(lambda: any(s.uri == b"/hc" for s in a.seen))
        bodies = yield self.send(8)
        self.assertEqual(bodies.count(b"a\n"), 6)
        self.reload(proxy_config([f"{a.url} name=a"]))
        self.assertEqual(set(self.proxy.pools), {"test"})
        self.assertEqual(self.proxy.checkers, {})

    @defer.inlineCallbacks
    def test_admin_listener_and_access_log_come_and_go(self):  # type: ignore[no-untyped-def]
        a = self.backend("a")
        text = proxy_config([a.url])
        self.start_proxy(text)
        self.assertIsNone(self.proxy.admin_port)
        path = self.mktemp()
        self.reload(
            text.replace(
                "[pool:test]",
                f"access_log = {path}\n[admin]\nlisten = tcp:0:interface={HOST}\n[pool:test]",
            )
        )
        assert self.proxy.admin_port is not None
        admin = self.proxy.admin_port.getHost().port
        response = yield threads.deferToThread(
            fetch, admin, "GET", "/status", (), None, f"{HOST}:{admin}"
        )
        self.assertEqual(response.status, 200)
        yield self.send(1)
        self.reload(text)
        self.assertIsNone(self.proxy.admin_port)
        self.assertIsNone(self.proxy.access_log)
        with open(path) as f:
            self.assertEqual(len(f.read().splitlines()), 1)

    def test_control_refuses_an_invalid_file_and_keeps_running(self) -> None:
        a = self.backend("a")
        text = proxy_config([f"{a.url} name=a"])
        self.start_proxy(text)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text.replace("name=a", "weight=x"))
        control = ProcessControl(self.proxy, path, reactor)
        control.reload()
        self.assertEqual(self.proxy.reloads, {"ok": 0, "refused": 1})
        self.assertEqual(self.proxy.config.path, "test.ini")
        logged = self.flushLoggedErrors()
        self.assertEqual(logged, [])
        with open(path, "w") as f:
            f.write(text.replace("name=a", "name=renamed"))
        control.reload()
        self.assertEqual(self.proxy.reloads, {"ok": 1, "refused": 1})
        self.assertEqual([s.name for s in self.proxy.pools["test"].servers], ["renamed"])


class GracefulStopTests(ProxyTestCase):
    @defer.inlineCallbacks
    def test_stop_waits_for_the_request_in_flight_and_closes_idle_connections(self):  # type: ignore[no-untyped-def]
        a = self.backend("a", held_handler)
        self.start_proxy(proxy_config([a.url]))
        idle = socket.create_connection((HOST, self.port), timeout=CLIENT_TIMEOUT)
        self.addCleanup(idle.close)
        yield wait_until(lambda: self.proxy.site.open_connections == 1)
        pending = self.fetch("GET", "/slow")
        yield wait_until(lambda: a.held)
        stopped = self.proxy.stopService()
        # The idle connection is closed at once; the busy one stays.
        data = yield threads.deferToThread(idle.recv, 10)
        self.assertEqual(data, b"")
        self.assertFalse(stopped.called)
        yield wait_until(lambda: refused(self.port))
        a.held[0].callback(b"done")
        response = yield pending
        self.assertEqual((response.status, response.body), (200, b"done"))
        self.assertEqual(response.header("Connection"), ["close"])
        yield stopped

    @defer.inlineCallbacks
    def test_requests_still_busy_after_shutdown_timeout_are_cut(self):  # type: ignore[no-untyped-def]
        a = self.backend("a", held_handler)
        self.start_proxy(proxy_config([a.url], shutdown_timeout="200ms"))
        pending = self.fetch("GET", "/slow")
        yield wait_until(lambda: a.held)
        yield self.proxy.stopService()
        self.assertEqual(self.proxy.site.open_connections, 0)
        # Cut: a reset, or a close without a response.
        with self.assertRaises(ConnectionResetError):
            yield pending
