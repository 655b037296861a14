"""
Slow start: a server that comes back into rotation takes a growing share of
the requests, so that a cold cache or a fresh process is not flooded.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from lbproxy.upstream.server import WEIGHT_SCALE, ServerState
from lbproxy.upstream.timers import ServerTimers

#: Slow start updates a server's effective weight this many times.
SLOW_START_STEPS = 20


class SlowStart:
    """
    Ramps servers' effective weights, one timer per server.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._timers = ServerTimers(clock)

    def start(self, server: ServerState, duration: float) -> None:
        """
        Ramp the server's effective weight linearly from 10% to its base
        weight over C{duration} seconds; at once when C{duration} is 0.
        """
        full = server.base_weight * WEIGHT_SCALE
        if duration <= 0:
            self._timers.cancel(server)
            server.weight = full
            return
        started = self.clock.seconds()
        interval = duration / SLOW_START_STEPS

        def step(_: ServerState) -> None:
            elapsed = self.clock.seconds() - started
            if elapsed >= duration:
                server.weight = full
                return
            server.weight = max(1, int(full * (0.1 + 0.9 * elapsed / duration)))
            self._timers.schedule(server, interval, step)

        step(server)

    def stop(self, server: ServerState) -> None:
        """End a ramp in progress; the weight stays where it is."""
        self._timers.cancel(server)

    def stop_all(self) -> None:
        self._timers.cancel_all()
