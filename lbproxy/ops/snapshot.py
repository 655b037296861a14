"""
The read model of operations: one snapshot of the proxy's pools and servers,
taken when an operator asks, that C{/status}, the dashboard and C{/metrics}
all render.

A snapshot is made of frozen values; nothing in it refers back to the
running objects, so rendering it cannot change them and a renderer never
learns how the state is kept.  The snapshot reads the running proxy
through three small protocols (L{ProxySource}, L{PoolSource},
L{ServerSource}) of public, read-only members: the objects of one process
(L{lbproxy.service.ProxyService}, L{lbproxy.upstream.pool.Pool},
L{lbproxy.upstream.pool.ServerState}) provide them today, and a supervisor
of several worker processes can provide them from shared memory without a
change to the renderers.

Taking a snapshot costs, per server, a pass over its last minute's latency
slots; it is done per admin request, never on the request path.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional, Protocol, Sequence, Tuple

import attr

from lbproxy.config import PoolConfig, ServerConfig
from lbproxy.ops.stats import PoolStats, ServerStats
from lbproxy.upstream.pool import WEIGHT_SCALE

#: (method label, status class) -> count, in sorted order.
Counts = Tuple[Tuple[Tuple[str, str], int], ...]


class ServerSource(Protocol):
    """What a snapshot reads of one server."""

    @property
    def name(self) -> str: ...

    @property
    def config(self) -> ServerConfig: ...

    @property
    def state(self) -> str:
        """UP, DOWN, DRAINING or MAINT."""

    @property
    def up(self) -> bool:
        """The verdict of active health checks."""

    @property
    def ejected(self) -> bool:
        """Taken out by passive health checks."""

    @property
    def backup(self) -> bool: ...

    @property
    def base_weight(self) -> int:
        """The weight it runs with (configured, or set at run time)."""

    @property
    def weight(self) -> int:
        """The effective weight, in hundredths (L{WEIGHT_SCALE})."""

    @property
    def active(self) -> int:
        """Requests in flight to it."""

    @property
    def last_check(self) -> str:
        """The last active health check's result, or an empty string."""

    @property
    def stats(self) -> ServerStats: ...


class PoolSource(Protocol):
    """What a snapshot reads of one pool."""

    @property
    def name(self) -> str: ...

    @property
    def config(self) -> PoolConfig: ...

    @property
    def queue_length(self) -> int: ...

    @property
    def stats(self) -> PoolStats: ...

    @property
    def servers(self) -> Sequence[ServerSource]: ...


class ProxySource(Protocol):
    """What a snapshot reads of the whole proxy."""

    @property
    def pools(self) -> Mapping[str, PoolSource]: ...

    @property
    def started_at(self) -> float: ...

    @property
    def config_path(self) -> str: ...

    @property
    def used_pools(self) -> Iterable[str]:
        """The names of the pools some route sends requests to."""

    @property
    def client_connections(self) -> int: ...

    @property
    def reloads(self) -> Mapping[str, int]:
        """Configuration reloads by result (C{ok}, C{refused})."""

    def seconds(self) -> float:
        """The time now, on the proxy's clock."""


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ServerSnapshot:
    """
    One server at one moment.

    @ivar up: 1 in C{lbproxy_server_up}: health checks pass and passive
        checks have not taken it out (an operator's drain does not count).
    @ivar duration_buckets: The cumulative duration histogram, as
        Prometheus reads it (upper bound text, count), C{+Inf} last.
    @ivar p50: The last minute's median duration in seconds, or L{None}.
    """

    name: str
    url: str
    state: str
    up: bool
    backup: bool
    weight: int
    effective_weight: float
    in_flight: int
    max_connections: Optional[int]
    requests: Counts
    served: int
    failures: int
    connect_failures: int
    duration_buckets: Tuple[Tuple[str, int], ...]
    duration_sum: float
    last_health_check: Optional[str]
    requests_last_minute: int
    p50: Optional[float]
    p99: Optional[float]


@attr.s(frozen=True, slots=True, auto_attribs=True)
class PoolSnapshot:
    """
    One pool at one moment.

    @ivar unrouted: Requests answered without reaching a server.
    """

    name: str
    algorithm: str
    takes_requests: bool
    queue_length: int
    retries: int
    unrouted: Counts
    servers: Tuple[ServerSnapshot, ...]


@attr.s(frozen=True, slots=True, auto_attribs=True)
class WorkerSnapshot:
    """
    One worker process's own figures (with C{[proxy] workers} above 1).

    @ivar published_ago: Seconds since the worker last published its
        counters (they are that old).
    """

    number: int
    pid: int
    generation: int
    client_connections: int
    in_flight: int
    requests: int
    failures: int
    published_ago: float


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ProxySnapshot:
    """
    The whole proxy at one moment (C{now}, on its clock).

    @ivar workers: Each worker process's figures; empty in a single process.
    """

    now: float
    started_at: float
    config_path: str
    client_connections: int
    reloads: Tuple[Tuple[str, int], ...]
    pools: Tuple[PoolSnapshot, ...]
    workers: Tuple[WorkerSnapshot, ...] = ()

    @property
    def uptime(self) -> float:
        return self.now - self.started_at


def server_snapshot(server: ServerSource, now: float) -> ServerSnapshot:
    """C{server} as it is at C{now}."""
    stats = server.stats
    recent = stats.recent
    p50, p99 = recent.percentiles(now, 0.5, 0.99)
    return ServerSnapshot(
        name=server.name,
        url=server.config.url,
        state=server.state,
        up=server.up and not server.ejected,
        backup=server.backup,
        weight=server.base_weight,
        effective_weight=server.weight / WEIGHT_SCALE,
        in_flight=server.active,
        max_connections=server.config.max_connections,
        requests=tuple(sorted(stats.requests.items())),
        served=stats.served,
        failures=stats.failures,
        connect_failures=stats.connect_failures,
        duration_buckets=tuple(stats.histogram.buckets()),
        duration_sum=stats.histogram.total,
        last_health_check=server.last_check or None,
        requests_last_minute=recent.count(now),
        p50=p50,
        p99=p99,
    )


def pool_snapshot(pool: PoolSource, takes_requests: bool, now: float) -> PoolSnapshot:
    """C{pool} and its servers as they are at C{now}."""
    return PoolSnapshot(
        name=pool.name,
        algorithm=pool.config.algorithm,
        takes_requests=takes_requests,
        queue_length=pool.queue_length,
        retries=pool.stats.retries,
        unrouted=tuple(sorted(pool.stats.unrouted.items())),
        servers=tuple(server_snapshot(s, now) for s in pool.servers),
    )


def snapshot(proxy: ProxySource) -> ProxySnapshot:
    """The proxy, its pools and their servers, as they are now."""
    now = proxy.seconds()
    used = frozenset(proxy.used_pools)
    return ProxySnapshot(
        now=now,
        started_at=proxy.started_at,
        config_path=proxy.config_path,
        client_connections=proxy.client_connections,
        reloads=tuple(proxy.reloads.items()),
        pools=tuple(pool_snapshot(pool, name in used, now) for name, pool in proxy.pools.items()),
    )


__all__ = [
    "PoolSnapshot",
    "PoolSource",
    "ProxySnapshot",
    "ProxySource",
    "ServerSnapshot",
    "ServerSource",
    "WorkerSnapshot",
    "pool_snapshot",
    "server_snapshot",
    "snapshot",
]
