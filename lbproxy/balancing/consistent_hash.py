"""
Consistent hashing with bounded loads.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from typing import AbstractSet, Iterator, List, Optional, Sequence

from lbproxy.balancing.interface import BalancerOptions, Server
from lbproxy.balancing.walk import Algorithm, Balancer, failover

#: Points per server on the ring: enough that each server's share of the
#: keys is within a few per cent of even.
POINTS = 160


def hash64(data: bytes) -> int:
    """A stable 64-bit hash (the same in every process and Python)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class ConsistentHash(Balancer):
    """
    Each server owns L{POINTS} points on a ring of 64-bit hashes of its name,
    so the ring does not depend on the order or addresses of the servers.
    A request's key is hashed to a point; the walk goes clockwise from there
    and takes the first usable server whose load stays within the bound
    (Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded
    Loads"): with M{m} requests in flight on M{n} usable servers and
    C{hash_balance_factor} M{c}, a server may take the request only while it
    has fewer than M{ceil(c * (m + 1) / n)}.  Since M{c > 1}, some server
    always has room.  A key keeps its server while that server is usable and
    not over the bound; when a server goes, only its keys move.

    Failover continues clockwise among the servers not yet tried: first
    those within the bound, then (rather than failing the request) the rest.
    A request without a key starts at a random point.
    """

    def __init__(self, servers: Sequence[Server], options: BalancerOptions) -> None:
        super().__init__(servers, options)
        ring = sorted(
            (hash64(b"%s-%d" % (server.name.encode("utf-8"), point)), index)
            for index, server in enumerate(self.servers)
            for point in range(POINTS)
        )
        self._points: List[int] = [h for h, _ in ring]
        self._owners: List[int] = [index for _, index in ring]
        self._factor = options.balance_factor

    def start(self, key: Optional[bytes]) -> int:
        """Where on the ring the walk for C{key} starts."""
        if key is None:
            return self.options.random.randrange(len(self._points))
        return bisect.bisect_left(self._points, hash64(key)) % len(self._points)

    def capacity(self) -> int:
        """How many requests in flight a server may have before it is full."""
        usable = [s.active for s in self.servers if s.usable]
        if not usable:
            return 0
        return math.ceil(self._factor * (sum(usable) + 1) / len(usable))

    def candidates(self, key: Optional[bytes], now: float) -> Iterator[Server]:
        start: List[int] = []

        def pick(tried: AbstractSet[int]) -> int:
            if not start:
                # Drawn on the first read only: an unread walk moves nothing.
                start.append(self.start(key) if self._points else 0)
            return self.walk(tried, start[0])

        return failover(self.servers, pick)

    def walk(self, tried: AbstractSet[int], start: int) -> int:
        """The first server clockwise from C{start} for the next attempt."""
        servers = self.servers
        capacity = self.capacity()
        owners = self._owners
        count = len(owners)
        overflow = -1
        for offset in range(count):
            index = owners[(start + offset) % count]
            server = servers[index]
            if not server.usable or index in tried:
                continue
            if server.active < capacity:
                return index
            if overflow < 0:
                overflow = index
        return overflow


CONSISTENT_HASH = Algorithm(
    name="consistent_hash",
    builder=ConsistentHash,
    summary="the same key (hash_key) to the same server, no server above "
    "hash_balance_factor times the average load",
    uses_weights=False,
    uses_key=True,
    options=("hash_key", "hash_balance_factor"),
)
