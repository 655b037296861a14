"""
Test tools: real backends on loopback, the proxy in the test's reactor, and
real clients (http.client and raw sockets, run off the reactor thread so that
they block like the programs they stand for, and curl).
"""

from __future__ import annotations

import http.client
import os
import socket
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import attr
from twisted.internet import defer, protocol, reactor, threads, utils
from twisted.internet.interfaces import IListeningPort
from twisted.trial import unittest
from twisted.web import resource, server

from lbproxy import config
from lbproxy.service import ProxyService

HOST = "127.0.0.1"
# Every blocking client call in a test gives up after this many seconds, so a
# broken proxy fails a test instead of hanging it.
CLIENT_TIMEOUT = 20.0


@attr.s(auto_attribs=True)
class Seen:
    """A request as a backend saw it."""

    method: bytes
    uri: bytes
    headers: List[Tuple[bytes, bytes]]
    body: bytes
    version: bytes = b"HTTP/1.1"

    def header(self, name: bytes) -> List[bytes]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


class _Answer(resource.Resource):
    isLeaf = True

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self.backend = backend

    def render(self, request: server.Request) -> object:
        backend = self.backend
        body = request.content.read()
        headers = [(n, v) for n, vs in request.requestHeaders.getAllRawHeaders() for v in vs]
        backend.seen.append(Seen(request.method, request.uri, headers, body, request.clientproto))
        backend.active += 1
        backend.peak = max(backend.peak, backend.active)
        request.notifyFinish().addBoth(backend._finished)
        return backend.handler(backend, request, body)


def default_handler(backend: Backend, request: server.Request, body: bytes) -> bytes:
    answer = backend.name.encode() + b"\n"
    request.setHeader(b"Content-Type", b"text/plain")
    request.setHeader(b"Content-Length", b"%d" % len(answer))
    return answer


class Backend:
    """
    A real HTTP server (twisted.web) on a loopback port that records what it
    saw and answers with C{handler(backend, request, body)}.
    """

    def __init__(self, name: str, handler: Callable[..., object] = default_handler) -> None:
        self.name = name
        self.handler = handler
        self.seen: List[Seen] = []
        self.connections = 0
        self.active = 0
        self.peak = 0
        self.streams: List[StreamingBody] = []
        self.held: List[defer.Deferred[bytes]] = []
        self.lost: List[object] = []
        backend = self

        class CountingSite(server.Site):
            noisy = False

            def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
                backend.connections += 1
                return super().buildProtocol(addr)

            def log(self, request: server.Request) -> None:
                pass

        self.site = CountingSite(_Answer(self))
        self.port: IListeningPort = reactor.listenTCP(0, self.site, interface=HOST)
        self.url = f"http://{HOST}:{self.port.getHost().port}"

    def _finished(self, result: object) -> None:
        self.active -= 1
        if result is not None:
            self.lost.append(result)

    def stop(self) -> defer.Deferred:
        return defer.maybeDeferred(self.port.stopListening)


class RawBackend(protocol.Factory):
    """
    A server on a loopback port that answers each connection with raw bytes:
    C{respond(transport, request_bytes)} is called once the request's header
    section is complete, and writes whatever it likes.
    """

    noisy = False

    def __init__(self, respond: Callable[[protocol.Protocol, bytes], None]) -> None:
        self.respond = respond
        self.requests: List[bytes] = []
        self.connections = 0
        self.open: List[_RawProtocol] = []
        self.port: IListeningPort = reactor.listenTCP(0, self, interface=HOST)
        self.url = f"http://{HOST}:{self.port.getHost().port}"

    def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
        self.connections += 1
        return _RawProtocol(self)

    def stop(self) -> defer.Deferred:
        """Stop listening, and close the connections still open."""
        closing = [p.closed for p in self.open]
        for p in list(self.open):
            p.transport.abortConnection()
        return defer.gatherResults(closing + [defer.maybeDeferred(self.port.stopListening)])


class _RawProtocol(protocol.Protocol):
    def __init__(self, factory: RawBackend) -> None:
        self.factory = factory
        self.buffer = b""
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.factory.open.append(self)

    def connectionLost(self, reason: object = None) -> None:
        if self in self.factory.open:
            self.factory.open.remove(self)
        if not self.closed.called:
            self.closed.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            request, self.buffer = self.buffer, b""
            self.factory.requests.append(request)
            self.factory.respond(self, request)


#: Sockets bound but never listening, kept open for the whole run: nothing
#: else can take their ports, so connecting to one is always refused.
_UNLISTENED: List[socket.socket] = []


def refused_url() -> str:
    """A loopback URL where nothing listens: connecting is refused."""
    s = socket.socket()
    s.bind((HOST, 0))
    _UNLISTENED.append(s)
    port = s.getsockname()[1]
    return f"http://{HOST}:{port}"


def proxy_config(
    servers: Sequence[str],
    algorithm: str = "round_robin",
    pool: Optional[Dict[str, str]] = None,
    **proxy: str,
) -> str:
    lines = ["[proxy]", f"listen = tcp:0:interface={HOST}"]
    lines += [f"{k} = {v}" for k, v in proxy.items()]
    lines += ["[pool:test]", f"algorithm = {algorithm}"]
    lines += [f"{k} = {v}" for k, v in (pool or {}).items()]
    lines += ["servers ="]
    lines += [f"    {s}" for s in servers]
    return "\n".join(lines) + "\n"


class ProxyTestCase(unittest.TestCase):
    """
    A test case that runs the proxy in the test's reactor on a loopback port.
    """

    def start_proxy(self, text: str) -> ProxyService:
        proxy = ProxyService(config.parse(text, "test.ini"), reactor)
        proxy.privilegedStartService()
        proxy.startService()
        self.addCleanup(proxy.stopService)
        self.proxy = proxy
        self.port = next(iter(proxy.ports.values())).getHost().port
        return proxy

    def backend(self, name: str, handler: Callable[..., object] = default_handler) -> Backend:
        b = Backend(name, handler)
        self.addCleanup(b.stop)
        return b

    def raw_backend(self, respond: Callable[[protocol.Protocol, bytes], None]) -> RawBackend:
        b = RawBackend(respond)
        self.addCleanup(b.stop)
        return b

    def fetch(self, *args: object, **kwargs: object) -> defer.Deferred[Response]:
        return threads.deferToThread(fetch, self.port, *args, **kwargs)

    def raw(self, data: bytes) -> defer.Deferred[bytes]:
        return threads.deferToThread(raw_exchange, self.port, data)


@attr.s(auto_attribs=True)
class Response:
    status: int
    reason: str
    headers: List[Tuple[str, str]]
    body: bytes

    def header(self, name: str) -> List[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


def fetch(
    port: int,
    method: str = "GET",
    target: str = "/",
    headers: Sequence[Tuple[str, str]] = (),
    body: Optional[object] = None,
    host: Optional[str] = "example.test",
    chunked: bool = False,
    requests: int = 1,
) -> Response:
    """
    Make C{requests} requests on one connection with http.client (a real,
    blocking client) and return the last response.
    """
    conn = http.client.HTTPConnection(HOST, port, timeout=CLIENT_TIMEOUT)
    try:
        for _ in range(requests):
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            if host is not None:
                conn.putheader("Host", host)
            for name, value in headers:
                conn.putheader(name, value)
            if chunked:
                conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders(body, encode_chunked=True)  # type: ignore[arg-type]
            else:
                if isinstance(body, bytes):
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)  # type: ignore[arg-type]
            r = conn.getresponse()
            result = Response(r.status, r.reason, r.getheaders(), r.read())
        return result
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes) -> bytes:
    """
    Send raw bytes, then read until the proxy closes the connection (or the
    client timeout passes) and return all that came back.
    """
    with socket.create_connection((HOST, port), timeout=CLIENT_TIMEOUT) as s:
        s.sendall(data)
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except socket.timeout:
            pass
        return b"".join(chunks)


def curl(*args: str) -> defer.Deferred[Tuple[bytes, bytes, int]]:
    """Run curl (with a time limit) and return its stdout, stderr and exit code."""
    return utils.getProcessOutputAndValue(
        "curl",
        ("--silent", "--show-error", "--max-time", str(int(CLIENT_TIMEOUT))) + args,
        env=dict(os.environ),
    )


def rss_peak_kib(pid: int, field: str = "VmHWM") -> int:
    """The peak (VmHWM) or current (VmRSS) resident set size of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} line")


class RSSSampler:
    """
    Samples a process's current RSS every 10 ms while running, so that memory
    taken and given back within one transfer is still seen.
    """

    def __init__(self, pid: int) -> None:
        from twisted.internet import task

        self.pid = pid
        self.start_kib = rss_peak_kib(pid, "VmRSS")
        self.max_kib = self.start_kib
        self._loop = task.LoopingCall(self._sample)
        self._loop.start(0.01)

    def _sample(self) -> None:
        self.max_kib = max(self.max_kib, rss_peak_kib(self.pid, "VmRSS"))

    def stop(self) -> float:
        """Stop sampling; the largest growth seen, in MiB."""
        self._sample()
        self._loop.stop()
        return (self.max_kib - self.start_kib) / 1024


def python() -> str:
    return sys.executable


def parse_headers_block(raw: bytes) -> Tuple[bytes, Dict[bytes, List[bytes]]]:
    head = raw.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    headers: Dict[bytes, List[bytes]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return lines[0], headers


class StreamingBody:
    """
    A push producer that writes C{total} bytes into a twisted.web request in
    C{chunk}-sized writes, honouring pauses: a backend for large and slow
    responses.  C{paused} fires the first time the consumer pauses it.
    """

    def __init__(self, request: server.Request, total: int, chunk: int = 65536) -> None:
        self.request = request
        self.remaining = total
        self.sent = 0
        self.block = b"x" * chunk
        self.is_paused = False
        self.stopped = False
        self.paused: defer.Deferred[None] = defer.Deferred()
        self.done: defer.Deferred[None] = defer.Deferred()
        request.registerProducer(self, True)
        reactor.callLater(0, self._pump)

    def _pump(self) -> None:
        while not self.is_paused and not self.stopped and self.remaining > 0:
            data = self.block[: self.remaining]
            self.remaining -= len(data)
            self.sent += len(data)
            self.request.write(data)
        if self.remaining == 0 and not self.stopped:
            self.stopped = True
            self.request.unregisterProducer()
            self.request.finish()
            self.done.callback(None)

    def pauseProducing(self) -> None:
        self.is_paused = True
        if not self.paused.called:
            self.paused.callback(None)

    def resumeProducing(self) -> None:
        self.is_paused = False
        reactor.callLater(0, self._pump)

    def stopProducing(self) -> None:
        self.stopped = True
        if not self.done.called:
            self.done.callback(None)


def streaming_handler(total: int) -> Callable[..., object]:
    """A backend handler that answers with C{total} bytes, streamed."""

    def handler(backend: Backend, request: server.Request, body: bytes) -> object:
        request.setHeader(b"Content-Length", b"%d" % total)
        backend.streams.append(StreamingBody(request, total))
        return server.NOT_DONE_YET

    return handler


def held_handler(backend: Backend, request: server.Request, body: bytes) -> object:
    """A backend handler that answers only when the test fires the request's Deferred."""
    release: defer.Deferred[bytes] = defer.Deferred()
    backend.held.append(release)

    def answer(text: bytes) -> None:
        if not request._disconnected:
            request.setHeader(b"Content-Length", b"%d" % len(text))
            request.write(text)
            request.finish()

    release.addCallback(answer)
    return server.NOT_DONE_YET


@defer.inlineCallbacks
def wait_until(condition: Callable[[], object], timeout: float = CLIENT_TIMEOUT):  # type: ignore[no-untyped-def]
    """
    Let the reactor run until C{condition()} is true, checking every 10 ms;
    fail the test when it is still false after C{timeout} seconds.
    """
    from twisted.internet import task

    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        yield task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"still false after {timeout:g}s: {condition}")


def refused(port: int) -> bool:
    """
    Whether a connection to the port on loopback is refused (or reset: it
    was queued on a listening socket that then closed).  A port stops
    listening a reactor turn after it is told to, so wait on this with
    L{wait_until}.
    """
    try:
        socket.create_connection((HOST, port), timeout=CLIENT_TIMEOUT).close()
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    return False
