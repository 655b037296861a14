"""
The hook a pool offers to the state worker processes share
(L{lbproxy.workers.shared}): what the pool tells it and asks of it.  A
single process has none.
"""

from __future__ import annotations

from typing import Protocol

from lbproxy.upstream.server import ServerState


class GroupShare(Protocol):
    """The process group's view of a pool's servers, as one worker sees it."""

    def sync(self) -> None:
        """Bring the servers' states up to the group's (before a choice)."""

    def claim(self, server: ServerState, limit: int) -> bool:
        """
        A slot of C{server} for a request about to be dispatched, at most
        C{limit} in flight over all workers; False when it is full.  When
        True, the L{dispatched} of +1 that follows is already counted.
        """

    def dispatched(self, server: ServerState, delta: int) -> None:
        """This worker's in-flight count of C{server} changed by C{delta}."""

    def ejected(self, server: ServerState, until: float) -> None:
        """This worker took C{server} out until C{until} (clock seconds): for all."""
