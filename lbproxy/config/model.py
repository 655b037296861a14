"""
The configuration's values: frozen attrs classes, made by L{reader} and read
by the rest of the house.
"""

from __future__ import annotations

from typing import FrozenSet, Mapping, Optional, Tuple

import attr

from lbproxy.balancing import CLIENT_ADDRESS, HashKey
from lbproxy.config.dns import DnsEntry
from lbproxy.config.tls import TLSConfig
from lbproxy.routing import HeaderRule, RouteConfig, Router


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ServerConfig:
    """
    One backend server of a pool.

    @ivar url: The server's URL as written, e.g. C{http://10.0.0.5:8080}.
    @ivar name: How logs (and later the admin API) call it; C{host:port}
        unless a C{name=} option says otherwise.
    """

    url: str
    scheme: str
    host: str
    port: int
    weight: int = 1
    name: str = ""
    max_connections: Optional[int] = None
    backup: bool = False


@attr.s(frozen=True, slots=True, auto_attribs=True)
class PoolConfig:
    """
    A named group of servers and the algorithm that balances over them.
    """

    name: str
    algorithm: str
    servers: Tuple[ServerConfig, ...]
    tls_ca_file: Optional[str] = None
    connect_timeout: float = 3.0
    response_timeout: float = 30.0
    idle_timeout: float = 60.0
    retries: int = 2
    health_check: Optional[Tuple[str, str]] = None
    health_host: Optional[str] = None
    health_interval: float = 2.0
    health_timeout: float = 1.0
    health_rise: int = 2
    health_fall: int = 3
    health_expect: Tuple[int, int] = (200, 399)
    max_fails: int = 3
    fail_timeout: float = 10.0
    fail_on_5xx: bool = False
    slow_start: float = 0.0
    queue_timeout: float = 5.0
    hash_key: HashKey = CLIENT_ADDRESS
    hash_balance_factor: float = 1.25
    ewma_decay: float = 10.0
    sticky_cookie: Optional[str] = None
    #: Lines of C{servers} whose servers are found in DNS (L{lbproxy.upstream.discovery}).
    discovery: Tuple[DnsEntry, ...] = ()
    dns_min_ttl: float = 1.0
    dns_max_ttl: float = 60.0


@attr.s(frozen=True, slots=True, auto_attribs=True)
class FrontLimits:
    """
    Limits on what a client may send: the [proxy] keys of the same names,
    and the request line's fixed 8 KB.
    """

    max_request_line: int = 8192
    max_header_size: int = 32 * 1024
    max_headers: int = 100
    max_body_size: int = 10 * 1024 * 1024
    client_header_timeout: float = 10.0
    client_body_timeout: float = 30.0
    #: The protocols a request may upgrade to (lower-cased names).
    upgrade: FrozenSet[bytes] = frozenset({b"websocket"})
    #: Seconds an upgraded connection (a tunnel) may pass no byte either way.
    tunnel_timeout: float = 3600.0


#: The limits when the [proxy] section sets none.
DEFAULT_LIMITS = FrontLimits()


@attr.s(frozen=True, slots=True, auto_attribs=True)
class AdminConfig:
    """
    The admin listener: status, metrics, dashboard and write actions.

    @ivar token: The bearer token every write action must carry, or L{None}
        (allowed only on a loopback or UNIX-socket listener).
    """

    listen: str
    token: Optional[str] = None


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ProxyConfig:
    """
    The whole configuration of one lbproxy process.

    @ivar listen: Twisted server endpoint descriptions, one per listener.
    @ivar pool: The name of the default pool: it takes the requests no
        route matches.  L{None}: those get a 404.
    @ivar routes: The C{[route:NAME]} sections, in file order.
    @ivar request_headers: The global request header rules.
    @ivar response_headers: The global response header rules.
    @ivar via: The pseudonym sent in C{Via} headers, or L{None} to send none.
    @ivar backend_keepalive: How many idle connections are kept open to each
        backend server.
    @ivar backend_keepalive_timeout: Seconds an idle backend connection is
        kept before it is closed.
    @ivar http2: Offer HTTP/2 by ALPN on the tls: listeners.
    @ivar http2_max_streams: Streams an HTTP/2 client may have open at once.
    """

    path: str
    listen: Tuple[str, ...]
    pool: Optional[str]
    pools: Mapping[str, PoolConfig]
    routes: Tuple[RouteConfig, ...] = ()
    request_headers: Tuple[HeaderRule, ...] = ()
    response_headers: Tuple[HeaderRule, ...] = ()
    via: Optional[str] = "lbproxy"
    backend_keepalive: int = 100
    backend_keepalive_timeout: float = 1.0
    limits: FrontLimits = DEFAULT_LIMITS
    keepalive_timeout: float = 75.0
    max_connections: int = 10000
    access_log: Optional[str] = None
    access_log_format: str = "combined"
    shutdown_timeout: float = 30.0
    http2: bool = True
    http2_max_streams: int = 100
    #: Worker processes serving the listeners (1: the twistd process serves
    #: them itself, as before workers existed).
    workers: int = 1
    admin: Optional[AdminConfig] = None
    tls: Optional[TLSConfig] = None
    #: Name servers for DNS discovery, as (address, port); L{None}: the system's.
    resolver: Optional[Tuple[Tuple[str, int], ...]] = None

    def active_pool(self) -> PoolConfig:
        assert self.pool is not None
        return self.pools[self.pool]

    def used_pools(self) -> FrozenSet[str]:
        """The pools that take requests: the default one and the routes'."""
        used = {route.pool for route in self.routes if route.pool is not None}
        if self.pool is not None:
            used.add(self.pool)
        return frozenset(used)

    def router(self) -> Router:
        """The routes and header rules compiled for matching."""
        return Router(self.routes, self.pool, self.request_headers, self.response_headers)

    def summary(self) -> str:
        """
        One line describing what this configuration sets up.
        """
        servers = sum(len(p.servers) for p in self.pools.values())

        def count(n: int, word: str) -> str:
            return f"{n} {word}" if n == 1 else f"{n} {word}s"

        names = sum(len(p.discovery) for p in self.pools.values())
        found = f" and {count(names, 'DNS name')}" if names else ""
        if not self.routes:
            where = f"requests go to pool {self.pool!r}"
        elif self.pool is None:
            where = f"{count(len(self.routes), 'route')}, no default pool (404)"
        else:
            where = f"{count(len(self.routes), 'route')}, default pool {self.pool!r}"
        return (
            f"{self.path}: ok: {count(len(self.listen), 'listener')}, "
            f"{count(len(self.pools), 'pool')}, {count(servers, 'server')}{found}; {where}"
        )
