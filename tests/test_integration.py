"""
The proxy over real loopback sockets: real HTTP backends behind it, real
clients (http.client, raw sockets) in front.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
from typing import List

from twisted.internet import defer, protocol, reactor, threads
from twisted.web import server

from tests.support import (
    CLIENT_TIMEOUT,
    HOST,
    ProxyTestCase,
    curl,
    default_handler,
    held_handler,
    parse_headers_block,
    proxy_config,
    refused_url,
    streaming_handler,
)


def names(responses: List[bytes]) -> str:
    return " ".join(r.decode().strip() for r in responses)


class BalancingTests(ProxyTestCase):
    @defer.inlineCallbacks
    def test_round_robin_rotation(self):  # type: ignore[no-untyped-def]
        backends = [self.backend(n) for n in "abc"]
        self.start_proxy(proxy_config([b.url for b in backends], "round_robin"))
        bodies = []
        for _ in range(7):
            r = yield self.fetch()
            self.assertEqual(r.status, 200)
            bodies.append(r.body)
        self.assertEqual(names(bodies), "a b c a b c a")

    @defer.inlineCallbacks
    def test_weighted_round_robin(self):  # type: ignore[no-untyped-def]
        a, b, c = (self.backend(n) for n in "abc")
        self.start_proxy(proxy_config([f"{a.url} weight=5", b.url, c.url], "weighted_round_robin"))
        bodies = []
        for _ in range(7):
            r = yield self.fetch()
            bodies.append(r.body)
        self.assertEqual(names(bodies), "a a b a c a a")

    @defer.inlineCallbacks
    def test_least_connections_avoids_the_busy_server(self):  # type: ignore[no-untyped-def]
        slow = self.backend("slow", held_handler)
        fast = self.backend("fast")
        proxy = self.start_proxy(proxy_config([slow.url, fast.url], "least_connections"))
        held = self.fetch("GET", "/held")
        while not slow.held:  # the first request is at the slow server...
            yield deferLater(0.01)
        for _ in range(5):  # ...so every later one goes to the idle server
            r = yield self.fetch()
            self.assertEqual(r.body, b"fast\n")
        self.assertEqual(proxy.pools["test"].servers[0].active, 1)
        slow.held[0].callback(b"slow\n")
        r = yield held
        self.assertEqual(r.body, b"slow\n")
        self.assertEqual((len(slow.seen), len(fast.seen)), (1, 5))
        self.assertEqual([s.active for s in proxy.pools["test"].servers], [0, 0])

    @defer.inlineCallbacks
    def test_backend_connections_are_reused(self):  # type: ignore[no-untyped-def]
        b = self.backend("a")
        self.start_proxy(proxy_config([b.url]))
        for _ in range(10):
            r = yield self.fetch()
            self.assertEqual(r.status, 200)
        self.assertEqual((len(b.seen), b.connections), (10, 1))


def deferLater(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


class RequestForwardingTests(ProxyTestCase):
    def raw_echo(self):  # type: ignore[no-untyped-def]
        def respond(transport, request):  # type: ignore[no-untyped-def]
            transport.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

        return self.raw_backend(respond)

    @defer.inlineCallbacks
    def test_target_is_forwarded_byte_for_byte(self):  # type: ignore[no-untyped-def]
        raw = self.raw_echo()
        self.start_proxy(proxy_config([raw.url]))
        targets = [
            "/a%2Fb/../c;p=1?x=1&x=2&x=1",
            "/a?",
            "/a;",
            "//double//slash/./",
            "/%7Euser/%E2%82%AC?q=%20+",
            "/path?a=1;b=2&&c",
        ]
        for target in targets:
            r = yield self.fetch("GET", target)
            self.assertEqual(r.status, 200)
        lines = [request.split(b"\r\n", 1)[0] for request in raw.requests]
        self.assertEqual(lines, [f"GET {t} HTTP/1.1".encode() for t in targets])

    @defer.inlineCallbacks
    def test_method_is_forwarded(self):  # type: ignore[no-untyped-def]
        b = self.backend("a")
        self.start_proxy(proxy_config([b.url]))
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND"]:
            r = yield self.fetch(method, "/m", body=b"" if method in ("POST", "PUT") else None)
            self.assertEqual(r.status, 200)
        self.assertEqual(
            [s.method for s in b.seen],
            [b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"PROPFIND"],
        )

    @defer.inlineCallbacks
    def test_headers_as_the_backend_sees_them(self):  # type: ignore[no-untyped-def]
        raw = self.raw_echo()
        self.start_proxy(proxy_config([raw.url], via="edge-7"))
        r = yield self.fetch(
            "GET",
            "/h",
            host="shop.example:8443",
            headers=[
                ("X-Forwarded-For", "203.0.113.9"),
                ("X-Forwarded-Proto", "ftp"),
                ("Accept", "text/plain"),
                ("X-Multi", "one"),
                ("X-Multi", "two"),
                ("Connection", "keep-alive, X-Hop"),
                ("X-Hop", "must go"),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
                ("Upgrade", "h2c"),
                ("Proxy-Authorization", "Basic eA=="),
                ("Proxy-Connection", "keep-alive"),
                ("Via", "1.0 first"),
            ],
        )
        self.assertEqual(r.status, 200)
        line, headers = parse_headers_block(raw.requests[0])
        self.assertEqual(line, b"GET /h HTTP/1.1")
        self.assertEqual(headers[b"host"], [b"shop.example:8443"])
        self.assertEqual(headers[b"x-forwarded-for"], [b"203.0.113.9, 127.0.0.1"])
        self.assertEqual(headers[b"x-forwarded-proto"], [b"http"])
        self.assertEqual(headers[b"x-forwarded-host"], [b"shop.example:8443"])
        self.assertEqual(headers[b"via"], [b"1.0 first, 1.1 edge-7"])
        self.assertEqual(headers[b"accept"], [b"text/plain"])
        self.assertEqual(headers[b"x-multi"], [b"one", b"two"])
        for gone in [
            b"x-hop",
            b"keep-alive",
            b"te",
            b"upgrade",
            b"proxy-authorization",
            b"proxy-connection",
            b"transfer-encoding",
            b"content-length",
        ]:
            self.assertNotIn(gone, headers)
        # The only Connection header is none at all: the pool keeps the
        # backend connection alive.
        self.assertNotIn(b"connection", headers)

    @defer.inlineCallbacks
    def test_large_post_body_intact(self):  # type: ignore[no-untyped-def]
        b = self.backend("a")
        self.start_proxy(proxy_config([b.url]))
        body = hashlib.sha256(b"seed").digest() * (5 * 1024 * 1024 // 32)
        r = yield self.fetch("POST", "/upload", body=body)
        self.assertEqual(r.status, 200)
        self.assertEqual(len(b.seen[0].body), 5 * 1024 * 1024)
        self.assertEqual(b.seen[0].body, body)
        self.assertEqual(b.seen[0].header(b"content-length"), [b"%d" % len(body)])

    @defer.inlineCallbacks
    def test_chunked_request_body_intact(self):  # type: ignore[no-untyped-def]
        b = self.backend("a")
        self.start_proxy(proxy_config([b.url]))
        pieces = [bytes([i]) * (1000 + i * 7919) for i in range(40)]
        r = yield self.fetch("POST", "/chunked", body=iter(pieces), chunked=True)
        self.assertEqual(r.status, 200)
        self.assertEqual(b.seen[0].body, b"".join(pieces))

    @defer.inlineCallbacks
    def test_expect_100_continue_answered_by_the_proxy(self):  # type: ignore[no-untyped-def]
        b = self.backend("a")
        self.start_proxy(proxy_config([b.url]))
        out, err, code = yield curl(
            "--data-binary",
            "x" * 5000,
            "-H",
            "Expect: 100-continue",
            f"http://127.0.0.1:{self.port}/expect",
        )
        self.assertEqual((code, out), (0, b"a\n"), err)
        self.assertEqual(b.seen[0].body, b"x" * 5000)
        self.assertEqual(b.seen[0].header(b"expect"), [])

    @defer.inlineCallbacks
    def test_empty_post_keeps_its_zero_length(self):  # type: ignore[no-untyped-def]
        raw = self.raw_echo()
        self.start_proxy(proxy_config([raw.url]))
        r = yield self.fetch("POST", "/empty", body=b"")
        self.assertEqual(r.status, 200)
        _, headers = parse_headers_block(raw.requests[0])
        self.assertEqual(headers[b"content-length"], [b"0"])

    @defer.inlineCallbacks
    def test_http10_client(self):  # type: ignore[no-untyped-def]
        raw = self.raw_echo()
        self.start_proxy(proxy_config([raw.url]))
        answer = yield self.raw(b"GET /old HTTP/1.0\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.0 200 OK\r\n"), answer)
        self.assertTrue(answer.endswith(b"\r\n\r\nok"))
        _, headers = parse_headers_block(raw.requests[0])
        self.assertEqual(headers[b"via"], [b"1.0 lbproxy"])
        self.assertNotIn(b"x-forwarded-host", headers)


class ResponseTests(ProxyTestCase):
    def canned(self, response: bytes):  # type: ignore[no-untyped-def]
        def respond(transport, request):  # type: ignore[no-untyped-def]
            transport.transport.write(response)

        return self.raw_backend(respond)

    @defer.inlineCallbacks
    def test_status_reason_and_headers_pass_unchanged(self):  # type: ignore[no-untyped-def]
        backend = self.canned(
            b"HTTP/1.1 299 Custom Reason\r\n"
            b"Server: backend-server/1.0\r\n"
            b"Date: Mon, 02 Jan 2006 15:04:05 GMT\r\n"
            b"Connection: X-Internal\r\n"
            b"X-Internal: secret\r\n"
            b"Keep-Alive: timeout=5\r\n"
            b"Set-Cookie: a=1\r\n"
            b"Set-Cookie: b=2\r\n"
            b"Content-Length: 5\r\n"
            b"\r\nhello"
        )
        self.start_proxy(proxy_config([backend.url]))
        answer = yield self.raw(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        line, headers = parse_headers_block(answer)
        self.assertEqual(line, b"HTTP/1.1 299 Custom Reason")
        self.assertEqual(headers[b"server"], [b"backend-server/1.0"])
        self.assertEqual(headers[b"date"], [b"Mon, 02 Jan 2006 15:04:05 GMT"])
        self.assertEqual(headers[b"set-cookie"], [b"a=1", b"b=2"])
        self.assertEqual(headers[b"content-length"], [b"5"])
        self.assertNotIn(b"content-type", headers)
        self.assertNotIn(b"transfer-encoding", headers)
        self.assertNotIn(b"x-internal", headers)
        self.assertNotIn(b"keep-alive", headers)
        self.assertTrue(answer.endswith(b"\r\n\r\nhello"))

    @defer.inlineCallbacks
    def test_date_added_when_the_backend_sent_none(self):  # type: ignore[no-untyped-def]
        backend = self.canned(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.start_proxy(proxy_config([backend.url]))
        r = yield self.fetch()
        self.assertEqual(len(r.header("Date")), 1)
        self.assertEqual(r.header("Server"), [])

    @defer.inlineCallbacks
    def test_redirects_are_not_followed(self):  # type: ignore[no-untyped-def]
        backend = self.canned(
            b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere.test/\r\nContent-Length: 0\r\n\r\n"
        )
        self.start_proxy(proxy_config([backend.url]))
        r = yield self.fetch()
        self.assertEqual((r.status, r.header("Location")), (302, ["http://elsewhere.test/"]))
        self.assertEqual(len(backend.requests), 1)

    @defer.inlineCallbacks
    def test_content_is_not_decoded(self):  # type: ignore[no-untyped-def]
        import gzip

        packed = gzip.compress(b"hello world")
        backend = self.canned(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
            % (len(packed), packed)
        )
        self.start_proxy(proxy_config([backend.url]))
        r = yield self.fetch()
        self.assertEqual((r.header("Content-Encoding"), r.body), (["gzip"], packed))

    @defer.inlineCallbacks
    def test_head_204_304_carry_no_body(self):  # type: ignore[no-untyped-def]
        def respond(transport, request):  # type: ignore[no-untyped-def]
            path = request.split(b" ")[1]
            if request.startswith(b"HEAD"):
                transport.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/html\r\n\r\n"
                )
            elif path == b"/204":
                transport.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            else:
                transport.transport.write(b'HTTP/1.1 304 Not Modified\r\nETag: "e"\r\n\r\n')

        backend = self.raw_backend(respond)
        self.start_proxy(proxy_config([backend.url]))
        # Three requests on one connection, then a GET whose answer must follow
        # the third directly: any body bytes would corrupt the framing.
        answer = yield self.raw(
            b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /204 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /304 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        parts = answer.split(b"\r\n\r\n")
        self.assertEqual(parts[-1], b"")
        self.assertEqual(len(parts), 4, answer)
        head, no_content, not_modified = (parse_headers_block(p + b"\r\n\r\n") for p in parts[:3])
        self.assertEqual(head[0], b"HTTP/1.1 200 OK")
        self.assertEqual(head[1][b"content-length"], [b"1234"])
        self.assertEqual(no_content[0], b"HTTP/1.1 204 No Content")
        self.assertNotIn(b"transfer-encoding", no_content[1])
        self.assertEqual(not_modified[0], b"HTTP/1.1 304 Not Modified")
        self.assertEqual(not_modified[1][b"etag"], [b'"e"'])
        self.assertNotIn(b"transfer-encoding", not_modified[1])

    @defer.inlineCallbacks
    def test_unsized_body_is_chunked_to_http11_clients(self):  # type: ignore[no-untyped-def]
        def respond(transport, request):  # type: ignore[no-untyped-def]
            transport.transport.write(b"HTTP/1.0 200 OK\r\n\r\nuntil close")
            transport.transport.loseConnection()

        backend = self.raw_backend(respond)
        self.start_proxy(proxy_config([backend.url]))
        answer = yield self.raw(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        _, headers = parse_headers_block(answer)
        self.assertEqual(headers[b"transfer-encoding"], [b"chunked"])
        self.assertTrue(answer.endswith(b"\r\n\r\nb\r\nuntil close\r\n0\r\n\r\n"), answer)


class FailureTests(ProxyTestCase):
    def capture_log(self) -> List[str]:
        from twisted.logger import formatEvent, globalLogPublisher

        lines: List[str] = []

        def observe(event):  # type: ignore[no-untyped-def]
            if event.get("log_namespace", "").startswith("lbproxy.upstream.lifecycle"):
                lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return lines

    @defer.inlineCallbacks
    def test_each_failure_is_one_log_line_naming_the_server(self):  # type: ignore[no-untyped-def]
        lines = self.capture_log()
        down = refused_url()
        good = self.backend("good")
        self.start_proxy(proxy_config([f"{down} name=down-1", good.url]))
        r = yield self.fetch()
        self.assertEqual(r.status, 200)
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith("server down-1: cannot connect"), lines[0])
        self.assertIn("ConnectionRefusedError", lines[0])
        self.assertNotIn("\n", lines[0])

    @defer.inlineCallbacks
    def test_refused_server_is_skipped_for_every_method(self):  # type: ignore[no-untyped-def]
        good = self.backend("good")
        proxy = self.start_proxy(proxy_config([refused_url(), good.url]))
        for method in ["GET", "POST", "GET", "POST"]:
            r = yield self.fetch(method, body=b"data" if method == "POST" else None)
            self.assertEqual((r.status, r.body), (200, b"good\n"))
        self.assertEqual([s.method for s in good.seen], [b"GET", b"POST", b"GET", b"POST"])
        self.assertEqual([s.active for s in proxy.pools["test"].servers], [0, 0])
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_all_servers_down_is_502_in_plain_text(self):  # type: ignore[no-untyped-def]
        proxy = self.start_proxy(proxy_config([refused_url(), refused_url()]))
        r = yield self.fetch("GET", "/<script>")
        self.assertEqual(r.status, 502)
        self.assertEqual(r.header("Content-Type"), ["text/plain; charset=utf-8"])
        self.assertEqual(r.body, b"502 Bad Gateway: no server could take the request\n")
        self.assertNotIn(b"Traceback", r.body)
        self.assertEqual([s.active for s in proxy.pools["test"].servers], [0, 0])

    @defer.inlineCallbacks
    def test_garbage_from_backend_is_502(self):  # type: ignore[no-untyped-def]
        def respond(transport, request):  # type: ignore[no-untyped-def]
            transport.transport.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
            transport.transport.loseConnection()

        backend = self.raw_backend(respond)
        proxy = self.start_proxy(proxy_config([backend.url]))
        r = yield self.fetch()
        self.assertEqual(r.status, 502)
        self.assertEqual(r.body, b"502 Bad Gateway: the server failed to answer\n")
        self.assertEqual(proxy.pools["test"].servers[0].active, 0)

    @defer.inlineCallbacks
    def test_truncated_body_reaches_the_client_as_truncated(self):  # type: ignore[no-untyped-def]
        def respond(transport, request):  # type: ignore[no-untyped-def]
            transport.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            transport.transport.loseConnection()

        backend = self.raw_backend(respond)
        proxy = self.start_proxy(proxy_config([backend.url]))
        failure = yield self.assertFailure(self.fetch(), http.client.IncompleteRead)
        self.assertEqual(failure.partial, b"0123456789")
        answer = yield self.raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(answer.endswith(b"\r\n\r\n0123456789"), answer)
        self.assertEqual(proxy.pools["test"].servers[0].active, 0)

    @defer.inlineCallbacks
    def test_truncated_chunked_body_is_never_completed(self):  # type: ignore[no-untyped-def]
        def respond(transport, request):  # type: ignore[no-untyped-def]
            transport.transport.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
            )
            transport.transport.loseConnection()

        backend = self.raw_backend(respond)
        self.start_proxy(proxy_config([backend.url]))
        answer = yield self.raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"hello", answer)
        self.assertNotIn(b"0\r\n\r\n", answer.split(b"\r\n\r\n", 1)[1])

    @defer.inlineCallbacks
    def test_client_disconnect_cancels_the_backend_request(self):  # type: ignore[no-untyped-def]
        b = self.backend("held", held_handler)
        proxy = self.start_proxy(proxy_config([b.url]))
        sock = socket.create_connection((HOST, self.port), timeout=CLIENT_TIMEOUT)
        sock.sendall(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
        while not b.held:
            yield deferLater(0.01)
        self.assertEqual(proxy.pools["test"].servers[0].active, 1)
        sock.close()
        while not b.lost:
            yield deferLater(0.01)
        self.assertEqual(proxy.pools["test"].servers[0].active, 0)

    @defer.inlineCallbacks
    def test_client_disconnect_mid_body_stops_the_backend(self):  # type: ignore[no-untyped-def]
        b = self.backend("big", streaming_handler(1 << 30))
        proxy = self.start_proxy(proxy_config([b.url]))
        sock = socket.create_connection((HOST, self.port), timeout=CLIENT_TIMEOUT)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        yield threads.deferToThread(sock.recv, 65536)
        sock.close()
        while not b.lost:
            yield deferLater(0.01)
        self.assertLess(b.streams[0].sent, 1 << 30)
        self.assertEqual(proxy.pools["test"].servers[0].active, 0)


class BackpressureTests(ProxyTestCase):
    @defer.inlineCallbacks
    def test_slow_client_pauses_backend(self):  # type: ignore[no-untyped-def]
        total = 1 << 30
        b = self.backend("big", streaming_handler(total))
        self.start_proxy(proxy_config([b.url]))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.settimeout(CLIENT_TIMEOUT)
        sock.connect((HOST, self.port))
        self.addCleanup(sock.close)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        while not b.streams:
            yield deferLater(0.01)
        stream = b.streams[0]
        # The client reads nothing: the proxy's socket buffer fills, it pauses
        # the backend connection, whose buffers fill, which pauses the
        # backend's producer.
        yield stream.paused
        # The kernel's buffers may still grow a little after the first pause
        # (loopback receive windows autotune up to tcp_rmem's maximum), so
        # the flow is watched until it stops: it must stop, and what went
        # out by then is bounded by socket buffers, not the 1 GiB body.
        sent_at_pause = stream.sent
        last, still = -1, 0
        for _ in range(500):
            yield deferLater(0.02)
            still = still + 1 if stream.sent == last and stream.is_paused else 0
            last = stream.sent
            if still >= 10:
                break
        self.assertGreaterEqual(still, 10, "the backend never stopped sending")
        self.assertLess(stream.sent, 64 * 1024 * 1024)
        # Reading resumes the flow.
        received = yield threads.deferToThread(_read_at_least, sock, 32 * 1024 * 1024)
        self.assertGreaterEqual(received, 32 * 1024 * 1024)
        self.assertGreater(stream.sent, sent_at_pause)


def _read_at_least(sock: socket.socket, n: int) -> int:
    got = 0
    while got < n:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        got += len(chunk)
    return got


class CloseDelimitedTruncationTests(ProxyTestCase):
    @defer.inlineCallbacks
    def test_http10_client_gets_a_reset_not_a_clean_close(self):  # type: ignore[no-untyped-def]
        def respond(transport, request):  # type: ignore[no-untyped-def]
            transport.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            transport.transport.loseConnection()

        backend = self.raw_backend(respond)
        self.start_proxy(proxy_config([backend.url]))
        # An HTTP/1.0 client of a body whose length the proxy passes on can
        # see the shortfall: a clean close is enough.
        answer = yield self.raw(b"GET / HTTP/1.0\r\n\r\n")
        self.assertTrue(answer.endswith(b"\r\n\r\n0123456789"), answer)

        def unsized(transport, request):  # type: ignore[no-untyped-def]
            transport.transport.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
            )
            transport.transport.loseConnection()

        backend.respond = unsized
        # Without a length, the end of an HTTP/1.0 body is the close: the
        # proxy must reset the connection instead.
        yield self.assertFailure(self.raw(b"GET / HTTP/1.0\r\n\r\n"), ConnectionResetError)


class _TricklingBackend(protocol.Factory):
    """
    A backend that records every byte as it arrives and can stop reading
    (C{hold}) or answer before the body is complete (C{early}).
    """

    noisy = False

    def __init__(self, hold: bool = False, early: bytes = b"") -> None:
        self.received = b""  # the first 1 MiB, for inspection
        self.total = 0
        self.hold = hold
        self.early = early
        self.connections: List[protocol.Protocol] = []
        self.arrived: defer.Deferred[None] = defer.Deferred()

    def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
        return _Trickle(self)


class _Trickle(protocol.Protocol):
    def __init__(self, factory: _TricklingBackend) -> None:
        self.factory = factory

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        if self.factory.hold:
            self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        factory = self.factory
        factory.total += len(data)
        if len(factory.received) < 1 << 20:
            factory.received += data
        if b"\r\n\r\n" in factory.received:
            if factory.early and b"answered" not in factory.received[-1:]:
                self.transport.write(factory.early)
                factory.early = b""
            if not factory.arrived.called and len(factory.received.split(b"\r\n\r\n", 1)[1]):
                factory.arrived.callback(None)


class StreamingUploadTests(ProxyTestCase):
    def trickling(self, **kwargs) -> _TricklingBackend:  # type: ignore[no-untyped-def]
        backend = _TricklingBackend(**kwargs)
        port = reactor.listenTCP(0, backend, interface=HOST)
        self.addCleanup(port.stopListening)
        backend.url = f"http://{HOST}:{port.getHost().port}"  # type: ignore[attr-defined]
        return backend

    def client(self) -> socket.socket:
        sock = socket.create_connection((HOST, self.port), timeout=CLIENT_TIMEOUT)
        self.addCleanup(sock.close)
        return sock

    @defer.inlineCallbacks
    def test_body_reaches_the_backend_before_the_client_finishes(self):  # type: ignore[no-untyped-def]
        backend = self.trickling()
        self.start_proxy(proxy_config([backend.url]))
        sock = self.client()
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nfirst")
        yield backend.arrived  # half the body is there, the rest not yet sent
        self.assertTrue(backend.received.endswith(b"\r\n\r\nfirst"), backend.received)
        sock.sendall(b"-last")
        while not backend.received.endswith(b"first-last"):
            yield deferLater(0.01)
        self.assertIn(b"Content-Length: 10\r\n", backend.received)

    @defer.inlineCallbacks
    def test_chunked_upload_streams_chunked(self):  # type: ignore[no-untyped-def]
        backend = self.trickling()
        self.start_proxy(proxy_config([backend.url]))
        sock = self.client()
        sock.sendall(
            b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        yield backend.arrived
        self.assertIn(b"Transfer-Encoding: chunked\r\n", backend.received)
        self.assertTrue(backend.received.endswith(b"5\r\nhello\r\n"), backend.received)

    @defer.inlineCallbacks
    def test_slow_backend_pauses_the_uploading_client(self):  # type: ignore[no-untyped-def]
        backend = self.trickling(hold=True)
        self.start_proxy(proxy_config([backend.url], max_body_size="0"))
        size = 256 * 1024 * 1024
        sock = self.client()
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        sent = yield threads.deferToThread(_send_until_blocked, sock, size)
        # Kernel buffers on three sockets and the proxy's bounded hold: far
        # from the whole body.
        self.assertLess(sent, 64 * 1024 * 1024)
        for connection in backend.connections:
            connection.transport.resumeProducing()
        rest = yield threads.deferToThread(_send_all, sock, size - sent)
        self.assertEqual(rest, size - sent)
        head = backend.received.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        while backend.total < len(head) + size:
            yield deferLater(0.01)
        self.assertEqual(backend.total, len(head) + size)

    @defer.inlineCallbacks
    def test_early_response_closes_instead_of_reading_the_body_as_requests(self):  # type: ignore[no-untyped-def]
        backend = self.trickling(
            early=b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n"
        )
        self.start_proxy(proxy_config([backend.url]))
        sock = self.client()
        smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(
            b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (1000 + len(smuggled))
        )
        answer = yield threads.deferToThread(_read_until_closed_after_sending, sock, smuggled)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 Payload Too Large\r\n"), answer)
        self.assertIn(b"Connection: close\r\n", answer)
        self.assertEqual(answer.count(b"HTTP/1.1"), 1)
        self.assertNotIn(b"/smuggled", backend.received.split(b"\r\n\r\n", 1)[0])
        self.assertEqual(
            backend.received.count(b"HTTP/1.1\r\n"), 1 + backend.received.count(smuggled)
        )


def _send_until_blocked(sock: socket.socket, limit: int) -> int:
    """Send until the peer stops taking bytes for a second; return how many went."""
    import select

    sock.setblocking(False)
    block = b"u" * 65536
    sent = 0
    try:
        while sent < limit:
            try:
                sent += sock.send(block[: limit - sent])
            except BlockingIOError:
                _, writable, _ = select.select([], [sock], [], 1.0)
                if not writable:
                    return sent
        return sent
    finally:
        sock.setblocking(True)


def _send_all(sock: socket.socket, n: int) -> int:
    block = b"u" * 65536
    left = n
    while left:
        left -= sock.send(block[:left])
    return n


def _read_until_closed_after_sending(sock: socket.socket, smuggled: bytes) -> bytes:
    head = sock.recv(65536)
    try:
        sock.sendall(b"p" * 1000 + smuggled)
    except OSError:
        pass
    chunks = [head]
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:
        pass
    return b"".join(chunks)


class ResilienceTests(ProxyTestCase):
    """Faults injected with real sockets (issue: resilience)."""

    def black_hole(self):  # type: ignore[no-untyped-def]
        # Accepts, reads, never answers.
        return self.raw_backend(lambda transport, request: None)

    def resetting(self):  # type: ignore[no-untyped-def]
        # Reads the request, then resets the connection before any byte.
        return self.raw_backend(lambda transport, request: transport.transport.abortConnection())

    @defer.inlineCallbacks
    def test_black_hole_get_goes_elsewhere(self):  # type: ignore[no-untyped-def]
        hole = self.black_hole()
        good = self.backend("good")
        self.start_proxy(proxy_config([hole.url, good.url], pool={"response_timeout": "300ms"}))
        r = yield self.fetch("GET", "/g")
        self.assertEqual((r.status, r.body), (200, b"good\n"))
        self.assertEqual(len(hole.requests), 1)

    @defer.inlineCallbacks
    def test_black_hole_post_is_504_and_sent_once(self):  # type: ignore[no-untyped-def]
        hole = self.black_hole()
        proxy = self.start_proxy(proxy_config([hole.url], pool={"response_timeout": "300ms"}))
        r = yield self.fetch("POST", "/p", body=b"once")
        self.assertEqual(r.status, 504)
        self.assertEqual(r.body, b"504 Gateway Timeout: the server did not answer in time\n")
        self.assertEqual(len(hole.requests), 1)
        self.assertEqual(proxy.pools["test"].servers[0].active, 0)

    @defer.inlineCallbacks
    def test_reset_before_response_get_retried_post_502_once(self):  # type: ignore[no-untyped-def]
        reset = self.resetting()
        good = self.backend("good")
        proxy = self.start_proxy(proxy_config([reset.url, good.url]))
        r = yield self.fetch("GET", "/g")
        self.assertEqual((r.status, r.body), (200, b"good\n"))
        self.assertEqual([req.split(b" ")[0] for req in reset.requests], [b"GET"])
        # Round robin: the next pick is the good server, then the resetting one.
        r = yield self.fetch("GET", "/g2")
        self.assertEqual(r.status, 200)
        r = yield self.fetch("POST", "/p", body=b"once")
        self.assertEqual(r.status, 502)
        self.assertEqual([req.split(b" ")[0] for req in reset.requests], [b"GET", b"POST"])
        self.assertNotIn(b"POST", [s.method for s in good.seen])
        self.assertEqual([s.active for s in proxy.pools["test"].servers], [0, 0])

    @defer.inlineCallbacks
    def test_stale_pooled_connection_for_get_and_post(self):  # type: ignore[no-untyped-def]
        closed: List[defer.Deferred[None]] = []

        def respond(transport, request):  # type: ignore[no-untyped-def]
            # Answer, then close the idle connection soon after, as a backend
            # with a keep-alive timeout shorter than the proxy's would.
            transport.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            done: defer.Deferred[None] = defer.Deferred()
            closed.append(done)
            reactor.callLater(0.05, transport.transport.loseConnection)
            transport.closed.addCallback(lambda _: done.callback(None))

        backend = self.raw_backend(respond)
        self.start_proxy(proxy_config([backend.url], backend_keepalive_timeout="60s"))
        for method in ["GET", "POST", "GET", "POST"]:
            r = yield self.fetch(method, "/", body=b"x" if method == "POST" else None)
            self.assertEqual((r.status, r.body), (200, b"ok"))
            yield closed[-1]  # the pooled connection is now stale
        self.assertEqual(
            [req.split(b" ")[0] for req in backend.requests], [b"GET", b"POST", b"GET", b"POST"]
        )


class HealthAndLimitsTests(ProxyTestCase):
    @defer.inlineCallbacks
    def wait_until(self, condition):  # type: ignore[no-untyped-def]
        while not condition():
            yield deferLater(0.01)

    @defer.inlineCallbacks
    def test_max_connections_holds_under_200_concurrent_clients(self):  # type: ignore[no-untyped-def]
        from twisted.web.client import Agent, HTTPConnectionPool, readBody

        def slow(backend, request, body):  # type: ignore[no-untyped-def]
            def answer() -> None:
                request.setHeader(b"Content-Length", b"2")
                request.write(b"ok")
                request.finish()

            reactor.callLater(0.005, answer)
            return server.NOT_DONE_YET

        a, b = self.backend("a", slow), self.backend("b", slow)
        proxy = self.start_proxy(
            proxy_config(
                [f"{a.url} max_connections=4", f"{b.url} max_connections=4"],
                "least_connections",
                pool={"queue_timeout": "20s"},
            )
        )
        clients = HTTPConnectionPool(reactor)
        clients.maxPersistentPerHost = 200
        self.addCleanup(clients.closeCachedConnections)
        agent = Agent(reactor, pool=clients)
        url = f"http://127.0.0.1:{self.port}/".encode()
        responses = yield defer.gatherResults(
            [agent.request(b"GET", url).addCallback(readBody) for _ in range(200)]
        )
        self.assertEqual(responses, [b"ok"] * 200)
        self.assertEqual(len(a.seen) + len(b.seen), 200)
        self.assertLessEqual(a.peak, 4)
        self.assertLessEqual(b.peak, 4)
        self.assertEqual(a.peak, 4)  # the limit was reached, not just respected
        self.assertEqual([s.active for s in proxy.pools["test"].servers], [0, 0])

    @defer.inlineCallbacks
    def test_queue_timeout_is_503(self):  # type: ignore[no-untyped-def]
        held = self.backend("held", held_handler)
        self.start_proxy(
            proxy_config([f"{held.url} max_connections=1"], pool={"queue_timeout": "200ms"})
        )
        first = self.fetch("GET", "/1")
        yield self.wait_until(lambda: held.held)
        r = yield self.fetch("GET", "/2")
        self.assertEqual(r.status, 503)
        self.assertEqual(r.body, b"503 Service Unavailable: every server is busy\n")
        self.assertEqual(r.header("Retry-After"), ["10"])
        held.held[0].callback(b"done")
        r = yield first
        self.assertEqual(r.body, b"done")
        self.assertEqual(len(held.seen), 1)

    @defer.inlineCallbacks
    def test_health_checks_take_a_server_out_and_back(self):  # type: ignore[no-untyped-def]
        state = {"healthy": True}

        def handler(backend, request, body):  # type: ignore[no-untyped-def]
            if request.path == b"/healthz":
                request.setResponseCode(200 if state["healthy"] else 503)
                return b""
            return default_handler(backend, request, body)

        flaky = self.backend("flaky", handler)
        steady = self.backend("steady")
        proxy = self.start_proxy(
            proxy_config(
                [flaky.url, steady.url],
                pool={
                    "health_check": "GET /healthz",
                    "health_interval": "50ms",
                    "health_timeout": "50ms",
                    "health_rise": "2",
                    "health_fall": "2",
                },
            )
        )
        flaky_state = proxy.pools["test"].servers[0]
        yield self.wait_until(lambda: len([s for s in flaky.seen if s.uri == b"/healthz"]) >= 2)
        state["healthy"] = False
        yield self.wait_until(lambda: not flaky_state.up)
        before = len([s for s in flaky.seen if s.uri != b"/healthz"])
        for _ in range(4):
            r = yield self.fetch("GET", "/work")
            self.assertEqual(r.body, b"steady\n")
        self.assertEqual(len([s for s in flaky.seen if s.uri != b"/healthz"]), before)
        self.assertEqual(flaky_state.last_check, "status 503")
        checks = [s for s in flaky.seen if s.uri == b"/healthz"]
        self.assertEqual(checks[0].header(b"user-agent"), [b"lbproxy-health-check"])
        state["healthy"] = True
        yield self.wait_until(lambda: flaky_state.up)
        bodies = set()
        for _ in range(4):
            r = yield self.fetch("GET", "/work")
            bodies.add(r.body)
        self.assertEqual(bodies, {b"flaky\n", b"steady\n"})

    @defer.inlineCallbacks
    def test_every_server_down_is_503_then_one_back(self):  # type: ignore[no-untyped-def]
        state = {"healthy": False}

        def handler(backend, request, body):  # type: ignore[no-untyped-def]
            if request.path == b"/healthz":
                request.setResponseCode(200 if state["healthy"] else 500)
                return b""
            return default_handler(backend, request, body)

        only = self.backend("only", handler)
        proxy = self.start_proxy(
            proxy_config(
                [only.url],
                pool={
                    "health_check": "GET /healthz",
                    "health_interval": "50ms",
                    "health_timeout": "50ms",
                    "health_rise": "1",
                    "health_fall": "1",
                },
            )
        )
        server_state = proxy.pools["test"].servers[0]
        yield self.wait_until(lambda: not server_state.up)
        r = yield self.fetch("GET", "/work")
        self.assertEqual(r.status, 503)
        self.assertEqual(r.header("Retry-After"), ["1"])
        self.assertEqual([s for s in only.seen if s.uri == b"/work"], [])
        state["healthy"] = True
        yield self.wait_until(lambda: server_state.up)
        r = yield self.fetch("GET", "/work")
        self.assertEqual((r.status, r.body), (200, b"only\n"))

    @defer.inlineCallbacks
    def test_drain_lets_in_flight_finish_and_sends_nothing_new(self):  # type: ignore[no-untyped-def]
        held = self.backend("held", held_handler)
        other = self.backend("other")
        proxy = self.start_proxy(proxy_config([held.url, other.url]))
        pool = proxy.pools["test"]
        in_flight = self.fetch("GET", "/long")
        yield self.wait_until(lambda: held.held)
        pool.drain(pool.servers[0])
        for _ in range(4):
            r = yield self.fetch("GET", "/new")
            self.assertEqual(r.body, b"other\n")
        held.held[0].callback(b"finished")
        r = yield in_flight
        self.assertEqual(r.body, b"finished")
        self.assertEqual(len(held.seen), 1)


class PassiveAndConnectTimeoutTests(ProxyTestCase):
    @defer.inlineCallbacks
    def test_5xx_takes_a_server_out_when_configured(self):  # type: ignore[no-untyped-def]
        def failing(backend, request, body):  # type: ignore[no-untyped-def]
            request.setResponseCode(500)
            return b"broken\n"

        bad, good = self.backend("bad", failing), self.backend("good")
        proxy = self.start_proxy(
            proxy_config(
                [bad.url, good.url],
                pool={"max_fails": "2", "fail_timeout": "30s", "fail_on_5xx": "yes"},
            )
        )
        statuses = []
        for _ in range(8):
            r = yield self.fetch()
            statuses.append(r.status)
        # The first two requests to the bad server are relayed as they are,
        # then it is out for fail_timeout.
        self.assertEqual(statuses.count(500), 2)
        self.assertEqual(len(bad.seen), 2)
        self.assertTrue(proxy.pools["test"].servers[0].ejected)

    @defer.inlineCallbacks
    def test_connect_timeout_goes_to_the_next_server(self):  # type: ignore[no-untyped-def]
        # A loopback listener that never accepts, its queue filled: further
        # connection attempts get no answer, as from a vanished host.
        stuck = socket.socket()
        self.addCleanup(stuck.close)
        stuck.bind((HOST, 0))
        stuck.listen(0)
        fillers = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(stuck.getsockname())
            fillers.append(filler)
        self.addCleanup(lambda: [f.close() for f in fillers])
        good = self.backend("good")
        url = f"http://{HOST}:{stuck.getsockname()[1]}"
        self.start_proxy(
            proxy_config([url, good.url], pool={"connect_timeout": "200ms", "retries": "1"})
        )
        r = yield self.fetch("POST", "/p", body=b"sent once")
        self.assertEqual((r.status, r.body), (200, b"good\n"))
        self.assertEqual([s.body for s in good.seen], [b"sent once"])
