"""
The balancing algorithms.

A balancer is given the servers of one pool once, and for every request
yields them in preference order: the first is its pick, the rest are where the
request goes when an earlier one cannot take it.  Iteration is lazy: an
algorithm's state moves only as far as the caller actually reads, so a request
that the first server answers costs one pick.

Balancers are pure: they read each server's C{weight}, C{active} (requests in
flight) and C{usable}, and never do I/O or look at a clock.
"""

from __future__ import annotations

from typing import Generic, Iterator, Optional, Protocol, Sequence, Set, TypeVar


class Server(Protocol):
    """
    What a balancer sees of a server.
    """

    weight: int
    active: int
    usable: bool


S = TypeVar("S", bound=Server)
S_co = TypeVar("S_co", bound=Server, covariant=True)


class RoundRobin(Generic[S]):
    """
    A strict cycle over the usable servers, ignoring weights.

    The next request starts after the server that took the last pick, so a
    server that is skipped (unusable) does not hand its turn to its neighbour
    twice.
    """

    name = "round_robin"

    def __init__(self, servers: Sequence[S]) -> None:
        self._servers = list(servers)
        self._next = 0

    def candidates(self) -> Iterator[S]:
        servers = self._servers
        count = len(servers)
        start = self._next
        first = True
        for offset in range(count):
            index = (start + offset) % count
            server = servers[index]
            if server.usable:
                if first:
                    self._next = (index + 1) % count
                    first = False
                yield server


class SmoothWeightedRoundRobin(Generic[S]):
    """
    nginx's smooth weighted round robin.

    Invariant: the current weights always sum to zero after a pick.  Each pick
    adds every usable server's weight to its current weight, takes the server
    with the largest current weight (the first listed on a tie) and subtracts
    the total weight from it.  Over a cycle each server is picked in proportion
    to its weight, and picks of a heavy server are spread out rather than
    bunched: weights 5, 1, 1 give a a b a c a a.

    Failover candidates are further picks that leave out the servers already
    offered, as nginx does.
    """

    name = "weighted_round_robin"

    def __init__(self, servers: Sequence[S]) -> None:
        self._servers = list(servers)
        self._current = [0] * len(self._servers)

    def _pick(self, tried: Optional[Set[int]]) -> int:
        servers = self._servers
        current = self._current
        best = -1
        total = 0
        for index, server in enumerate(servers):
            if not server.usable or (tried is not None and index in tried):
                continue
            weight = server.weight
            current[index] += weight
            total += weight
            if best < 0 or current[index] > current[best]:
                best = index
        if best >= 0:
            current[best] -= total
        return best

    def candidates(self) -> Iterator[S]:
        best = self._pick(None)
        if best < 0:
            return
        yield self._servers[best]
        tried = {best}
        while True:
            best = self._pick(tried)
            if best < 0:
                return
            tried.add(best)
            yield self._servers[best]


class LeastConnections(Generic[S]):
    """
    The server with the fewest requests in flight relative to its weight.

    Server M{a} is less loaded than M{b} when C{active_a * weight_b <
    active_b * weight_a} (integer arithmetic, no division).  Among equally
    loaded servers the search starts after the server that took the previous
    pick, so ties rotate round robin.
    """

    name = "least_connections"

    def __init__(self, servers: Sequence[S]) -> None:
        self._servers = list(servers)
        self._next = 0

    def _pick(self, tried: Optional[Set[int]]) -> int:
        servers = self._servers
        count = len(servers)
        start = self._next
        best = -1
        best_active = best_weight = 0
        for offset in range(count):
            index = (start + offset) % count
            server = servers[index]
            if not server.usable or (tried is not None and index in tried):
                continue
            if best < 0 or server.active * best_weight < best_active * server.weight:
                best = index
                best_active = server.active
                best_weight = server.weight
        return best

    def candidates(self) -> Iterator[S]:
        best = self._pick(None)
        if best < 0:
            return
        self._next = (best + 1) % len(self._servers)
        yield self._servers[best]
        tried = {best}
        while True:
            best = self._pick(tried)
            if best < 0:
                return
            tried.add(best)
            yield self._servers[best]


class Balancer(Protocol[S_co]):
    """
    The interface every algorithm provides.
    """

    name: str

    def candidates(self) -> Iterator[S_co]: ...


def make_balancer(algorithm: str, servers: Sequence[S]) -> Balancer[S]:
    """
    The balancer called C{algorithm} (a name from L{ALGORITHMS}) over C{servers}.
    """
    if algorithm == RoundRobin.name:
        return RoundRobin(servers)
    if algorithm == SmoothWeightedRoundRobin.name:
        return SmoothWeightedRoundRobin(servers)
    if algorithm == LeastConnections.name:
        return LeastConnections(servers)
    raise ValueError(f"unknown algorithm {algorithm!r}")


#: The names the C{algorithm} configuration key takes.
ALGORITHMS = (RoundRobin.name, SmoothWeightedRoundRobin.name, LeastConnections.name)
