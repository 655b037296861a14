"""
Tests of the balancing package, one module per algorithm, with the servers
as plain objects.
"""

from __future__ import annotations

import random
from typing import Iterable, Optional, Sequence

from lbproxy.balancing import BalancerOptions, IBalancer


class S:
    """A server as a balancer sees it."""

    def __init__(self, name: str, weight: int = 1, active: int = 0, usable: bool = True) -> None:
        self.name = name
        self.weight = weight
        self.active = active
        self.usable = usable
        self.backup = False

    def __repr__(self) -> str:
        return self.name


def options(seed: int = 1, **values: object) -> BalancerOptions:
    """Balancer options with a seeded random source."""
    return BalancerOptions(random=random.Random(seed), **values)  # type: ignore[arg-type]


def order(servers: Iterable[object]) -> str:
    """The names of candidates, space separated."""
    return " ".join(s.name for s in servers)  # type: ignore[attr-defined]


def picks(balancer: IBalancer, n: int, key: Optional[bytes] = None, now: float = 0.0) -> str:
    """The first candidate of C{n} requests in turn."""
    return " ".join(next(balancer.candidates(key, now)).name for _ in range(n))


def servers(*names: str) -> Sequence[S]:
    return [S(name) for name in names]
