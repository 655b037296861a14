"""
DNS lookups for service discovery, with twisted.names: a resolver that
keeps one UDP port per address family (L{QuietResolver}), the lookups of a
pool's C{dns+srv://} and C{dns://} entries with their deadlines, and the
words a log line uses for a failed one.
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredSemaphore,
    FirstError,
    TimeoutError,
    gatherResults,
    inlineCallbacks,
    maybeDeferred,
)
from twisted.logger import Logger
from twisted.names import client, dns
from twisted.names.error import (
    DNSNameError,
    DNSQueryRefusedError,
    DNSQueryTimeoutError,
    DNSServerError,
)
from twisted.python.failure import Failure

from lbproxy.config.dns import (
    MAX_SERVERS,
    SRV,
    DnsEntry,
    Found,
    preferred_address,
    resolv_conf_nameservers,
)

log = Logger()

#: A query unanswered is sent again after 1 s, and given up 3 s later.
QUERY_TIMEOUTS = (1, 3)

#: A whole lookup (an SRV query and its targets' addresses) is given up after this.
LOOKUP_DEADLINE = 10.0

#: Address lookups of SRV targets at once, per lookup.
TARGET_LOOKUPS = 8

#: An answer: what it names, and its TTL (L{None}: none given).
Answer = Tuple[Tuple[Found, ...], Optional[float]]

#: Looks up one entry with a resolver; the seam tests script.
Lookup = Callable[[Any, DnsEntry], "Deferred[Answer]"]


class QuietResolver(client.Resolver):
    """
    twisted.names' resolver over one UDP port per address family, opened
    when first needed and kept until L{close}.

    Twisted's own opens and closes a port for every query and logs four
    lines each time: too many for a name looked up every second (Consul
    answers with TTL 0).  The source port is chosen by the system once and
    kept for the resolver's life (query IDs stay random): meant for name
    servers on this host or a trusted network.  Overrides
    C{client.Resolver._query} (private, unchanged since Twisted 13); the
    tests in C{tests/test_discovery_dns.py} fail if a release changes it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._protocols: Dict[str, dns.DNSDatagramProtocol] = {}

    def _query(self, address: Tuple[str, int], *args: Any) -> Deferred[Any]:
        interface = "::" if ":" in address[0] else ""
        protocol = self._protocols.get(interface)
        if protocol is None or protocol.transport is None:
            protocol = dns.DNSDatagramProtocol(self, reactor=self._reactor)
            protocol.noisy = False
            self._reactor.listenUDP(0, protocol, interface=interface)
            self._protocols[interface] = protocol
        return protocol.query(address, *args)  # type: ignore[no-any-return]

    def close(self) -> Deferred[Any]:
        """Give up the queries in flight and close the ports."""
        closing = []
        protocols, self._protocols = self._protocols, {}
        for protocol in protocols.values():
            for waiting, timer in list(protocol.liveMessages.values()):
                if timer.active():
                    timer.cancel()
                if not waiting.called:
                    waiting.errback(CancelledError())
            protocol.liveMessages.clear()
            if protocol.transport is not None:
                closing.append(maybeDeferred(protocol.transport.stopListening))
        return gatherResults(closing)


def make_resolver(
    servers: Optional[Sequence[Tuple[str, int]]],
    reactor: Any,
    resolv_conf: str = "/etc/resolv.conf",
) -> QuietResolver:
    """
    A twisted.names resolver that asks C{servers}, or when L{None} the name
    servers of C{resolv_conf} (read now: on start and on reload), without a
    cache (every lookup reaches a name server, so TTLs are the servers').
    """
    if servers is None:
        try:
            with open(resolv_conf, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            text = ""
        servers = resolv_conf_nameservers(text)
    return QuietResolver(servers=list(servers), timeout=QUERY_TIMEOUTS, reactor=reactor)


# ---------------------------------------------------------------------------
# Lookups


def _name(name: dns.Name) -> str:
    return name.name.decode("ascii", "replace").lower().rstrip(".")


def _address(record: Any) -> str:
    if record.type == dns.A:
        return str(record.payload.dottedQuad())
    return socket.inet_ntop(socket.AF_INET6, record.payload.address)


def _records(
    method: Callable[[str], Deferred[Any]], name: str
) -> Deferred[Tuple[List[Any], List[Any], List[Any]]]:
    """
    A query's answer, authority and additional sections; an NXDOMAIN is an
    empty answer (with the authority section, for its negative TTL).
    """

    def no_such_name(failure: Failure) -> Tuple[List[Any], List[Any], List[Any]]:
        failure.trap(DNSNameError)
        args = getattr(failure.value, "args", ())
        message = args[0] if args else None
        return [], list(getattr(message, "authority", [])), []

    return method(name).addErrback(no_such_name)


def _negative_ttl(authority: Sequence[Any]) -> Optional[float]:
    """How long an empty answer holds: its SOA's TTL and minimum (RFC 2308)."""
    for record in authority:
        if record.type == dns.SOA:
            return float(min(record.ttl, record.payload.minimum))
    return None


def _ttl(ttls: Sequence[float]) -> Optional[float]:
    return float(min(ttls)) if ttls else None


@inlineCallbacks
def lookup_addresses(resolver: Any, name: str):  # type: ignore[no-untyped-def]
    """
    The A and AAAA records of C{name}: a Deferred of (addresses, TTL).  Fails
    when either query fails (other than NXDOMAIN).
    """
    sections = yield gatherResults(
        [
            _records(resolver.lookupAddress, name),
            _records(resolver.lookupIPV6Address, name),
        ],
        consumeErrors=True,
    )
    addresses: List[str] = []
    ttls: List[float] = []
    negative: List[float] = []
    for answers, authority, _ in sections:
        for record in answers:
            if record.type in (dns.A, dns.AAAA):
                addresses.append(_address(record))
                ttls.append(record.ttl)
        ttl = _negative_ttl(authority)
        if ttl is not None:
            negative.append(ttl)
    return addresses, _ttl(ttls) if addresses else _ttl(negative)


@inlineCallbacks
def lookup_srv(resolver: Any, name: str):  # type: ignore[no-untyped-def]
    """
    The SRV records of C{name} and their targets' addresses (from the
    additional section when there, else looked up, a few at once): a
    Deferred of L{Answer}.  A target without an address names no server; a
    target whose lookup fails fails the whole lookup.
    """
    answers, authority, additional = yield _records(resolver.lookupService, name)
    records = [r for r in answers if r.type == dns.SRV][:MAX_SERVERS]
    if not records:
        return (), _negative_ttl(authority)
    ttls = [r.ttl for r in records]
    glue: Dict[str, List[Tuple[str, float]]] = {}
    for record in additional:
        if record.type in (dns.A, dns.AAAA):
            glue.setdefault(_name(record.name), []).append((_address(record), record.ttl))
    targets = sorted({_name(r.payload.target) for r in records} - {""})
    addresses: Dict[str, List[str]] = {}
    for target in targets:
        if target in glue:
            addresses[target] = [address for address, _ in glue[target]]
            ttls.extend(ttl for _, ttl in glue[target])
    missing = [t for t in targets if t not in addresses]
    if missing:
        semaphore = DeferredSemaphore(TARGET_LOOKUPS)
        results = yield gatherResults(
            [semaphore.run(lookup_addresses, resolver, target) for target in missing],
            consumeErrors=True,
        )
        for target, (found, ttl) in zip(missing, results):
            addresses[target] = found
            if found and ttl is not None:
                ttls.append(ttl)
    servers = []
    for record in records:
        target = _name(record.payload.target)
        if addresses.get(target):
            payload = record.payload
            servers.append(
                Found(
                    priority=payload.priority,
                    target=target,
                    port=payload.port,
                    address=preferred_address(addresses[target]),
                    weight=payload.weight,
                )
            )
    return tuple(servers), _ttl(ttls)


def lookup(resolver: Any, entry: DnsEntry) -> Deferred[Answer]:
    """Look up one entry: a Deferred of L{Answer}."""
    if entry.kind == SRV:
        return lookup_srv(resolver, entry.name)  # type: ignore[no-any-return]

    def found(result: Tuple[List[str], Optional[float]]) -> Answer:
        addresses, ttl = result
        return tuple(Found(0, None, entry.port, a) for a in sorted(set(addresses))), ttl

    return lookup_addresses(resolver, entry.name).addCallback(found)  # type: ignore[no-any-return]


def describe_failure(failure: Failure) -> str:
    """A failed lookup, as a log line says it."""
    if failure.check(FirstError):
        failure = failure.value.subFailure  # type: ignore[union-attr]
    if failure.check(TimeoutError, DNSQueryTimeoutError, CancelledError):
        return "no answer in time"
    if failure.check(DNSServerError):
        return "server failure (SERVFAIL)"
    if failure.check(DNSQueryRefusedError):
        return "query refused (REFUSED)"
    value = failure.value
    text = str(value).strip()[:200]
    return f"{type(value).__name__}: {text}" if text else type(value).__name__
