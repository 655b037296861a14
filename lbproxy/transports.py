"""
TCP transports that read into one buffer reused by the process.

Twisted's TCP connection reads with C{socket.recv(65536)}: on PyPy each
read takes 64 KiB of the garbage collector's nursery however few bytes
arrive, so a proxied request of a few hundred bytes (a read from the
client, one from the backend) fills the nursery with buffers that are
mostly empty, and minor collections come several times more often than
the bytes need.  The transports here read with C{socket.recv_into} into
one 64 KiB buffer and hand the protocol a copy of just the bytes read.

One buffer serves the process: a reactor dispatches one read at a time,
and the bytes are copied out of it before the protocol sees them, so a
read started from inside another's handling would not disturb it either.

Everything else is Twisted's: what a read does next is Twisted's own
C{_dataReceived} of the installed release (an empty read is the end of
the connection, C{CONNECTION_DONE}; and what the protocol's
C{dataReceived} returns is passed on as that release does), and a failed
read is handled as Twisted handles it (C{EWOULDBLOCK} is no event, any
other error loses the connection, C{CONNECTION_LOST}).  TLS, on the front
(C{tls:} listeners) and to C{https} backends, sits above the TCP transport
(Twisted's C{TLSMemoryBIOProtocol}), so it reads through these too.

They are installed where the proxy makes connections: on its listening
ports (L{reuse_read_buffer}: C{tcp:}, C{tls:}, C{systemd:} and the
sockets a worker adopts) and for the backends connected to by address
(L{connecting}).  Only on PyPy (L{ENABLED}): on CPython, C{recv} of 64 KiB
costs no more than the copy, and nothing was gained there.
"""

from __future__ import annotations

import platform
from errno import EWOULDBLOCK
from typing import Any, Dict

from twisted.internet import main, ssl, tcp
from twisted.internet.interfaces import IListeningPort
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import ClientFactory

#: Whether the proxy installs these transports: on PyPy, where they pay.
ENABLED = platform.python_implementation() == "PyPy"

#: How much one read takes at most: Twisted's own read size.
READ_SIZE: int = tcp.Connection.bufferSize

_buffer = bytearray(READ_SIZE)
_view = memoryview(_buffer)


class ReusedBufferRead:
    """
    The read of L{ReusedBufferServer} and the others below: Twisted's
    C{Connection.doRead}, through the process's buffer.
    """

    # Attributes of the Twisted connection this is mixed into.
    socket: Any
    bufferSize: int

    def doRead(self) -> Any:
        if self.bufferSize != READ_SIZE:
            # Someone asked this connection for other reads: Twisted's own.
            return super().doRead()  # type: ignore[misc]
        try:
            count = self.socket.recv_into(_view, READ_SIZE)
        except OSError as se:
            if se.args[0] == EWOULDBLOCK:
                return None
            return main.CONNECTION_LOST
        return self._dataReceived(  # type: ignore[attr-defined]
            bytes(_view[:count]) if count else b""
        )


class ReusedBufferServer(ReusedBufferRead, tcp.Server):
    """A connection accepted by a plain TCP listener (or a C{tls:} one)."""


class ReusedBufferTLSServer(ReusedBufferRead, ssl.Server):
    """A connection accepted by Twisted's older TLS port (C{ssl.Port})."""


class ReusedBufferClient(ReusedBufferRead, tcp.Client):
    """A connection to a backend."""


#: The transport class a listening port makes -> ours.
_SERVERS: Dict[type, type] = {tcp.Server: ReusedBufferServer, ssl.Server: ReusedBufferTLSServer}


def reuse_read_buffer(port: IListeningPort, enabled: bool = ENABLED) -> bool:
    """
    Make the connections C{port} accepts from now on read into the
    process's buffer, when it is a TCP port of Twisted's and C{enabled}.

    @returns: Whether it did: C{False} for a port of another kind (a UNIX
        socket's, a test's fake), which is left alone, or when disabled.
    """
    if not enabled:
        return False
    made = getattr(port, "transport", None)
    ours = _SERVERS.get(made) if isinstance(made, type) else None
    if ours is None:
        return False
    port.transport = ours  # type: ignore[attr-defined]
    return True


class _Connector(tcp.Connector):
    """Twisted's TCP connector, making a L{ReusedBufferClient}."""

    def _makeTransport(self) -> ReusedBufferClient:
        return ReusedBufferClient(self.host, self.port, self.bindAddress, self, self.reactor)


class Connecting:
    """
    The reactor as a TCP client endpoint sees it (C{connectTCP}), whose
    connections are L{ReusedBufferClient}s.  Give it to C{TCP4ClientEndpoint}
    or C{TCP6ClientEndpoint} in place of the reactor.
    """

    def __init__(self, reactor: PosixReactorBase) -> None:
        self.reactor = reactor

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: ClientFactory,
        timeout: float = 30.0,
        bindAddress: Any = None,
    ) -> tcp.Connector:
        connector = _Connector(host, port, factory, timeout, bindAddress, self.reactor)
        connector.connect()
        return connector


def connecting(reactor: Any, enabled: bool = ENABLED) -> Any:
    """
    What a TCP client endpoint should connect through: L{Connecting} for a
    real reactor of Twisted's (epoll, poll, select) when C{enabled}, the
    reactor itself otherwise (or for any other reactor: a test's memory
    reactor).
    """
    if enabled and isinstance(reactor, PosixReactorBase):
        return Connecting(reactor)
    return reactor


__all__ = [
    "ENABLED",
    "READ_SIZE",
    "Connecting",
    "ReusedBufferClient",
    "ReusedBufferRead",
    "ReusedBufferServer",
    "ReusedBufferTLSServer",
    "connecting",
    "reuse_read_buffer",
]
