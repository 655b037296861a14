"""
TLS termination for many names on one listener.

One OpenSSL context per certificate, all with the same settings (TLS 1.2
and 1.3 only, a modern cipher list, ALPN).  A new connection starts on the
default certificate's context; OpenSSL calls L{ServerContexts._servername}
with the client's server name indication (SNI) during the handshake, and
the connection moves to the chosen certificate's context
(pyOpenSSL's C{Context.set_tlsext_servername_callback} and
C{Connection.set_context}).

On reload a whole new L{ServerContexts} is built and handed to the
listeners' L{SNIConnectionCreator}: new handshakes get the new
certificates, connections already open keep the context they were made
with (OpenSSL holds a reference to it).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from OpenSSL import SSL
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IOpenSSLContextFactory, IOpenSSLServerConnectionCreator
from zope.interface import implementer

from lbproxy import tlsio
from lbproxy.config.tls import Certificate, TLSConfig, parse_tls_listen

#: TLS 1.2 cipher suites: forward secret, AEAD only (Mozilla's "intermediate"
#: TLS 1.2 list less its DHE suites).  TLS 1.3's suites are OpenSSL's
#: defaults, all of them modern.
CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)

#: What ALPN offers, in the server's order of preference, without HTTP/2
#: (with it: L{lbproxy.front.h2.H2_PROTOCOLS}).
PROTOCOLS = (b"http/1.1",)


class NoCommonProtocol(SSL.Error):
    """
    The client's ALPN list names no protocol we speak: the handshake fails
    with a no_application_protocol alert (RFC 7301 section 3.2), as nginx
    does since 1.21.4, rather than going on to speak something the client
    did not ask for.
    """


def _options() -> int:
    options = SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
    # Client-initiated renegotiation costs the server a handshake per
    # request of the client's: off, where OpenSSL can say so.
    return options | getattr(SSL, "OP_NO_RENEGOTIATION", 0)


class ServerContexts:
    """
    The OpenSSL contexts of one L{TLSConfig}, one per certificate.

    @ivar default: The context every handshake starts on (the default
        certificate's).
    """

    def __init__(self, config: TLSConfig, protocols: Sequence[bytes] = PROTOCOLS) -> None:
        """
        @raises ValueError: When OpenSSL refuses a certificate or key; the
            message completes "[tls:NAME] cert: ...".
        """
        self.config = config
        self.protocols = tuple(protocols)
        self._contexts: Dict[str, SSL.Context] = {
            c.section: self._context(c) for c in config.certificates
        }
        self.default = self._contexts[config.default.section]

    def _context(self, certificate: Certificate) -> SSL.Context:
        try:
            return self._make_context(certificate)
        except SSL.Error as e:
            reasons = "; ".join(str(r[2]) for r in e.args[0] if len(r) > 2) if e.args else ""
            raise ValueError(
                f"[tls:{certificate.section}] cert: OpenSSL refused {certificate.cert_path!r} "
                f"or its key: {reasons or e}"
            ) from None

    def _make_context(self, certificate: Certificate) -> SSL.Context:
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_options(_options())
        context.set_cipher_list(CIPHERS)
        context.use_certificate(certificate.chain[0])
        for intermediate in certificate.chain[1:]:
            context.add_extra_chain_cert(intermediate)
        context.use_privatekey(certificate.key)
        context.check_privatekey()
        # Every context gets both callbacks: which one OpenSSL consults
        # after a switch depends on its version.
        context.set_tlsext_servername_callback(self._servername)
        context.set_alpn_select_callback(self._alpn)
        return context

    def context_for(self, server_name: Optional[bytes]) -> SSL.Context:
        """The context of the certificate that serves C{server_name}."""
        return self._contexts[self.config.choose(server_name).section]

    def _servername(self, connection: SSL.Connection) -> None:
        context = self.context_for(connection.get_servername())
        if context is not connection.get_context():
            connection.set_context(context)

    def _alpn(self, connection: SSL.Connection, offered: List[bytes]) -> bytes:
        for protocol in self.protocols:
            if protocol in offered:
                return protocol
        # Raised here, kept by pyOpenSSL and raised again out of the
        # handshake, where Twisted reads it as OpenSSL's own (a list of
        # (library, function, reason)).
        raise NoCommonProtocol([("SSL routines", "", "no application protocol in common")])


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class SNIConnectionCreator:
    """
    What the C{tls:} listeners make their connections with: the current
    L{ServerContexts}, swapped whole on reload (L{use}).

    @ivar connection_class: The class of the connections made: one whose
        reads go through the process's buffer on PyPy
        (L{lbproxy.tlsio.SharedBufferConnection}), pyOpenSSL's otherwise.
    """

    def __init__(self, reuse_read_buffer: Optional[bool] = None) -> None:
        self.contexts: Optional[ServerContexts] = None
        self.connection_class = tlsio.connection_class(reuse_read_buffer)

    def use(self, contexts: Optional[ServerContexts]) -> None:
        """New handshakes get C{contexts}; open connections keep theirs."""
        self.contexts = contexts

    def getContext(self) -> SSL.Context:
        if self.contexts is None:
            raise RuntimeError("no certificates configured")
        return self.contexts.default

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return self.connection_class(self.getContext(), None)


def server_endpoint(reactor: Any, description: str, creator: SNIConnectionCreator) -> Any:
    """
    The endpoint of a C{tls:PORT[:interface=...][:backlog=N]} listener:
    TCP, wrapped by Twisted in C{TLSMemoryBIOFactory} with C{creator}.
    """
    listen = parse_tls_listen(description)
    return SSL4ServerEndpoint(
        reactor, listen.port, creator, backlog=listen.backlog, interface=listen.interface
    )


__all__ = [
    "CIPHERS",
    "PROTOCOLS",
    "SNIConnectionCreator",
    "ServerContexts",
    "server_endpoint",
]
