"""
Least connections: the fewest requests in flight relative to weight.
"""

from __future__ import annotations

from typing import AbstractSet, Optional, Sequence

from lbproxy.balancing.interface import BalancerOptions, Server
from lbproxy.balancing.walk import Algorithm, Balancer, lighter


class LeastConnections(Balancer):
    """
    Server M{a} is less loaded than M{b} when C{active_a * weight_b <
    active_b * weight_a} (integer arithmetic, no division).  Among equally
    loaded servers the search starts after the server that took the previous
    pick, so ties rotate round robin.
    """

    def __init__(self, servers: Sequence[Server], options: BalancerOptions) -> None:
        super().__init__(servers, options)
        self._next = 0

    def pick(self, tried: AbstractSet[int], key: Optional[bytes], now: float) -> int:
        servers = self.servers
        count = len(servers)
        start = self._next
        best = -1
        for offset in range(count):
            index = (start + offset) % count
            server = servers[index]
            if not server.usable or index in tried:
                continue
            if best < 0 or lighter(
                server.active, server.weight, servers[best].active, servers[best].weight
            ):
                best = index
        if best >= 0 and not tried:
            self._next = (best + 1) % count
        return best


LEAST_CONNECTIONS = Algorithm(
    name="least_connections",
    builder=LeastConnections,
    summary="the fewest requests in flight relative to weight; ties go round robin",
)
