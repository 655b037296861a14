"""
nginx's smooth weighted round robin.
"""

from __future__ import annotations

from typing import AbstractSet, Optional, Sequence

from lbproxy.balancing.interface import BalancerOptions, Server
from lbproxy.balancing.walk import Algorithm, Balancer


class SmoothWeightedRoundRobin(Balancer):
    """
    Invariant: the current weights always sum to zero after a pick.  Each pick
    adds every usable server's weight to its current weight, takes the server
    with the largest current weight (the first listed on a tie) and subtracts
    the total weight from it.  Over a cycle each server is picked in proportion
    to its weight, and picks of a heavy server are spread out rather than
    bunched: weights 5, 1, 1 give a a b a c a a.

    Failover candidates are further picks that leave out the servers already
    offered, as nginx does.
    """

    def __init__(self, servers: Sequence[Server], options: BalancerOptions) -> None:
        super().__init__(servers, options)
        self._current = [0] * len(self.servers)

    def pick(self, tried: AbstractSet[int], key: Optional[bytes], now: float) -> int:
        current = self._current
        best = -1
        total = 0
        for index, server in enumerate(self.servers):
            if not server.usable or index in tried:
                continue
            weight = server.weight
            current[index] += weight
            total += weight
            if best < 0 or current[index] > current[best]:
                best = index
        if best >= 0:
            current[best] -= total
        return best


WEIGHTED_ROUND_ROBIN = Algorithm(
    name="weighted_round_robin",
    builder=SmoothWeightedRoundRobin,
    summary="nginx's smooth weighted round robin: weights 5,1,1 give a a b a c a a",
)
