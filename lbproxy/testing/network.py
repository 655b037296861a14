"""
A memory reactor whose TCP connections reach in-memory backends, and whose
clock moves in steps, moving bytes between timers.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Dict, List, Tuple, Union

import attr
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionRefusedError, TimeoutError
from twisted.internet.interfaces import (
    IHostnameResolver,
    IHostResolution,
    IProtocol,
    IReactorPluggableNameResolver,
    IResolutionReceiver,
)
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from lbproxy.testing.backends import REFUSE, UNREACHABLE, MemoryBackend

Address = Union[IPv4Address, IPv6Address]


@implementer(IHostResolution)
@attr.s(auto_attribs=True)
class _Resolution:
    name: str

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class _Resolver:
    """Names resolve to the addresses the harness gave them; IP literals to themselves."""

    def __init__(self) -> None:
        self.names: Dict[str, str] = {}

    def resolveHostName(  # noqa: N802 (Twisted's name)
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        host = self.names.get(hostName, hostName)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            kind = IPv6Address if ip.version == 6 else IPv4Address
            resolutionReceiver.addressResolved(kind("TCP", host, portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution


@implementer(IReactorPluggableNameResolver)
class MemoryNetworkReactor(MemoryReactorClock):
    """
    A C{MemoryReactorClock} whose TCP connections reach L{MemoryBackend}s in
    memory, and whose clock moves in steps: L{advance} runs each timer in
    turn and moves the bytes after each, as a real reactor would between
    events.
    """

    def __init__(self) -> None:
        super().__init__()
        self.backends: Dict[Tuple[str, int], MemoryBackend] = {}
        self._pumps: List[iosim.IOPump] = []
        self._next_port = 40000
        self._resolver = _Resolver()
        self.nameResolver = self._resolver

    def add_backend(self, host: str, port: int, backend: MemoryBackend) -> None:
        """
        Make C{backend} answer connections to C{host:port}.

        :param host: An IP address or a host name (which then resolves to
            an address of the reserved 198.18.0.0/15 range).
        """
        try:
            ipaddress.ip_address(host)
        except ValueError:
            names = self._resolver.names
            if host not in names:
                names[host] = f"198.18.{len(names) // 250}.{len(names) % 250 + 1}"
            host = names[host]
        self.backends[(host, port)] = backend

    def connectTCP(  # noqa: N802 (Twisted's name)
        self, host: str, port: int, factory: Any, timeout: float = 30, bindAddress: Any = None
    ) -> Any:
        connector = super().connectTCP(host, port, factory, timeout, bindAddress)
        self.callLater(0, self._complete, connector, host, port, factory, timeout)
        return connector

    def _complete(self, connector: Any, host: str, port: int, factory: Any, timeout: float) -> None:
        if connector.stoppedConnecting:
            return
        backend = self.backends.get((host, port))
        if backend is None or backend.mode == REFUSE:
            factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
        elif backend.mode == UNREACHABLE:
            self.callLater(timeout, self._time_out, connector, factory)
        else:
            kind = IPv6Address if ":" in host else IPv4Address
            there = kind("TCP", host, port)
            here = kind("TCP", "::1" if ":" in host else "127.0.0.1", self._port())
            protocol = factory.buildProtocol(there)
            if protocol is not None:
                backend.connections += 1
                self.link(protocol, backend.site.buildProtocol(here), here, there)

    def _time_out(self, connector: Any, factory: Any) -> None:
        if not connector.stoppedConnecting:
            factory.clientConnectionFailed(connector, Failure(TimeoutError()))

    def _port(self) -> int:
        self._next_port += 1
        return self._next_port

    def link(
        self, client: IProtocol, server: IProtocol, client_address: Address, server_address: Address
    ) -> None:
        """
        Connect two protocols in memory; bytes move when L{flush} is called.

        :param client: The connecting side.
        :param server: The accepting side.
        """
        client_io = iosim.FakeTransport(client, False, client_address, server_address)
        server_io = iosim.FakeTransport(server, True, server_address, client_address)
        self._pumps.append(iosim.connect(server, server_io, client, client_io, greet=False))

    def flush(self) -> None:
        """
        Run what is due now and move bytes until nothing is left to do.

        :raises RuntimeError: When it never settles (a loop of timers at 0).
        """
        for _ in range(100_000):
            Clock.advance(self, 0)
            moved = False
            for pump in list(self._pumps):
                if pump.pump(advanceClock=False):
                    moved = True
                elif pump.clientIO.disconnected and pump.serverIO.disconnected:
                    self._pumps.remove(pump)
            if not moved and not self._due():
                return
        raise RuntimeError("the in-memory network did not settle")

    def _due(self) -> bool:
        now = self.seconds()
        return any(call.getTime() <= now for call in self.getDelayedCalls())

    def advance(self, amount: float) -> None:
        """
        Let C{amount} seconds pass: each timer runs at its time, and the
        bytes it causes move before the next one.

        :param amount: Seconds.
        """
        end = self.seconds() + amount
        for _ in range(1_000_000):
            self.flush()
            times = [call.getTime() for call in self.getDelayedCalls()]
            step = min(times, default=end)
            if step > end:
                break
            Clock.advance(self, max(0.0, step - self.seconds()))
            if step == end:
                break
        Clock.advance(self, max(0.0, end - self.seconds()))
        self.flush()
