"""
TCP transports that read into one buffer reused by the process, and send
what a poll's events wrote when the poll is handled.

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
(L{connecting}).  Only on PyPy (L{READ_INTO}): on CPython, C{recv} of 64 KiB
costs no more than the copy, and nothing was gained there.

Writes (L{PollEndWrite}, where L{WRITE_AT_POLL_END}): Twisted's C{write}
buffers and asks the reactor to watch the socket for writability; on its
next poll the reactor sends and stops watching (two C{epoll_ctl} calls and
a writability event per write).  A write asked for while the reactor
dispatches a poll's events is sent instead once they are all handled,
all of the poll's sends together, by the reactor's own handling of a
writability event (L{lbproxy.dispatch.HELD}); only what a C{send} does not
take waits for writability on Twisted's path.  Sending each write at once
(asyncio's way) was measured and dropped: sends spread over a poll wake
the peers (the backends, the client) once per send rather than once per
burst, and a wake-up costs the sender far more than the C{epoll_ctl}
calls saved.
"""

from __future__ import annotations

import platform
from errno import EWOULDBLOCK
from select import EPOLLOUT
from typing import Any, Callable, Dict, Tuple

from twisted.internet import main, ssl, tcp
from twisted.internet.interfaces import IListeningPort
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import ClientFactory

from lbproxy.dispatch import HELD

_PYPY = platform.python_implementation() == "PyPy"

#: Whether the proxy's connections read into the process's buffer: on
#: PyPy, where it pays.
READ_INTO: bool = _PYPY

#: Whether the proxy's connections send what a poll's events wrote once
#: they are handled (L{PollEndWrite}): on PyPy, where it pays (about -24%
#: CPU per request); on CPython it measured -12 to -16% on a loaded
#: machine but +1 to +9% on a quiet one, so Twisted's path is kept there.
WRITE_AT_POLL_END: bool = _PYPY

#: Whether the proxy installs transports of its own at all.
ENABLED: bool = READ_INTO or WRITE_AT_POLL_END

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


class PollEndWrite:
    """
    The write of the connections below: sent when the reactor's poll has
    dispatched its events, without a writability round through the
    reactor, when asked for during that dispatch; Twisted's own otherwise
    (see L{lbproxy.dispatch}).  Everything but when the reactor is asked
    to watch the socket is Twisted's: the buffers, producers, closing and
    half-closing, and what a failed send does.
    """

    #: The reactor watches the socket for writability (Twisted's path).
    write_watched = False
    #: In L{HELD}, to be sent for when the poll's events are handled.
    write_held = False
    #: Paused during the event being handled: applied when it is done.
    pause_held = False
    #: Set when Twisted's C{doWrite} has sent the whole buffer.
    _drained = False

    # Attributes of the Twisted connection this is mixed into.
    reactor: Any
    connected: int
    disconnected: int

    def startWriting(self) -> None:
        if self.write_watched or self.write_held:
            return
        if HELD.active is self.reactor and self.connected and not self.disconnected:
            self.write_held = True
            HELD.writes.append(self)
        else:
            self.write_watched = True
            super().startWriting()  # type: ignore[misc]

    def stopWriting(self) -> None:
        self.write_held = False
        self._drained = True
        if self.write_watched:
            self.write_watched = False
            super().stopWriting()  # type: ignore[misc]

    def send_held(self, do_read_or_write: Callable[[Any, int, int], object]) -> None:
        """
        What the reactor does when the socket is writable: Twisted's
        C{doWrite}, and the connection lost or closed as it returns; what
        is left unsent is sent on Twisted's path.
        """
        self.write_held = False
        self._drained = False
        do_read_or_write(self, self.fileno(), EPOLLOUT)  # type: ignore[attr-defined]
        if not self._drained and self.connected and not self.disconnected:
            self.startWriting()

    def pauseProducing(self) -> None:
        if HELD.active is self.reactor and not self.disconnected:
            if not self.pause_held:
                self.pause_held = True
                HELD.pauses.append(self)
        else:
            super().pauseProducing()  # type: ignore[misc]

    def resumeProducing(self) -> None:
        self.pause_held = False
        super().resumeProducing()  # type: ignore[misc]

    def startReading(self) -> None:
        self.pause_held = False
        super().startReading()  # type: ignore[misc]

    def apply_pause(self) -> None:
        """Twisted's pause, if still paused (the reactor stops watching for reads)."""
        if self.pause_held:
            self.pause_held = False
            if not self.disconnected:
                super().pauseProducing()  # type: ignore[misc]


def _classes(base: type, name: str) -> Dict[Tuple[bool, bool], type]:
    """C{base}'s subclasses by (reads into the buffer, writes at once)."""
    made: Dict[Tuple[bool, bool], type] = {(False, False): base}
    for read_into, write_at_poll_end, prefix in (
        (True, False, "ReusedBuffer"),
        (False, True, "PollEndWrite"),
        (True, True, "ReusedBufferPollEndWrite"),
    ):
        mixins = ((ReusedBufferRead,) if read_into else ()) + (
            (PollEndWrite,) if write_at_poll_end else ()
        )
        made[read_into, write_at_poll_end] = type(
            prefix + name, mixins + (base,), {"__module__": __name__}
        )
    return made


#: The transport class a listening port makes -> ours, by kind.
_SERVERS: Dict[type, Dict[Tuple[bool, bool], type]] = {
    tcp.Server: _classes(tcp.Server, "Server"),
    ssl.Server: _classes(ssl.Server, "TLSServer"),
}
_CLIENTS: Dict[Tuple[bool, bool], type] = _classes(tcp.Client, "Client")

ReusedBufferServer = _SERVERS[tcp.Server][True, False]
ReusedBufferTLSServer = _SERVERS[ssl.Server][True, False]
ReusedBufferClient = _CLIENTS[True, False]
PollEndWriteServer = _SERVERS[tcp.Server][False, True]
PollEndWriteClient = _CLIENTS[False, True]


def reuse_read_buffer(
    port: IListeningPort,
    enabled: bool = ENABLED,
    read_into: bool = READ_INTO,
    write_at_poll_end: bool = WRITE_AT_POLL_END,
) -> bool:
    """
    Make the connections C{port} accepts from now on read into the
    process's buffer (C{read_into}) and send at once when idle for writing
    (C{write_at_poll_end}), when it is a TCP port of Twisted's and C{enabled}.

    @returns: Whether it did: C{False} for a port of another kind (a UNIX
        socket's, a test's fake), which is left alone, or when disabled.
    """
    if not enabled or not (read_into or write_at_poll_end):
        return False
    made = getattr(port, "transport", None)
    kinds = _SERVERS.get(made) if isinstance(made, type) else None
    if kinds is None:
        return False
    port.transport = kinds[read_into, write_at_poll_end]  # type: ignore[attr-defined]
    return True


class _Connector(tcp.Connector):
    """Twisted's TCP connector, making a connection of the class given."""

    def __init__(self, transport: type, *args: Any) -> None:
        super().__init__(*args)
        self.transport_class = transport

    def _makeTransport(self) -> tcp.Client:
        made: tcp.Client = self.transport_class(
            self.host, self.port, self.bindAddress, self, self.reactor
        )
        return made


class Connecting:
    """
    The reactor as a TCP client endpoint sees it (C{connectTCP}), whose
    connections are ours (reading into the buffer and writing at once as
    asked).  Give it to C{TCP4ClientEndpoint} or C{TCP6ClientEndpoint} in
    place of the reactor.
    """

    def __init__(
        self,
        reactor: PosixReactorBase,
        read_into: bool = READ_INTO,
        write_at_poll_end: bool = WRITE_AT_POLL_END,
    ) -> None:
        self.reactor = reactor
        self.transport_class = _CLIENTS[read_into, write_at_poll_end]

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: ClientFactory,
        timeout: float = 30.0,
        bindAddress: Any = None,
    ) -> tcp.Connector:
        connector = _Connector(
            self.transport_class, host, port, factory, timeout, bindAddress, self.reactor
        )
        connector.connect()
        return connector


def connecting(
    reactor: Any,
    enabled: bool = ENABLED,
    read_into: bool = READ_INTO,
    write_at_poll_end: bool = WRITE_AT_POLL_END,
) -> Any:
    """
    What a TCP client endpoint should connect through: L{Connecting} for a
    real reactor of Twisted's (epoll, poll, select) when C{enabled}, the
    reactor itself otherwise (or for any other reactor: a test's memory
    reactor).
    """
    if enabled and (read_into or write_at_poll_end) and isinstance(reactor, PosixReactorBase):
        return Connecting(reactor, read_into, write_at_poll_end)
    return reactor


__all__ = [
    "ENABLED",
    "READ_INTO",
    "READ_SIZE",
    "WRITE_AT_POLL_END",
    "PollEndWrite",
    "PollEndWriteClient",
    "PollEndWriteServer",
    "Connecting",
    "ReusedBufferClient",
    "ReusedBufferRead",
    "ReusedBufferServer",
    "ReusedBufferTLSServer",
    "connecting",
    "reuse_read_buffer",
]
