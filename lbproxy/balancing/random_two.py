"""
The power of two choices on requests in flight.
"""

from __future__ import annotations

from typing import AbstractSet, Optional

from lbproxy.balancing.walk import Algorithm, Balancer, two_choices


class RandomTwo(Balancer):
    """
    Two usable servers drawn at random; the one with fewer requests in
    flight relative to its weight takes the request (the first drawn on a
    tie).  Nearly as even as least connections, without every request
    herding onto the one server that just became the least loaded (Mitzenmacher,
    "The Power of Two Choices in Randomized Load Balancing").  Failover
    draws again among the servers not yet tried.
    """

    def pick(self, tried: AbstractSet[int], key: Optional[bytes], now: float) -> int:
        servers = self.servers
        return two_choices(servers, tried, self.options.random, lambda i: servers[i].active)


RANDOM_TWO = Algorithm(
    name="random_two",
    builder=RandomTwo,
    summary="of two servers drawn at random, the one with fewer requests in flight",
)
