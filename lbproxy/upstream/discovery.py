"""
DNS service discovery: a pool's servers found in DNS.

A L{Discovery} service per pool looks up each of the pool's DNS entries
(C{dns+srv://NAME}: SRV records, their targets' addresses; C{dns://NAME:PORT}:
A and AAAA records) with twisted.names, again when the answer's TTL runs out
(bounded by the pool's C{dns_min_ttl} and C{dns_max_ttl}), and tells the
service when the servers they name change.  The service then applies the new
list like a reload of that pool (L{update_pool}).

What counts as an answer: records, and also an authoritative "no such name"
(NXDOMAIN) or "no records": then the entry names no servers.  What counts as
a failure: no answer in time, a server failure (SERVFAIL), a refusal, a
network error; then the entry keeps the servers of its last answer, the
failure is logged once (and the recovery once), and the lookup is tried
again after C{dns_min_ttl}, doubling up to C{dns_max_ttl}.

The rules from records to servers are pure and live in
L{lbproxy.config.dns}.
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredSemaphore,
    FirstError,
    TimeoutError,
    fail,
    gatherResults,
    inlineCallbacks,
    maybeDeferred,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.names import client, dns
from twisted.names.error import (
    DNSNameError,
    DNSQueryRefusedError,
    DNSQueryTimeoutError,
    DNSServerError,
)
from twisted.python.failure import Failure

from lbproxy.config import PoolConfig, ServerConfig
from lbproxy.config.dns import (
    MAX_SERVERS,
    SRV,
    DnsEntry,
    Found,
    found_name,
    preferred_address,
    resolv_conf_nameservers,
)
from lbproxy.config.found import all_servers, describe_change
from lbproxy.upstream.pool import Pool, ServerState

__all__ = ["Discovery", "QuietResolver", "lookup", "make_resolver", "update_pool"]

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


# ---------------------------------------------------------------------------
# The service


class _Watch:
    """
    One entry's lookups: the last good answer, the lookup running or the
    timer of the next one, and the failures in a row.
    """

    def __init__(self, entry: DnsEntry) -> None:
        self.entry = entry
        self.found: Optional[Tuple[Found, ...]] = None
        self.failures = 0
        self.timer: Optional[IDelayedCall] = None
        self.lookup: Optional[Deferred[Answer]] = None


class Discovery(Service):
    """
    Looks up the DNS entries of one pool and calls C{on_change()} when the
    servers they name change.

    @ivar answers: The last good answer of each entry that has had one, by
        source: what L{lbproxy.dnsrecords.all_servers} reads.
    """

    def __init__(
        self,
        config: PoolConfig,
        resolver: Any,
        clock: IReactorTime,
        on_change: Callable[[], None],
        lookup: Lookup = lookup,
    ) -> None:
        self.config = config
        self.resolver = resolver
        self.clock = clock
        self.on_change = on_change
        self._lookup = lookup
        self._watches: Dict[str, _Watch] = {e.source: _Watch(e) for e in config.discovery}

    @property
    def answers(self) -> Dict[str, Tuple[Found, ...]]:
        return {s: w.found for s, w in self._watches.items() if w.found is not None}

    def startService(self) -> None:
        super().startService()
        for watch in self._watches.values():
            self._resolve(watch)

    def stopService(self) -> None:
        super().stopService()
        for watch in self._watches.values():
            self._stop(watch)

    def reconfigure(self, config: PoolConfig, resolver: Any) -> None:
        """
        Take the pool's reloaded configuration: entries that stay keep their
        answer and schedule (unless the resolver changed: then they are
        looked up again now), new ones are looked up now, removed ones stop.
        """
        again = resolver is not self.resolver
        self.config = config
        self.resolver = resolver
        watches = {}
        for entry in config.discovery:
            watch = self._watches.pop(entry.source, None)
            start = watch is None or again
            if watch is None:
                watch = _Watch(entry)
            watch.entry = entry
            watches[entry.source] = watch
            if start and self.running:
                self._stop(watch)
                self._resolve(watch)
        for watch in self._watches.values():
            self._stop(watch)
        self._watches = watches

    # -- one entry ------------------------------------------------------------

    def _resolve(self, watch: _Watch) -> None:
        watch.timer = None
        try:
            looking = self._lookup(self.resolver, watch.entry)
        except Exception:
            looking = fail()
        looking.addTimeout(LOOKUP_DEADLINE, self.clock)
        watch.lookup = looking
        looking.addCallbacks(
            self._answered,
            self._failed,
            callbackArgs=(watch, looking),
            errbackArgs=(watch, looking),
        )
        looking.addErrback(lambda f: log.failure("DNS discovery", f))

    def _current(self, watch: _Watch, looking: Deferred[Answer]) -> bool:
        """Whether C{looking} is the entry's lookup, still wanted."""
        if watch.lookup is not looking:
            return False
        watch.lookup = None
        return bool(self.running) and self._watches.get(watch.entry.source) is watch

    def _answered(self, answer: Answer, watch: _Watch, looking: Deferred[Answer]) -> None:
        if not self._current(watch, looking):
            return
        found, ttl = answer
        found = tuple(sorted(set(found)))
        before, watch.found = watch.found, found
        pool, source = self.config.name, watch.entry.source
        if watch.failures:
            log.info(
                "pool {pool}: {source} resolves again, after {n} failed lookups",
                pool=pool,
                source=source,
                n=watch.failures,
            )
        watch.failures = 0
        low, high = self.config.dns_min_ttl, self.config.dns_max_ttl
        self._schedule(watch, min(max(low, ttl if ttl is not None else low), high))
        if found == before:
            return
        names = [found_name(watch.entry, f) for f in found]
        if not found:
            log.warn(
                "pool {pool}: {source}: DNS names no server (no such name, or no records){empty}",
                pool=pool,
                source=source,
                empty=self._empty_pool(),
            )
        elif before is None:
            log.info(
                "pool {pool}: {source}: {count} found: {names}",
                pool=pool,
                source=source,
                count=_servers(len(names)),
                names=", ".join(names),
            )
        else:
            log.info(
                "pool {pool}: {source}: {change}; now {count}",
                pool=pool,
                source=source,
                change=describe_change(watch.entry, before, found),
                count=_servers(len(names)),
            )
        self.on_change()

    def _failed(self, failure: Failure, watch: _Watch, looking: Deferred[Answer]) -> None:
        if not self._current(watch, looking):
            return
        watch.failures += 1
        if watch.failures == 1:
            # Once, however long it lasts; the recovery is logged too.
            if watch.found is None:
                kept = "no servers from it until it resolves" + self._empty_pool()
            else:
                kept = f"keeping the {_servers(len(watch.found))} of its last answer"
            log.warn(
                "pool {pool}: cannot resolve {source}: {reason}; {kept} (retrying)",
                pool=self.config.name,
                source=watch.entry.source,
                reason=describe_failure(failure),
                kept=kept,
            )
        low, high = self.config.dns_min_ttl, self.config.dns_max_ttl
        self._schedule(watch, min(high, low * 2 ** min(watch.failures - 1, 30)))

    def _empty_pool(self) -> str:
        if all_servers(self.config, self.answers):
            return ""
        return f"; pool {self.config.name} has no server: requests get 503"

    def _schedule(self, watch: _Watch, delay: float) -> None:
        watch.timer = self.clock.callLater(delay, self._resolve, watch)

    def _stop(self, watch: _Watch) -> None:
        if watch.timer is not None and watch.timer.active():
            watch.timer.cancel()
        watch.timer = None
        looking, watch.lookup = watch.lookup, None
        if looking is not None:
            looking.cancel()


def _servers(n: int) -> str:
    return "1 server" if n == 1 else f"{n} servers"


# ---------------------------------------------------------------------------
# Applying a new list to a pool


def update_pool(
    pool: Pool,
    configs: Sequence[ServerConfig],
    route_for: Callable[[ServerConfig], Any],
    key: Callable[[ServerConfig], Any],
) -> Tuple[List[ServerState], List[ServerState]]:
    """
    Make C{configs} the pool's servers, as a reload of the pool would: a
    server that stays (same C{key}) keeps its state, a new one starts (with
    slow start when the pool has it), a removed one gets no new requests and
    finishes those it has.  Each addition and removal goes to the pool's
    event log.

    @returns: The servers added and removed.
    """
    old = {key(s.config): s for s in pool.servers}
    servers = []
    added = []
    for config in configs:
        state = old.pop(key(config), None)
        if state is None:
            state = ServerState(config, route_for(config))
            added.append(state)
        elif state.config != config:
            state.reconfigure(config, route_for(config))
        servers.append(state)
    removed = list(old.values())
    pool.reconfigure(pool.config, servers)
    for state in added:
        pool.start_slow_start(state)
    if pool.on_change is not None:
        for state in added:
            pool.on_change(state, "added", "found in DNS")
        for state in removed:
            pool.on_change(state, "removed", "no longer in DNS")
    return added, removed
