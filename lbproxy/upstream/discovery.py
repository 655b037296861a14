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

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from twisted.application.service import Service
from twisted.internet.defer import (
    Deferred,
    fail,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbproxy.config import PoolConfig, ServerConfig
from lbproxy.config.dns import (
    DnsEntry,
    Found,
    found_name,
)
from lbproxy.config.found import all_servers, describe_change
from lbproxy.upstream.dnslookup import LOOKUP_DEADLINE, Answer, Lookup, describe_failure, lookup
from lbproxy.upstream.pool import Pool, ServerState

__all__ = ["Discovery", "update_pool"]

log = Logger()


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
