"""
The servers of a pool in tiers, each with its balancer: the primaries, and
the backups, used only while every primary is out; when nothing is usable,
panic mode (L{ejection.panic_choice}).  A sticky cookie's server goes first
when it is usable and of the tier in use.
"""

from __future__ import annotations

from typing import Callable, Iterator, List, Optional, Sequence, cast

from lbproxy.balancing import (
    BalancerOptions,
    IBalancer,
    StickyCookie,
    lookup,
    prefer,
    request_key,
)
from lbproxy.config import PoolConfig
from lbproxy.upstream.ejection import panic_choice
from lbproxy.upstream.server import ServerState


class Tiers:
    """
    One configuration's servers, balancers and sticky cookie; rebuilt on
    every reload (balancer state starts afresh).

    @ivar uses_weights: The algorithm reads weights.
    @ivar uses_key: The algorithm takes a request key (C{hash_key}).
    @ivar observes_latency: The algorithm wants response latencies.
    """

    def __init__(self, config: PoolConfig, servers: List[ServerState]) -> None:
        self.config = config
        self.servers = servers
        self.by_name = {s.name: s for s in servers}
        self.primaries = [s for s in servers if not s.backup]
        self.backups = [s for s in servers if s.backup]
        algorithm = lookup(config.algorithm)
        options = BalancerOptions(
            hash_key=config.hash_key,
            balance_factor=config.hash_balance_factor,
            ewma_decay=config.ewma_decay,
        )
        self._primary: IBalancer = algorithm.build(self.primaries, options)
        self._backup: Optional[IBalancer] = (
            algorithm.build(self.backups, options) if self.backups else None
        )
        self.uses_weights: bool = algorithm.uses_weights
        self.uses_key: bool = algorithm.uses_key
        self.observes_latency: bool = algorithm.observes_latency
        self.sticky: Optional[StickyCookie[ServerState]] = (
            StickyCookie(config.sticky_cookie, config.name, servers)
            if config.sticky_cookie
            else None
        )

    def request_key(
        self, client: bytes, header: Callable[[bytes], Optional[Sequence[bytes]]], target: bytes
    ) -> Optional[bytes]:
        if not self.uses_key:
            return None
        return request_key(self.config.hash_key, client, header, target)

    def candidates(
        self, key: Optional[bytes], preferred: Optional[ServerState], now: float
    ) -> Iterator[ServerState]:
        """See L{Pool.candidates}."""
        if preferred is not None and self.by_name.get(preferred.name) is not preferred:
            preferred = None  # a server a reload removed
        for server in self.primaries:
            if server.usable:
                tier = cast(Iterator[ServerState], self._primary.candidates(key, now))
                if preferred is None or preferred.backup:
                    return tier
                return prefer(preferred, tier)
        if self._backup is not None and all(s.out for s in self.primaries):
            for server in self.backups:
                if server.usable:
                    tier = cast(Iterator[ServerState], self._backup.candidates(key, now))
                    if preferred is None or not preferred.backup:
                        return tier
                    return prefer(preferred, tier)
        panic = panic_choice(self.servers)
        return iter(()) if panic is None else iter((panic,))

    def observe(self, server: ServerState, seconds: float, now: float) -> None:
        """Tell the server's tier's balancer of a response's latency."""
        balancer = self._backup if server.backup else self._primary
        if balancer is not None:
            balancer.observe(server, seconds, now)
