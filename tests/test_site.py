"""
lbproxy.front.site: the proxy's twisted.web front, in memory (lbproxy.testing):
targets as sent, keep-alive, the connection limit and the graceful stop.
"""

from __future__ import annotations

from twisted.trial import unittest

from lbproxy.testing import ProxyHarness

SERVER = "http://127.0.0.1:8001"


def harness(case: unittest.SynchronousTestCase, proxy: str = "") -> ProxyHarness:
    built = ProxyHarness(
        f"[proxy]\nlisten = tcp:8080\npool = web\n{proxy}\n[pool:web]\nservers = {SERVER}\n"
    )
    case.addCleanup(built.stop)
    return built


class SiteTests(unittest.SynchronousTestCase):
    def test_target_is_not_split_or_unquoted(self) -> None:
        proxy = harness(self)
        proxy.send_raw(b"GET /a%2Fb/../c;x?q=%20 HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(proxy.backend(SERVER).seen[0].target, b"/a%2Fb/../c;x?q=%20")

    def test_proxy_adds_no_default_headers(self) -> None:
        proxy = harness(self)
        proxy.backend(SERVER).fail(502)
        response = proxy.request()
        # The failing backend sends neither Server nor Date: the proxy adds
        # no Server of its own, one Date, and the backend's content type.
        self.assertEqual(response.status, 502)
        self.assertIsNone(response.header("server"))
        self.assertEqual(len(response.headers.getRawHeaders(b"date") or []), 1)
        self.assertEqual(response.header("content-type"), b"text/plain")

    def test_keep_alive_serves_several_requests_on_one_connection(self) -> None:
        proxy = harness(self)
        connection = proxy.connect_raw()
        connection.write(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(connection.received.count(b"HTTP/1.1 200 OK"), 2)
        self.assertFalse(connection.closed)
        self.assertEqual([s.target for s in proxy.backend(SERVER).seen], [b"/1", b"/2"])

    def test_idle_keep_alive_connection_times_out(self) -> None:
        proxy = harness(self, "keepalive_timeout = 5s")
        connection = proxy.connect_raw()
        connection.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        proxy.clock.advance(4)
        self.assertFalse(connection.closed)
        proxy.clock.advance(2)
        self.assertTrue(connection.closed)

    def test_idle_timeout_waits_while_a_request_is_handled(self) -> None:
        proxy = harness(self, "keepalive_timeout = 5s")
        proxy.backend(SERVER).hang()
        connection = proxy.connect_raw()
        connection.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        waited = 0
        while not connection.received and waited < 300:
            self.assertFalse(connection.closed, f"closed after {waited}s without an answer")
            proxy.clock.advance(1)
            waited += 1
        # The answer (504) came long after the idle timeout would have run out.
        self.assertTrue(connection.received.startswith(b"HTTP/1.1 504 "), connection.received)
        self.assertGreater(waited, 10)
        self.assertFalse(connection.closed)
        proxy.clock.advance(4)
        self.assertFalse(connection.closed)
        proxy.clock.advance(2)
        self.assertTrue(connection.closed)

    def test_a_head_starts_the_idle_timeout_again_until_its_body_comes(self) -> None:
        # A head read in one pass whose body is still to come: the idle
        # timeout runs from the head's arrival, not from the connection's.
        proxy = harness(self, "keepalive_timeout = 5s")
        connection = proxy.connect_raw()
        proxy.clock.advance(4)
        connection.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n")
        proxy.clock.advance(4)
        self.assertFalse(connection.closed)
        connection.write(b"ok")
        self.assertTrue(connection.received.startswith(b"HTTP/1.1 200 "), connection.received)
        self.assertFalse(connection.closed)

    def test_connections_over_the_limit_get_503(self) -> None:
        proxy = harness(self, "max_connections = 1")
        first = proxy.connect_raw()
        second = proxy.connect_raw()
        second.write(b"")
        self.assertTrue(second.received.startswith(b"HTTP/1.1 503 "), second.received)
        self.assertTrue(second.closed)
        first.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(first.received.startswith(b"HTTP/1.1 200 "))

    def test_stop_closes_idle_connections_at_once(self) -> None:
        proxy = harness(self, "shutdown_timeout = 30s")
        connection = proxy.connect_raw()
        connection.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        stopped = proxy.service.stopService()
        proxy.clock.flush()
        self.assertTrue(connection.closed)
        self.successResultOf(stopped)
