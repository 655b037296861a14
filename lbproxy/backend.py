"""
The way to the backends: Twisted's C{Agent} over one persistent
C{HTTPConnectionPool}, used the way a proxy needs it.

Three things differ from a plain C{Agent.request(method, url)}:

 - Each server's endpoint, pool key and parsed URI are built once, when the
   configuration is applied (L{Route}), not parsed from a URL on every
   request.
 - The client's request target is sent byte for byte.  C{Agent.request}
   re-assembles the target from a parsed URL, which drops an empty query
   (C{/a?}) or empty parameters (C{/a;}); a proxy must not change them.
 - A response's C{Connection} header is kept with its headers, so that the
   forwarder can remove the headers it names.  Twisted's parser files it away
   with the framing headers, out of reach of the response object.

These rest on two long-standing private parts of C{twisted.web.client}
(C{Agent._requestWithEndpoint} and C{HTTPConnectionPool._factory}); the tests
in C{tests/test_backend.py} fail loudly if a Twisted release changes them.
"""

from __future__ import annotations

from typing import Optional

import attr
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS, IResponse

from lbproxy import headers as rules
from lbproxy.config import PoolConfig, ServerConfig


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Route:
    """
    Everything needed to send a request to one server, built once.
    """

    key: tuple
    endpoint: IStreamClientEndpoint
    uri: URI


class _BackendProtocol(HTTP11ClientProtocol):
    """
    An HTTP/1.1 client connection that leaves the response's C{Connection}
    header among its headers.
    """

    def request(self, request):  # type: ignore[no-untyped-def]
        result = super().request(request)
        parser = self._parser
        if parser is not None:

            def keep_connection_header(response: IResponse) -> IResponse:
                framing = parser.connHeaders
                if framing.hasHeader(b"transfer-encoding") and framing.hasHeader(b"content-length"):
                    # Ambiguous framing: this connection cannot be trusted
                    # for another response.  Close it and fail the attempt.
                    response.deliverBody(_Abandon())
                    raise AmbiguousFraming("a response with Content-Length and Transfer-Encoding")
                values = framing.getRawHeaders(b"connection")
                if values:
                    response.headers.setRawHeaders(b"Connection", values)
                return response

            result.addCallback(keep_connection_header)
        return result


class AmbiguousFraming(Exception):
    """A backend response framed two ways at once."""


class _Abandon(Protocol):
    """Takes a response body only to close its connection at once."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]


class _BackendProtocolFactory(_HTTP11ClientFactory):
    noisy = False

    def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
        return _BackendProtocol(self._quiescentCallback)


class BackendConnectionPool(HTTPConnectionPool):
    """
    The proxy's one pool of persistent backend connections.
    """

    _factory = _BackendProtocolFactory


class BackendAgent(Agent):
    """
    An C{Agent} that sends a request to a chosen server (a L{Route}) with the
    client's request target unchanged.
    """

    def send(
        self,
        route: Route,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: Optional[IBodyProducer],
    ) -> Deferred[IResponse]:
        """
        Send a request to the server at C{route}.

        @param target: The request target exactly as the client sent it.
        @param headers: The complete header set, including C{Host}.
        @returns: A Deferred that fires with the response, as from
            C{IAgent.request}.
        """
        problem = unsendable(method, target, headers)
        if problem is not None:
            return fail(UnsendableRequest(problem))
        try:
            return self._requestWithEndpoint(
                route.key, route.endpoint, method, route.uri, headers, body, target
            )
        except ValueError as e:
            return fail(UnsendableRequest(str(e)))
        except Exception:
            return fail()


class UnsendableRequest(Exception):
    """
    The request holds what Twisted's HTTP client refuses to send: the
    client's failure, found before any server was contacted.
    """


def unsendable(method: bytes, target: bytes, headers: Headers) -> Optional[str]:
    """
    Why Twisted's HTTP client would refuse to send a request, or L{None}: a
    method that is not a token, a target that is not visible ASCII
    (C{_ensureValidMethod}, C{_ensureValidURI}), more than one C{Host}
    (C{BadHeaders}).  The front refuses these before; this keeps them, should
    one get through, from costing a backend connection or counting against
    a server.
    """
    if not rules.is_token(method):
        return "invalid method"
    if not rules.is_visible_ascii(target):
        return "invalid request target"
    if len(headers.getRawHeaders(b"host", ())) > 1:
        return "more than one Host header"
    return None


def tls_policy(pool: PoolConfig) -> IPolicyForHTTPS:
    """
    The certificate checks for a pool's https:// servers: Agent's default
    (the system's trusted authorities and the server's host name), or the
    authorities in the pool's C{tls_ca_file}.
    """
    if pool.tls_ca_file is None:
        return BrowserLikePolicyForHTTPS()
    with open(pool.tls_ca_file, "rb") as f:
        pem = f.read()
    certificates = []
    marker = b"-----END CERTIFICATE-----"
    for block in pem.split(marker)[:-1]:
        certificates.append(Certificate.loadPEM(block + marker))
    return BrowserLikePolicyForHTTPS(trustRoot=trustRootFromCertificates(certificates))


def make_route(  # type: ignore[no-untyped-def]
    reactor, server: ServerConfig, policy: IPolicyForHTTPS, connect_timeout: float
) -> Route:
    """
    Build the endpoint and pool key of one server.

    @param connect_timeout: Seconds a connection attempt may take.
    """
    host = server.host
    endpoint: IStreamClientEndpoint
    if _is_ipv4(host):
        endpoint = TCP4ClientEndpoint(reactor, host, server.port, timeout=connect_timeout)
    elif ":" in host:
        endpoint = TCP6ClientEndpoint(reactor, host, server.port, timeout=connect_timeout)
    else:
        endpoint = HostnameEndpoint(reactor, host, server.port, timeout=connect_timeout)
    host_bytes = host.encode("ascii")
    if server.scheme == "https":
        endpoint = wrapClientTLS(policy.creatorForNetloc(host_bytes, server.port), endpoint)
    scheme = server.scheme.encode("ascii")
    netloc = (f"[{host}]" if ":" in host else host).encode("ascii") + b":%d" % server.port
    uri = URI(scheme, netloc, host_bytes, server.port, b"/", b"", b"", b"")
    return Route(key=(scheme, host_bytes, server.port), endpoint=endpoint, uri=uri)


def _is_ipv4(host: str) -> bool:
    parts = host.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts)
