"""
The runtime state of a pool: its servers, their in-flight counts, and the
balancer that orders them.
"""

from __future__ import annotations

from typing import Any, Iterator, List

from lbproxy.balancing import Balancer, make_balancer
from lbproxy.config import PoolConfig, ServerConfig


class ServerState:
    """
    One backend server as the running proxy knows it.

    @ivar config: The server's configuration.
    @ivar weight: Its weight, as the balancers read it.
    @ivar active: Requests dispatched to it and not yet finished.
    @ivar usable: Whether it may be offered to new requests.
    @ivar route: How to reach it, opaque here: the dispatcher's business.
    """

    __slots__ = ("config", "name", "weight", "active", "usable", "route")

    def __init__(self, config: ServerConfig, route: Any = None) -> None:
        self.config = config
        self.name = config.name
        self.weight = config.weight
        self.active = 0
        self.usable = True
        self.route = route

    def __repr__(self) -> str:
        return f"<ServerState {self.name} active={self.active} weight={self.weight}>"


class Pool:
    """
    A pool of servers and its balancer.

    The in-flight count of a server goes up in L{dispatch} and down in
    L{release}; the caller must pair them exactly once per dispatch, whatever
    the outcome.
    """

    def __init__(self, config: PoolConfig, servers: List[ServerState]) -> None:
        self.config = config
        self.name = config.name
        self.servers = servers
        self._balancer: Balancer[ServerState] = make_balancer(config.algorithm, servers)

    def candidates(self) -> Iterator[ServerState]:
        """
        The usable servers in the order a request should try them.
        """
        return self._balancer.candidates()

    def dispatch(self, server: ServerState) -> None:
        server.active += 1

    def release(self, server: ServerState) -> None:
        server.active -= 1
