"""
The algorithms and sticky cookies through the running proxy: real backends
on loopback, real clients (http.client).
"""

from __future__ import annotations

from typing import Callable, List

from twisted.internet import defer, reactor, threads
from twisted.web import server

from lbproxy.balancing.sticky import sticky_token
from tests.support import Backend, ProxyTestCase, fetch, proxy_config


def slow_handler(delay: float) -> Callable[..., object]:
    """A backend handler that answers after C{delay} seconds."""

    def handler(backend: Backend, request: server.Request, body: bytes) -> object:
        answer = backend.name.encode() + b"\n"

        def respond() -> None:
            if not request._disconnected:
                request.setHeader(b"Content-Length", b"%d" % len(answer))
                request.write(answer)
                request.finish()

        reactor.callLater(delay, respond)
        return server.NOT_DONE_YET

    return handler


class BalancingOverSocketsTests(ProxyTestCase):
    def start(self, backends: List[Backend], algorithm: str, **pool: str) -> None:
        lines = [f"{b.url} name={b.name}" for b in backends]
        self.start_proxy(proxy_config(lines, algorithm, pool=pool))

    def get(self, *headers: tuple) -> defer.Deferred:
        return self.fetch("GET", "/", headers=list(headers))

    @defer.inlineCallbacks
    def test_sticky_cookie_with_every_algorithm(self):  # type: ignore[no-untyped-def]
        backends = [self.backend(name) for name in ("a", "b", "c")]
        for algorithm in (
            "round_robin",
            "weighted_round_robin",
            "least_connections",
            "random_two",
            "peak_ewma",
            "consistent_hash",
        ):
            self.start(backends, algorithm, sticky_cookie="srv")
            first = yield self.get()
            chosen = first.body.decode().strip()
            token = sticky_token("test", chosen).decode()
            self.assertEqual(first.header("Set-Cookie"), [f"srv={token}; Path=/; HttpOnly"])
            for _ in range(4):
                again = yield self.get(("Cookie", f"theme=dark; srv={token}"))
                self.assertEqual(again.body.decode().strip(), chosen, algorithm)
                self.assertEqual(again.header("Set-Cookie"), [], algorithm)

    @defer.inlineCallbacks
    def test_sticky_server_out_of_rotation_falls_back_and_sets_a_new_cookie(self):  # type: ignore[no-untyped-def]
        backends = [self.backend(name) for name in ("a", "b")]
        self.start(backends, "round_robin", sticky_cookie="srv")
        pool = self.proxy.pools["test"]
        cookie = ("Cookie", "srv=" + sticky_token("test", "a").decode())
        response = yield self.get(cookie)
        self.assertEqual(response.body, b"a\n")
        pool.maintain(pool.by_name["a"])
        response = yield self.get(cookie)
        self.assertEqual(response.body, b"b\n")
        b_token = sticky_token("test", "b").decode()
        self.assertEqual(response.header("Set-Cookie"), [f"srv={b_token}; Path=/; HttpOnly"])
        # A cookie that names no server of the pool is replaced too.
        response = yield self.get(("Cookie", "srv=0123456789abcdef"))
        self.assertEqual(response.header("Set-Cookie"), [f"srv={b_token}; Path=/; HttpOnly"])
        pool.enable(pool.by_name["a"])
        response = yield self.get(cookie)
        self.assertEqual((response.body, response.header("Set-Cookie")), (b"a\n", []))

    @defer.inlineCallbacks
    def test_consistent_hash_on_a_header(self):  # type: ignore[no-untyped-def]
        backends = [self.backend(name) for name in ("a", "b", "c")]
        self.start(backends, "consistent_hash", hash_key="header:X-User")
        home = {}
        for user in range(24):
            first = yield self.get(("X-User", f"user{user}"))
            second = yield self.get(("X-User", f"user{user}"))
            self.assertEqual(first.body, second.body)
            home[user] = first.body
        self.assertEqual(set(home.values()), {b"a\n", b"b\n", b"c\n"})
        # Server b goes: only its users move.
        pool = self.proxy.pools["test"]
        pool.drain(pool.by_name["b"])
        for user in range(24):
            response = yield self.get(("X-User", f"user{user}"))
            if home[user] == b"b\n":
                self.assertNotEqual(response.body, b"b\n")
            else:
                self.assertEqual(response.body, home[user])

    @defer.inlineCallbacks
    def test_consistent_hash_on_the_client_address(self):  # type: ignore[no-untyped-def]
        backends = [self.backend(name) for name in ("a", "b", "c")]
        self.start(backends, "consistent_hash")
        bodies = set()
        for _ in range(9):
            response = yield self.get()
            bodies.add(response.body)
        self.assertEqual(len(bodies), 1)

    @defer.inlineCallbacks
    def test_random_two_sends_fewer_requests_to_a_slow_server(self):  # type: ignore[no-untyped-def]
        a, b = self.backend("a"), self.backend("b")
        slow = self.backend("slow", slow_handler(0.5))
        self.start([a, b, slow], "random_two")

        def client() -> None:
            for _ in range(5):
                fetch(self.port)

        yield defer.gatherResults([threads.deferToThread(client) for _ in range(6)])
        self.assertEqual(len(a.seen) + len(b.seen) + len(slow.seen), 30)
        # Round robin would give each 10.
        self.assertLess(len(slow.seen), min(len(a.seen), len(b.seen)))
        self.assertLess(len(slow.seen), 10)

    @defer.inlineCallbacks
    def test_peak_ewma_avoids_a_slow_server(self):  # type: ignore[no-untyped-def]
        a, b = self.backend("a"), self.backend("b")
        slow = self.backend("slow", slow_handler(0.5))
        self.start([a, b, slow], "peak_ewma")
        for _ in range(20):
            yield self.get()
        # Measured once (or not at all), it is then never the lighter of two.
        self.assertLessEqual(len(slow.seen), 2)
        self.assertEqual(len(a.seen) + len(b.seen) + len(slow.seen), 20)
