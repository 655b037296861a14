"""
The algorithms by name: the built-in ones, and those that plugins provide.

This is the one list of algorithm names: the configuration checks names
against it, the pool builds balancers from it, and the admin API asks it
whether an algorithm reads weights.

A plugin is a module in the C{lbproxy.plugins} package (any folder
C{lbproxy/plugins/} without an C{__init__.py} under a C{sys.path} entry, or
the installed package's own folder) with a module-level object that provides
L{IBalancerFactory} and C{twisted.plugin.IPlugin}, usually an L{Algorithm}.
Twisted's plugin system finds it (C{getPlugins}); plugins are looked for
only when a name is not built in, so a configuration of built-in algorithms
imports none.
"""

from __future__ import annotations

from typing import Dict, Iterator, Optional, Sequence, Tuple

from twisted.plugin import getPlugins

from lbproxy.balancing.consistent_hash import CONSISTENT_HASH
from lbproxy.balancing.interface import BalancerOptions, IBalancer, IBalancerFactory, Server
from lbproxy.balancing.least_connections import LEAST_CONNECTIONS
from lbproxy.balancing.peak_ewma import PEAK_EWMA
from lbproxy.balancing.random_two import RANDOM_TWO
from lbproxy.balancing.round_robin import ROUND_ROBIN
from lbproxy.balancing.weighted_round_robin import WEIGHTED_ROUND_ROBIN

#: The built-in algorithms, in the order the documentation lists them.
BUILT_IN: Dict[str, IBalancerFactory] = {
    a.name: a
    for a in (
        ROUND_ROBIN,
        WEIGHTED_ROUND_ROBIN,
        LEAST_CONNECTIONS,
        RANDOM_TWO,
        PEAK_EWMA,
        CONSISTENT_HASH,
    )
}


def plugins() -> Iterator[IBalancerFactory]:
    """The algorithms that plugins provide (a built-in name cannot be taken)."""
    import lbproxy.plugins

    for found in getPlugins(IBalancerFactory, lbproxy.plugins):
        if found.name not in BUILT_IN:
            yield found


def names() -> Tuple[str, ...]:
    """Every algorithm name: the built-in ones, then the plugins' (sorted)."""
    return tuple(BUILT_IN) + tuple(sorted({p.name for p in plugins()}))


def lookup(name: str) -> IBalancerFactory:
    """
    The algorithm called C{name}.

    @raises ValueError: When there is none; the text lists the known names.
    """
    found = BUILT_IN.get(name)
    if found is not None:
        return found
    for plugin in plugins():
        if plugin.name == name:
            return plugin
    raise ValueError(f"must be one of {', '.join(names())}, got {name!r}")


def make_balancer(
    algorithm: str, servers: Sequence[Server], options: Optional[BalancerOptions] = None
) -> IBalancer:
    """The balancer called C{algorithm} over C{servers}."""
    return lookup(algorithm).build(servers, options or BalancerOptions())


def readers(key: str) -> Tuple[str, ...]:
    """The built-in algorithms that read the pool key C{key}."""
    return tuple(name for name, a in BUILT_IN.items() if key in a.options)
