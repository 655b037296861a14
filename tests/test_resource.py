"""
lbproxy.front.resource: what must not reach a backend, absolute-form
targets, and routes without a default pool (in memory, lbproxy.testing).
"""

from __future__ import annotations

from twisted.trial import unittest

from lbproxy.testing import ProxyHarness

SERVER = "http://127.0.0.1:8001"


class ResourceTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.harness = ProxyHarness(
            f"[proxy]\nlisten = tcp:8080\npool = web\n[pool:web]\nservers = {SERVER}\n"
        )
        self.addCleanup(self.harness.stop)

    def status(self, data: bytes) -> bytes:
        return self.harness.send_raw(data).split(b"\r\n", 1)[0]

    def test_refusals_never_reach_a_backend(self) -> None:
        cases = [
            (b"GET / HTTP/1.1\r\n\r\n", b"400"),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", b"400"),
            (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", b"400"),
            (b"GET http://a/x HTTP/1.1\r\nHost: b\r\n\r\n", b"400"),
            (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", b"501"),
        ]
        for data, code in cases:
            line = self.status(data)
            self.assertTrue(line.startswith(b"HTTP/1.1 " + code + b" "), (data, line))
        self.assertEqual(self.harness.backend(SERVER).seen, [])

    def test_http10_without_host_is_forwarded(self) -> None:
        self.assertEqual(self.status(b"GET / HTTP/1.0\r\n\r\n"), b"HTTP/1.0 200 OK")

    def test_absolute_form_becomes_origin_form(self) -> None:
        self.harness.send_raw(b"GET http://shop.example/a?b HTTP/1.1\r\nHost: shop.example\r\n\r\n")
        [seen] = self.harness.backend(SERVER).seen
        self.assertEqual((seen.target, seen.header("host")), (b"/a?b", b"shop.example"))


class NoDefaultPoolTests(unittest.SynchronousTestCase):
    def test_unrouted_request_is_404(self) -> None:
        harness = ProxyHarness(
            f"""
[proxy]
listen = tcp:8080

[route:api]
path = /api/
pool = api

[pool:api]
servers = {SERVER}
"""
        )
        self.addCleanup(harness.stop)
        self.assertEqual(harness.request("GET", "/elsewhere").status, 404)
        self.assertEqual(harness.request("GET", "/api/x").status, 200)
        self.assertEqual([s.target for s in harness.backend(SERVER).seen], [b"/api/x"])
