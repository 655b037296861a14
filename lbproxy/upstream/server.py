"""
One backend server as the running proxy knows it: L{ServerState}.

A server is I{usable} (offered to new requests) when it is UP (active health
checks), not ejected (passive checks on real traffic), not draining or in
maintenance, and not at its C{max_connections}.  Every change of those goes through
L{ServerState.refresh}, so that the balancers only read one flag.
"""

from __future__ import annotations

from typing import Any, Optional

from lbproxy.config import ServerConfig
from lbproxy.ops.stats import ServerStats

#: Weights are kept in hundredths, so that a slow start can give a server
#: of weight 1 a tenth of its share.
WEIGHT_SCALE = 100


class ServerState:
    """
    One backend server as the running proxy knows it.

    @ivar weight: Effective weight in hundredths (L{WEIGHT_SCALE}), as the
        balancers read it; below the configured weight during a slow start.
    @ivar active: Requests dispatched to it and not yet finished.
    @ivar usable: Whether it may be offered to new requests.
    @ivar up: The verdict of active health checks (UP until they say DOWN).
    @ivar ejected: Taken out by passive checks, for C{fail_timeout}.
    @ivar draining: Taken out by an operator; requests in flight finish.
    @ivar maint: Taken out by an operator for maintenance: like draining, and
        its health checks pause.
    @ivar weight_override: A weight set at run time (admin API), or L{None}.
    @ivar route: How to reach it, opaque here: the dispatcher's business.
    @ivar stats: Its counters (L{ServerStats}).
    """

    __slots__ = (
        "config",
        "name",
        "weight",
        "active",
        "usable",
        "route",
        "up",
        "rise_count",
        "fall_count",
        "last_check",
        "fails",
        "fail_window_start",
        "ejected",
        "ejected_at",
        "draining",
        "maint",
        "weight_override",
        "full",
        "backup",
        "stats",
    )

    def __init__(self, config: ServerConfig, route: Any = None) -> None:
        self.config = config
        self.name = config.name
        self.weight = config.weight * WEIGHT_SCALE
        self.active = 0
        self.route = route
        self.up = True
        self.rise_count = 0
        self.fall_count = 0
        self.last_check = ""
        self.fails = 0
        self.fail_window_start: Optional[float] = None
        self.ejected = False
        self.ejected_at = 0.0
        self.draining = False
        self.maint = False
        self.weight_override: Optional[int] = None
        self.full = False
        self.backup = config.backup
        self.usable = True
        self.stats = ServerStats()

    @property
    def out(self) -> bool:
        """Out of rotation for a reason other than being busy."""
        return not self.up or self.ejected or self.draining or self.maint

    @property
    def base_weight(self) -> int:
        """The weight it runs with: set at run time, or configured."""
        override = self.weight_override
        return override if override is not None else self.config.weight

    @property
    def state(self) -> str:
        """
        MAINT, DRAINING (operator's choices first), DOWN (failed active
        checks, or taken out by passive ones) or UP.
        """
        if self.maint:
            return "MAINT"
        if self.draining:
            return "DRAINING"
        if not self.up or self.ejected:
            return "DOWN"
        return "UP"

    def refresh(self) -> None:
        """Work out L{usable} again after any of its reasons changed."""
        self.usable = (
            self.up and not self.ejected and not self.draining and not self.maint and not self.full
        )

    def reconfigure(self, config: ServerConfig, route: Any) -> None:
        """
        Take a new configuration of the same server (same name and address)
        after a reload: health, counters and operator state are kept; a
        weight set at run time is kept unless the file changed the weight.
        """
        if config.weight != self.config.weight:
            self.weight_override = None
        self.config = config
        self.route = route
        self.backup = config.backup
        self.weight = self.base_weight * WEIGHT_SCALE
        limit = config.max_connections
        self.full = limit is not None and self.active >= limit
        self.refresh()

    def __repr__(self) -> str:
        return f"<ServerState {self.name} active={self.active} usable={self.usable}>"
