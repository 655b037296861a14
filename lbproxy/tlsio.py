"""
TLS reads and writes through buffers reused by the process.

Twisted's TLS (C{TLSMemoryBIOProtocol}) reads a connection's decrypted
bytes with pyOpenSSL's C{Connection.recv(2**15)} and the ciphertext to
send with C{Connection.bio_read(2**15)}, about four calls per proxied
request.  pyOpenSSL allocates a new 32 KiB buffer for each call, however
few bytes it returns: on PyPy those buffers are what fills the heap, and
TLS connections made PyPy's major collections (and the slow reactor turns
they cause) come about twenty times as often as plain HTTP's.

Writing costs the same way on PyPy.  pyOpenSSL's C{send} (the plaintext
to encrypt) and C{bio_write} (the ciphertext read from the socket) pass
the bytes to OpenSSL with C{ffi.from_buffer(data)}.  For a young C{bytes}
object, which the garbage collector may still move, PyPy's cffi makes a
raw copy of it that lives as long as the C{bytes} object, kept in a weak
dictionary and freed by a destructor: the copy is freed only by a major
collection, and PyPy does not count it towards the next one.  pyOpenSSL's
reads used to bring major collections forward with their new buffers (cffi
counts those); with the reads through a reused buffer and the writes
through C{from_buffer}, a 300 MiB download grew the proxy's memory by
300 MiB of those copies before a major collection came
(C{docs/pypy-tls-bio.md}).

L{SharedBufferConnection} is pyOpenSSL's C{Connection} with C{recv} and
C{bio_read} done into one buffer made once (C{ffi.new("char[]", 65536)}
from pyOpenSSL's own binding), the bytes read copied out of it at once;
and with C{send} and C{bio_write} copying the bytes into a second such
buffer (C{ffi.memmove}, which makes no raw copy) and giving that to
OpenSSL.  Each call ends with pyOpenSSL's own error handling
(C{_raise_ssl_error}, C{_handle_bio_errors}), so it raises what
pyOpenSSL's would (C{WantReadError}, C{ZeroReturnError}, C{SysCallError},
C{Error}).  Twisted's protocol and factory are untouched: the connection
is what the connection creator makes, so everything around the calls is
the installed Twisted's own.  Any other call (a peek, a size over the
buffer's, anything but C{bytes} to write) is pyOpenSSL's.

A write retried after C{WantReadError} must give OpenSSL the same
pointer: it does (the buffer's), with the same bytes copied in again, as
Twisted retries with the same bytes.

Two buffers serve the process, one for reads and one for writes: the
reactor runs one connection's call at a time, and the bytes are copied
out (or taken in by OpenSSL) before anything else runs.  They are apart
because C{SSL_write} and C{SSL_read} may call back into Python (the
connection's info callback).

Used where the proxy makes TLS connections: the front's C{tls:} listeners
(L{lbproxy.front.tls.SNIConnectionCreator}) and the C{https} backends
(L{reading_client_creator}).  Only on PyPy (L{ENABLED}); and only when
pyOpenSSL still has the private parts it relies on
(L{lbproxy._twisted.tls_read_binding}), else pyOpenSSL's own calls are used.
"""

from __future__ import annotations

import platform
from typing import Any, Optional, Type

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from lbproxy._twisted import tls_read_binding

#: Whether the proxy reads and writes TLS through the process's buffers:
#: on PyPy, where it pays (on CPython a new buffer is a cheap malloc).
ENABLED = platform.python_implementation() == "PyPy"

#: The buffer's size: a TLS record's plaintext is at most 16 KiB, and
#: Twisted asks for 32 KiB at a time.
BUFFER_SIZE = 65536

_binding = tls_read_binding()
if _binding is not None:
    _ffi, _lib = _binding
    _buffer = _ffi.new("char[]", BUFFER_SIZE)
    _out = _ffi.new("char[]", BUFFER_SIZE)
    _memmove = _ffi.memmove
    _SSL_read = _lib.SSL_read
    _SSL_write = _lib.SSL_write
    _BIO_read = _lib.BIO_read
    _BIO_write = _lib.BIO_write


class SharedBufferConnection(SSL.Connection):
    """
    pyOpenSSL's C{Connection}, whose C{recv} (C{read}) and C{bio_read}
    read into the process's buffer, and whose C{send} (C{write}) and
    C{bio_write} give OpenSSL the bytes from the process's other buffer.
    """

    def recv(self, bufsiz: int, flags: Optional[int] = None) -> bytes:
        if flags is not None or type(bufsiz) is not int or not 0 < bufsiz <= BUFFER_SIZE:
            return super().recv(bufsiz, flags)
        ssl = self._ssl
        result = _SSL_read(ssl, _buffer, bufsiz)
        self._raise_ssl_error(ssl, result)
        return _ffi.buffer(_buffer, result)[:]  # type: ignore[no-any-return]

    read = recv

    def bio_read(self, bufsiz: int) -> bytes:
        bio = self._from_ssl
        if bio is None or type(bufsiz) is not int or not 0 < bufsiz <= BUFFER_SIZE:
            return super().bio_read(bufsiz)
        result = _BIO_read(bio, _buffer, bufsiz)
        if result <= 0:
            self._handle_bio_errors(bio, result)
        return _ffi.buffer(_buffer, result)[:]  # type: ignore[no-any-return]

    def send(self, buf: Any, flags: int = 0) -> int:
        if type(buf) is not bytes or not 0 < len(buf) <= BUFFER_SIZE:
            return super().send(buf, flags)
        size = len(buf)
        _memmove(_out, buf, size)
        ssl = self._ssl
        result = _SSL_write(ssl, _out, size)
        self._raise_ssl_error(ssl, result)
        return result  # type: ignore[no-any-return]

    write = send

    def bio_write(self, buf: Any) -> int:
        bio = self._into_ssl
        if bio is None or type(buf) is not bytes or not 0 < len(buf) <= BUFFER_SIZE:
            return super().bio_write(buf)
        size = len(buf)
        _memmove(_out, buf, size)
        result = _BIO_write(bio, _out, size)
        if result <= 0:
            self._handle_bio_errors(bio, result)
        return result  # type: ignore[no-any-return]


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
