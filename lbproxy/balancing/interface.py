"""
What a balancer is: the interfaces every algorithm provides, what it sees of
a server, and the options a pool gives it.

A balancer is built once over the servers of one pool (one tier: primaries
or backups) and, for every request, yields them in preference order: the
first is its pick, the rest are where the request goes when an earlier one
cannot take it.  Iteration is lazy: an algorithm's state moves only as far as
the caller reads, so a request that the first server answers costs one pick.

Balancers are pure: they read each server's C{name}, C{weight}, C{active}
(requests in flight) and C{usable}, are told the time and the request's key
as arguments, take randomness from the L{BalancerOptions}, and never do I/O.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Iterator, Optional, Protocol, Sequence, Tuple

import attr
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from lbproxy.balancing.keys import HashKey


class Server(Protocol):
    """
    What a balancer sees of a server.  C{weight} is the effective weight
    (in hundredths of the configured one, lower during a slow start).
    """

    name: str
    weight: int
    active: int
    usable: bool


@attr.s(frozen=True, slots=True, auto_attribs=True)
class BalancerOptions:
    """
    The pool's settings an algorithm may read.

    @ivar hash_key: What a request's key is made of (C{hash_key}).
    @ivar balance_factor: No server takes more than this times the average
        load (C{hash_balance_factor}).
    @ivar ewma_decay: The time constant of latency averages, in seconds
        (C{ewma_decay}).
    @ivar random: Where random choices come from; a seeded
        C{random.Random} makes them repeatable.
    """

    hash_key: Optional[HashKey] = None
    balance_factor: float = 1.25
    ewma_decay: float = 10.0
    random: random.Random = attr.ib(factory=random.Random, eq=False, repr=False)


class IBalancer(Interface):
    """
    An algorithm at work over one tier of a pool's servers.
    """

    def candidates(key: Optional[bytes], now: float) -> Iterator[Server]:
        """
        The usable servers in the order a request should try them.

        @param key: The request's key (see L{IBalancerFactory.uses_key}), or
            L{None} when the algorithm takes none or the request has none.
        @param now: The time in seconds (for algorithms that read the
            clock, see L{IBalancerFactory.observes_latency}; else 0).
        """

    def observe(server: Server, latency: float, now: float) -> None:
        """
        A response from C{server} started C{latency} seconds after the
        request was sent (called only for algorithms that observe latency).
        """


class IBalancerFactory(Interface):
    """
    An algorithm as the configuration names it: what it reads, and how to
    build one over a list of servers.  Third-party algorithms provide this
    (and C{twisted.plugin.IPlugin}) from a module in C{lbproxy.plugins}.
    """

    name = Attribute("The algorithm's name, the value of the algorithm key.")
    summary = Attribute("One line on what it does, for error messages and docs.")
    uses_weights = Attribute("Whether server weights change its choice.")
    uses_key = Attribute("Whether it wants each request's key (hash_key).")
    observes_latency = Attribute("Whether it wants response latencies and the time.")
    options = Attribute("The pool keys it reads, besides algorithm and servers.")

    def build(servers: Sequence[Server], options: BalancerOptions) -> IBalancer:
        """
        A balancer over C{servers} (in the order configured).
        """


#: The pool keys that only some algorithms read.
ALGORITHM_KEYS: Tuple[str, ...] = ("hash_key", "hash_balance_factor", "ewma_decay")
