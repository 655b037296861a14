"""
The supervisor: the twistd process when C{[proxy] workers} is more than 1.

It binds every listener once (systemd's sockets included) and holds them
without accepting; it starts the worker processes that serve them, restarts
one that dies (with a back-off, logged), replaces the whole group on reload
(new workers take new connections, the old ones finish theirs and exit) and
stops them on SIGTERM.  It alone talks to systemd and handles signals
(L{SupervisorControl}); the admin listener, the active health checks and
the DNS lookups (L{lbproxy.workers.discovery}) run here, once for the group.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, Dict, List, Optional, Tuple, Union

import attr
from twisted.application.service import Service
from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbproxy.config import ProxyConfig
from lbproxy.ops.process import ProcessControl
from lbproxy.ops.snapshot import ProxySnapshot
from lbproxy.service import ProxyService
from lbproxy.workers.discovery import FoundPublisher, FoundRegion
from lbproxy.workers.shared import MAX_SLOTS, GroupState
from lbproxy.workers.stats import GroupStats, HistoryFeed, StatsRegions, take
from lbproxy.workers.worker import WorkerArguments

log = Logger()

#: A worker that ran at least this long before it died is restarted at
#: once; quicker deaths in a row double the wait, up to L{MAX_BACKOFF}.
STABLE_AFTER = 10.0
FIRST_BACKOFF = 0.25
MAX_BACKOFF = 30.0

#: Seconds past shutdown_timeout a worker gets before it is killed.
KILL_GRACE = 5.0


def family_name(port: IListeningPort) -> str:
    """The address family of a listening port, as the worker names it."""
    host = port.getHost()
    if isinstance(host, IPv6Address):
        return "INET6"
    if isinstance(host, IPv4Address):
        return "INET"
    if isinstance(host, UNIXAddress):
        return "UNIX"
    raise ValueError(f"cannot hand {host!r} to a worker")


def backoff(quick_deaths: int) -> float:
    """Seconds before restarting a worker that died C{quick_deaths} times in a row quickly."""
    if quick_deaths <= 0:
        return 0.0
    return float(min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (quick_deaths - 1)))


class WorkerProcess(ProcessProtocol):
    """
    One worker process, as the supervisor sees it: its log lines are logged
    with its number, C{ready} fires L{ready}, its end is reported to the group.
    """

    def __init__(self, group: WorkerGroup, number: int, slot: int, generation: int) -> None:
        self.group = group
        self.number = number
        self.slot = slot
        self.generation = generation
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.is_ready = False
        #: A reopen of the access log asked before the worker was ready.
        self._reopen_when_ready = False
        self.retired = False
        self.started_at = 0.0
        self.pid: Optional[int] = None
        self._lines = {1: b"", 2: b""}
        self._stdin_full = False

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]
        # Told when its standard input's buffer fills (L{wake}).
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]

    def childDataReceived(self, fd: int, data: bytes) -> None:
        buffered = self._lines.get(fd, b"") + data
        *lines, rest = buffered.split(b"\n")
        # A runaway line is logged in pieces rather than held without bound.
        if len(rest) > 65536:
            lines.append(rest)
            rest = b""
        self._lines[fd] = rest
        for line in lines:
            text = line.decode("utf-8", "replace")
            if fd == 1 and text == "ready":
                if not self.is_ready:
                    self.is_ready = True
                    if self._reopen_when_ready:
                        self._reopen_when_ready = False
                        self.signal(signal.SIGUSR1)
                    self.ready.callback(None)
            elif text:
                log.info("worker {number}: {line}", number=self.number, line=text)

    def wake(self) -> None:
        """
        New DNS answers are published: one byte on the worker's standard
        input (it reads the region at once).  Skipped while the pipe's
        buffer is full (a worker that reads nothing): the worker's own poll
        finds the answers anyway, and the buffer stays bounded.
        """
        if self._stdin_full or self.transport is None:
            return
        self.transport.write(b"\n")

    def pauseProducing(self) -> None:
        self._stdin_full = True

    def resumeProducing(self) -> None:
        self._stdin_full = False

    def stopProducing(self) -> None:
        self._stdin_full = True

    def reopen_logs(self) -> None:
        """
        Have the worker reopen its access log (SIGUSR1).  A worker says
        ready once its handler is in place: until then SIGUSR1 would end
        it (the default action), so the signal waits for its word.
        """
        if self.is_ready:
            self.signal(signal.SIGUSR1)
        else:
            self._reopen_when_ready = True

    def signal(self, name: Union[str, int]) -> None:
        try:
            self.transport.signalProcess(name)  # type: ignore[union-attr]
        except error.ProcessExitedAlready:
            pass

    def processEnded(self, reason: Failure) -> None:
        self.group.ended(self, reason)
        if not self.ready.called:
            self.ready.errback(Failure(RuntimeError(f"worker {self.number} ended")))
            self.ready.addErrback(lambda _: None)
        self.ended.callback(None)


class WorkerGroup(Service):
    """
    The worker processes: started with the supervisor, restarted when one
    dies, replaced as a whole by L{roll}, stopped with the supervisor.
    """

    def __init__(self, supervisor: SupervisorService, path: str, reactor: Any) -> None:
        self.supervisor = supervisor
        self.path = path
        self.reactor = reactor
        self.generation = 0
        #: The workers of the current generation, by number.
        self.current: Dict[int, WorkerProcess] = {}
        #: Every live worker process (old generations finishing too).
        self.live: List[WorkerProcess] = []
        self.quick_deaths: Dict[int, int] = {}
        self.restarts = 0
        self._pending: Dict[int, Any] = {}
        self._stopping = False

    # -- starting ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._start_generation()

    def _start_generation(self) -> List[WorkerProcess]:
        self.generation += 1
        self.quick_deaths = {}
        started = []
        for number in range(self.supervisor.config.workers):
            started.append(self._spawn(number))
        return started

    def _free_slot(self) -> int:
        used = {worker.slot for worker in self.live}
        slot = 0
        while slot in used:
            slot += 1
        if slot >= MAX_SLOTS:
            raise RuntimeError(f"more than {MAX_SLOTS} worker processes at once")
        return slot

    def _spawn(self, number: int) -> WorkerProcess:
        worker = WorkerProcess(self, number, self._free_slot(), self.generation)
        self.supervisor.group_state.slot_in_use(worker.slot)
        listeners = self.supervisor.inherited_listeners()
        shared = self.supervisor.shared_fd()
        stats = self.supervisor.group_stats.regions.fd
        found = self.supervisor.found.region.fd
        arguments = WorkerArguments(
            config=self.path,
            number=number,
            slot=worker.slot,
            listeners=tuple((d, fd, family) for d, fd, family in listeners),
            shared=shared,
            stats=stats,
            generation=self.generation,
            found=found,
        )
        child_fds: Dict[int, Any] = {0: "w", 1: "r", 2: "r", stats: stats, found: found}
        for _, fd, _ in listeners:
            child_fds[fd] = fd
        if shared is not None:
            child_fds[shared] = shared
        environment = dict(os.environ)
        # systemd speaks to the supervisor only.
        for name in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            environment.pop(name, None)
        executable = sys.executable
        worker.started_at = self.reactor.seconds()
        self.reactor.spawnProcess(
            worker,
            executable,
            [executable, "-m", "lbproxy.workers.worker", arguments.encode()],
            env=environment,
            childFDs=child_fds,
        )
        self.live.append(worker)
        self.current[number] = worker
        log.info(
            "worker {number} started (pid {pid}, generation {generation})",
            number=number,
            pid=worker.pid,
            generation=worker.generation,
        )
        return worker

    # -- ending -------------------------------------------------------------

    def ended(self, worker: WorkerProcess, reason: Failure) -> None:
        """A worker process ended: restart it if it was not asked to."""
        if worker in self.live:
            self.live.remove(worker)
        # Its requests are no longer in flight anywhere; its counters stay.
        self.supervisor.group_state.slot_ended(worker.slot)
        self.supervisor.found.slot_ended(worker.slot)
        self.supervisor.group_stats.retire(worker.slot)
        value = reason.value
        status = getattr(value, "exitCode", None)
        signal_number = getattr(value, "signal", None)
        how = f"killed by signal {signal_number}" if signal_number else f"exit status {status}"
        if worker.retired or self._stopping:
            log.info(
                "worker {number} (pid {pid}) ended: {how}",
                number=worker.number,
                pid=worker.pid,
                how=how,
            )
            return
        if self.current.get(worker.number) is not worker:
            return
        lived = self.reactor.seconds() - worker.started_at
        deaths = 0 if lived >= STABLE_AFTER else self.quick_deaths.get(worker.number, 0) + 1
        self.quick_deaths[worker.number] = deaths
        delay = backoff(deaths)
        log.warn(
            "worker {number} (pid {pid}) died ({how}) after {lived:.1f}s: "
            "starting another in {delay:g}s",
            number=worker.number,
            pid=worker.pid,
            how=how,
            lived=lived,
            delay=delay,
        )
        self.restarts += 1
        generation = self.generation

        def restart() -> None:
            self._pending.pop(worker.number, None)
            if not self._stopping and self.generation == generation:
                self._spawn(worker.number)

        self._pending[worker.number] = self.reactor.callLater(delay, restart)

    def _cancel_restarts(self) -> None:
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()

    def roll(self) -> Deferred[None]:
        """
        Replace the workers with new ones on the supervisor's (new)
        configuration: the new ones start; once every one of them accepts
        connections, the old ones are told to stop (they finish what they
        have and exit).  Until then the old ones keep serving.
        """
        self._cancel_restarts()
        old = [worker for worker in self.live]
        self.current = {}
        started = self._start_generation()
        generation = self.generation
        done: Deferred[None] = Deferred()

        def retire(_: object) -> None:
            if self.generation == generation:
                for worker in old:
                    self._retire(worker)
                log.info(
                    "workers of generation {generation} serve; {n} old ones finish and exit",
                    generation=generation,
                    n=len(old),
                )
            done.callback(None)

        def failed(reason: Failure) -> None:
            log.warn(
                "a new worker did not start ({error}); the old ones keep serving",
                error=reason.getErrorMessage(),
            )
            done.callback(None)

        ready = DeferredList([w.ready for w in started], fireOnOneErrback=True, consumeErrors=True)
        ready.addCallbacks(retire, failed)
        return done

    def _retire(self, worker: WorkerProcess) -> None:
        worker.retired = True
        worker.signal("TERM")
        self._kill_later(worker)

    def _kill_later(self, worker: WorkerProcess) -> None:
        seconds = self.supervisor.config.shutdown_timeout + KILL_GRACE

        def kill() -> None:
            if worker in self.live:
                log.warn(
                    "worker {number} (pid {pid}) still running {seconds:g}s "
                    "after SIGTERM: killing it",
                    number=worker.number,
                    pid=worker.pid,
                    seconds=seconds,
                )
                worker.signal("KILL")

        call = self.reactor.callLater(seconds, kill)
        worker.ended.addBoth(lambda _: call.active() and call.cancel())

    def wake(self) -> None:
        """New DNS answers are published: every live worker reads them at once."""
        for worker in self.live:
            worker.wake()

    def signal_all(self, name: Union[str, int]) -> None:
        for worker in list(self.live):
            worker.signal(name)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self._stopping = True
        self._cancel_restarts()
        waiting = [worker.ended for worker in self.live]
        for worker in list(self.live):
            worker.signal("TERM")
            self._kill_later(worker)
        if not waiting:
            return succeed(None)
        return DeferredList(waiting)


class SupervisorService(ProxyService):
    """
    The proxy service of the supervisor: the same pools, health checks and
    admin listener as a single process, but its proxy listeners are bound and
    held (never accepted on here) for the workers, and the access log is the
    workers'.
    """

    def __init__(self, config: ProxyConfig, path: str, reactor: Any = None) -> None:
        self._group_admin: Optional[Any] = None
        self.group_stats = GroupStats(StatsRegions.create())
        super().__init__(_supervisor_config(config), reactor)
        self.full_config = config
        self.group_state = GroupState(self)
        self.group_state.map_servers()
        self.workers = WorkerGroup(self, path, self.reactor)
        self.workers.setServiceParent(self)
        self.history_feed = HistoryFeed(
            self, self.group_stats, lambda: [w.slot for w in self.workers.live]
        )
        # DNS lookups run here only; the workers take the answers.
        self.found = FoundPublisher(
            self,
            self.group_state,
            FoundRegion.create(),
            lambda: [worker.slot for worker in self.workers.live],
        )
        self.found.notify = self.workers.wake
        self.found.publish()

    @property
    def history_complete(self) -> int:
        """The last second of /history with every worker's counts in."""
        return self.history_feed.complete

    def listen_proxy(self, description: str, where: str) -> IListeningPort:
        port = super().listen_proxy(description, where)
        # Held for the workers: the supervisor never accepts on it.
        port.stopReading()  # type: ignore[attr-defined]
        return port

    def admin_site(self) -> Any:
        """The admin listener's site, reading the whole group (L{take_snapshot})."""
        if self._group_admin is None:
            from lbproxy.ops.admin import admin_site

            self._group_admin = admin_site(self, self.take_snapshot)
        return self._group_admin

    def take_snapshot(self) -> ProxySnapshot:
        """The read model of the group: counters summed over the workers, and each worker's."""
        return take(self, self.group_stats, [worker.slot for worker in self.workers.live])

    def inherited_listeners(self) -> List[Tuple[str, int, str]]:
        """The proxy listeners a worker gets: (description, fd, family)."""
        return [
            (description, port.fileno(), family_name(port))  # type: ignore[attr-defined]
            for description, port in self.ports.items()
        ]

    def shared_fd(self) -> Optional[int]:
        """The shared table's file descriptor."""
        return self.group_state.table.fd

    def startService(self) -> None:
        super().startService()
        self.group_state.start(self.reactor)
        self.history_feed.start(self.reactor)
        self.found.start(self.reactor)

    def stopService(self) -> Deferred[Any]:
        self.group_state.stop()
        self.history_feed.stop()
        self.found.stop()
        return super().stopService()

    def _servers_changed(self, pool: str) -> None:
        """DNS changed a pool's servers: rows for them, and the workers told."""
        super()._servers_changed(pool)
        found = getattr(self, "found", None)
        if found is not None:
            found.publish()

    def reload(self, config: ProxyConfig) -> None:
        super().reload(_supervisor_config(config))
        self.full_config = config
        self.group_state.map_servers()
        self.found.publish()
        self.workers.roll()


def _supervisor_config(config: ProxyConfig) -> ProxyConfig:
    """The supervisor writes no access log (the workers do)."""
    return attr.evolve(config, access_log=None)


class SupervisorControl(ProcessControl):
    """The supervisor's signals: SIGUSR1 goes on to the workers, which write the access log."""

    proxy: SupervisorService

    def reopen_logs(self) -> None:
        for worker in list(self.proxy.workers.live):
            worker.reopen_logs()
        log.info("access log reopen asked of the workers")


__all__ = ["SupervisorControl", "SupervisorService", "WorkerGroup", "backoff"]
