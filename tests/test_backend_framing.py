"""
What a backend sends outside of a well-framed response: stray bytes on a
backend connection never answer another request, and a response that fails
before its first byte has reached the client is a 502 (or goes to another
server), never a bare close.
"""

from __future__ import annotations

import select
import socket
from typing import Dict, List, Tuple

from twisted.internet import defer, reactor, threads
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web._newclient import (
    HTTP11ClientProtocol,
    Request,
    RequestNotSent,
    ResponseDone,
    ResponseFailed,
)
from twisted.web.client import readBody
from twisted.web.http_headers import Headers

from lbproxy.upstream.backend import BackendConnectionPool, _BackendProtocol
from tests.support import CLIENT_TIMEOUT, HOST, ProxyTestCase, proxy_config, wait_until
from tests.test_forwarder import ForwarderCase, ScriptedResponse


class TwistedInternalsTests(unittest.TestCase):
    def test_the_parser_hands_over_the_bytes_past_a_response(self) -> None:
        protocol, transport, pooled = _connected()
        _exchange(protocol, b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")
        self.assertEqual(
            (pooled, protocol.state),
            ([], "DISCARDED"),
            "HTTP11ClientProtocol._finishResponse no longer receives the bytes read "
            "past the end of a response: see INTERNALS in lbproxy/_twisted.py",
        )


def _connected() -> Tuple[_BackendProtocol, StringTransport, List[object]]:
    pooled: List[object] = []
    protocol = _BackendProtocol(pooled.append)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 8080))
    protocol.makeConnection(transport)
    return protocol, transport, pooled


def _exchange(protocol: _BackendProtocol, method: bytes, response: bytes) -> defer.Deferred:
    request = Request(method, b"/", Headers({b"host": [b"x"]}), None, persistent=True)
    d = protocol.request(request)
    protocol.dataReceived(response)
    return d


class ReuseTests(unittest.TestCase):
    """Which complete responses leave their connection fit for another."""

    table = [
        # method, response head (and body), reused
        (b"GET", b"200 OK\r\nContent-Length: 2\r\n\r\nok", True),
        (b"GET", b"200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", True),
        (b"HEAD", b"200 OK\r\n\r\n", True),
        (b"HEAD", b"200 OK\r\nContent-Length: 0\r\n\r\n", True),
        (b"HEAD", b"200 OK\r\nContent-Length: 5\r\n\r\n", False),
        (b"HEAD", b"200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", False),
        (b"GET", b"204 No Content\r\n\r\n", True),
        (b"GET", b"204 No Content\r\nContent-Length: 3\r\n\r\n", False),
        (b"GET", b"304 Not Modified\r\n\r\n", True),
        (b"GET", b"304 Not Modified\r\nContent-Length: 0, 0\r\n\r\n", True),
        (b"GET", b"304 Not Modified\r\nContent-Length: 10\r\n\r\n", False),
        (b"GET", b"304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", False),
        # Bytes already read past the end of the response.
        (b"GET", b"200 OK\r\nContent-Length: 2\r\n\r\noksurplus", False),
        (b"HEAD", b"200 OK\r\n\r\nbody", False),
        (b"GET", b"204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n", False),
    ]

    def test_a_response_keeps_only_its_end_to_end_headers(self) -> None:
        """
        The hop-by-hop headers of a backend's response, and those its
        Connection header names, are gone from the response the agent gives.
        """
        protocol, _, _ = _connected()
        response = self.successResultOf(
            _exchange(
                protocol,
                b"GET",
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private\r\nKeep-Alive: 5\r\n"
                b"X-Private: secret\r\nTrailer: X-T\r\nX-Public: shown\r\n"
                b"Content-Length: 2\r\n\r\nok",
            )
        )
        self.assertEqual(list(response.headers.getAllRawHeaders()), [(b"X-Public", [b"shown"])])

    def test_table(self) -> None:
        for method, response, reused in self.table:
            protocol, transport, pooled = _connected()
            _exchange(protocol, method, b"HTTP/1.1 " + response)
            case = (method, response)
            self.assertEqual(pooled == [protocol], reused, case)
            self.assertEqual(transport.disconnecting, not reused, case)
            self.assertEqual(protocol.state, "QUIESCENT" if reused else "DISCARDED", case)

    def test_bytes_on_an_idle_connection_close_it_at_once(self) -> None:
        protocol, transport, pooled = _connected()
        _exchange(protocol, b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(pooled, [protocol])
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nleaked")
        self.assertTrue(transport.disconnected)  # aborted, not a graceful close
        # The pool skips it even before the close has happened ...
        self.assertEqual(protocol.state, "DISCARDED")
        # ... and a request that reaches it anyway is refused unsent.
        failure = self.failureResultOf(_exchange(protocol, b"GET", b""))
        failure.trap(RequestNotSent)


class _NoConnect:
    """An endpoint that records connection attempts and never connects."""

    def __init__(self) -> None:
        self.attempts = 0

    def connect(self, factory: object) -> defer.Deferred:
        self.attempts += 1
        return defer.Deferred()


class IdleCheckTests(unittest.TestCase):
    """
    The pool checks an idle connection's socket before reusing it: bytes (or
    a close) that the reactor has not read yet keep it from being used.
    """

    @defer.inlineCallbacks
    def idle_connection(self):  # type: ignore[no-untyped-def]
        listener = socket.socket()
        listener.bind((HOST, 0))
        listener.listen(1)
        self.addCleanup(listener.close)
        port = listener.getsockname()[1]
        pool = BackendConnectionPool(reactor)
        key = (b"http", HOST.encode(), port)
        accepted = threads.deferToThread(listener.accept)
        protocol = yield pool.getConnection(key, TCP4ClientEndpoint(reactor, HOST, port))
        server, _ = yield accepted
        server.settimeout(CLIENT_TIMEOUT)
        self.addCleanup(server.close)
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        serve = threads.deferToThread(lambda: (server.recv(65536), server.sendall(answer)))
        response = yield protocol.request(
            Request(b"GET", b"/", Headers({b"host": [b"x"]}), None, persistent=True)
        )
        body = yield readBody(response)
        yield serve
        self.assertEqual(body, b"ok")
        self.assertEqual(pool._connections[key], [protocol])

        @defer.inlineCallbacks
        def closed():  # type: ignore[no-untyped-def]
            yield wait_until(lambda: HTTP11ClientProtocol.state.fget(protocol) == "CONNECTION_LOST")
            yield pool.closeCachedConnections()

        self.addCleanup(closed)
        return (pool, key, protocol, server)

    def wait_readable(self, protocol: _BackendProtocol) -> None:
        # The bytes are on their way over loopback: wait (briefly, off the
        # reactor's loop) until the kernel has them for the proxy's socket.
        handle = protocol.transport.getHandle()  # type: ignore[union-attr]
        readable, _, _ = select.select([handle], [], [], CLIENT_TIMEOUT)
        self.assertTrue(readable)

    @defer.inlineCallbacks
    def test_unread_bytes_keep_an_idle_connection_from_reuse(self):  # type: ignore[no-untyped-def]
        pool, key, protocol, server = yield self.idle_connection()
        server.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nleaked")
        self.wait_readable(protocol)
        endpoint = _NoConnect()
        pool.getConnection(key, endpoint)
        self.assertEqual(protocol.state, "DISCARDED")
        self.assertEqual(endpoint.attempts, 1)
        self.assertEqual(pool._connections[key], [])

    @defer.inlineCallbacks
    def test_a_close_waiting_keeps_an_idle_connection_from_reuse(self):  # type: ignore[no-untyped-def]
        pool, key, protocol, server = yield self.idle_connection()
        server.close()
        self.wait_readable(protocol)
        endpoint = _NoConnect()
        pool.getConnection(key, endpoint)
        self.assertEqual(protocol.state, "DISCARDED")
        self.assertEqual(endpoint.attempts, 1)

    @defer.inlineCallbacks
    def test_each_check_sees_what_arrived_since_the_last(self):  # type: ignore[no-untyped-def]
        pool, key, protocol, server = yield self.idle_connection()
        self.assertTrue(protocol.ready_for_request())
        self.assertTrue(protocol.ready_for_request())
        server.sendall(b"x")
        self.wait_readable(protocol)
        self.assertFalse(protocol.ready_for_request())
        self.assertEqual(protocol.state, "DISCARDED")

    @defer.inlineCallbacks
    def test_a_quiet_idle_connection_is_reused(self):  # type: ignore[no-untyped-def]
        pool, key, protocol, server = yield self.idle_connection()
        endpoint = _NoConnect()
        reused = yield pool.getConnection(key, endpoint)
        self.assertIs(reused._clientProtocol, protocol)
        self.assertEqual(endpoint.attempts, 0)
        protocol.transport.loseConnection()  # type: ignore[union-attr]


def _leak(n: bytes) -> bytes:
    """A whole response, sent where it does not belong: bytes meant for request n."""
    body = b"leak-" + n
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class StrayBytesTests(ProxyTestCase):
    """
    A backend sends bytes after HEAD, 204 and 304 responses and past a
    Content-Length, crafted as a whole response meant for the request they
    follow.  Where the proxy cannot know they come, the backend sends them at
    the worst moment: just before it answers the next request on the same
    connection.  No client ever receives them.
    """

    @defer.inlineCallbacks
    def test_no_client_receives_bytes_meant_for_another_request(self):  # type: ignore[no-untyped-def]
        connections: Dict[bytes, object] = {}

        def respond(proto, request):  # type: ignore[no-untyped-def]
            write = proto.transport.write
            late = getattr(proto, "late", b"")
            if late:
                # The worst case: stray bytes right before the next answer.
                write(late)
                proto.late = b""
            kind, n = request.split(b" ", 2)[1].split(b"/")[1:3]
            connections[n] = proto
            own = b"own-" + n
            if kind == b"head":
                write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(own))
                proto.late = _leak(n)
            elif kind == b"204":
                write(b"HTTP/1.1 204 No Content\r\nContent-Length: %d\r\n\r\n" % len(own))
                proto.late = _leak(n)
            elif kind == b"304":
                write(b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n")
                proto.late = _leak(n)
            elif kind == b"overrun":
                # More than its Content-Length, partly in the same segment.
                write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s\r\n" % (len(own), own))
                proto.late = _leak(n)
            else:
                write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(own), own))

        backend = self.raw_backend(respond)
        # Idle backend connections are kept long enough to be reused.
        self.start_proxy(
            proxy_config([backend.url], pool={"retries": "0"}, backend_keepalive_timeout="60s")
        )
        kinds = [b"head", b"get", b"204", b"get", b"304", b"get", b"overrun", b"get", b"idle"]
        methods = {b"head": "HEAD"}
        statuses = {b"204": 204, b"304": 304}
        for i in range(36):
            kind = kinds[i % len(kinds)]
            n = b"%03d" % i
            r = yield self.fetch(methods.get(kind, "GET"), f"/{kind.decode()}/{n.decode()}")
            self.assertEqual(r.status, statuses.get(kind, 200), (kind, n, r))
            expected = b"" if kind in (b"head", b"204", b"304") else b"own-" + n
            self.assertEqual(r.body, expected, (kind, n))
            sized = kind not in (b"204", b"304")
            self.assertEqual(r.header("Content-Length"), ["7"] if sized else [], (kind, n))
            if kind == b"idle":
                # Stray bytes on the idle connection: closed at once, with
                # no request needed to find out.
                proto = connections[n]
                proto.transport.write(_leak(n))  # type: ignore[attr-defined]
                yield wait_until(lambda proto=proto: proto not in backend.open, timeout=5)
        # A new connection after each response that may be followed by
        # stray bytes (the last one needs none), and only then.
        self.assertEqual(backend.connections, 5 * 36 // len(kinds))


_CUT = object()


class FirstByteTests(ProxyTestCase):
    """
    A response that fails before any byte of it has reached the client is
    replaced by a 502; after bytes went out, the client sees a truncation.
    """

    failures: Dict[str, List[object]] = {
        "bad chunk size": [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"zz\r\n"],
        "short body, nothing sent": [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", _CUT],
        "cut after a chunked head": [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            _CUT,
        ],
        "cut after a sized head": [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", _CUT],
        "empty chunk size": [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"\r\nhello\r\n0\r\n\r\n",
        ],
    }

    def answer_with(self, parts: List[object], later: bool):  # type: ignore[no-untyped-def]
        """
        A backend that answers with C{parts} (bytes, or L{_CUT} to close):
        all at once, or the first at once and the rest in a later turn.
        """

        def respond(proto, request):  # type: ignore[no-untyped-def]
            def send(some: List[object]) -> None:
                for part in some:
                    if part is _CUT:
                        proto.transport.loseConnection()
                    else:
                        proto.transport.write(part)

            if later:
                send(parts[:1])
                reactor.callLater(0.02, send, parts[1:])
            else:
                send(parts)

        return self.raw_backend(respond)

    @defer.inlineCallbacks
    def test_failure_before_the_first_byte_is_502(self):  # type: ignore[no-untyped-def]
        for name, parts in self.failures.items():
            for later in (False, True):
                case = (name, later)
                backend = self.answer_with(parts, later)
                proxy = self.start_proxy(proxy_config([backend.url], pool={"retries": "0"}))
                r = yield self.fetch()
                self.assertEqual(r.status, 502, case)
                self.assertEqual(r.body, b"502 Bad Gateway: the server failed to answer\n", case)
                answer = yield self.raw(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                self.assertTrue(answer.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), (case, answer))
                server = proxy.pools["test"].servers[0]
                self.assertEqual(server.stats.failures, 2, case)
                self.assertEqual(server.active, 0, case)
                yield proxy.stopService()
                yield backend.stop()

    @defer.inlineCallbacks
    def test_failure_after_bytes_went_out_is_a_visible_truncation(self):  # type: ignore[no-untyped-def]
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        backend = self.answer_with([head, b"zz\r\n"], later=True)
        proxy = self.start_proxy(proxy_config([backend.url], pool={"retries": "1"}))
        answer = yield self.raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer)
        body = answer.split(b"\r\n\r\n", 1)[1]
        self.assertIn(b"hello", body)
        self.assertFalse(body.endswith(b"0\r\n\r\n"), answer)
        # Once bytes went out, the request is not sent again.
        self.assertEqual(len(backend.requests), 1)
        self.assertEqual(proxy.pools["test"].servers[0].stats.failures, 1)

    @defer.inlineCallbacks
    def test_idempotent_request_goes_to_the_next_server(self):  # type: ignore[no-untyped-def]
        broken = self.answer_with([b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", _CUT], True)
        sound = self.answer_with([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nsound"], False)
        proxy = self.start_proxy(
            proxy_config([f"{broken.url} name=broken", f"{sound.url} name=sound"])
        )
        r = yield self.fetch()
        self.assertEqual((r.status, r.body), (200, b"sound"))
        servers = {s.name: s for s in proxy.pools["test"].servers}
        self.assertEqual(servers["broken"].stats.failures, 1)
        self.assertEqual(proxy.pools["test"].stats.retries, 1)
        self.assertEqual([s.active for s in servers.values()], [0, 0])

    @defer.inlineCallbacks
    def test_other_request_is_not_sent_again(self):  # type: ignore[no-untyped-def]
        broken = self.answer_with([b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", _CUT], True)
        sound = self.answer_with([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nsound"], False)
        self.start_proxy(proxy_config([broken.url, sound.url]))
        r = yield self.fetch("POST", body=b"data")
        self.assertEqual(r.status, 502)
        self.assertEqual((len(broken.requests), len(sound.requests)), (1, 0))


class FirstByteTimingTests(ForwarderCase):
    """The same rule against a scripted agent, with time as a parameter."""

    servers = ["http://127.0.0.1:1 name=a", "http://127.0.0.1:2 name=b"]
    pool_options = {"idle_timeout": "60s", "retries": "0"}

    def test_failure_before_the_first_byte_replaces_the_response(self) -> None:
        d = self.request()
        response = ScriptedResponse(length=10)
        d.callback(response)
        response.transport.protocol.connectionLost(
            Failure(ResponseFailed([Failure(ConnectionError())]))
        )
        answer = self.client.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), answer)
        self.assertNotIn(b"X-From", answer)  # nothing of the failed response
        self.assertFalse(self.client.disconnecting)  # the connection stays usable
        self.assertEqual(self.pool.log, ["+a", "-a"])

    def test_body_stalled_before_the_first_byte_is_504(self) -> None:
        d = self.request()
        response = ScriptedResponse(length=10)
        d.callback(response)
        self.clock.advance(59.9)
        self.assertEqual(self.client.value(), b"")
        self.clock.advance(0.1)
        self.assertEqual(response.transport.stopped, 1)
        self.assertTrue(self.client.value().startswith(b"HTTP/1.1 504 Gateway Timeout\r\n"))
        self.assertEqual(self.active(), [0, 0])


class FirstByteRetryTimingTests(ForwarderCase):
    pool_options = {"idle_timeout": "60s", "retries": "1"}

    def test_stalled_get_goes_to_the_next_server_with_a_fresh_clock(self) -> None:
        d = self.request()
        response = ScriptedResponse(length=10)
        d.callback(response)
        self.clock.advance(60)
        self.assertEqual([sent[0] for sent in self.agent.sent], ["a", "b"])
        second = ScriptedResponse(length=2)
        self.agent.sent[-1][-1].callback(second)
        second.transport.protocol.dataReceived(b"ok")
        second.transport.protocol.connectionLost(Failure(ResponseDone()))
        answer = self.client.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer)
        self.assertTrue(answer.endswith(b"\r\n\r\nok"), answer)
        self.assertEqual(self.pool.log, ["+a", "-a", "+b", "-b"])
