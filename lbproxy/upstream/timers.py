"""
One pending call per server, for one concern (a reinstatement, a slow
start, the next health check).  Keyed by the L{ServerState} itself, never by
its C{id()}: a server a reload removed cannot be mistaken for a new one.
"""

from __future__ import annotations

from typing import Callable, Dict, List

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from lbproxy.upstream.server import ServerState


class ServerTimers:
    """
    At most one pending call per server: scheduling another replaces it.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._calls: Dict[ServerState, IDelayedCall] = {}

    def __contains__(self, server: object) -> bool:
        return server in self._calls

    def __len__(self) -> int:
        return len(self._calls)

    def schedule(
        self, server: ServerState, seconds: float, action: Callable[[ServerState], None]
    ) -> None:
        """Call C{action(server)} in C{seconds}, instead of what was pending."""
        self.cancel(server)

        def fire() -> None:
            self._calls.pop(server, None)
            action(server)

        self._calls[server] = self.clock.callLater(seconds, fire)

    def cancel(self, server: ServerState) -> None:
        """Forget the server's pending call, if any."""
        call = self._calls.pop(server, None)
        if call is not None and call.active():
            call.cancel()

    def servers(self) -> List[ServerState]:
        """The servers with a pending call."""
        return list(self._calls)

    def cancel_all(self) -> None:
        """Forget every pending call."""
        calls, self._calls = self._calls, {}
        for call in calls.values():
            if call.active():
                call.cancel()
