"""
Whether servers are in rotation by their health: the verdicts of passive
checks (L{ejection}) and active checks (L{verdict}), and the one way back
into rotation, ramped by slow start (L{slowstart}).
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from lbproxy.config import PoolConfig
from lbproxy.upstream import verdict
from lbproxy.upstream.ejection import Ejection
from lbproxy.upstream.server import ServerState
from lbproxy.upstream.slowstart import SlowStart

log = Logger()


class Rotation:
    """
    Acts on one pool's check outcomes: each change of a server's state is
    logged once and reported to C{changed} (C{(server, what, detail)});
    C{wake} is called when a server is back, for the waiting requests.

    @ivar config: The pool's configuration; L{reconfigure} replaces it.
    """

    def __init__(
        self,
        config: PoolConfig,
        clock: IReactorTime,
        changed: Callable[[ServerState, str, str], None],
        wake: Callable[[], None],
    ) -> None:
        self.config = config
        self._changed = changed
        self._wake = wake
        self._ejection = Ejection(config, clock, self._ejection_over)
        self.slow_start = SlowStart(clock)

    def reconfigure(self, config: PoolConfig) -> None:
        self.config = config
        self._ejection.config = config

    # -- passive checks -----------------------------------------------------

    def success(self, server: ServerState) -> None:
        self._ejection.success(server)

    def failure(self, server: ServerState) -> None:
        """See L{Pool.record_failure}."""
        if not self._ejection.failure(server):
            return
        self.slow_start.stop(server)
        server.refresh()
        self._changed(server, "ejected", f"{server.fails} failed requests")
        log.warn(
            "server {server} taken out for {seconds:g}s after {fails} failed requests",
            server=server.name,
            seconds=self.config.fail_timeout,
            fails=server.fails,
        )

    def _ejection_over(self, server: ServerState) -> None:
        self._back(server, "reinstated", "on probation", "server {server} back on probation", True)

    # -- active checks ------------------------------------------------------

    def check(self, server: ServerState, ok: bool, detail: str) -> None:
        """See L{Pool.record_check}."""
        config = self.config
        change = verdict.judge(server, ok, detail, config.health_rise, config.health_fall)
        if change is None:
            return
        if change == verdict.DOWN:
            server.refresh()
            self._changed(server, "DOWN", detail)
            log.warn(
                "server {server} is DOWN: {n} failed health checks, last: {detail}",
                server=server.name,
                n=config.health_fall,
                detail=detail,
            )
        elif change == verdict.UP:
            message = "server {server} is UP: {n} passed health checks, last: {last}"
            self._back(server, "UP", detail, message, False, n=config.health_rise, last=detail)
        else:
            message = "server {server} back: health check passed"
            self._back(server, "reinstated", "health check passed", message, False)

    # -- back into rotation ---------------------------------------------------

    def _back(
        self,
        server: ServerState,
        what: str,
        detail: str,
        message: str,
        probation: bool,
        **fields: object,
    ) -> None:
        """
        The one way back into rotation (UP again, an ejection over, a
        passing check): the ejection, if any, ends (on probation, or with
        no failures counted); the change is logged and reported once; slow
        start ramps the server; the waiting requests may try it.
        """
        self._ejection.lift(server, probation)
        server.refresh()
        log.info(message, server=server.name, **fields)
        self._changed(server, what, detail)
        self.start_slow_start(server)
        self._wake()

    def start_slow_start(self, server: ServerState) -> None:
        self.slow_start.start(server, self.config.slow_start)

    def forget(self, server: ServerState) -> None:
        """A reload removed C{server}: its timers go."""
        self._ejection.forget(server)
        self.slow_start.stop(server)

    def stop(self) -> None:
        """Cancel every pending timer (reinstatements, slow starts)."""
        self._ejection.stop()
        self.slow_start.stop_all()
