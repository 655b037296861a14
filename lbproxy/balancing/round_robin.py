"""
Round robin: a strict cycle over the usable servers, ignoring weights.
"""

from __future__ import annotations

from typing import AbstractSet, Optional, Sequence

from lbproxy.balancing.interface import BalancerOptions, Server
from lbproxy.balancing.walk import Algorithm, Balancer


class RoundRobin(Balancer):
    """
    The next request starts after the server that took the last pick, so a
    server that is skipped (unusable) does not hand its turn to its
    neighbour twice.  Failover continues the cycle.
    """

    def __init__(self, servers: Sequence[Server], options: BalancerOptions) -> None:
        super().__init__(servers, options)
        self._next = 0

    def pick(self, tried: AbstractSet[int], key: Optional[bytes], now: float) -> int:
        servers = self.servers
        count = len(servers)
        start = self._next
        for offset in range(count):
            index = (start + offset) % count
            if servers[index].usable and index not in tried:
                if not tried:
                    self._next = (index + 1) % count
                return index
        return -1


ROUND_ROBIN = Algorithm(
    name="round_robin",
    builder=RoundRobin,
    summary="a strict cycle; weights are not allowed",
    uses_weights=False,
)
