"""
The runtime state of a pool: its servers, what is known of their health, the
requests in flight to each, and the balancers that order them.

L{Pool} composes one room per concern and adds the operator's actions:

  - L{server}: L{ServerState}, one server and its one C{usable} flag;
  - L{tiers}: primaries, backups, balancers, sticky cookie, panic mode;
  - L{queue}: the requests waiting for a server below its C{max_connections};
  - L{ejection}: passive checks (C{max_fails}, C{fail_timeout}, probation);
  - L{verdict}: active checks' rise/fall counting;
  - L{slowstart}: the weight ramp of a server back in rotation.

  - L{rotation}: acts on those verdicts; every server that comes back into
    rotation (UP again, ejection over, a passing check) takes one path;
  - L{group}: in a worker process, the hook to the state the worker
    processes share (L{GroupShare}).
"""

from __future__ import annotations

from typing import Callable, Iterator, List, Optional, Sequence

from twisted.internet.interfaces import IReactorTime

from lbproxy.config import PoolConfig
from lbproxy.ops.stats import PoolStats
from lbproxy.upstream.group import GroupShare
from lbproxy.upstream.queue import MAX_WAITING, WaitQueue
from lbproxy.upstream.rotation import Rotation
from lbproxy.upstream.server import WEIGHT_SCALE, ServerState
from lbproxy.upstream.slowstart import SLOW_START_STEPS
from lbproxy.upstream.tiers import Tiers

__all__ = ["MAX_WAITING", "SLOW_START_STEPS", "WEIGHT_SCALE", "Pool", "ServerState"]


class Pool:
    """
    A pool of servers, their balancers, and the requests waiting for a
    server that is at its C{max_connections}.

    The in-flight count of a server goes up in L{dispatch} and down in
    L{release}; the caller must pair them exactly once per dispatch, whatever
    the outcome.

    @ivar on_change: Told of each change of a server's state: C{(server,
        what, detail)}, C{what} being DOWN, UP, ejected, reinstated, drained,
        maint, enabled or weight.
    @ivar shared: In a worker process, the group's state (L{GroupShare}):
        synced before each choice, told of each dispatch, release and
        ejection.  L{None} in a single process.
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
        self.on_change: Optional[Callable[[ServerState, str, str], None]] = None
        self.shared: Optional[GroupShare] = None
        self._queue = WaitQueue()
        self._rotation = Rotation(config, self.clock, self._changed, self._wake)
        self._set_servers(servers)

    def _set_servers(self, servers: List[ServerState]) -> None:
        tiers = self._tiers = Tiers(self.config, servers)
        self.servers = servers
        self.by_name = tiers.by_name
        self.primaries = tiers.primaries
        self.backups = tiers.backups
        self.uses_weights = tiers.uses_weights
        self.uses_key = tiers.uses_key
        self.observes_latency = tiers.observes_latency
        self.sticky = tiers.sticky
        self._limited = any(s.config.max_connections for s in servers)

    def reconfigure(self, config: PoolConfig, servers: List[ServerState]) -> None:
        """
        Apply a reloaded configuration: C{servers} are the pool's servers
        from now on (those that stay are the same objects, already
        reconfigured).  Requests in flight to a removed server finish; the
        queue of waiting requests is kept.
        """
        staying = set(servers)
        for server in self.servers:
            if server not in staying:
                self._rotation.forget(server)
        self.config = config
        self._rotation.reconfigure(config)
        self._set_servers(servers)
        self._wake()

    @property
    def queue_length(self) -> int:
        """Requests waiting for a server below its max_connections."""
        return len(self._queue)

    # -- choosing ----------------------------------------------------------

    def request_key(
        self, client: bytes, header: Callable[[bytes], Optional[Sequence[bytes]]], target: bytes
    ) -> Optional[bytes]:
        """A request's key (C{hash_key}) when the algorithm takes one."""
        return self._tiers.request_key(client, header, target)

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
            self.shared.sync()
        now = self.clock.seconds() if self.observes_latency else 0.0
        return self._tiers.candidates(key, preferred, now)

    def can_wait(self) -> bool:
        """
        Whether a request that found no usable server may wait for one: some
        server is only busy (at its max_connections), and the queue has room.
        """
        if not self._queue.has_room():
            return False
        return any(s.full and not s.out for s in self.servers)

    def wait(self, ready: Callable[[], None], first: bool = False) -> Callable[[], None]:
        """
        Queue C{ready} to be called when a busy server frees a slot (first
        come, first served; C{first}: at the head, for a request that was
        woken but lost the slot).  Returns a function that leaves the queue.
        """
        return self._queue.join(ready, first)

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

    def claim(self, server: ServerState) -> bool:
        """
        Dispatch a request to C{server} (L{dispatch}) if it is below its
        C{max_connections}, in a worker process over all workers (the
        shared table's claim); else mark it full and answer False: the
        caller tries the next candidate or waits in the queue.
        """
        if self._limited:
            limit = server.config.max_connections
            if limit is not None:
                shared = self.shared
                if server.active >= limit and shared is None:
                    taken = False
                else:
                    taken = shared is None or shared.claim(server, limit)
                if not taken:
                    server.full = True
                    server.refresh()
                    return False
        self.dispatch(server)
        return True

    def dispatch(self, server: ServerState) -> None:
        server.active += 1
        if self.shared is not None:
            self.shared.dispatched(server, 1)
        if self._limited:
            limit = server.config.max_connections
            if limit is not None and server.active >= limit:
                server.full = True
                server.refresh()

    def release(self, server: ServerState) -> None:
        server.active -= 1
        if self.shared is not None:
            self.shared.dispatched(server, -1)
        if self._limited and server.full and server.active < (server.config.max_connections or 0):
            server.full = False
            server.refresh()
            self._wake()

    def wake(self) -> None:
        """Let waiting requests try again (a slot may have been freed elsewhere)."""
        self._wake()

    def _wake(self) -> None:
        self._queue.wake(lambda: any(s.usable for s in self.servers))

    def record_latency(self, server: ServerState, seconds: float) -> None:
        """
        A response from C{server} started C{seconds} after its request was
        sent: for algorithms that observe latency.
        """
        self._tiers.observe(server, seconds, self.clock.seconds())

    # -- passive checks -----------------------------------------------------

    def record_success(self, server: ServerState) -> None:
        self._rotation.success(server)

    def record_failure(self, server: ServerState) -> None:
        """
        A real request failed on C{server}: C{max_fails} of them within
        C{fail_timeout} take it out for C{fail_timeout}.  Then it is back on
        probation: one more failure takes it out again (nginx's semantics).
        """
        server.stats.failures += 1
        was_ejected = server.ejected
        self._rotation.failure(server)
        if self.shared is not None and server.ejected and not was_ejected:
            self.shared.ejected(server, server.ejected_at + self.config.fail_timeout)

    # -- active checks ------------------------------------------------------

    def record_check(self, server: ServerState, ok: bool, detail: str) -> None:
        """
        The outcome of one health check: C{health_fall} failures in a row
        take an UP server DOWN, C{health_rise} successes in a row bring a
        DOWN one UP, and a passing check brings back a server that real
        traffic took out, without waiting for C{fail_timeout}.  Each change
        is logged once.
        """
        self._rotation.check(server, ok, detail)

    def start_slow_start(self, server: ServerState) -> None:
        """
        Ramp the server's effective weight linearly from 10% to its
        configured weight over C{slow_start} (when set).
        """
        self._rotation.start_slow_start(server)

    # -- operator actions -----------------------------------------------------

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
        self._rotation.slow_start.stop(server)  # a slow start in progress ends here
        server.weight = weight * WEIGHT_SCALE

    def _changed(self, server: ServerState, what: str, detail: str) -> None:
        if self.on_change is not None:
            self.on_change(server, what, detail)

    def stop(self) -> None:
        """Cancel every pending timer (reinstatements, slow starts)."""
        self._rotation.stop()
