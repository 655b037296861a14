"""
Peak EWMA: latency-aware balancing, as Finagle and Linkerd define it.
"""

from __future__ import annotations

import math
from typing import AbstractSet, Dict, List, Optional, Sequence

from lbproxy.balancing.interface import BalancerOptions, Server
from lbproxy.balancing.walk import Algorithm, Balancer, two_choices

#: The load of a server with requests in flight and no latency measured
#: yet: it takes one request at a time until its first response is timed.
PENALTY = 1e9


class PeakEwma(Balancer):
    """
    Each server has a cost: a moving average of its response latency that
    jumps to a slower observation at once (the peak) and forgets it
    exponentially with time constant C{ewma_decay}::

        w = exp(-(now - last) / decay)
        cost = latency                          if latency > cost
        cost = cost * w + latency * (1 - w)     otherwise

    Between observations the cost decays toward zero (C{cost * w}), so a
    server that was slow is tried again after a while.  Its load is
    C{cost * (active + 1)}: latency times the requests it would have in
    flight.  A server never measured has load 0 while idle and L{PENALTY}
    while busy.  The pick is the power of two choices on that load relative
    to weight; failover draws again among the servers not yet tried.
    """

    def __init__(self, servers: Sequence[Server], options: BalancerOptions) -> None:
        super().__init__(servers, options)
        self._decay = options.ewma_decay
        self._index: Dict[str, int] = {s.name: i for i, s in enumerate(self.servers)}
        self._cost: List[float] = [0.0] * len(self.servers)
        self._stamp: List[float] = [0.0] * len(self.servers)

    def cost(self, index: int, now: float) -> float:
        """The latency estimate of server C{index} at time C{now}, in seconds."""
        elapsed = max(0.0, now - self._stamp[index])
        return self._cost[index] * math.exp(-elapsed / self._decay)

    def load(self, index: int, now: float) -> float:
        cost = self.cost(index, now)
        active = self.servers[index].active
        if cost == 0.0:
            return PENALTY if active else 0.0
        return cost * (active + 1)

    def pick(self, tried: AbstractSet[int], key: Optional[bytes], now: float) -> int:
        return two_choices(self.servers, tried, self.options.random, lambda i: self.load(i, now))

    def observe(self, server: Server, latency: float, now: float) -> None:
        index = self._index.get(server.name)
        if index is None:
            return
        cost = self._cost[index]
        if latency > cost:
            self._cost[index] = latency
        else:
            w = math.exp(-max(0.0, now - self._stamp[index]) / self._decay)
            self._cost[index] = cost * w + latency * (1.0 - w)
        self._stamp[index] = now


PEAK_EWMA = Algorithm(
    name="peak_ewma",
    builder=PeakEwma,
    summary="of two servers drawn at random, the one with less latency times requests in flight",
    observes_latency=True,
    options=("ewma_decay",),
)
