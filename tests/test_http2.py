"""
HTTP/2 on the front: tls: listeners offer h2 by ALPN; real sockets, curl
--http2, h2load and a client of the h2 package (for what curl cannot do:
resets mid-body, floods), real HTTP/1.1 backends behind the proxy.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from twisted.internet import defer, threads, utils
from twisted.trial import unittest
from twisted.web import server

from lbproxy.config import FrontLimits
from lbproxy.front.h2 import RESET_BURST, TokenBucket, request_head_problem
from tests.support import (
    CLIENT_TIMEOUT,
    HOST,
    Backend,
    ProxyTestCase,
    curl,
    held_handler,
    proxy_config,
    wait_until,
)
from tests.test_tls_front import Certificates

NAME = "a.example.test"


class H2Client:
    """
    A blocking HTTP/2 client over TLS (the h2 package and Python's ssl
    module) on one connection; run its methods off the reactor thread.
    """

    def __init__(self, port: int, ca_file: str, settings: Optional[Dict[int, int]] = None) -> None:
        context = ssl.create_default_context(cafile=ca_file)
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection((HOST, port), timeout=CLIENT_TIMEOUT)
        self.sock = context.wrap_socket(raw, server_hostname=NAME)
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.flush()
        self.events: List[Any] = []
        self.closed = False

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def headers(self, method: str, path: str, extra: Sequence[Tuple[str, str]] = ()) -> List[Any]:
        return [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", NAME.encode()),
            (b":path", path.encode()),
        ] + [(n.encode(), v.encode()) for n, v in extra]

    def start(
        self,
        method: str,
        path: str,
        extra: Sequence[Tuple[str, str]] = (),
        end: bool = True,
    ) -> int:
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, self.headers(method, path, extra), end_stream=end)
        self.flush()
        return stream

    def read(self, timeout: float = CLIENT_TIMEOUT) -> List[Any]:
        """Read once; the events it brought (none when the server closed)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        if not data:
            self.closed = True
            return []
        events = self.conn.receive_data(data)
        self.flush()
        self.events.extend(events)
        return events

    def until(self, done: Callable[[], bool], timeout: float = CLIENT_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if self.closed or time.monotonic() > deadline:
                raise AssertionError("the condition was not met before the end")
            self.read(max(0.01, deadline - time.monotonic()))

    def response(self, stream: int) -> Tuple[Dict[bytes, bytes], bytes]:
        """Wait for a stream's whole response: its headers and body."""
        self.until(lambda: self._ended(stream))
        headers: Dict[bytes, bytes] = {}
        body = b""
        for event in self.events:
            if getattr(event, "stream_id", None) != stream:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                headers = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, stream)
        self.flush()
        return headers, body

    def _ended(self, stream: int) -> bool:
        return any(
            isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) and e.stream_id == stream
            for e in self.events
        )

    def goaway(self) -> Optional[Any]:
        for event in self.events:
            if isinstance(event, h2.events.ConnectionTerminated):
                return event
        return None

    def read_to_close(self) -> None:
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while not self.closed and time.monotonic() < deadline:
            try:
                self.read(1.0)
            except (socket.timeout, h2.exceptions.ProtocolError):
                # After GOAWAY the client's state machine refuses more.
                if self.goaway() is not None:
                    return

    def close(self) -> None:
        self.sock.close()


def in_thread(function: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    return threads.deferToThread(function, *args)


def echo_handler(backend: Backend, request: server.Request, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest().encode()
    answer = b"%d %s" % (len(body), digest)
    request.setHeader(b"Content-Length", b"%d" % len(answer))
    return answer


class HTTP2Tests(ProxyTestCase):
    def setUp(self) -> None:
        self.files = Certificates(os.path.abspath(self.mktemp()))
        self.files.leaf("a", [NAME])

    def start(self, backend: Any, **proxy: str) -> None:
        text = proxy_config([backend.url], **proxy).replace(
            f"listen = tcp:0:interface={HOST}", f"listen = tls:0:interface={HOST}"
        )
        self.start_proxy(text + self.files.section("a", "default = yes\n"))
        self.url = f"https://{NAME}:{self.port}"

    def curl(self, *args: str) -> defer.Deferred[Tuple[bytes, bytes, int]]:
        return curl(
            "--http2",
            "--cacert",
            self.files.ca_file,
            "--resolve",
            f"{NAME}:{self.port}:{HOST}",
            *args,
        )

    def client(self, **kwargs: Any) -> defer.Deferred[H2Client]:
        return in_thread(lambda: H2Client(self.port, self.files.ca_file, **kwargs))

    @defer.inlineCallbacks
    def test_curl_get_and_post_over_http2_reach_an_http_1_1_backend(self):  # type: ignore[no-untyped-def]
        web = self.backend("web", echo_handler)
        self.start(web)
        out, err, code = yield self.curl("-w", "\n%{http_version}", self.url + "/a?b=1")
        self.assertEqual(code, 0, err)
        self.assertEqual(out.split(b"\n")[-1], b"2")
        seen = web.seen[-1]
        self.assertEqual((seen.method, seen.uri, seen.version), (b"GET", b"/a?b=1", b"HTTP/1.1"))
        self.assertEqual(seen.header(b"host"), [f"{NAME}:{self.port}".encode()])
        self.assertEqual(seen.header(b"x-forwarded-proto"), [b"https"])
        self.assertEqual(seen.header(b"via"), [b"2 lbproxy"])
        self.assertEqual(seen.header(b"x-forwarded-for"), [HOST.encode()])
        body = os.urandom(300_000)
        path = self.files.write("body", body)
        out, err, code = yield self.curl("--data-binary", "@" + path, self.url + "/up")
        self.assertEqual(code, 0, err)
        self.assertEqual(out, b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode()))
        self.assertEqual(web.seen[-1].header(b"content-length"), [b"300000"])

    @defer.inlineCallbacks
    def test_h2load_many_concurrent_streams_on_two_connections(self):  # type: ignore[no-untyped-def]
        web = self.backend("web")
        self.start(web)
        out, err, code = yield utils.getProcessOutputAndValue(
            "h2load",
            ("-n", "2000", "-c", "2", "-m", "50", f"https://{HOST}:{self.port}/"),
            env=dict(os.environ),
        )
        self.assertEqual(code, 0, err)
        self.assertIn(b"2000 succeeded", out, out)
        self.assertIn(b"Application protocol: h2", out)
        self.assertEqual(len(web.seen), 2000)

    @defer.inlineCallbacks
    def test_many_streams_on_one_connection_with_the_h2_client(self):  # type: ignore[no-untyped-def]
        web = self.backend("web")
        self.start(web)
        client = yield self.client()
        self.addCleanup(client.close)

        def run() -> List[bytes]:
            streams = [client.start("GET", f"/s{i}") for i in range(90)]
            return [client.response(s)[1] for s in streams]

        bodies = yield in_thread(run)
        self.assertEqual(bodies, [b"web\n"] * 90)
        self.assertEqual(sorted(s.uri for s in web.seen), sorted(b"/s%d" % i for i in range(90)))

    @defer.inlineCallbacks
    def test_large_upload_streams_and_a_stalled_backend_stops_the_client(self):  # type: ignore[no-untyped-def]
        # A backend that takes the request head and never reads the body: the
        # client's stream window closes; the proxy holds a bounded amount.
        raw = self.raw_backend(lambda transport, data: transport.transport.pauseProducing())
        self.start(raw, max_body_size="0")
        client = yield self.client()
        self.addCleanup(client.close)
        total = 64 * 1024 * 1024

        def upload() -> int:
            stream = client.start("POST", "/up", [("content-length", str(total))], end=False)
            sent = 0
            chunk = b"x" * 16384
            stalled_since = None
            while sent < total:
                window = min(
                    client.conn.local_flow_control_window(stream),
                    client.conn.max_outbound_frame_size,
                )
                if window > 0:
                    stalled_since = None
                    client.conn.send_data(stream, chunk[:window])
                    client.flush()
                    sent += min(window, len(chunk))
                    continue
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 2.0:
                    return sent
                try:
                    client.read(0.5)
                except socket.timeout:
                    pass
            return sent

        sent = yield in_thread(upload)
        self.assertLess(sent, 24 * 1024 * 1024)
        self.assertGreater(sent, 0)
        self.assertEqual(len(raw.requests), 1)
        self.assertIn(b"content-length: 67108864", raw.requests[0].lower())

    @defer.inlineCallbacks
    def test_a_stream_reset_mid_body_cancels_the_backend_request(self):  # type: ignore[no-untyped-def]
        raw = self.raw_backend(lambda transport, data: None)
        self.start(raw)
        client = yield self.client()
        self.addCleanup(client.close)

        def begin() -> int:
            stream = client.start("POST", "/up", [("content-length", "1000000")], end=False)
            client.conn.send_data(stream, b"y" * 10000)
            client.flush()
            return stream

        stream = yield in_thread(begin)
        yield wait_until(lambda: raw.open)
        backend_connection = raw.open[0]

        def reset() -> None:
            client.conn.reset_stream(stream)
            client.flush()

        yield in_thread(reset)
        yield backend_connection.closed
        # The connection goes on: another stream on it is served.

        def again() -> Tuple[Dict[bytes, bytes], bytes]:
            return client.response(client.start("GET", "/after"))

        raw.respond = lambda transport, data: transport.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
        )
        headers, body = yield in_thread(again)
        self.assertEqual((headers[b":status"], body), (b"200", b"ok\n"))

    @defer.inlineCallbacks
    def test_rapid_reset_closes_that_connection_and_others_are_served(self):  # type: ignore[no-untyped-def]
        web = self.backend("web")
        self.start(web)
        client = yield self.client()
        self.addCleanup(client.close)

        def flood() -> Any:
            for _ in range(RESET_BURST * 3):
                try:
                    stream = client.conn.get_next_available_stream_id()
                    client.conn.send_headers(stream, client.headers("GET", "/r"), end_stream=True)
                    client.conn.reset_stream(stream)
                except h2.exceptions.ProtocolError:
                    break
                client.sock.sendall(client.conn.data_to_send())
            client.read_to_close()
            return client.goaway()

        goaway = yield in_thread(flood)
        self.assertIsNotNone(goaway)
        self.assertEqual(goaway.error_code, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        # Requests the resets started were bounded by the burst.
        self.assertLessEqual(len(web.seen), RESET_BURST + 1)
        out, err, code = yield self.curl(self.url + "/")
        self.assertEqual((out, code), (b"web\n", 0), err)

    @defer.inlineCallbacks
    def test_ping_and_settings_floods_close_that_connection(self):  # type: ignore[no-untyped-def]
        web = self.backend("web")
        self.start(web)
        for frame in ("ping", "settings"):
            client = yield self.client()
            self.addCleanup(client.close)

            def flood(client: H2Client = client, frame: str = frame) -> Any:
                for i in range(2000):
                    try:
                        if frame == "ping":
                            client.conn.ping(b"%08d" % i)
                        else:
                            client.conn.update_settings({h2.settings.SettingCodes.ENABLE_PUSH: 0})
                        client.sock.sendall(client.conn.data_to_send())
                    except (OSError, h2.exceptions.ProtocolError):
                        break
                client.read_to_close()
                return client.goaway()

            goaway = yield in_thread(flood)
            self.assertIsNotNone(goaway, frame)
            self.assertEqual(goaway.error_code, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, frame)
        out, err, code = yield self.curl(self.url + "/")
        self.assertEqual((out, code), (b"web\n", 0), err)

    @defer.inlineCallbacks
    def test_limits_refuse_one_stream_and_the_connection_goes_on(self):  # type: ignore[no-untyped-def]
        web = self.backend("web")
        self.start(web, max_headers="10", max_body_size="1000")
        client = yield self.client()
        self.addCleanup(client.close)

        def run() -> List[Tuple[bytes, bytes]]:
            results = []
            for path, extra, body in (
                ("/many", [(f"x-h{i}", "v") for i in range(11)], None),
                ("/" + "l" * 9000, [], None),
                ("/big", [("content-length", "5000")], None),
                ("/chunky", [], b"z" * 3000),
                ("/fine", [], None),
            ):
                stream = client.start("POST" if body else "GET", path, extra, end=body is None)
                if body is not None:
                    client.conn.send_data(stream, body, end_stream=True)
                    client.flush()
                headers, text = client.response(stream)
                results.append((headers.get(b":status", b"reset"), text))
            return results

        results = yield in_thread(run)
        self.assertEqual(
            [status for status, _ in results], [b"431", b"414", b"413", b"413", b"200"]
        )
        self.assertEqual(
            results[0][1], b"431 Request Header Fields Too Large: too many header fields\n"
        )
        self.assertEqual([s.uri for s in web.seen], [b"/fine"])

    @defer.inlineCallbacks
    def test_access_log_counters_and_response_header_rules(self):  # type: ignore[no-untyped-def]
        web = self.backend("web")
        log_path = os.path.abspath(self.mktemp())
        self.start(
            web,
            access_log=log_path,
            access_log_format="json",
            response_headers="set Strict-Transport-Security max-age=60",
        )
        out, err, code = yield self.curl("-D", "-", self.url + "/logged")
        self.assertEqual(code, 0, err)
        self.assertIn(b"strict-transport-security: max-age=60", out.lower())
        self.assertTrue(out.startswith(b"HTTP/2 200"), out)
        self.proxy.access_log.flush()  # type: ignore[union-attr]
        with open(log_path) as f:
            line = json.loads(f.read().splitlines()[-1])
        self.assertEqual(
            (line["method"], line["target"], line["protocol"], line["status"]),
            ("GET", "/logged", "HTTP/2", 200),
        )
        self.assertEqual(self.proxy.pools["test"].servers[0].stats.served, 1)

    @defer.inlineCallbacks
    def test_stopping_refuses_new_streams_and_closes_after_those_in_flight(self):  # type: ignore[no-untyped-def]
        web = self.backend("web", held_handler)
        self.start(web)
        client = yield self.client()
        self.addCleanup(client.close)
        first = yield in_thread(client.start, "GET", "/held")
        yield wait_until(lambda: web.held)
        self.proxy.site.close_connections()

        def refused() -> Any:
            stream = client.start("GET", "/late")
            client.until(lambda: client._ended(stream))
            return [e for e in client.events if getattr(e, "stream_id", None) == stream][-1]

        event = yield in_thread(refused)
        self.assertIsInstance(event, h2.events.StreamReset)
        self.assertEqual(event.error_code, h2.errors.ErrorCodes.REFUSED_STREAM)
        web.held[0].callback(b"done\n")

        def finish() -> Any:
            headers, body = client.response(first)
            client.read_to_close()
            return headers[b":status"], body, client.goaway()

        status, body, goaway = yield in_thread(finish)
        self.assertEqual((status, body), (b"200", b"done\n"))
        self.assertIsNotNone(goaway)
        self.assertEqual(goaway.error_code, h2.errors.ErrorCodes.NO_ERROR)
        self.assertEqual([s.uri for s in web.seen], [b"/held"])
        client.close()
        yield wait_until(lambda: not self.proxy.site.channels)

    @defer.inlineCallbacks
    def test_frames_after_the_proxys_goaway_are_dropped(self):  # type: ignore[no-untyped-def]
        # Stopping: once the last stream is done the proxy says GOAWAY and
        # closes.  A frame the client had already sent is dropped quietly,
        # not taken for a protocol error that tears the connection down.
        from lbproxy.front.h2 import ProxyH2Connection

        lost: List[bool] = []
        closing = ProxyH2Connection.connectionLost

        def counted(connection: Any, *args: Any, **kwargs: Any) -> None:
            lost.append(kwargs.get("_cancelTimeouts", args[1] if len(args) > 1 else True))
            closing(connection, *args, **kwargs)

        self.patch(ProxyH2Connection, "connectionLost", counted)
        web = self.backend("web", held_handler)
        self.start(web)
        client = yield self.client()
        self.addCleanup(client.close)
        first = yield in_thread(client.start, "GET", "/held")
        yield wait_until(lambda: web.held)
        self.proxy.site.close_connections()
        web.held[0].callback(b"done\n")

        def finish() -> Any:
            headers, body = client.response(first)
            client.until(lambda: client.goaway() is not None)
            # A DATA frame on the stream, sent raw (the client's own state
            # machine refuses to after GOAWAY): 3 bytes, no flags.
            client.sock.sendall(b"\x00\x00\x03\x00\x00" + first.to_bytes(4, "big") + b"abc")
            client.read_to_close()
            return headers[b":status"], body

        status, body = yield in_thread(finish)
        self.assertEqual((status, body), (b"200", b"done\n"))
        client.close()
        yield wait_until(lambda: not self.proxy.site.channels)
        # Closed by the transport only (Twisted calls connectionLost from
        # stopProducing and from the transport, both with the timers
        # cancelled), never torn down as a protocol error first.
        self.assertTrue(lost)
        self.assertNotIn(False, lost)


class TokenBucketTests(unittest.TestCase):
    def test_burst_then_rate(self) -> None:
        bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
        self.assertEqual([bucket.take(100.0) for _ in range(4)], [True, True, True, False])
        self.assertTrue(bucket.take(100.5))
        self.assertFalse(bucket.take(100.5))
        # A clock that steps back refills nothing.
        self.assertFalse(bucket.take(50.0))
        # Never more than the burst, however long the pause.
        self.assertEqual([bucket.take(1000.0) for _ in range(4)], [True, True, True, False])


class RequestHeadTests(unittest.TestCase):
    limits = FrontLimits(max_headers=3, max_header_size=100)

    def check(self, headers: List[Tuple[bytes, bytes]]) -> Any:
        return request_head_problem(headers, self.limits)

    def head(self, *extra: Tuple[bytes, bytes], path: bytes = b"/") -> List[Tuple[bytes, bytes]]:
        return [(b":method", b"GET"), (b":path", path), (b":authority", b"a.test")] + list(extra)

    def test_cookies_are_joined_and_a_matching_host_dropped(self) -> None:
        problem, fields = self.check(
            self.head((b"cookie", b"a=1"), (b"host", b"a.test"), (b"cookie", b"b=2"))
        )
        self.assertIsNone(problem)
        self.assertIn((b"cookie", b"a=1; b=2"), fields)
        self.assertNotIn(b"host", [n for n, _ in fields])

    def test_refusals(self) -> None:
        cases = [
            (self.head((b"host", b"b.test")), 400),
            (self.head(*[(b"x-%d" % i, b"v") for i in range(4)]), 431),
            (self.head((b"x", b"v" * 200)), 431),
            (self.head(path=b"/" + b"p" * 9000), 414),
            (self.head(path=b"http://a.test/"), 400),
            (self.head((b"x", b"a\x01b")), 400),
            ([(b":method", b"GET"), (b":path", b"/")], 400),
            ([(b":method", b"G(T"), (b":path", b"/"), (b":authority", b"a")], 400),
        ]
        for headers, code in cases:
            problem, _ = self.check(headers)
            self.assertEqual(problem and problem[0], code, headers)
        problem, fields = self.check([(b":method", b"GET"), (b":path", b"/"), (b"host", b"h")])
        self.assertIsNone(problem)
        self.assertIn((b"host", b"h"), fields)
