"""
TLS reads through one buffer reused by the process.

Twisted's TLS (C{TLSMemoryBIOProtocol}) reads a connection's decrypted
bytes with pyOpenSSL's C{Connection.recv(2**15)} and the ciphertext to
send with C{Connection.bio_read(2**15)}, about four calls per proxied
request.  pyOpenSSL allocates a new 32 KiB buffer for each call, however
few bytes it returns: on PyPy those buffers are what fills the heap, and
TLS connections made PyPy's major collections (and the slow reactor turns
they cause) come about twenty times as often as plain HTTP's.

L{SharedBufferConnection} is pyOpenSSL's C{Connection} with C{recv} done
into one buffer made once (C{ffi.new("char[]", 65536)} from pyOpenSSL's
own binding), the bytes read copied out of it at once; each read ends with
pyOpenSSL's own error handling (C{_raise_ssl_error}), so it raises what
pyOpenSSL's would (C{WantReadError}, C{ZeroReturnError}, C{SysCallError},
C{Error}).  Twisted's protocol and factory are untouched: the connection is
what the connection creator makes, so everything around the reads is the
installed Twisted's own.  Any other read (a peek, a size over the
buffer's) is pyOpenSSL's.

C{bio_read} (the ciphertext to send) stays pyOpenSSL's: read through the
buffer too, a 300 MiB download through a C{tls:} listener grew PyPy's
resident memory by about 300 MiB (9 MiB with pyOpenSSL's), cause not found.
pyOpenSSL's own buffers come with memory pressure that makes PyPy collect
sooner; the copies out of the shared buffer, ciphertext up to 32 KiB each,
apparently do not.

One buffer serves the process: the reactor runs one connection's read at
a time, and the bytes are copied out before anything else runs.

Used where the proxy makes TLS connections: the front's C{tls:} listeners
(L{lbproxy.front.tls.SNIConnectionCreator}) and the C{https} backends
(L{reading_client_creator}).  Only on PyPy (L{ENABLED}); and only when
pyOpenSSL still has the private parts it relies on
(L{lbproxy._twisted.tls_read_binding}), else pyOpenSSL's reads are used.
"""

from __future__ import annotations

import platform
from typing import Any, Optional, Type

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from lbproxy._twisted import tls_read_binding

#: Whether the proxy reads TLS through the process's buffer: on PyPy,
#: where it pays (on CPython a new buffer is a cheap malloc).
ENABLED = platform.python_implementation() == "PyPy"

#: The buffer's size: a TLS record's plaintext is at most 16 KiB, and
#: Twisted asks for 32 KiB at a time.
BUFFER_SIZE = 65536

_binding = tls_read_binding()
if _binding is not None:
    _ffi, _lib = _binding
    _buffer = _ffi.new("char[]", BUFFER_SIZE)
    _SSL_read = _lib.SSL_read


class SharedBufferConnection(SSL.Connection):
    """
    pyOpenSSL's C{Connection}, whose C{recv} (C{read}) reads into the
    process's buffer (C{bio_read} is pyOpenSSL's: see the module).
    """

    def recv(self, bufsiz: int, flags: Optional[int] = None) -> bytes:
        if flags is not None or type(bufsiz) is not int or not 0 < bufsiz <= BUFFER_SIZE:
            return super().recv(bufsiz, flags)
        ssl = self._ssl
        result = _SSL_read(ssl, _buffer, bufsiz)
        self._raise_ssl_error(ssl, result)
        return _ffi.buffer(_buffer, result)[:]  # type: ignore[no-any-return]

    read = recv


def usable(enabled: Optional[bool] = None) -> bool:
    """
    Whether TLS connections made now read through the process's buffer:
    when C{enabled} (by default L{ENABLED}) and pyOpenSSL has its parts.
    """
    return (ENABLED if enabled is None else enabled) and _binding is not None


def connection_class(enabled: Optional[bool] = None) -> Type[SSL.Connection]:
    """The class a TLS connection is made with: L{SharedBufferConnection} when L{usable}."""
    return SharedBufferConnection if usable(enabled) else SSL.Connection


def read_through_buffer(connection: Any, enabled: Optional[bool] = None) -> Any:
    """
    C{connection}, made to read through the process's buffer when it is a
    plain pyOpenSSL C{Connection} (not some other subclass) and L{usable}.
    Its class becomes L{SharedBufferConnection}, which adds no state.
    """
    if usable(enabled) and type(connection) is SSL.Connection:
        connection.__class__ = SharedBufferConnection
    return connection


@implementer(IOpenSSLClientConnectionCreator)
class ReadingClientCreator:
    """
    A client connection creator (what C{wrapClientTLS} takes) whose
    connections are those of C{creator}, reading through the process's
    buffer.
    """

    def __init__(
        self, creator: IOpenSSLClientConnectionCreator, enabled: Optional[bool] = None
    ) -> None:
        self.creator = creator
        self.enabled = enabled

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return read_through_buffer(self.creator.clientConnectionForTLS(tlsProtocol), self.enabled)  # type: ignore[no-any-return]


def reading_client_creator(creator: Any, enabled: Optional[bool] = None) -> Any:
    """
    C{creator}, wrapped in L{ReadingClientCreator} when its connections can
    read through the process's buffer (it makes client connections and
    L{usable}); else C{creator} itself.
    """
    if usable(enabled) and IOpenSSLClientConnectionCreator.providedBy(creator):
        return ReadingClientCreator(creator, enabled)
    return creator


__all__ = [
    "BUFFER_SIZE",
    "ENABLED",
    "ReadingClientCreator",
    "SharedBufferConnection",
    "connection_class",
    "read_through_buffer",
    "reading_client_creator",
    "usable",
]
