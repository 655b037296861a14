"""
Test tools for DNS discovery: an authoritative DNS server on loopback
(twisted.names' own server) over an in-memory zone whose records a test
changes, silences or makes fail while the proxy runs.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from twisted.internet import defer, reactor
from twisted.internet.interfaces import IListeningPort
from twisted.names import dns, server
from twisted.names.common import ResolverBase

HOST = "127.0.0.1"


class Zone(ResolverBase):
    """
    An authority over names the test sets: C{records[(name, type)]} is the
    list of payloads (twisted.names C{Record_*}) answered, each with C{ttl}.

    @ivar silent: Answer nothing (a server that does not answer).
    @ivar failing: Answer SERVFAIL (the server logs a RuntimeError for each).
    @ivar glue: Put the A records of SRV targets in the additional section.
    @ivar queries: (name, type) of every query, in order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.records: Dict[Tuple[str, int], List[Any]] = {}
        self.ttl = 0
        self.silent = False
        self.failing = False
        self.glue = True
        self.queries: List[Tuple[str, int]] = []

    def srv(self, name: str, *targets: Tuple[int, int, int, str]) -> None:
        """Set the SRV records of C{name}: (priority, weight, port, target)."""
        self.records[(name, dns.SRV)] = [dns.Record_SRV(p, w, port, t) for p, w, port, t in targets]

    def a(self, name: str, *addresses: str) -> None:
        self.records[(name, dns.A)] = [dns.Record_A(a) for a in addresses]

    def aaaa(self, name: str, *addresses: str) -> None:
        self.records[(name, dns.AAAA)] = [dns.Record_AAAA(a) for a in addresses]

    def remove(self, name: str) -> None:
        for key in [k for k in self.records if k[0] == name]:
            del self.records[key]

    def _answer(self, name: str, type: int) -> List[dns.RRHeader]:
        return [
            dns.RRHeader(name, type, dns.IN, self.ttl, payload, auth=True)
            for payload in self.records.get((name, type), [])
        ]

    def _lookup(self, name: Any, cls: int, type: int, timeout: Any) -> defer.Deferred[Any]:
        text = name.decode("ascii") if isinstance(name, bytes) else str(name)
        text = text.lower().rstrip(".")
        self.queries.append((text, type))
        if self.silent:
            return defer.Deferred()  # never answered
        if self.failing:
            # Anything but a DomainError is a SERVFAIL (and logged by the server).
            return defer.fail(RuntimeError("test: failing"))
        if not any(key[0] == text for key in self.records):
            return defer.fail(dns.AuthoritativeDomainError(text))
        answers = self._answer(text, type)
        additional = []
        if type == dns.SRV and self.glue:
            for record in answers:
                target = record.payload.target.name.decode("ascii")
                additional += self._answer(target, dns.A) + self._answer(target, dns.AAAA)
        return defer.succeed((answers, [], additional))


class DNSServer:
    """twisted.names' DNS server for a L{Zone}, on a UDP port of 127.0.0.1."""

    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        factory = server.DNSServerFactory(authorities=[zone])
        factory.noisy = False
        self.protocol = dns.DNSDatagramProtocol(factory)
        self.protocol.noisy = False
        self.port: IListeningPort = reactor.listenUDP(0, self.protocol, interface=HOST)
        self.address = (HOST, self.port.getHost().port)

    def stop(self) -> defer.Deferred[None]:
        return defer.maybeDeferred(self.port.stopListening)
