"""
The proxy in memory, for tests of a configuration or a balancer.

L{ProxyHarness} builds the real proxy (L{lbproxy.service.ProxyService}: its
front, pools, balancers, health checks and backend agent) from the text of
an INI file, on a L{MemoryNetworkReactor}: a reactor whose clock moves only
when a test moves it and whose TCP connections are in memory.  Each server
the configuration lists is a L{MemoryBackend}, an in-memory twisted.web
server that records every request it receives and can be told to fail.
Requests are driven synchronously: bytes move between the connections until
nothing is left to move.  No socket is opened and no real time passes::

    harness = ProxyHarness(ini_text)
    response = harness.request("GET", "/")
    assert response.status == 200
    assert len(harness.backend("http://127.0.0.1:8001").seen) == 1
    harness.backend("http://127.0.0.1:8001").hang()
    pending = harness.send("GET", "/slow")
    harness.clock.advance(30)
    assert pending.response().status == 504

The connections are Twisted's C{twisted.test.iosim} transports (as in
C{treq.testing}), which deliver everything written at once: backpressure and
TLS are not simulated, and C{https://} servers are refused.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Union

import attr
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IConsumer,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, PartialDownloadError, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from lbproxy.config import ProxyConfig, parse
from lbproxy.service import ProxyService
from lbproxy.testing.backends import MemoryBackend, SeenRequest, _bytes, _first
from lbproxy.testing.network import Address, MemoryNetworkReactor


def _headers(pairs: Optional[Mapping[str, str]]) -> Headers:
    headers = Headers()
    for name, value in (pairs or {}).items():
        headers.addRawHeader(_bytes(name), _bytes(value))
    return headers


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ProxyResponse:
    """
    A response as the proxy's client received it.

    :ivar complete: False when the connection closed before the body's end
        (the body is then what arrived).
    """

    status: int
    phrase: bytes
    headers: Headers
    body: bytes
    complete: bool = True

    def header(self, name: Union[str, bytes]) -> Optional[bytes]:
        """
        :param name: A header name, in any case.
        :returns: The header's first value, or L{None} when it is absent.
        """
        return _first(self.headers, name)


class NoResponseYet(Exception):
    """The proxy has not answered (yet): time may have to pass first."""


@implementer(IBodyProducer)
class _BytesBody:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:  # noqa: N802
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:  # noqa: N802
        pass

    def resumeProducing(self) -> None:  # noqa: N802
        pass

    def stopProducing(self) -> None:  # noqa: N802
        pass


@implementer(IStreamClientEndpoint)
class _FrontEndpoint:
    """Connects a client protocol to the proxy's site in memory."""

    def __init__(self, reactor: MemoryNetworkReactor, site: Any, client: Address) -> None:
        self._reactor = reactor
        self._site = site
        self._client = client

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        proxy = IPv4Address("TCP", "127.0.0.1", 8080)
        protocol = factory.buildProtocol(proxy)
        assert protocol is not None
        self._reactor.link(protocol, self._site.buildProtocol(self._client), self._client, proxy)
        return succeed(protocol)

    def endpointForURI(self, uri: Any) -> _FrontEndpoint:  # noqa: N802
        return self


class PendingResponse:
    """A request sent to the proxy, whose response may still be to come."""

    def __init__(self, reactor: MemoryNetworkReactor, response: Deferred[IResponse]) -> None:
        self._reactor = reactor
        self._result: List[Union[ProxyResponse, Failure]] = []
        response.addCallback(self._read).addBoth(self._result.append)

    @staticmethod
    def _read(response: IResponse) -> Deferred[ProxyResponse]:
        def done(body: bytes, complete: bool = True) -> ProxyResponse:
            return ProxyResponse(response.code, response.phrase, response.headers, body, complete)

        def partial(failure: Failure) -> ProxyResponse:
            failure.trap(PartialDownloadError)
            return done(failure.value.response, False)  # type: ignore[union-attr]

        reading: Deferred[bytes] = readBody(response)
        return reading.addCallbacks(done, partial)

    @property
    def answered(self) -> bool:
        """Whether the response (or the connection's end) has arrived."""
        return bool(self._result)

    def response(self) -> ProxyResponse:
        """
        :returns: The response, once it has arrived.
        :raises NoResponseYet: Before that.
        :raises Exception: What ended the connection without a response.
        """
        self._reactor.flush()
        if not self._result:
            raise NoResponseYet("no response yet; let time pass with harness.clock.advance")
        result = self._result[0]
        if isinstance(result, Failure):
            result.raiseException()
        assert isinstance(result, ProxyResponse)
        return result


class RawConnection(Protocol):
    """
    A client's end of a connection to the proxy, for bytes as they are.

    :ivar received: Every byte the proxy has written so far.
    :ivar closed: Whether the connection has ended.
    """

    def __init__(self, reactor: MemoryNetworkReactor) -> None:
        self._reactor = reactor
        self.received = b""
        self.closed = False

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self.closed = True

    def write(self, data: bytes) -> None:
        """
        Send bytes and move them (and what they cause) without time passing.

        :param data: Any bytes.
        """
        assert self.transport is not None
        self.transport.write(data)
        self._reactor.flush()

    def close(self) -> None:
        """Close the connection from the client's side."""
        assert self.transport is not None
        self.transport.loseConnection()
        self._reactor.flush()


class ProxyHarness:
    """
    The proxy, built from a configuration's text, over in-memory backends.

    :ivar config: The parsed configuration.
    :ivar service: The real L{ProxyService} (started unless told otherwise).
    :ivar clock: The reactor and its clock: C{clock.advance(seconds)} lets
        time pass for timeouts, health checks and back-off.
    """

    def __init__(
        self,
        ini_text: str,
        backends: Optional[Mapping[str, Any]] = None,
        clock: Optional[MemoryNetworkReactor] = None,
        start: bool = True,
    ) -> None:
        """
        :param ini_text: The configuration, as in an INI file.
        :param backends: What answers for some servers, by the server's URL
            as written, its C{name=} or C{host:port}: a twisted.web resource
            or a callable (see L{MemoryBackend}).  Other servers answer
            C{200} with their URL.
        :param clock: The reactor to build on (a new one by default).
        :param start: Start the service (listeners on the memory reactor,
            health checks).
        :raises lbproxy.config.ConfigError: When the configuration is wrong.
        :raises ValueError: For C{https://} servers, and for C{backends}
            the configuration does not list.
        """
        self.clock = clock if clock is not None else MemoryNetworkReactor()
        self.config: ProxyConfig = parse(ini_text, "<harness>")
        self._backends: Dict[str, MemoryBackend] = {}
        self._add_backends(self.config, backends or {})
        self.service = ProxyService(self.config, reactor=self.clock)
        if start:
            self.service.privilegedStartService()
            self.service.startService()
            self.clock.flush()

    def _add_backends(self, config: ProxyConfig, backends: Mapping[str, Any]) -> None:
        """A memory backend for each server of C{config} that has none yet."""
        answers = dict(backends)
        for pool in config.pools.values():
            for server_config in pool.servers:
                if server_config.scheme != "http":
                    raise ValueError(f"{server_config.url}: only http:// servers are in memory")
                address = f"{server_config.host}:{server_config.port}"
                names = (server_config.url, server_config.name, address)
                backend = self._backends.get(address)
                if backend is None:
                    answer = next((answers.pop(n) for n in names if n in answers), None)
                    backend = MemoryBackend(server_config.url, answer)
                    self.clock.add_backend(server_config.host, server_config.port, backend)
                for name in names:
                    self._backends[name] = backend
        if answers:
            raise ValueError(f"no server of the configuration is called {sorted(answers)}")

    def reload(self, ini_text: str, backends: Optional[Mapping[str, Any]] = None) -> None:
        """
        Apply a new configuration to the running proxy, as C{SIGHUP} does.
        Servers it adds get memory backends; the others keep theirs.

        :param ini_text: The new configuration.
        :param backends: What answers for some of the new servers.
        :raises lbproxy.config.ConfigError: When it is wrong.
        :raises lbproxy.service.StartError: When it cannot be applied (then
            nothing changed).
        """
        config = parse(ini_text, "<harness>")
        self._add_backends(config, backends or {})
        self.service.reload(config)
        self.config = config
        self.clock.flush()

    def backend(self, name: str) -> MemoryBackend:
        """
        :param name: The server's URL as written, its C{name=} or C{host:port}.
        :returns: The backend that stands for it.
        """
        return self._backends[name]

    def send(
        self,
        method: Union[str, bytes] = "GET",
        target: Union[str, bytes] = "/",
        headers: Optional[Mapping[str, str]] = None,
        body: Optional[bytes] = None,
        client: str = "127.0.0.1",
    ) -> PendingResponse:
        """
        Send a request to the proxy on a new connection and move its bytes
        as far as they go without time passing.

        :param target: An origin-form target (C{/path?query}).
        :param headers: Request headers; C{Host} is C{localhost} unless given.
        :param body: A body, sent with its C{Content-Length}.
        :param client: The client's IP address, as the proxy sees it.
        :returns: The response to come.
        """
        kind = IPv6Address if ":" in client else IPv4Address
        endpoint = _FrontEndpoint(self.clock, self.service.site, kind("TCP", client, 50000))
        pool = HTTPConnectionPool(self.clock, persistent=False)
        agent = Agent.usingEndpointFactory(self.clock, endpoint, pool=pool)
        request_headers = _headers(headers)
        producer = _BytesBody(body) if body is not None else None
        url = b"http://localhost" + _bytes(target)
        sent = agent.request(_bytes(method), url, request_headers, producer)
        pending = PendingResponse(self.clock, sent)
        self.clock.flush()
        return pending

    def request(
        self,
        method: Union[str, bytes] = "GET",
        target: Union[str, bytes] = "/",
        headers: Optional[Mapping[str, str]] = None,
        body: Optional[bytes] = None,
        client: str = "127.0.0.1",
    ) -> ProxyResponse:
        """
        Send a request (see L{send}) and return its response, which must
        come without time passing.

        :returns: The response.
        :raises NoResponseYet: When the proxy has not answered.
        """
        return self.send(method, target, headers, body, client).response()

    def connect_raw(self, client: str = "127.0.0.1") -> RawConnection:
        """
        Open a connection to the proxy for bytes written as they are.

        :param client: The client's IP address, as the proxy sees it.
        :returns: The client's end of the connection.
        """
        connection = RawConnection(self.clock)
        kind = IPv6Address if ":" in client else IPv4Address
        address = kind("TCP", client, 50000)
        proxy = IPv4Address("TCP", "127.0.0.1", 8080)
        self.clock.link(connection, self.service.site.buildProtocol(address), address, proxy)
        return connection

    def send_raw(self, data: bytes, client: str = "127.0.0.1") -> bytes:
        """
        Write bytes to the proxy on a new connection, as they are.

        :param data: What the client sends (one or more requests, or junk).
        :returns: Every byte the proxy wrote back, without time passing.
        """
        connection = self.connect_raw(client)
        connection.write(data)
        return connection.received

    def stop(self) -> None:
        """
        Stop the service as on shutdown, letting C{shutdown_timeout} pass.
        """
        if self.service.running:
            self.service.stopService()
            self.clock.advance(self.config.shutdown_timeout)


__all__ = [
    "MemoryBackend",
    "MemoryNetworkReactor",
    "NoResponseYet",
    "PendingResponse",
    "RawConnection",
    "ProxyHarness",
    "ProxyResponse",
    "SeenRequest",
]
