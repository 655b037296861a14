"""
Passive checks on real traffic: C{max_fails} failed requests within
C{fail_timeout} take a server out (I{eject} it) for C{fail_timeout}; then it
is back on probation, where one more failure takes it out again (nginx's
semantics).  When every server is out, the one ejected longest ago is still
tried (panic mode): an ejection by passive checks must not refuse everything.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

from twisted.internet.interfaces import IReactorTime

from lbproxy.config import PoolConfig
from lbproxy.upstream.server import ServerState
from lbproxy.upstream.timers import ServerTimers


class Ejection:
    """
    Counts a pool's failed requests per server, ejects, and tells
    C{expired} when an ejection is over.

    The one way out of an ejection is L{lift}: when C{fail_timeout} is over
    (on probation), and when something else vouches for the server (a
    passing health check: with a clean slate).

    @ivar config: The pool's configuration (C{max_fails}, C{fail_timeout}).
    """

    def __init__(
        self,
        config: PoolConfig,
        clock: IReactorTime,
        expired: Callable[[ServerState], None],
    ) -> None:
        self.config = config
        self.clock = clock
        self._expired = expired
        self._timers = ServerTimers(clock)

    def success(self, server: ServerState) -> None:
        """A request passed: the failures counted so far are forgiven."""
        server.fails = 0
        server.fail_window_start = None

    def failure(self, server: ServerState) -> bool:
        """
        A request failed on C{server}; returns whether that ejected it
        (C{server.usable} must then be refreshed by the caller).
        """
        config = self.config
        if config.max_fails == 0 or server.ejected:
            return False
        now = self.clock.seconds()
        start = server.fail_window_start
        if start is None or now - start > config.fail_timeout:
            server.fail_window_start = now
            server.fails = 0
        server.fails += 1
        if server.fails < config.max_fails:
            return False
        server.ejected = True
        server.ejected_at = now
        self._timers.schedule(server, config.fail_timeout, self._expired)
        return True

    def lift(self, server: ServerState, probation: bool) -> None:
        """
        End C{server}'s ejection, if any.  On probation, one more failure
        within C{fail_timeout} ejects it again; otherwise its count starts
        from zero.
        """
        self._timers.cancel(server)
        server.ejected = False
        if probation:
            server.fails = self.config.max_fails - 1
            server.fail_window_start = self.clock.seconds()
        else:
            self.success(server)

    def forget(self, server: ServerState) -> None:
        """A reload removed C{server}: no reinstatement will come."""
        self._timers.cancel(server)

    def stop(self) -> None:
        self._timers.cancel_all()


def panic_choice(servers: Iterable[ServerState]) -> Optional[ServerState]:
    """
    The server to try when none is usable: the one ejected longest ago
    among those only ejected (UP, not drained, not busy), or L{None}.
    """
    ejected = [s for s in servers if s.ejected and s.up and not s.draining and not s.full]
    if not ejected:
        return None
    return min(ejected, key=lambda s: s.ejected_at)
