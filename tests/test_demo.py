"""
lbproxy.demo: the demo backends, served in memory behind the proxy.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactor
from twisted.trial import unittest

from lbproxy.config import parse
from lbproxy.demo import DemoBackend, check_demo, demo_services
from lbproxy.testing import ProxyHarness


def config(servers: str):  # type: ignore[no-untyped-def]
    return parse(
        f"[proxy]\nlisten = tcp:8080\npool = demo\n[pool:demo]\nservers =\n    {servers}\n"
    )


class DemoTests(unittest.SynchronousTestCase):
    def test_demo_backend_names_itself(self) -> None:
        text = "[proxy]\nlisten = tcp:8080\npool = demo\n[pool:demo]\nservers = http://127.0.0.1:9001 name=b1\n"
        harness = ProxyHarness(text, backends={"b1": DemoBackend("b1")})
        self.addCleanup(harness.stop)
        response = harness.request()
        self.assertEqual(response.body, b"Hello from demo backend b1\n")
        self.assertEqual(response.header("content-type"), b"text/plain; charset=utf-8")
        head = harness.request("HEAD", "/")
        self.assertEqual((head.status, head.body), (200, b""))

    def test_only_loopback_http_servers(self) -> None:
        check_demo(
            config("http://127.0.0.1:9001\n    http://[::1]:9002\n    http://localhost:9003")
        )
        for url in ("http://10.0.0.1:9001", "https://127.0.0.1:9001"):
            error = self.assertRaises(ValueError, check_demo, config(url))
            self.assertIn(url, str(error))

    def test_one_listener_per_server(self) -> None:
        reactor = MemoryReactor()
        services = demo_services(config("http://127.0.0.1:9001\n    http://[::1]:9002"), reactor)
        for service in services:
            service.startService()
        self.assertEqual(
            sorted((port, interface) for port, _, _, interface in reactor.tcpServers),
            [(9001, "127.0.0.1"), (9002, "::1")],
        )
