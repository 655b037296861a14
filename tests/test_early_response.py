"""
A backend that answers before it has read the request body (nginx's
C{return 200} on an upload): the client, over plain TCP and over TLS, gets
that answer and its connection ends cleanly, in bounded time; real sockets,
curl as the client.

HTTP/1.1 only: over HTTP/2 the proxy ends the stream with RST_STREAM
NO_ERROR after the response (RFC 9113 section 8.1), which curl before 8.1
(Debian 12's 7.88.1) never acts on: it spins without reading its socket.
"""

from __future__ import annotations

import os
import time
from typing import Any, List, Tuple

import h2.errors
import h2.events
from twisted.internet import defer, protocol

from tests.support import CLIENT_TIMEOUT, HOST, ProxyTestCase, curl, proxy_config
from tests.test_http2 import NAME, H2Client, in_thread
from tests.test_tls_front import Certificates

#: The upload: several MiB, far past what socket and proxy buffers hold.
UPLOAD = 8 * 1024 * 1024


def answer_at_once(transport: protocol.Protocol, request: bytes) -> None:
    """Answer as soon as the head is in; the body is read and dropped."""
    transport.transport.write(  # type: ignore[union-attr]
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Type: text/plain\r\n\r\n0123456789"
    )


class EarlyResponseTests(ProxyTestCase):
    def setUp(self) -> None:
        self.files = Certificates(os.path.abspath(self.mktemp()))
        self.files.leaf("a", ["a.example.test"])
        self.upload = os.path.abspath(self.mktemp())
        with open(self.upload, "wb") as f:
            f.write(b"x" * UPLOAD)
        self.web = self.raw_backend(answer_at_once)

    def config_text(self, tls: bool) -> str:
        text = proxy_config([self.web.url])
        if tls:
            text += self.files.section("a", "default = yes\n")
            text = text.replace("listen = tcp:", "listen = tls:")
        return text

    @defer.inlineCallbacks
    def upload_gets_the_answer(self, tls: bool):  # type: ignore[no-untyped-def]
        self.start_proxy(self.config_text(tls))
        scheme = "https" if tls else "http"
        started = time.monotonic()
        out, err, code = yield curl(
            "--insecure",
            "--http1.1",
            "-H",
            "Expect:",
            "--data-binary",
            f"@{self.upload}",
            "-w",
            "\n%{http_code}",
            f"{scheme}://{HOST}:{self.port}/upload",
        )
        took = time.monotonic() - started
        self.assertEqual(out.splitlines()[-1], b"200", (out, err, code))
        self.assertTrue(out.startswith(b"0123456789"), (out, err, code))
        self.assertLess(took, 15, (out, err, code))
        return (out, err, code)

    def test_plain(self):  # type: ignore[no-untyped-def]
        return self.upload_gets_the_answer(False)

    def test_tls(self):  # type: ignore[no-untyped-def]
        return self.upload_gets_the_answer(True)


class EarlyResponseHTTP2Tests(ProxyTestCase):
    """
    The same over HTTP/2, with a client that follows RFC 9113 section 8.1:
    after the whole response the proxy resets the stream with NO_ERROR,
    the client stops sending, and the connection goes on.
    """

    def setUp(self) -> None:
        self.files = Certificates(os.path.abspath(self.mktemp()))
        self.files.leaf("a", [NAME])
        self.web = self.raw_backend(answer_at_once)

    @defer.inlineCallbacks
    def test_the_stream_is_reset_with_no_error_and_the_connection_goes_on(self):  # type: ignore[no-untyped-def]
        text = proxy_config([self.web.url]).replace("listen = tcp:", "listen = tls:")
        self.start_proxy(text + self.files.section("a", "default = yes\n"))
        client = yield in_thread(lambda: H2Client(self.port, self.files.ca_file))
        self.addCleanup(client.close)

        def upload() -> Tuple[int, Any, bytes, int, Any]:
            stream = client.start("POST", "/upload", [("content-length", str(UPLOAD))], end=False)
            sent = 0
            chunk = b"x" * 16384
            deadline = time.monotonic() + CLIENT_TIMEOUT
            while not client._ended(stream):
                if time.monotonic() > deadline:
                    raise AssertionError(f"no end of the stream after {sent} bytes")
                window = min(
                    client.conn.local_flow_control_window(stream),
                    client.conn.max_outbound_frame_size,
                    UPLOAD - sent,
                )
                if window > 0:
                    client.conn.send_data(stream, chunk[:window])
                    client.flush()
                    sent += window
                else:
                    client.read(1.0)
            headers, body = client.response(stream)

            def resets() -> List[Any]:
                return [
                    e
                    for e in client.events
                    if isinstance(e, h2.events.StreamReset) and e.stream_id == stream
                ]

            client.until(resets)
            reset = resets()
            # Another request on the same connection.
            again, _ = client.response(client.start("GET", "/upload"))
            return sent, headers, body, reset[0].error_code, again

        sent, headers, body, code, again = yield in_thread(upload)
        self.assertEqual((headers[b":status"], body), (b"200", b"0123456789"))
        self.assertEqual(code, h2.errors.ErrorCodes.NO_ERROR)
        self.assertLess(sent, UPLOAD)
        self.assertEqual(again[b":status"], b"200")
