"""
Trust at the edge, over raw sockets with real backends: header bytes, the
request target, Host and absolute-form targets, and the rule that a failure
caused by the request itself is the client's (400), never retried and never
counted against a server.
"""

from __future__ import annotations

import socket
from typing import Dict, List, Tuple

from twisted.internet import defer, threads
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web._newclient import RequestGenerationFailed
from twisted.web.client import readBody
from twisted.web.http_headers import Headers

from lbproxy import headers as rules
from lbproxy.front import resource
from lbproxy.upstream.backend import BackendAgent, UnsendableRequest
from lbproxy.upstream.pool import ServerState
from tests.support import HOST, ProxyTestCase, proxy_config, wait_until
from tests.test_forwarder import ForwarderCase
from tests.test_hardening import exchange, request

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def ok(transport, raw):  # type: ignore[no-untyped-def]
    """Answer at once, except a request for /hold, which is never answered."""
    if not raw.startswith(b"POST /hold "):
        transport.transport.write(OK)


def status(answer: bytes) -> int:
    return int(answer[9:12]) if answer[:9] in (b"HTTP/1.1 ", b"HTTP/1.0 ") else 0


class EdgeCase(ProxyTestCase):
    """
    One real backend behind the proxy; with C{max_fails = 1} a single failure
    counted against it would take it out, so each test can see one.
    """

    proxy_options: Dict[str, str] = {}

    def setUp(self) -> None:
        self.backend = self.raw_backend(ok)
        self.start_proxy(
            proxy_config(
                [self.backend.url],
                pool={"max_fails": "1", "fail_timeout": "60s"},
                **self.proxy_options,
            )
        )

    @property
    def server(self) -> ServerState:
        return self.proxy.pools["test"].servers[0]

    def assert_server_untouched(self, name: object = "") -> None:
        server = self.server
        stats = server.stats
        self.assertEqual(
            (stats.failures, stats.connect_failures, server.fails, server.ejected),
            (0, 0, 0, False),
            f"{name!r} counted against the server",
        )
        self.assertEqual(self.proxy.pools["test"].stats.retries, 0, f"{name!r} was retried")

    @defer.inlineCallbacks
    def refused(self, cases: List[Tuple[bytes, int]]):  # type: ignore[no-untyped-def]
        """
        Each raw request is answered with its status and a closed connection;
        the backend sees no connection, and the server no failure.
        """
        for data, expected in cases:
            answer, closed = yield threads.deferToThread(exchange, self.port, data)
            self.assertEqual(status(answer), expected, (data, answer[:200]))
            self.assertTrue(closed, (data, "connection left open"))
            self.assertEqual(self.backend.connections, 0, (data, "reached the backend"))
            self.assert_server_untouched(data)

    @defer.inlineCallbacks
    def forwarded(self, data: bytes):  # type: ignore[no-untyped-def]
        """Send one request; it must be answered 200; return what the backend got."""
        before = len(self.backend.requests)
        answer, _ = yield threads.deferToThread(exchange, self.port, data)
        self.assertEqual(status(answer), 200, (data, answer[:200]))
        self.assertEqual(len(self.backend.requests), before + 1)
        return self.backend.requests[-1]


class HeaderBytesTests(EdgeCase):
    def test_every_control_byte_in_a_value_is_refused(self):  # type: ignore[no-untyped-def]
        controls = [bytes([b]) for b in list(range(0x00, 0x09)) + list(range(0x0A, 0x20)) + [0x7F]]
        self.assertEqual(len(controls), 32)
        cases = [
            # The classic CL.TE setup: a backend that reads the control byte
            # as a line break sees a second framing header.
            (
                request(
                    b"POST / HTTP/1.1\nHost: x\nContent-Length: 5\nX: X"
                    + byte
                    + b"Transfer-Encoding: chunked\n",
                    b"0\r\n\r\n",
                ),
                400,
            )
            for byte in controls
        ]
        # Anywhere in the value, and in any header, Host included.
        cases += [
            (request(b"GET / HTTP/1.1\nHost: x\nUser-Agent: \x01a\n"), 400),
            (request(b"GET / HTTP/1.1\nHost: x\nX-A: a\x1f\n"), 400),
            (request(b"GET / HTTP/1.1\nHost: x\x0b\n"), 400),
            (request(b"GET / HTTP/1.1\nX-A: \x7f\nHost: x\n"), 400),
        ]
        return self.refused(cases)

    def test_every_non_token_byte_in_a_name_is_refused(self):  # type: ignore[no-untyped-def]
        # A colon ends the name, so it cannot be in one.
        separators = b' "(),/;<=>?@[\\]{}\t'
        others = bytes(range(0x00, 0x20)) + b"\x7f\x80\xa0\xff"
        bad = [bytes([b]) for b in separators + others if b not in b"\r\n"]
        cases = [(request(b"GET / HTTP/1.1\nHost: x\nX" + b + b"Y: z\n"), 400) for b in bad]
        cases.append((request(b"GET / HTTP/1.1\nHost: x\n: empty name\n"), 400))
        return self.refused(cases)

    @defer.inlineCallbacks
    def test_tab_and_obs_text_pass_unchanged(self):  # type: ignore[no-untyped-def]
        # obs-text (0x80-0xFF) is passed through as nginx and HAProxy do:
        # RFC 9110 allows it in a value, and it is no line break anywhere.
        obs = bytes(range(0x80, 0x100))
        head = yield self.forwarded(
            request(
                b"GET / HTTP/1.1\nHost: x\nX-Tab: a\tb\nX-Obs: caf\xe9 "
                + obs
                + b"\nConnection: close\n"
            )
        )
        self.assertIn(b"\r\nX-Tab: a\tb\r\n", head)
        self.assertIn(b"\r\nX-Obs: caf\xe9 " + obs + b"\r\n", head)
        self.assert_server_untouched()

    def test_token_names_of_every_kind_pass(self):  # type: ignore[no-untyped-def]
        return self.forwarded(
            request(b"GET / HTTP/1.1\nHost: x\nX-!#$%&'*+.^_`|~09az: v\nConnection: close\n")
        )


class RequestLineTests(EdgeCase):
    def test_targets_outside_visible_ascii_are_refused(self):  # type: ignore[no-untyped-def]
        # 0x7F-0xB0 pass twisted.web's own check (it compares with 176, not
        # 0o176) and then Twisted's client refuses to send them.
        cases = [
            (request(b"GET /" + bytes([b]) + b" HTTP/1.1\nHost: x\n"), 400)
            for b in [0x01, 0x0B, 0x7F, 0x80, 0x9F, 0xB0, 0xB1, 0xFF]
        ]
        cases += [
            (request(b"GET http://x/\x7f HTTP/1.1\nHost: x\n"), 400),
            (request(b"OPTIONS *\x7f HTTP/1.1\nHost: x\n"), 400),
            (request(b"CONNECT x:443\x80 HTTP/1.1\nHost: x\n"), 400),
        ]
        return self.refused(cases)

    def test_targets_of_no_valid_form_are_refused(self):  # type: ignore[no-untyped-def]
        cases = [
            (request(b"GET " + target + b" HTTP/1.1\nHost: x\n"), 400)
            for target in [
                b"admin",
                b"x:443",  # authority-form, outside CONNECT
                b"*",  # outside OPTIONS
                b"ftp://x/",
                b"ws://x/",
                b"http:/x/",
                b"http://",
                b"http:///a",
                b"http://u@x/",
                b"http://x:y/",
                b"http://x:99999/",
                b"http://[::1/",
                b"/a#fragment",
                b"http://x/#f",
            ]
        ]
        cases += [
            (request(b"G(T / HTTP/1.1\nHost: x\n"), 400),
            (request(b"GET\t/ HTTP/1.1\nHost: x\n"), 400),
            (request(b"CONNECT x:443 HTTP/1.1\nHost: x:443\n"), 501),
        ]
        return self.refused(cases)

    @defer.inlineCallbacks
    def test_origin_form_goes_byte_for_byte(self):  # type: ignore[no-untyped-def]
        head = yield self.forwarded(
            request(b'GET //a/%2F/../b;p?q=1&q=2&x=|{}"^` HTTP/1.1\nHost: x\nConnection: close\n')
        )
        self.assertTrue(head.startswith(b'GET //a/%2F/../b;p?q=1&q=2&x=|{}"^` HTTP/1.1\r\n'), head)

    @defer.inlineCallbacks
    def test_options_asterisk_is_forwarded(self):  # type: ignore[no-untyped-def]
        head = yield self.forwarded(request(b"OPTIONS * HTTP/1.1\nHost: x\nConnection: close\n"))
        self.assertTrue(head.startswith(b"OPTIONS * HTTP/1.1\r\n"), head)


class ChunkLineTests(ProxyTestCase):
    """Chunk extensions and trailers: never forwarded, checked all the same."""

    def setUp(self) -> None:
        self.origin = self.backend("b")
        self.start_proxy(proxy_config([self.origin.url]))

    def chunked(self, body: bytes) -> bytes:
        return request(b"POST /up HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n", body)

    @defer.inlineCallbacks
    def test_control_bytes_in_chunk_extensions_are_refused(self):  # type: ignore[no-untyped-def]
        for ext in [b";a=\x0b", b";a\x00", b";\x7f", b";a=\x1fb"]:
            answer, closed = yield threads.deferToThread(
                exchange, self.port, self.chunked(b"5" + ext + b"\r\nhello\r\n0\r\n\r\n")
            )
            self.assertEqual(status(answer), 400, (ext, answer))
            self.assertTrue(closed)
        self.assertEqual(self.origin.connections, 0)

    @defer.inlineCallbacks
    def test_invalid_trailer_fields_are_refused(self):  # type: ignore[no-untyped-def]
        for trailer in [b"X: a\x0bb", b"X: \x00", b"X(Y): z", b"X : z", b" folded", b"NoColon"]:
            answer, closed = yield threads.deferToThread(
                exchange,
                self.port,
                self.chunked(b"5\r\nhello\r\n0\r\n" + trailer + b"\r\n\r\n"),
            )
            self.assertEqual(status(answer), 400, (trailer, answer))
            self.assertTrue(closed)
        # Never a complete request at the backend.
        self.assertEqual(self.origin.seen, [])

    @defer.inlineCallbacks
    def test_valid_trailers_and_extensions_are_dropped(self):  # type: ignore[no-untyped-def]
        answer, _ = yield threads.deferToThread(
            exchange,
            self.port,
            self.chunked(b'5;name="v\xe9";x=1\r\nhello\r\n0\r\nX-Trailer: caf\xe9\tok\r\n\r\n'),
        )
        self.assertEqual(status(answer), 200, answer)
        [seen] = self.origin.seen
        self.assertEqual(seen.body, b"hello")
        self.assertEqual(seen.header(b"x-trailer"), [])


class HostTests(EdgeCase):
    @defer.inlineCallbacks
    def test_absolute_form_goes_origin_form_with_its_authority(self):  # type: ignore[no-untyped-def]
        cases = [
            (b"GET http://Example.test:8080/a/b?c=d HTTP/1.1\nHost: example.test:8080\n",
             b"GET /a/b?c=d HTTP/1.1", b"Example.test:8080"),
            (b"GET HTTP://x HTTP/1.1\nHost: x:80\n", b"GET / HTTP/1.1", b"x"),
            (b"GET https://x?q HTTP/1.1\nHost: x:443\n", b"GET /?q HTTP/1.1", b"x"),
            (b"GET http://[::1]:81/ HTTP/1.1\nHost: [::1]:81\n", b"GET / HTTP/1.1", b"[::1]:81"),
            (b"OPTIONS http://x:81 HTTP/1.1\nHost: x:81\n", b"OPTIONS * HTTP/1.1", b"x:81"),
            (b"OPTIONS http://x/ HTTP/1.1\nHost: x\n", b"OPTIONS / HTTP/1.1", b"x"),
            # HTTP/1.0 may leave Host out: it comes from the target.
            (b"GET http://x.test/p HTTP/1.0\n", b"GET /p HTTP/1.1", b"x.test"),
        ]  # fmt: skip
        for head, line, host in cases:
            seen = yield self.forwarded(request(head + b"Connection: close\n"))
            self.assertTrue(seen.startswith(line + b"\r\n"), (head, seen))
            self.assertEqual(seen.count(b"\r\nHost: "), 1, seen)
            self.assertIn(b"\r\nHost: " + host + b"\r\n", seen)
            self.assertIn(b"\r\nX-Forwarded-Host: " + host + b"\r\n", seen)
        self.assert_server_untouched()

    @defer.inlineCallbacks
    def test_x_forwarded_host_is_the_host_the_backend_sees(self):  # type: ignore[no-untyped-def]
        seen = yield self.forwarded(
            request(b"GET / HTTP/1.1\nHost: a.test:81\nX-Forwarded-Host: evil\nConnection: close\n")
        )
        self.assertIn(b"\r\nHost: a.test:81\r\n", seen)
        self.assertIn(b"\r\nX-Forwarded-Host: a.test:81\r\n", seen)
        self.assertNotIn(b"evil", seen)

    def test_host_that_disagrees_with_the_target_is_refused(self):  # type: ignore[no-untyped-def]
        return self.refused(
            [
                (request(b"GET http://hostname1/ HTTP/1.1\nHost: hostname2\n"), 400),
                (request(b"GET http://x/ HTTP/1.1\nHost: x:81\n"), 400),
                (request(b"GET http://x:81/ HTTP/1.1\nHost: x\n"), 400),
                (request(b"GET https://x/ HTTP/1.1\nHost: x:80\n"), 400),
                (request(b"GET http://x/ HTTP/1.0\nHost: y\n"), 400),
                (request(b"GET http://x/ HTTP/1.1\n"), 400),  # HTTP/1.1 needs Host
            ]
        )

    def test_missing_or_repeated_host_is_refused(self):  # type: ignore[no-untyped-def]
        return self.refused(
            [
                (request(b"GET / HTTP/1.1\n"), 400),
                (request(b"GET / HTTP/1.1\nHost: x\nHost: x\n"), 400),
                (request(b"GET / HTTP/1.0\nHost: x\nHost: y\n"), 400),
                (request(b"POST / HTTP/1.1\nHost: x\nhost: y\nContent-Length: 2\n", b"hi"), 400),
            ]
        )

    def test_invalid_host_values_are_refused(self):  # type: ignore[no-untyped-def]
        values = [
            b"",
            b"a b",
            b"x/y",
            b"x?y",
            b"x#y",
            b"u@x",
            b"x\\y",
            b"ex%41mple.test",
            b"caf\xe9.test",
            b"x:",
            b"x:http",
            b"x:8o",
            b"x:-1",
            b"x:0",
            b"x:65536",
            b"x:123456",
            b"x:80:80",
            b":80",
            b"[::1",
            b"::1",
            b"[::1]x",
            b"[::1]:",
            b"[fe80::1%25eth0]",
            b"[v1.x]",
            b"[1.2.3.4]",
            b'"x"',
            b"<x>",
        ]
        return self.refused([(request(b"GET / HTTP/1.1\nHost: " + v + b"\n"), 400) for v in values])

    @defer.inlineCallbacks
    def test_valid_host_values_pass_unchanged(self):  # type: ignore[no-untyped-def]
        for value in [
            b"x",
            b"EXAMPLE.test.",
            b"a_b-c~d.example:65535",
            b"127.0.0.1:1",
            b"[::1]",
            b"[2001:DB8::1]:8080",
            b"[::ffff:1.2.3.4]",
        ]:
            seen = yield self.forwarded(
                request(b"GET / HTTP/1.1\nHost: " + value + b"\nConnection: close\n")
            )
            self.assertIn(b"\r\nHost: " + value + b"\r\n", seen)
            self.assertIn(b"\r\nX-Forwarded-Host: " + value + b"\r\n", seen)


class ClientErrorTests(EdgeCase):
    """
    Whatever the client sent that cannot be forwarded is a 400 of its own,
    on every path: never retried, never counted against a server.
    """

    @defer.inlineCallbacks
    def test_cheap_requests_cannot_take_a_server_out(self):  # type: ignore[no-untyped-def]
        # The example, many times over, then a good request: the
        # server still takes it.
        for _ in range(5):
            yield self.refused([(request(b"GET /\x7f HTTP/1.1\nHost: x\n"), 400)])
        yield self.forwarded(request(b"GET / HTTP/1.1\nHost: x\nConnection: close\n"))
        self.assert_server_untouched()

    @defer.inlineCallbacks
    def test_unsendable_target_past_the_front_is_the_clients(self):  # type: ignore[no-untyped-def]
        # With the front's target check out of the way, a target that
        # twisted.web accepts and Twisted's client refuses reaches the
        # forwarder: still a 400, and no connection to the backend.
        self.patch(rules, "target_problem", lambda method, target: None)
        for target in [b"/\x7f", b"/\x80", b"/\xb0"]:
            yield self.refused([(request(b"GET " + target + b" HTTP/1.1\nHost: x\n"), 400)])

    @defer.inlineCallbacks
    def test_unsendable_hosts_past_the_front_are_the_clients(self):  # type: ignore[no-untyped-def]
        # With the front's Host rules out of the way, two Host headers reach
        # the forwarder, where Twisted's client would refuse them (BadHeaders)
        # after connecting.
        self.patch(resource, "refusal", lambda request, hosts: None)
        yield self.refused([(request(b"GET / HTTP/1.1\nHost: x\nHost: y\n"), 400)])

    @defer.inlineCallbacks
    def test_client_leaving_mid_body_is_not_the_servers_failure(self):  # type: ignore[no-untyped-def]
        for length in [100, None]:
            before = len(self.backend.requests)
            head = (
                b"POST /hold HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\npart" % length
                if length
                else b"POST /hold HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\npart"
            )
            sock = socket.create_connection((HOST, self.port))
            self.addCleanup(sock.close)
            sock.sendall(head)
            # The request is on its way to the backend, its body unfinished.
            yield wait_until(lambda before=before: len(self.backend.requests) > before)
            sock.close()
            yield wait_until(lambda: self.server.active == 0)
            self.assert_server_untouched(length)
        yield self.forwarded(request(b"GET / HTTP/1.1\nHost: x\nConnection: close\n"))


class BodyLimitTests(EdgeCase):
    proxy_options = {"max_body_size": "1KB"}

    @defer.inlineCallbacks
    def test_body_over_the_limit_mid_stream_is_not_the_servers_failure(self):  # type: ignore[no-untyped-def]
        sock = socket.create_connection((HOST, self.port))
        self.addCleanup(sock.close)
        sock.sendall(b"POST /hold HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n")
        sock.sendall(b"a" * 16 + b"\r\n")
        yield wait_until(lambda: len(self.backend.requests) == 1)
        sock.sendall(b"400\r\n" + b"b" * 0x400 + b"\r\n")
        answer = yield threads.deferToThread(sock.recv, 65536)
        self.assertEqual(status(answer), 413, answer)
        yield wait_until(lambda: self.server.active == 0)
        self.assert_server_untouched()


class FrontRefusalTests(EdgeCase):
    @defer.inlineCallbacks
    def test_refusals_at_the_front_are_not_counted(self):  # type: ignore[no-untyped-def]
        yield self.refused(
            [
                (request(b"G@T / HTTP/1.1\nHost: x\n"), 400),
                (request(b"GET / HTTP/1.1\nHost: x\nX: \x0b\n"), 400),
                (request(b"GET / HTTP/1.1\nHost: x\nX Y: z\n"), 400),
                (request(b"GET / HTTP/1.1\nHost: x:y\n"), 400),
                (request(b"GET http://a/ HTTP/1.1\nHost: b\n"), 400),
            ]
        )


class StalledUploadTests(ProxyTestCase):
    @defer.inlineCallbacks
    def test_stalled_body_is_408_and_not_the_servers_failure(self):  # type: ignore[no-untyped-def]
        backend = self.raw_backend(lambda t, r: None)
        self.start_proxy(
            proxy_config([backend.url], client_body_timeout="300ms", pool={"max_fails": "1"})
        )
        answer, _ = yield threads.deferToThread(
            exchange, self.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"
        )
        self.assertEqual(status(answer), 408, answer)
        server = self.proxy.pools["test"].servers[0]
        self.assertEqual((server.stats.failures, server.ejected), (0, False))


class SafetyNetTests(ForwarderCase):
    """
    The forwarder's own classification, against a scripted agent: what
    would get past the front is still the client's.
    """

    servers = ["http://127.0.0.1:1 name=a", "http://127.0.0.1:2 name=b"]
    pool_options = {"max_fails": "1"}

    def setUp(self) -> None:
        super().setUp()
        self.addCleanup(self.pool.stop)

    def check_clients(self, reason: Failure) -> None:
        d: Deferred = self.request()
        d.errback(reason)
        self.assertEqual(len(self.agent.sent), 1, "retried")
        self.assertTrue(self.client.value().startswith(b"HTTP/1.1 400 Bad Request\r\n"))
        self.assertEqual(self.active(), [0, 0])
        for server in self.pool.servers:
            self.assertEqual((server.stats.failures, server.ejected), (0, False))

    def test_unsendable_request(self) -> None:
        self.check_clients(Failure(UnsendableRequest("invalid method")))

    def test_request_generation_failed(self) -> None:
        self.check_clients(Failure(RequestGenerationFailed([Failure(ValueError("header"))])))

    def test_cancelled_generation_is_not_the_clients(self) -> None:
        from twisted.internet.defer import CancelledError

        d: Deferred = self.request()
        d.errback(Failure(RequestGenerationFailed([Failure(CancelledError())])))
        self.assertFalse(self.client.value().startswith(b"HTTP/1.1 400 "))


class BackendAgentTests(ProxyTestCase):
    """L{BackendAgent.send} refuses what Twisted's client would, before connecting."""

    @defer.inlineCallbacks
    def test_unsendable_requests_fail_before_connecting(self):  # type: ignore[no-untyped-def]
        from twisted.internet import reactor

        from lbproxy.config import parse
        from lbproxy.upstream.backend import BackendConnectionPool, make_route, tls_policy

        backend = self.raw_backend(ok)
        pool_config = parse(proxy_config([backend.url])).active_pool()
        connections = BackendConnectionPool(reactor)
        self.addCleanup(connections.closeCachedConnections)
        agent = BackendAgent(reactor, pool=connections)
        route = make_route(reactor, pool_config.servers[0], tls_policy(pool_config), 3.0)
        for method, target, hosts in [
            (b"G@T", b"/", [b"x"]),
            (b"GET", b"/\x7f", [b"x"]),
            (b"GET", b"/a b", [b"x"]),
            (b"GET", b"", [b"x"]),
            (b"GET", b"/", [b"x", b"y"]),
        ]:
            failure = yield self.assertFailure(
                agent.send(route, method, target, Headers({b"Host": hosts}), None),
                UnsendableRequest,
            )
            self.assertTrue(str(failure))
        self.assertEqual(backend.connections, 0)
        response = yield agent.send(route, b"GET", b"/", Headers({b"Host": [b"x"]}), None)
        self.assertEqual(response.code, 200)
        body = yield readBody(response)
        self.assertEqual(body, b"ok")


class RuleTableTests(unittest.SynchronousTestCase):
    """The pure rules of L{lbproxy.headers}, as tables."""

    def test_parse_authority(self) -> None:
        for value, expected in [
            (b"x", (b"x", None)),
            (b"X.test:8080", (b"X.test", 8080)),
            (b"[::1]:1", (b"[::1]", 1)),
            (b"a-b_c~d!$&'()*+,;=", (b"a-b_c~d!$&'()*+,;=", None)),
            (b"x:65535", (b"x", 65535)),
            (b"", None),
            (b"x:", None),
            (b"x:0", None),
            (b"x:65536", None),
            (b"x:+80", None),
            (b"x: 80", None),
            (b"u@x", None),
            (b"%78", None),
            (b"[::1]:", None),
            (b"[::g]", None),
            (b"[fe80::1%eth0]", None),
        ]:
            self.assertEqual(rules.parse_authority(value), expected, value)

    def test_absolute_target(self) -> None:
        for target, expected in [
            (b"http://x/a?b", (b"http", b"x", b"/a?b")),
            (b"HTTPS://x:1", (b"https", b"x:1", b"/")),
            (b"http://x?q/r", (b"http", b"x", b"/?q/r")),
            (b"/a", None),
            (b"ftp://x/", None),
            (b"http:x", None),
        ]:
            self.assertEqual(rules.absolute_target(target), expected, target)

    def test_same_authority(self) -> None:
        self.assertTrue(rules.same_authority(b"X:80", b"x", b"http"))
        self.assertTrue(rules.same_authority(b"x", b"x:443", b"https"))
        self.assertFalse(rules.same_authority(b"x", b"x:443", b"http"))
        self.assertFalse(rules.same_authority(b"x", b"y", b"http"))
        self.assertFalse(rules.same_authority(b"x:", b"x", b"http"))

    def test_field_lines(self) -> None:
        self.assertIsNone(rules.field_line_problem(b"X-A: a\tb \x80\xff"))
        self.assertIsNone(rules.field_line_problem(b"X-A:"))
        for line in [b"X-A: \x7f", b"X-A: a\x00", b"X A: b", b": b", b"X-A", b"X\x80: b"]:
            self.assertIsNotNone(rules.field_line_problem(line), line)
