"""
One admin view of the worker processes: each worker publishes its counters
into its own region of a shared memory file, and the supervisor's read model
sums them.

The region of a worker is its slot's (the same slot as its column of the
shared table): a header of two words (a sequence number, odd while the
worker writes; the length) and a JSON document of its counters (L{report}),
rewritten every L{PUBLISH_EVERY} seconds and once more when the worker
stops.  The supervisor copies a region, and keeps the copy only when the
sequence number was even and unchanged across the copy (a seqlock: one
writer per region, so no lock).

The supervisor's source (L{GroupSource}) is a L{ProxySource} of the
read model: the supervisor's own pools and servers (states, health and
in-flight sums are the group's already, through the shared table) with each
server's counters replaced by the sum over the workers: requests by method
and status class, failures, the duration histogram, the last minute's
latency buckets (so p50 and p99 are the group's, not an average of the
workers').  A worker that ended leaves its last published counters behind
(L{GroupStats.retire}), so totals never go down on a reload or a restart;
its last minute goes with it.

Counters are at most L{PUBLISH_EVERY} seconds old; a worker killed with
SIGKILL loses what it counted since it last published.

The history (C{/history}, the dashboard's charts): each document also holds
the last seconds of every pool's and server's timeline (responses by status
class and latency buckets per second, L{Timeline.recent}); the supervisor's
L{HistoryFeed} merges each second into its own timelines once every live
worker has published past it (at most L{HistoryFeed.WAIT} seconds after it
ended), so the history is the group's, one to two seconds behind the clock.
"""

from __future__ import annotations

import json
import mmap
import os
from collections import deque
from typing import (
    Any,
    Callable,
    Deque,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
)

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from lbproxy.config import PoolConfig, ServerConfig
from lbproxy.ops.snapshot import ProxySnapshot, WorkerSnapshot, snapshot
from lbproxy.ops.stats import HISTOGRAM_BOUNDS, PoolStats, ServerStats
from lbproxy.workers.shared import MAX_SLOTS, memory_file

log = Logger()

#: Bytes of one worker's region (its header and its JSON document).
REGION = 256 * 1024
_HEADER = 16

#: Seconds between a worker's publications.
PUBLISH_EVERY = 0.25

#: Copies a reader attempts while a worker is writing, before it keeps
#: the previous good copy.
READ_TRIES = 20


class StatsRegions:
    """The regions of every slot, over one shared memory file."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, REGION * MAX_SLOTS)
        self.words = memoryview(self._map).cast("q")

    @classmethod
    def create(cls) -> StatsRegions:
        return cls(memory_file("lbproxy-stats", REGION * MAX_SLOTS))

    def write(self, slot: int, document: bytes) -> bool:
        """Publish C{document} in C{slot}'s region (its one writer); False when too big."""
        if len(document) > REGION - _HEADER:
            return False
        base = slot * REGION
        word = base // 8
        self.words[word] += 1  # odd: being written
        self._map[base + _HEADER : base + _HEADER + len(document)] = document
        self.words[word + 1] = len(document)
        self.words[word] += 1  # even: whole
        return True

    def read(self, slot: int) -> Optional[bytes]:
        """A whole copy of C{slot}'s document, or L{None} (never written, or always busy)."""
        base = slot * REGION
        word = base // 8
        for _ in range(READ_TRIES):
            before = int(self.words[word])
            if before == 0:
                return None
            if before % 2:
                continue
            length = int(self.words[word + 1])
            data = bytes(self._map[base + _HEADER : base + _HEADER + min(length, REGION)])
            if int(self.words[word]) == before:
                return data
        return None

    def clear(self, slot: int) -> None:
        """A slot's worker ended and its counters were retired (supervisor only)."""
        word = slot * REGION // 8
        self.words[word] = 0
        self.words[word + 1] = 0


# -- the worker's side ----------------------------------------------------------


class Removed:
    """
    The counters of the servers a worker's pools no longer have (DNS
    discovery removed them), folded into one total per pool, so that the
    worker's own figures (C{/status} C{"workers"}) never go down.

    A removed server is folded when it is first seen gone (at the next
    publication), then followed while this worker still has requests in
    flight to it (they finish and count on it); at most L{FOLLOWED} of them
    are followed (the oldest leaves first, its counts folded up to then),
    so memory stays bounded whatever the churn.  (A server with a row of
    the shared table keeps the in-flight sum it last read, which may count
    other workers' requests: such a one may be followed until the bound
    drops it.)  A server DNS names again is a new server
    (L{lbproxy.upstream.discovery.update_pool}).
    """

    FOLLOWED = 64

    def __init__(self) -> None:
        #: pool -> [requests answered, failures] of its removed servers.
        self.totals: Dict[str, List[int]] = {}
        #: pool -> (its server list as last seen, the same as a set).
        self._lists: Dict[str, Tuple[Any, Set[Any]]] = {}
        #: [pool, server, served, failures folded so far] of each followed one.
        self._followed: Deque[List[Any]] = deque()

    def _fold(self, pool: str, served: int, failures: int) -> None:
        total = self.totals.setdefault(pool, [0, 0])
        total[0] += served
        total[1] += failures

    def follow(self, pools: Mapping[str, Any]) -> None:
        """Fold what the servers gone since the last call, and those followed, counted."""
        for name, pool in pools.items():
            servers = pool.servers
            known = self._lists.get(name)
            if known is not None and known[0] is servers:
                continue
            current = set(servers)
            if known is not None:
                for server in known[1] - current:
                    stats = server.stats
                    self._fold(name, stats.served, stats.failures)
                    self._followed.append([name, server, stats.served, stats.failures])
            self._lists[name] = (servers, current)
        if not self._followed:
            return
        kept: Deque[List[Any]] = deque()
        for entry in self._followed:
            name, server, served, failures = entry
            stats = server.stats
            if stats.served != served or stats.failures != failures:
                self._fold(name, stats.served - served, stats.failures - failures)
                entry[2], entry[3] = stats.served, stats.failures
            if server.active > 0:
                kept.append(entry)
        while len(kept) > self.FOLLOWED:
            kept.popleft()
        self._followed = kept


def report(
    service: Any,
    number: int,
    generation: int,
    slot: int,
    final: bool = False,
    removed: Optional[Removed] = None,
) -> Dict[str, Any]:
    """
    What a worker publishes: its pools' and servers' counters, and its own
    figures.  C{final}: its last, as it stops; its history includes the
    second in progress.  C{removed}: the counters of servers its pools no
    longer have, per pool.
    """
    now = service.reactor.seconds()
    upto = now + 1 if final else now
    pools: Dict[str, Any] = {}
    for name, pool in service.pools.items():
        servers = {}
        for server in pool.servers:
            stats = server.stats
            minute = stats.recent.merged(now)
            servers[server.name] = {
                "requests": [[m, s, n] for (m, s), n in stats.requests.items()],
                "served": stats.served,
                "failures": stats.failures,
                "connect_failures": stats.connect_failures,
                "histogram": list(stats.histogram.counts),
                "duration_sum": stats.histogram.total,
                "minute": {str(i): n for i, n in enumerate(minute) if n},
                "active": server.active,
                "seconds": stats.timeline.recent(upto),
            }
        pools[name] = {
            "seconds": pool.stats.timeline.recent(upto),
            "retries": pool.stats.retries,
            "unrouted": [[m, s, n] for (m, s), n in pool.stats.unrouted.items()],
            "queue_length": pool.queue_length,
            "servers": servers,
            "removed": removed.totals.get(name, [0, 0]) if removed is not None else [0, 0],
        }
    return {
        "number": number,
        "generation": generation,
        "slot": slot,
        "pid": os.getpid(),
        "now": now,
        "client_connections": service.site.open_connections,
        "pools": pools,
    }


def fingerprint(service: Any) -> Tuple[Any, ...]:
    """
    What changes whenever a worker's counters do (a request answered or
    failed, a connection opened or closed, a request queued or retried):
    a few integers per server, read without building the document.
    """
    figures: List[Any] = [service.site.open_connections]
    for pool in service.pools.values():
        stats = pool.stats
        figures.append(
            (stats.retries, pool.queue_length, sum(stats.unrouted.values()), id(pool.servers))
        )
        for server in pool.servers:
            s = server.stats
            figures.append(
                (s.served, s.failures, s.connect_failures, server.active, sum(s.requests.values()))
            )
    return tuple(figures)


class Publisher:
    """
    A worker's publications, every L{PUBLISH_EVERY} seconds and at its stop;
    while nothing changed (L{fingerprint}), once a second only: the
    supervisor's history needs a document written after each second ended,
    nothing else in it moves.
    """

    def __init__(
        self, regions: StatsRegions, service: Any, number: int, generation: int, slot: int
    ) -> None:
        self.regions = regions
        self.service = service
        self.number = number
        self.generation = generation
        self.slot = slot
        self._loop = LoopingCall(self.publish)
        self._too_big = False
        self._last: Optional[Tuple[Any, ...]] = None
        self._second = -1
        self.removed = Removed()

    def start(self, clock: Any) -> None:
        self._loop.clock = clock
        self._loop.start(PUBLISH_EVERY, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        self.publish(final=True)

    def publish(self, final: bool = False) -> None:
        second = int(self.service.reactor.seconds())
        self.removed.follow(self.service.pools)
        if not final:
            figures = fingerprint(self.service) + (
                sum(served for served, _ in self.removed.totals.values()),
            )
            if figures == self._last and second == self._second:
                return
            self._last = figures
        self._second = second
        document = report(
            self.service, self.number, self.generation, self.slot, final, self.removed
        )
        data = json.dumps(document, separators=(",", ":")).encode("utf-8")
        if not self.regions.write(self.slot, data) and not self._too_big:
            self._too_big = True
            log.warn(
                "counters of {n} bytes do not fit the {size} bytes of a worker's region: "
                "the admin view misses this worker's",
                n=len(data),
                size=REGION - _HEADER,
            )


# -- the supervisor's side --------------------------------------------------------


def _add_pairs(into: Dict[Tuple[str, str], int], pairs: Iterable[Sequence[Any]]) -> None:
    for method, status, n in pairs:
        key = (str(method), str(status))
        into[key] = into.get(key, 0) + int(n)


def _add_server(into: ServerStats, figures: Mapping[str, Any], now: Optional[float]) -> None:
    _add_pairs(into.requests, figures["requests"])
    into.served += int(figures["served"])
    into.failures += int(figures["failures"])
    into.connect_failures += int(figures["connect_failures"])
    counts = into.histogram.counts
    for i, n in enumerate(figures["histogram"][: len(HISTOGRAM_BOUNDS) + 1]):
        counts[i] += int(n)
    into.histogram.total += float(figures["duration_sum"])
    if now is not None:
        into.recent.add_counts({int(i): int(n) for i, n in figures["minute"].items()}, now)


class GroupStats:
    """
    The supervisor's reading of the regions: the live workers' documents
    and the retired counters of workers that ended.
    """

    def __init__(self, regions: StatsRegions) -> None:
        self.regions = regions
        #: (pool, server) -> counters left by workers that ended.
        self.retired_servers: Dict[Tuple[str, str], Dict[str, Any]] = {}
        #: pool -> (retries, unrouted pairs) left by workers that ended.
        self.retired_pools: Dict[str, Dict[str, Any]] = {}
        #: The last good document of each slot, and the sequence read
        #: before it was copied.
        self._last: Dict[int, Dict[str, Any]] = {}
        self._sequences: Dict[int, int] = {}
        #: The last documents of workers that ended, for the history seconds
        #: not merged yet (L{HistoryFeed}).
        self.ended: Deque[Dict[str, Any]] = deque(maxlen=64)

    def document(self, slot: int) -> Optional[Dict[str, Any]]:
        # Unchanged since the last copy (the region's sequence word): the
        # document decoded then, without a copy or a decoding.
        sequence = int(self.regions.words[slot * REGION // 8])
        if sequence and self._sequences.get(slot) == sequence and slot in self._last:
            return self._last[slot]
        data = self.regions.read(slot)
        if data is not None:
            try:
                self._last[slot] = json.loads(data)
                self._sequences[slot] = sequence
            except ValueError:
                pass
        return self._last.get(slot)

    def documents(self, slots: Iterable[int]) -> List[Dict[str, Any]]:
        found = []
        for slot in slots:
            document = self.document(slot)
            if document is not None:
                found.append(document)
        return found

    def retire(self, slot: int) -> None:
        """The worker of C{slot} ended: its last counters stay in the totals."""
        document = self.document(slot)
        self._last.pop(slot, None)
        self._sequences.pop(slot, None)
        self.regions.clear(slot)
        if document is None:
            return
        self.ended.append(document)
        for pool_name, pool in document["pools"].items():
            kept = self.retired_pools.setdefault(pool_name, {"retries": 0, "unrouted": []})
            kept["retries"] += int(pool["retries"])
            kept["unrouted"].extend(pool["unrouted"])
            for server_name, figures in pool["servers"].items():
                key = (pool_name, server_name)
                old = self.retired_servers.get(key)
                if old is None:
                    self.retired_servers[key] = dict(figures, minute={})
                    continue
                old["requests"] = old["requests"] + figures["requests"]
                for field in ("served", "failures", "connect_failures"):
                    old[field] += figures[field]
                old["histogram"] = [a + b for a, b in zip(old["histogram"], figures["histogram"])]
                old["duration_sum"] += figures["duration_sum"]


class GroupServer:
    """A server of the supervisor's, with the group's counters (a L{ServerSource})."""

    def __init__(self, server: Any, stats: ServerStats) -> None:
        self.server = server
        self.stats = stats

    @property
    def name(self) -> str:
        return str(self.server.name)

    @property
    def config(self) -> ServerConfig:
        config: ServerConfig = self.server.config
        return config

    @property
    def state(self) -> str:
        return str(self.server.state)

    @property
    def up(self) -> bool:
        return bool(self.server.up)

    @property
    def ejected(self) -> bool:
        return bool(self.server.ejected)

    @property
    def backup(self) -> bool:
        return bool(self.server.backup)

    @property
    def base_weight(self) -> int:
        return int(self.server.base_weight)

    @property
    def weight(self) -> int:
        return int(self.server.weight)

    @property
    def active(self) -> int:
        return int(self.server.active)

    @property
    def last_check(self) -> str:
        return str(self.server.last_check)


class GroupPool:
    """A pool of the supervisor's, with the group's counters (a L{PoolSource})."""

    def __init__(
        self, pool: Any, stats: PoolStats, servers: List[GroupServer], queue_length: int
    ) -> None:
        self.pool = pool
        self.stats = stats
        self.servers = servers
        self.queue_length = queue_length

    @property
    def name(self) -> str:
        return str(self.pool.name)

    @property
    def config(self) -> PoolConfig:
        config: PoolConfig = self.pool.config
        return config


class GroupSource:
    """
    The supervisor's L{ProxySource}: its own pools and servers with the
    counters summed over its workers (L{take} builds one per snapshot).
    """

    def __init__(self, proxy: Any, documents: List[Dict[str, Any]], retired: GroupStats) -> None:
        self.proxy = proxy
        self.documents = documents
        now = proxy.seconds()
        self.pools: Dict[str, GroupPool] = {}
        for name, pool in proxy.pools.items():
            pool_stats = PoolStats()
            kept = retired.retired_pools.get(name)
            if kept is not None:
                pool_stats.retries += kept["retries"]
                _add_pairs(pool_stats.unrouted, kept["unrouted"])
            queue = 0
            servers = []
            for server in pool.servers:
                stats = ServerStats()
                old = retired.retired_servers.get((name, server.name))
                if old is not None:
                    _add_server(stats, old, None)
                servers.append(GroupServer(server, stats))
            by_name = {s.name: s for s in servers}
            for document in documents:
                figures = document["pools"].get(name)
                if figures is None:
                    continue
                pool_stats.retries += int(figures["retries"])
                _add_pairs(pool_stats.unrouted, figures["unrouted"])
                queue += int(figures["queue_length"])
                for server_name, server_figures in figures["servers"].items():
                    found = by_name.get(server_name)
                    if found is not None:
                        _add_server(found.stats, server_figures, now)
            self.pools[name] = GroupPool(pool, pool_stats, servers, queue)

    @property
    def started_at(self) -> float:
        return float(self.proxy.started_at)

    @property
    def config_path(self) -> str:
        return str(self.proxy.config_path)

    @property
    def used_pools(self) -> Iterable[str]:
        used: Iterable[str] = self.proxy.used_pools
        return used

    @property
    def client_connections(self) -> int:
        return sum(int(d["client_connections"]) for d in self.documents)

    @property
    def reloads(self) -> Mapping[str, int]:
        reloads: Mapping[str, int] = self.proxy.reloads
        return reloads

    def seconds(self) -> float:
        return float(self.proxy.seconds())

    def workers(self) -> Tuple[WorkerSnapshot, ...]:
        now = self.seconds()
        out = []
        for document in sorted(self.documents, key=lambda d: (d["generation"], d["number"])):
            requests = failures = in_flight = 0
            for pool in document["pools"].values():
                for figures in pool["servers"].values():
                    requests += int(figures["served"])
                    failures += int(figures["failures"])
                    in_flight += int(figures["active"])
                # Servers removed since (DNS discovery): their counts stay.
                gone_served, gone_failures = pool.get("removed", (0, 0))
                requests += int(gone_served)
                failures += int(gone_failures)
            out.append(
                WorkerSnapshot(
                    number=int(document["number"]),
                    pid=int(document["pid"]),
                    generation=int(document["generation"]),
                    client_connections=int(document["client_connections"]),
                    in_flight=in_flight,
                    requests=requests,
                    failures=failures,
                    published_ago=round(max(0.0, now - float(document["now"])), 3),
                )
            )
        return tuple(out)


class HistoryFeed:
    """
    The supervisor's history, fed from its workers: every L{EVERY} seconds,
    each second that is over for every live worker (their last documents
    were published after it ended) is merged, in order, into the
    supervisor's own pool and server timelines, from the seconds the
    documents carry (L{Timeline.recent}).  A worker that has not published
    for L{WAIT} seconds after a second ended is not waited for (its
    counts of that second are lost, not the others').

    @ivar complete: The last second merged: C{/history} ends there.
    """

    EVERY = 0.5
    WAIT = 4

    def __init__(self, proxy: Any, group: GroupStats, slots: Callable[[], Iterable[int]]) -> None:
        self.proxy = proxy
        self.group = group
        self.slots = slots
        self.complete = int(proxy.seconds()) - 1
        self._loop = LoopingCall(self.feed)

    def start(self, clock: Any) -> None:
        self._loop.clock = clock
        self._loop.start(self.EVERY, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def feed(self) -> None:
        now = self.proxy.seconds()
        live = self.group.documents(self.slots())
        # Each document holds the seconds before the one it was published in.
        last = int(now) - 1
        for document in live:
            last = min(last, int(float(document["now"])) - 1)
        last = max(last, int(now) - 1 - self.WAIT)
        if last <= self.complete:
            return
        documents = list(self.group.ended) + live
        first = self.complete + 1
        by_pool = self._seconds_by_pool(documents, first, last)
        for name, pool in self.proxy.pools.items():
            found = by_pool.get(name)
            if not found:
                continue
            own, servers = found
            for second, counts, buckets in sorted(own, key=lambda e: e[0]):
                pool.stats.timeline.merge(second, counts, buckets)
            for server in pool.servers:
                for second, counts, buckets in sorted(
                    servers.get(server.name, ()), key=lambda e: e[0]
                ):
                    server.stats.timeline.merge(second, counts, buckets)
        self.complete = last
        # Workers that ended long enough ago have nothing left to merge.
        ended = self.group.ended
        while ended and int(float(ended[0]["now"])) <= last:
            ended.popleft()

    @staticmethod
    def _seconds_by_pool(
        documents: Iterable[Mapping[str, Any]], first: int, last: int
    ) -> Dict[str, Tuple[List[Any], Dict[str, List[Any]]]]:
        """pool -> (its seconds, server -> its seconds) from C{first} to C{last}, summed."""
        out: Dict[str, Tuple[List[Any], Dict[str, List[Any]]]] = {}
        for document in documents:
            for pool_name, pool in document["pools"].items():
                own, servers = out.setdefault(pool_name, ([], {}))
                _add_seconds(own, pool.get("seconds", ()), first, last)
                for server_name, figures in pool["servers"].items():
                    _add_seconds(
                        servers.setdefault(server_name, []),
                        figures.get("seconds", ()),
                        first,
                        last,
                    )
        return out


def _add_seconds(into: List[Any], seconds: Iterable[Sequence[Any]], first: int, last: int) -> None:
    """Sum the seconds from C{first} to C{last} of C{seconds} into C{into} (one entry a second)."""
    for entry in seconds:
        second, counts, buckets = int(entry[0]), entry[1], entry[2]
        if not first <= second <= last:
            continue
        for mine in into:
            if mine[0] == second:
                mine[1] = [a + int(b) for a, b in zip(mine[1], counts)]
                for bucket, n in buckets.items():
                    mine[2][int(bucket)] = mine[2].get(int(bucket), 0) + int(n)
                break
        else:
            into.append(
                [second, [int(n) for n in counts], {int(b): int(n) for b, n in buckets.items()}]
            )


def take(proxy: Any, retired: GroupStats, slots: Iterable[int]) -> ProxySnapshot:
    """The group's snapshot: the supervisor's pools with the live workers' counters summed."""
    source = GroupSource(proxy, retired.documents(slots), retired)
    taken = snapshot(source)
    return ProxySnapshot(
        now=taken.now,
        started_at=taken.started_at,
        config_path=taken.config_path,
        client_connections=taken.client_connections,
        reloads=taken.reloads,
        pools=taken.pools,
        workers=source.workers(),
    )


__all__ = [
    "GroupSource",
    "GroupStats",
    "HistoryFeed",
    "Publisher",
    "Removed",
    "StatsRegions",
    "report",
    "take",
]
