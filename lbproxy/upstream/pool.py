"""
The runtime state of a pool: its servers, what is known of their health, the
requests in flight to each, and the balancers that order them.

A server is I{usable} (offered to new requests) when it is UP (active health
checks), not ejected (passive checks on real traffic), not draining or in
maintenance, and not at its C{max_connections}.  Every change of those goes through
L{ServerState.refresh}, so that the balancers only read one flag.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Deque, Iterator, List, Optional, Sequence, cast

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from lbproxy.balancing import (
    BalancerOptions,
    IBalancer,
    StickyCookie,
    lookup,
    prefer,
    request_key,
)
from lbproxy.config import PoolConfig, ServerConfig
from lbproxy.ops.stats import PoolStats, ServerStats

log = Logger()

#: Weights are kept in hundredths, so that a slow start can give a server
#: of weight 1 a tenth of its share.
WEIGHT_SCALE = 100

#: Requests that may wait for a server below its max_connections, per pool.
MAX_WAITING = 10_000

#: Slow start updates a server's effective weight this many times.
SLOW_START_STEPS = 20


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


class Pool:
    """
    A pool of servers, their balancers, and the requests waiting for a
    server that is at its C{max_connections}.

    The in-flight count of a server goes up in L{dispatch} and down in
    L{release}; the caller must pair them exactly once per dispatch, whatever
    the outcome.
    """

    def __init__(
        self, config: PoolConfig, servers: List[ServerState], clock: Optional[IReactorTime] = None
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as default_reactor

            clock = default_reactor  # type: ignore[assignment]
        self.config = config
        self.name = config.name
        self.clock: IReactorTime = clock  # type: ignore[assignment]
        self.stats = PoolStats()
        #: Told of each change of a server's state: (server, what, detail),
        #: what being DOWN, UP, ejected, reinstated, drained, maint, enabled
        #: or weight.
        self.on_change: Optional[Callable[[ServerState, str, str], None]] = None
        self._waiting: Deque[Callable[[], None]] = deque()
        self._timers: dict = {}
        # Hook (lbproxy.workers.shared.PoolShare): in a worker process, the
        # group's view of the servers, synced before each choice.
        self.shared: Optional[Any] = None
        self._set_servers(servers)

    def _set_servers(self, servers: List[ServerState]) -> None:
        self.servers = servers
        self.by_name = {s.name: s for s in servers}
        self.primaries = [s for s in servers if not s.backup]
        self.backups = [s for s in servers if s.backup]
        config = self.config
        algorithm = lookup(config.algorithm)
        options = BalancerOptions(
            hash_key=config.hash_key,
            balance_factor=config.hash_balance_factor,
            ewma_decay=config.ewma_decay,
        )
        self._primary: IBalancer = algorithm.build(self.primaries, options)
        self._backup: Optional[IBalancer] = (
            algorithm.build(self.backups, options) if self.backups else None
        )
        self.uses_weights: bool = algorithm.uses_weights
        self.uses_key: bool = algorithm.uses_key
        self.observes_latency: bool = algorithm.observes_latency
        self.sticky: Optional[StickyCookie[ServerState]] = (
            StickyCookie(config.sticky_cookie, self.name, servers) if config.sticky_cookie else None
        )
        self._limited = any(s.config.max_connections for s in servers)

    def reconfigure(self, config: PoolConfig, servers: List[ServerState]) -> None:
        """
        Apply a reloaded configuration: C{servers} are the pool's servers
        from now on (those that stay are the same objects, already
        reconfigured).  Requests in flight to a removed server finish; the
        queue of waiting requests is kept.
        """
        staying = {id(s) for s in servers}
        for server in self.servers:
            if id(server) not in staying:
                self._cancel(server)
        self.config = config
        self._set_servers(servers)
        self._wake()

    @property
    def queue_length(self) -> int:
        """Requests waiting for a server below its max_connections."""
        return len(self._waiting)

    # -- choosing ----------------------------------------------------------

    def request_key(
        self, client: bytes, header: Callable[[bytes], Optional[Sequence[bytes]]], target: bytes
    ) -> Optional[bytes]:
        """A request's key (C{hash_key}) when the algorithm takes one."""
        if not self.uses_key:
            return None
        return request_key(self.config.hash_key, client, header, target)

    def sticky_server(self, cookies: Optional[Sequence[bytes]]) -> Optional[ServerState]:
        """The server a request's sticky cookie names, if any."""
        return None if self.sticky is None else self.sticky.server(cookies)

    def candidates(
        self, key: Optional[bytes] = None, preferred: Optional[ServerState] = None
    ) -> Iterator[ServerState]:
        """
        The usable servers in the order a request should try them: the
        primaries; the backups only while every primary is out; when nothing
        is usable, the server ejected longest ago, if any (panic mode: an
        ejection by passive checks must not refuse everything).  A
        C{preferred} server (a sticky cookie's) goes first when it is usable
        and of the tier in use.

        @param key: The request's key, for algorithms that hash it.
        """
        if self.shared is not None:
            self.shared.sync()  # hook: the worker group's state
        now = self.clock.seconds() if self.observes_latency else 0.0
        if preferred is not None and self.by_name.get(preferred.name) is not preferred:
            preferred = None  # a server a reload removed
        for server in self.primaries:
            if server.usable:
                tier = cast(Iterator[ServerState], self._primary.candidates(key, now))
                if preferred is None or preferred.backup:
                    return tier
                return prefer(preferred, tier)
        if self._backup is not None and all(s.out for s in self.primaries):
            for server in self.backups:
                if server.usable:
                    tier = cast(Iterator[ServerState], self._backup.candidates(key, now))
                    if preferred is None or not preferred.backup:
                        return tier
                    return prefer(preferred, tier)
        ejected = [s for s in self.servers if s.ejected and s.up and not s.draining and not s.full]
        if ejected:
            return iter([min(ejected, key=lambda s: s.ejected_at)])
        return iter(())

    def can_wait(self) -> bool:
        """
        Whether a request that found no usable server may wait for one: some
        server is only busy (at its max_connections), and the queue has room.
        """
        if len(self._waiting) >= MAX_WAITING:
            return False
        return any(s.full and not s.out for s in self.servers)

    def wait(self, ready: Callable[[], None]) -> Callable[[], None]:
        """
        Queue C{ready} to be called when a busy server frees a slot (first
        come, first served).  Returns a function that leaves the queue.
        """
        self._waiting.append(ready)

        def leave() -> None:
            try:
                self._waiting.remove(ready)
            except ValueError:
                pass

        return leave

    def retry_after(self) -> int:
        """
        Seconds a client refused for lack of servers should wait: how long a
        recovering server takes to come back.
        """
        config = self.config
        if config.health_check is not None:
            seconds = config.health_interval * config.health_rise
        else:
            seconds = config.fail_timeout
        return max(1, int(seconds + 0.999))

    # -- requests in flight -------------------------------------------------

    def dispatch(self, server: ServerState) -> None:
        server.active += 1
        if self.shared is not None:
            self.shared.dispatched(server, 1)  # hook: this worker's column
        if self._limited:
            limit = server.config.max_connections
            if limit is not None and server.active >= limit:
                server.full = True
                server.refresh()

    def release(self, server: ServerState) -> None:
        server.active -= 1
        if self.shared is not None:
            self.shared.dispatched(server, -1)  # hook: this worker's column
        if self._limited and server.full and server.active < (server.config.max_connections or 0):
            server.full = False
            server.refresh()
            self._wake()

    def wake(self) -> None:
        """Let waiting requests try again (a slot may have been freed elsewhere)."""
        self._wake()

    def _wake(self) -> None:
        while self._waiting and any(s.usable for s in self.servers):
            self._waiting.popleft()()

    def record_latency(self, server: ServerState, seconds: float) -> None:
        """
        A response from C{server} started C{seconds} after its request was
        sent: for algorithms that observe latency.
        """
        balancer = self._backup if server.backup else self._primary
        if balancer is not None:
            balancer.observe(server, seconds, self.clock.seconds())

    # -- passive checks -----------------------------------------------------

    def record_success(self, server: ServerState) -> None:
        server.fails = 0
        server.fail_window_start = None

    def record_failure(self, server: ServerState) -> None:
        """
        A real request failed on C{server}: C{max_fails} of them within
        C{fail_timeout} take it out for C{fail_timeout}.  Then it is back on
        probation: one more failure takes it out again (nginx's semantics).
        """
        server.stats.failures += 1
        config = self.config
        if config.max_fails == 0 or server.ejected:
            return
        now = self.clock.seconds()
        start = server.fail_window_start
        if start is None or now - start > config.fail_timeout:
            server.fail_window_start = now
            server.fails = 0
        server.fails += 1
        if server.fails >= config.max_fails:
            server.ejected = True
            server.ejected_at = now
            server.refresh()
            if self.shared is not None:
                self.shared.ejected(server, now + config.fail_timeout)  # hook: for all workers
            self._changed(server, "ejected", f"{server.fails} failed requests")
            log.warn(
                "server {server} taken out for {seconds:g}s after {fails} failed requests",
                server=server.name,
                seconds=config.fail_timeout,
                fails=server.fails,
            )
            self._schedule(server, config.fail_timeout, self._reinstate)

    def _reinstate(self, server: ServerState) -> None:
        server.ejected = False
        server.fails = self.config.max_fails - 1
        server.fail_window_start = self.clock.seconds()
        server.refresh()
        log.info("server {server} back on probation", server=server.name)
        self._changed(server, "reinstated", "on probation")
        self.start_slow_start(server)
        self._wake()

    # -- active checks ------------------------------------------------------

    def record_check(self, server: ServerState, ok: bool, detail: str) -> None:
        """
        The outcome of one health check: C{health_fall} failures in a row
        take an UP server DOWN, C{health_rise} successes in a row bring a
        DOWN one UP.  Each change is logged once.
        """
        config = self.config
        server.last_check = detail
        if ok:
            server.fall_count = 0
            if server.up:
                if server.ejected:
                    # A passing check brings back a server that real traffic
                    # took out, without waiting for fail_timeout.
                    self._bring_back(server, "server {server} back: health check passed")
                    self._changed(server, "reinstated", "health check passed")
                return
            server.rise_count += 1
            if server.rise_count >= config.health_rise:
                server.rise_count = 0
                self._came_up(server, detail)
        else:
            server.rise_count = 0
            if not server.up:
                return
            server.fall_count += 1
            if server.fall_count >= config.health_fall:
                server.fall_count = 0
                server.up = False
                server.refresh()
                self._changed(server, "DOWN", detail)
                log.warn(
                    "server {server} is DOWN: {n} failed health checks, last: {detail}",
                    server=server.name,
                    n=config.health_fall,
                    detail=detail,
                )

    def _came_up(self, server: ServerState, detail: str) -> None:
        server.up = True
        self._bring_back(
            server,
            "server {server} is UP: {n} passed health checks, last: {detail}",
            n=self.config.health_rise,
            detail=detail,
        )
        self._changed(server, "UP", detail)

    def _bring_back(self, server: ServerState, message: str, **fields: object) -> None:
        """
        Put a server fully back in rotation (no ejection, no failures
        counted), logged once, ramped by slow start.
        """
        self._cancel(server)
        server.ejected = False
        self.record_success(server)
        server.refresh()
        log.info(message, server=server.name, **fields)
        self.start_slow_start(server)
        self._wake()

    # -- slow start and draining ---------------------------------------------

    def start_slow_start(self, server: ServerState) -> None:
        """
        Ramp the server's effective weight linearly from 10% to its
        configured weight over C{slow_start} (when set).
        """
        duration = self.config.slow_start
        full = server.base_weight * WEIGHT_SCALE
        if duration <= 0:
            server.weight = full
            return
        started = self.clock.seconds()

        def step(_: ServerState) -> None:
            elapsed = self.clock.seconds() - started
            if elapsed >= duration:
                server.weight = full
                return
            server.weight = max(1, int(full * (0.1 + 0.9 * elapsed / duration)))
            self._schedule(server, duration / SLOW_START_STEPS, step)

        step(server)

    def drain(self, server: ServerState) -> None:
        """No new requests for C{server}; those in flight finish."""
        if not server.draining:
            self._changed(server, "drained", "")
        server.draining = True
        server.maint = False
        server.refresh()

    def maintain(self, server: ServerState) -> None:
        """
        Maintenance: no new requests for C{server} (those in flight finish)
        and no health checks until it is enabled again.
        """
        if not server.maint:
            self._changed(server, "maint", "")
        server.maint = True
        server.draining = False
        server.refresh()

    def enable(self, server: ServerState) -> None:
        """Back in rotation after draining or maintenance."""
        if server.draining or server.maint:
            self._changed(server, "enabled", "")
        server.draining = False
        server.maint = False
        server.refresh()
        self._wake()

    def set_weight(self, server: ServerState, weight: int) -> None:
        """Run C{server} with C{weight} until a reload changes its weight."""
        if weight != server.base_weight:
            self._changed(server, "weight", f"{server.base_weight} to {weight}")
        server.weight_override = weight
        if not server.ejected:
            self._cancel(server)  # a slow start in progress ends here
        server.weight = weight * WEIGHT_SCALE

    def _changed(self, server: ServerState, what: str, detail: str) -> None:
        if self.on_change is not None:
            self.on_change(server, what, detail)

    # -- timers ---------------------------------------------------------------

    def _schedule(
        self, server: ServerState, seconds: float, action: Callable[[ServerState], None]
    ) -> None:
        self._cancel(server)

        def fire() -> None:
            self._timers.pop(id(server), None)
            action(server)

        self._timers[id(server)] = self.clock.callLater(seconds, fire)

    def _cancel(self, server: ServerState) -> None:
        timer: Optional[IDelayedCall] = self._timers.pop(id(server), None)
        if timer is not None and timer.active():
            timer.cancel()

    def stop(self) -> None:
        """Cancel every pending timer (reinstatements, slow starts)."""
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
