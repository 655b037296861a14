"""
WebSocket and other upgrades through the proxy: a real WebSocket server and
client (the C{websockets} package, each in its own process: tests/ws_peer.py)
with the proxy between them in the test's reactor; and raw upgrade backends
and clients for the protocol's corners.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, List, Optional

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.python.failure import Failure
from twisted.trial import unittest

from lbproxy import config
from lbproxy.ops.admin import status
from lbproxy.ops.snapshot import snapshot
from lbproxy.upgrade import accepted_switch, offered_upgrade
from tests.support import HOST, ProxyTestCase, proxy_config, wait_until
from tests.test_tls_front import Certificates

PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ws_peer.py")

SWITCH = (
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n"
    b"X-Backend: raw\r\n\r\n"
)


WS = frozenset({b"websocket"})


class OfferedUpgradeTests(unittest.TestCase):
    """Which upgrades go on to a backend: pure rules, table-tested."""

    def offered(self, *args: Any, **kwargs: Any) -> Optional[bytes]:
        call = dict(
            method=b"GET",
            version=b"HTTP/1.1",
            connection=[b"keep-alive, Upgrade"],
            upgrade=[b"websocket"],
            has_body=False,
            allowed=WS,
        )
        call.update(kwargs)
        return offered_upgrade(**call)  # type: ignore[arg-type]

    def test_websocket_goes_on(self) -> None:
        self.assertEqual(self.offered(), b"websocket")
        self.assertEqual(self.offered(upgrade=[b"WebSocket"]), b"WebSocket")

    def test_declined(self) -> None:
        for why, change in [
            ("no upgrade option", dict(connection=[b"keep-alive"])),
            ("no Connection", dict(connection=[])),
            ("HTTP/1.0", dict(version=b"HTTP/1.0")),
            ("POST", dict(method=b"POST")),
            ("a body", dict(has_body=True)),
            ("not allowed", dict(upgrade=[b"foo"])),
            ("nothing allowed", dict(allowed=frozenset())),
            ("h2c, even if allowed", dict(upgrade=[b"h2c"], allowed=frozenset({b"h2c"}))),
            ("not a token", dict(upgrade=[b"web socket"])),
            ("empty", dict(upgrade=[b" , "])),
        ]:
            self.assertIsNone(self.offered(**change), why)

    def test_only_allowed_offers_go_on(self) -> None:
        self.assertEqual(self.offered(upgrade=[b"h2c, websocket", b"foo/1"]), b"websocket")
        allowed = frozenset({b"websocket", b"foo"})
        self.assertEqual(
            self.offered(upgrade=[b"foo/1, websocket"], allowed=allowed), b"foo/1, websocket"
        )

    def test_accepted_switch(self) -> None:
        self.assertTrue(accepted_switch(b"websocket", [b"WebSocket"]))
        self.assertTrue(accepted_switch(b"foo/1, websocket", [b"foo/2"]))
        self.assertFalse(accepted_switch(b"websocket", []))
        self.assertFalse(accepted_switch(b"websocket", [b"h2c"]))
        self.assertFalse(accepted_switch(b"websocket", [b"websocket, foo"]))


class Peer(protocol.ProcessProtocol):
    """A ws_peer.py process: its stdout as lines, its end as a Deferred."""

    def __init__(self) -> None:
        self.lines: List[str] = []
        self._partial = b""
        self.errors = b""
        self._waiting: List[defer.Deferred[str]] = []
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self._partial += data
        while b"\n" in self._partial:
            line, self._partial = self._partial.split(b"\n", 1)
            self.lines.append(line.decode())
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(line.decode())

    def errReceived(self, data: bytes) -> None:
        self.errors += data

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        self.ended.callback(None)

    def next_line(self) -> defer.Deferred[str]:
        d: defer.Deferred[str] = defer.Deferred()
        self._waiting.append(d)
        return d

    def tell(self, line: bytes) -> None:
        assert self.transport is not None
        self.transport.write(line + b"\n")

    def stop(self) -> None:
        if self.running and self.transport is not None:
            self.transport.signalProcess("KILL")


class UpgradeBackend(protocol.Protocol):
    """
    A raw backend: answers a request head with C{answer(head)}; after a 101
    it echoes every byte.
    """

    def __init__(self, answer: Callable[[bytes], bytes], heads: List[bytes]) -> None:
        self.answer = answer
        self.heads = heads
        self.buffer = b""
        self.switched = False

    def dataReceived(self, data: bytes) -> None:
        if self.switched:
            assert self.transport is not None
            self.transport.write(data)
            return
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            head, rest = self.buffer.split(b"\r\n\r\n", 1)
            self.heads.append(head)
            reply = self.answer(head)
            assert self.transport is not None
            self.transport.write(reply)
            self.switched = reply.startswith(b"HTTP/1.1 101")
            if self.switched and rest:
                self.transport.write(rest)


class RawClient(protocol.Protocol):
    """A client connection that keeps what it receives."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.closed.callback(None)


def upgrade_request(token: bytes = b"websocket", extra: bytes = b"") -> bytes:
    return (
        b"GET /chat HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\n"
        b"Upgrade: %s\r\n%s\r\n" % (token, extra)
    )


class _Base(ProxyTestCase):
    timeout = 120

    def upgrade_backend(self, answer: Callable[[bytes], bytes]) -> List[bytes]:
        """Listen with an L{UpgradeBackend}; its URL is C{self.backend_url}."""
        heads: List[bytes] = []
        factory = protocol.Factory.forProtocol(lambda: UpgradeBackend(answer, heads))
        port = reactor.listenTCP(0, factory, interface=HOST)  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.backend_url = f"http://{HOST}:{port.getHost().port}"
        return heads

    @defer.inlineCallbacks
    def connect(self, data: bytes):  # type: ignore[no-untyped-def]
        client = RawClient()
        endpoint = TCP4ClientEndpoint(reactor, HOST, self.port)
        yield connectProtocol(endpoint, client)
        self.addCleanup(lambda: client.transport.abortConnection() if client.transport else None)
        client.transport.write(data)  # type: ignore[union-attr]
        return client

    def spawn(self, *args: str) -> Peer:
        peer = Peer()
        reactor.spawnProcess(  # type: ignore[attr-defined]
            peer, sys.executable, [sys.executable, PEER, *args], env=dict(os.environ)
        )
        self.addCleanup(lambda: peer.ended if peer.running else None)
        self.addCleanup(peer.stop)
        return peer

    @defer.inlineCallbacks
    def ws_server(self):  # type: ignore[no-untyped-def]
        server = self.spawn("server")
        port = yield server.next_line()
        return f"http://{HOST}:{int(port)}"

    def ws_client(self, scenario: str, path: str = "/ws", *tls: str) -> Peer:
        scheme = "wss" if tls else "ws"
        host = tls[0] if tls else HOST
        return self.spawn("client", f"{scheme}://{host}:{self.port}{path}", scenario, *tls[1:])

    @defer.inlineCallbacks
    def result(self, peer: Peer):  # type: ignore[no-untyped-def]
        yield peer.ended
        self.assertTrue(peer.lines, peer.errors.decode(errors="replace"))
        outcome = json.loads(peer.lines[-1])
        self.assertTrue(outcome["ok"], outcome.get("error"))
        return outcome

    def tunnels(self) -> List[Any]:
        return [c.tunnel for c in self.proxy.site.channels if c.tunnel is not None]

    def in_flight(self) -> int:
        return sum(
            s["in_flight"] for p in status(snapshot(self.proxy))["pools"] for s in p["servers"]
        )


class WebSocketTests(_Base):
    """A real WebSocket client and server through the proxy."""

    @defer.inlineCallbacks
    def start(self, **proxy: str):  # type: ignore[no-untyped-def]
        url = yield self.ws_server()
        self.start_proxy(proxy_config([url], **proxy))

    @defer.inlineCallbacks
    def test_thousands_of_messages_both_ways(self):  # type: ignore[no-untyped-def]
        yield self.start()
        outcome = yield self.result(self.ws_client("echo"))
        self.assertEqual(outcome["messages"], 9000)

    @defer.inlineCallbacks
    def test_through_a_tls_listener(self):  # type: ignore[no-untyped-def]
        files = Certificates(os.path.abspath(self.mktemp()))
        files.leaf("a", ["a.example.test"])
        url = yield self.ws_server()
        listen = (
            f"ssl:0:interface={HOST}:privateKey={files.path('a.key')}:certKey={files.path('a.crt')}"
        )
        self.start_proxy(proxy_config([url]).replace(f"tcp:0:interface={HOST}", listen))
        client = self.ws_client("large", "/ws", "a.example.test", files.ca_file)
        outcome = yield self.result(client)
        self.assertEqual(outcome["largest"], 8 << 20)

    @defer.inlineCallbacks
    def test_large_frames(self):  # type: ignore[no-untyped-def]
        yield self.start()
        outcome = yield self.result(self.ws_client("large"))
        self.assertEqual(outcome["largest"], 8 << 20)

    @defer.inlineCallbacks
    def _plateau(self, measure: Callable[[], int]):  # type: ignore[no-untyped-def]
        """Wait until C{measure()} stops growing (for half a second); return it."""
        last, steady = -1, 0
        for _ in range(200):
            value = measure()
            steady = steady + 1 if value == last else 0
            if steady >= 5 and value > 0:
                return value
            last = value
            yield task.deferLater(reactor, 0.1, lambda: None)
        raise AssertionError(f"still moving after 20s: {last}")

    @defer.inlineCallbacks
    def test_slow_client_pauses_the_backend(self):  # type: ignore[no-untyped-def]
        # The server pushes 64 MB; the client reads none of it for now.  The
        # proxy takes from the server only what the client's side can hold.
        yield self.start()
        client = self.ws_client("slow_reader")
        line = yield client.next_line()
        self.assertEqual(line, "waiting")
        yield wait_until(lambda: self.tunnels())
        (tunnel,) = self.tunnels()
        held = yield self._plateau(lambda: tunnel.bytes_down)
        self.assertLess(held, 24 << 20)
        client.tell(b"go")
        outcome = yield self.result(client)
        self.assertEqual(outcome["read"], 64 << 20)

    @defer.inlineCallbacks
    def test_slow_server_pauses_the_client(self):  # type: ignore[no-untyped-def]
        yield self.start()
        client = self.ws_client("slow_server")
        yield wait_until(lambda: self.tunnels())
        (tunnel,) = self.tunnels()
        held = yield self._plateau(lambda: tunnel.bytes_up)
        self.assertLess(held, 24 << 20)
        # The server reads again (its stdin): the rest flows.
        server = [p for p in self._peers() if p is not client][0]
        server.tell(b"go")
        outcome = yield self.result(client)
        self.assertEqual(outcome["sent"], 64 << 20)

    def _peers(self) -> List[Peer]:
        return [p for p in self._spawned]

    def spawn(self, *args: str) -> Peer:
        peer = super().spawn(*args)
        self._spawned = getattr(self, "_spawned", []) + [peer]
        return peer

    @defer.inlineCallbacks
    def test_idle_tunnel_closed_after_tunnel_timeout(self):  # type: ignore[no-untyped-def]
        yield self.start(tunnel_timeout="1s")
        outcome = yield self.result(self.ws_client("idle"))
        self.assertGreater(outcome["closed_after"], 0.8)
        self.assertLess(outcome["closed_after"], 15)
        yield wait_until(lambda: self.in_flight() == 0)

    @defer.inlineCallbacks
    def test_tunnel_counts_in_flight_and_logs_its_bytes(self):  # type: ignore[no-untyped-def]
        log_path = self.mktemp()
        yield self.start(access_log=log_path, access_log_format="json")
        client = self.ws_client("held")
        self.assertEqual((yield client.next_line()), "waiting")
        self.assertEqual(self.in_flight(), 1)
        # The tunnel stays open a second: its latency (time to the 101) is
        # far less, and that is what the server's statistics get.
        yield task.deferLater(reactor, 1.0, lambda: None)
        client.tell(b"go")
        outcome = yield self.result(client)
        self.assertEqual(outcome["second"], "second")
        yield wait_until(lambda: self.proxy.access_log is not None and not self.tunnels())
        (server,) = status(snapshot(self.proxy))["pools"][0]["servers"]
        self.assertLess(server["latency_ms"]["p99"], 500)
        yield wait_until(lambda: self.in_flight() == 0)
        yield wait_until(lambda: not self.proxy.site.channels)
        self.proxy.access_log.flush()
        with open(log_path) as f:
            (record,) = [json.loads(line) for line in f]
        self.assertEqual((record["status"], record["target"]), (101, "/ws"))
        # Two masked frames of 5 and 6 bytes plus the close frame each way;
        # the client's frames carry a 4-byte mask.
        self.assertGreater(record["received"], record["bytes"])
        self.assertGreater(record["bytes"], 10)
        self.assertGreater(record["duration"], 1.0)

    @defer.inlineCallbacks
    def test_stop_closes_tunnels_after_shutdown_timeout(self):  # type: ignore[no-untyped-def]
        yield self.start(shutdown_timeout="1s")
        client = self.ws_client("idle")
        yield wait_until(lambda: self.tunnels())
        stopped = self.proxy.stopService()
        outcome = yield self.result(client)
        self.assertGreater(outcome["closed_after"], 0.5)
        yield stopped


class UpgradeTests(_Base):
    """Upgrades with raw backends and clients: the protocol's corners."""

    def _switching(self, token: bytes = b"websocket") -> List[bytes]:
        return self.upgrade_backend(lambda head: SWITCH % token)

    @defer.inlineCallbacks
    def test_upgrade_headers_forwarded_and_bytes_tunnelled(self):  # type: ignore[no-untyped-def]
        heads = self._switching()
        self.start_proxy(proxy_config([self.backend_url]))
        client = yield self.connect(upgrade_request(extra=b"Sec-WebSocket-Key: k\r\n") + b"early")
        yield wait_until(lambda: b"early" in client.received)
        head = heads[0].lower()
        self.assertIn(b"\r\nconnection: upgrade", head)
        self.assertIn(b"\r\nupgrade: websocket", head)
        self.assertIn(b"\r\nsec-websocket-key: k", head)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"))
        self.assertIn(b"\r\nUpgrade: websocket\r\n", client.received)
        self.assertIn(b"\r\nX-Backend: raw\r\n", client.received)
        self.assertNotIn(b"Transfer-Encoding", client.received)
        client.transport.write(b"more bytes")
        yield wait_until(lambda: client.received.endswith(b"earlymore bytes"))

    @defer.inlineCallbacks
    def _declined(self, token: bytes, extra: bytes = b"", **proxy: str):  # type: ignore[no-untyped-def]
        backend = self.backend("plain")
        self.start_proxy(proxy_config([backend.url], **proxy))
        client = yield self.connect(upgrade_request(token, extra) + b"")
        yield wait_until(lambda: b"plain\n" in client.received)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 200 "), client.received)
        (seen,) = backend.seen
        self.assertEqual(seen.header(b"upgrade"), [])
        self.assertEqual(seen.header(b"http2-settings"), [])
        return client

    def test_h2c_is_never_upgraded(self) -> defer.Deferred[Any]:
        return self._declined(
            b"h2c",
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
            upgrade="websocket",
        )

    def test_h2c_cannot_be_configured(self) -> None:
        with self.assertRaises(config.ConfigError) as caught:
            config.parse(proxy_config(["http://127.0.0.1:1"], upgrade="websocket h2c"), "t.ini")
        self.assertIn("upgrade", str(caught.exception))

    def test_unknown_token_is_declined(self) -> defer.Deferred[Any]:
        return self._declined(b"foo")

    def test_websocket_declined_when_not_configured(self) -> defer.Deferred[Any]:
        return self._declined(b"websocket", upgrade="")

    @defer.inlineCallbacks
    def test_configured_token_is_tunnelled(self):  # type: ignore[no-untyped-def]
        heads = self._switching(b"foo/2")
        self.start_proxy(proxy_config([self.backend_url], upgrade="websocket foo"))
        client = yield self.connect(upgrade_request(b"foo/2, bar"))
        yield wait_until(lambda: b"\r\n\r\n" in client.received)
        self.assertIn(b"\r\nupgrade: foo/2\r\n", heads[0].lower() + b"\r\n")
        self.assertIn(b"\r\nUpgrade: foo/2\r\n", client.received)

    @defer.inlineCallbacks
    def test_101_without_upgrade_is_a_bad_gateway(self):  # type: ignore[no-untyped-def]
        self.upgrade_backend(lambda head: b"HTTP/1.1 101 Switching Protocols\r\n\r\nstray")
        self.start_proxy(proxy_config([self.backend_url], pool={"retries": "0"}))
        client = yield self.connect(upgrade_request())
        yield wait_until(lambda: client.received.endswith(b"failed to answer\n"))
        self.assertTrue(client.received.startswith(b"HTTP/1.1 502 "), client.received)
        self.assertNotIn(b"stray", client.received)
        self.assertEqual(self.in_flight(), 0)

    @defer.inlineCallbacks
    def test_101_to_another_protocol_is_a_bad_gateway(self):  # type: ignore[no-untyped-def]
        self._switching(b"h2c")
        self.start_proxy(proxy_config([self.backend_url], pool={"retries": "0"}))
        client = yield self.connect(upgrade_request())
        yield wait_until(lambda: client.received.endswith(b"failed to answer\n"))
        self.assertTrue(client.received.startswith(b"HTTP/1.1 502 "), client.received)

    @defer.inlineCallbacks
    def test_refused_upgrade_leaves_http(self):  # type: ignore[no-untyped-def]
        # The backend answers 426: an ordinary response; the connection
        # stays HTTP for the next request.
        self.upgrade_backend(
            lambda head: b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 2\r\n\r\nno"
        )
        self.start_proxy(proxy_config([self.backend_url]))
        client = yield self.connect(upgrade_request())
        yield wait_until(lambda: client.received.endswith(b"\r\n\r\nno"))
        self.assertTrue(client.received.startswith(b"HTTP/1.1 426 "), client.received)

    @defer.inlineCallbacks
    def test_least_connections_counts_the_tunnel(self):  # type: ignore[no-untyped-def]
        self._switching()
        self.start_proxy(proxy_config([self.backend_url], algorithm="least_connections"))
        client = yield self.connect(upgrade_request())
        yield wait_until(lambda: b"\r\n\r\n" in client.received)
        self.assertEqual(self.in_flight(), 1)
        client.transport.loseConnection()
        yield client.closed
        yield wait_until(lambda: self.in_flight() == 0)

    @defer.inlineCallbacks
    def test_reload_keeps_the_tunnel(self):  # type: ignore[no-untyped-def]
        self._switching()
        self.start_proxy(proxy_config([self.backend_url]))
        client = yield self.connect(upgrade_request())
        yield wait_until(lambda: b"\r\n\r\n" in client.received)
        self.proxy.reload(
            config.parse(proxy_config([self.backend_url], tunnel_timeout="5m"), "test.ini")
        )
        client.transport.write(b"after reload")
        yield wait_until(lambda: client.received.endswith(b"after reload"))
        self.assertEqual(self.in_flight(), 1)

    @defer.inlineCallbacks
    def test_backend_close_closes_the_client(self):  # type: ignore[no-untyped-def]
        self.upgrade_backend(lambda head: SWITCH % b"websocket" + b"bye")
        self.start_proxy(proxy_config([self.backend_url]))
        client = yield self.connect(upgrade_request())
        yield wait_until(lambda: client.received.endswith(b"bye"))
        (tunnel,) = self.tunnels()
        tunnel.backend.loseConnection()
        yield client.closed
        yield wait_until(lambda: self.in_flight() == 0)
