"""
Balancing: which server of a pool a request goes to, and where next when it
fails there.

One module per algorithm (C{round_robin}, C{weighted_round_robin},
C{least_connections}, C{random_two}, C{peak_ewma}, C{consistent_hash}), the
shared failover walk (C{walk}), request keys (C{keys}), sticky cookies
(C{sticky}), and the registry of names, which also finds third-party
algorithms through C{twisted.plugin} (C{registry}).  Pure: nothing here
imports the reactor or twisted.web, and time is an argument.
"""

from lbproxy.balancing.interface import (
    ALGORITHM_KEYS,
    BalancerOptions,
    IBalancer,
    IBalancerFactory,
    Server,
)
from lbproxy.balancing.keys import (
    CLIENT_ADDRESS,
    HashKey,
    parse_hash_key,
    parse_token_name,
    request_key,
)
from lbproxy.balancing.registry import BUILT_IN, lookup, make_balancer, names, readers
from lbproxy.balancing.sticky import StickyCookie, prefer
from lbproxy.balancing.walk import Algorithm, Balancer, failover

__all__ = [
    "ALGORITHM_KEYS",
    "Algorithm",
    "BUILT_IN",
    "Balancer",
    "BalancerOptions",
    "CLIENT_ADDRESS",
    "HashKey",
    "IBalancer",
    "IBalancerFactory",
    "Server",
    "StickyCookie",
    "failover",
    "lookup",
    "make_balancer",
    "names",
    "parse_hash_key",
    "parse_token_name",
    "prefer",
    "readers",
    "request_key",
]
