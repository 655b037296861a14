"""
The shared failover walk, and the pieces the built-in algorithms share.

Every algorithm here answers one question, "the best server not yet tried",
as an index into its server list (or -1 when there is none).  L{failover}
turns that into the candidates of a request: the first answer is the pick,
each next one leaves out the servers already offered.  The walk is lazy, so
an algorithm's state moves only as far as the caller reads.
"""

from __future__ import annotations

import random
from typing import (
    AbstractSet,
    Any,
    Callable,
    FrozenSet,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
)

import attr
from twisted.plugin import IPlugin
from zope.interface import implementer

from lbproxy.balancing.interface import (
    BalancerOptions,
    IBalancer,
    IBalancerFactory,
    Server,
)

S = TypeVar("S", bound=Server)

#: "The best untried server": called with the indexes tried so far (then
#: any further arguments given to L{failover}); returns an index, or -1.
Pick = Callable[..., int]

#: What the first pick of a request has tried.
NOTHING: FrozenSet[int] = frozenset()


def failover(servers: Sequence[S], pick: Pick, *args: Any) -> Iterator[S]:
    """
    The candidates of one request: C{pick(tried, *args)}'s answers in turn,
    each leaving out the servers already offered, until it has none.
    """
    index = pick(NOTHING, *args)
    if index < 0:
        return
    yield servers[index]
    tried = {index}
    while True:
        index = pick(tried, *args)
        if index < 0:
            return
        tried.add(index)
        yield servers[index]


def untried(servers: Sequence[Server], tried: AbstractSet[int]) -> List[int]:
    """The indexes of the usable servers not offered yet."""
    return [i for i, s in enumerate(servers) if s.usable and i not in tried]


def lighter(load_a: float, weight_a: int, load_b: float, weight_b: int) -> bool:
    """
    Whether load M{a} is lighter than M{b} relative to their weights,
    without a division: C{load_a / weight_a < load_b / weight_b}.
    """
    return load_a * weight_b < load_b * weight_a


def two_choices(
    servers: Sequence[Server],
    tried: AbstractSet[int],
    rng: random.Random,
    load: Callable[[int], float],
) -> int:
    """
    The power of two choices: of two usable untried servers drawn at
    random, the one with the lighter C{load(index)} relative to its weight
    (the first drawn on a tie).  With one left, that one.
    """
    choices = untried(servers, tried)
    if len(choices) < 2:
        return choices[0] if choices else -1
    a, b = rng.sample(choices, 2)
    if lighter(load(b), servers[b].weight, load(a), servers[a].weight):
        return b
    return a


@implementer(IBalancer)
class Balancer:
    """
    A base for algorithms that answer "the best untried server" in
    L{pick}: the failover walk and a no-op latency hook come with it.
    """

    def __init__(self, servers: Sequence[Server], options: BalancerOptions) -> None:
        self.servers = list(servers)
        self.options = options

    def pick(self, tried: AbstractSet[int], key: Optional[bytes], now: float) -> int:
        """The index of the best server not in C{tried}, or -1."""
        raise NotImplementedError

    def candidates(self, key: Optional[bytes], now: float) -> Iterator[Server]:
        return failover(self.servers, self.pick, key, now)

    def observe(self, server: Server, latency: float, now: float) -> None:
        pass


@implementer(IPlugin, IBalancerFactory)
@attr.s(frozen=True, slots=True, auto_attribs=True)
class Algorithm:
    """
    An algorithm under its configuration name: the usual way to provide
    L{IBalancerFactory}, for built-in algorithms and plugins alike.

    @ivar builder: Called with the servers and the L{BalancerOptions};
        returns an L{IBalancer}.
    """

    name: str
    builder: Callable[[Sequence[Server], BalancerOptions], IBalancer]
    summary: str = ""
    uses_weights: bool = True
    uses_key: bool = False
    observes_latency: bool = False
    options: Tuple[str, ...] = ()

    def build(self, servers: Sequence[Server], options: BalancerOptions) -> IBalancer:
        return self.builder(servers, options)
