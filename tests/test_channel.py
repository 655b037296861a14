"""
lbproxy.front.channel: the request checks of the proxy's HTTP connection,
pure and through the in-memory proxy (a real ProxyChannel, no socket).
"""

from __future__ import annotations

from twisted.trial import unittest

from lbproxy.front.channel import error_response, request_line_refusal, transfer_coding_refusal
from lbproxy.testing import ProxyHarness

SERVER = "http://127.0.0.1:8001"
CONFIG = f"""
[proxy]
listen = tcp:8080
pool = web
max_headers = 5
client_header_timeout = 3s

[pool:web]
servers = {SERVER}
"""


class RefusalTests(unittest.SynchronousTestCase):
    def test_request_line_table(self) -> None:
        cases = [
            (b"GET / HTTP/1.1", None),
            (b"GET /a?b HTTP/1.1", None),
            (b"G(T / HTTP/1.1", 400),
            (b"GET a HTTP/1.1", 400),
            (b"GET /\x7f HTTP/1.1", 400),
            (b"GET  / HTTP/1.1", None),  # spacing is twisted.web's to refuse
        ]
        for line, code in cases:
            refusal = request_line_refusal(line)
            self.assertEqual(None if refusal is None else refusal[0], code, line)

    def test_transfer_coding_table(self) -> None:
        cases = [
            (b"chunked", b"HTTP/1.1", None),
            (b"Chunked", b"HTTP/1.1", None),
            (b"chunked", b"HTTP/1.0", 400),
            (b"chunked, chunked", b"HTTP/1.1", 400),
            (b"gzip, chunked", b"HTTP/1.1", 501),
            (b"identity", b"HTTP/1.1", 501),
        ]
        for value, version, code in cases:
            refusal = transfer_coding_refusal(value, version)
            self.assertEqual(None if refusal is None else refusal[0], code, value)

    def test_error_response_is_complete_and_closes(self) -> None:
        response = error_response(431, b"Request Header Fields Too Large", b"too many")
        head, _, body = response.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"))
        self.assertIn(b"\r\nConnection: close", head)
        self.assertIn(b"\r\nContent-Length: %d" % len(body), head)
        self.assertEqual(body, b"431 Request Header Fields Too Large: too many\n")


class ChannelTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.harness = ProxyHarness(CONFIG)
        self.addCleanup(self.harness.stop)

    def assertRefused(self, data: bytes, status: bytes) -> None:
        connection = self.harness.connect_raw()
        connection.write(data)
        self.assertTrue(connection.received.startswith(b"HTTP/1.1 " + status), connection.received)
        self.assertTrue(connection.closed)
        self.assertEqual(self.harness.backend(SERVER).seen, [])

    def test_good_request_is_forwarded(self) -> None:
        answer = self.harness.send_raw(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertEqual(self.harness.backend(SERVER).seen[0].target, b"/x")

    def test_overlong_request_line_is_414(self) -> None:
        self.assertRefused(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", b"414")

    def test_too_many_headers_is_431(self) -> None:
        headers = b"".join(b"X-%d: v\r\n" % i for i in range(6))
        self.assertRefused(b"GET / HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n", b"431")

    def test_folded_header_is_400(self) -> None:
        self.assertRefused(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", b"400")

    def test_unknown_transfer_coding_is_501(self) -> None:
        self.assertRefused(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", b"501")

    def test_slow_request_head_is_408(self) -> None:
        connection = self.harness.connect_raw()
        connection.write(b"GET / HTTP/1.1\r\nHost: a\r\n")
        self.harness.clock.advance(2.9)
        self.assertEqual(connection.received, b"")
        self.harness.clock.advance(0.2)
        self.assertTrue(connection.received.startswith(b"HTTP/1.1 408 "), connection.received)
        self.assertTrue(connection.closed)
