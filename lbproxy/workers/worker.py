"""
A worker process: the proxy serving listening sockets its supervisor bound.

Started by the supervisor as C{python -m lbproxy.workers.worker ARGS}, where
ARGS is one JSON object (L{WorkerArguments}); the listening sockets arrive
as inherited file descriptors and are adopted with
C{reactor.adoptStreamPort}, so every worker accepts from the same kernel
queue and a worker that exits loses no queued connection.

The supervisor owns the signals that mean something to an operator: here
SIGINT and SIGHUP are ignored (a Ctrl-C in a terminal reaches the whole
process group; the supervisor turns it into a SIGTERM for each worker),
SIGTERM is the graceful stop (stop accepting, finish the requests in flight
within C{shutdown_timeout}, exit 0) and SIGUSR1 reopens the access log.
Standard input is a pipe from the supervisor: end of file (the supervisor
is gone) stops the worker too.  One line C{ready} on standard output tells
the supervisor the worker accepts connections; its log goes to standard
error, one event a line, which the supervisor logs with the worker's number.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import attr
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger, formatEvent, globalLogBeginner
from twisted.protocols.tls import TLSMemoryBIOFactory

from lbproxy.config import ConfigError, ProxyConfig, load
from lbproxy.config.tls import is_tls_listen
from lbproxy.config.values import cores
from lbproxy.service import ProxyService, StartError, settle_heap
from lbproxy.transports import reuse_read_buffer
from lbproxy.workers.shared import AcceptBalance

log = Logger()

#: Seconds a stopping worker lets idle keep-alive connections send one more
#: request (answered with Connection: close) before it closes them.
LINGER = 1.0

FAMILIES = {"INET": socket.AF_INET, "INET6": socket.AF_INET6, "UNIX": socket.AF_UNIX}


@attr.s(frozen=True, slots=True, auto_attribs=True)
class WorkerArguments:
    """
    What the supervisor tells a worker.

    @ivar config: The configuration file (already checked by the supervisor).
    @ivar number: The worker's number in its group (0 to workers - 1).
    @ivar slot: Its column in the shared table (unique among live workers).
    @ivar listeners: (endpoint description, file descriptor, family name).
    @ivar shared: The shared table's file descriptor, or L{None}.
    @ivar stats: The counters' regions' file descriptor (L{lbproxy.workers.stats}), or L{None}.
    @ivar generation: The generation the worker belongs to (a reload starts one).
    @ivar found: The DNS answers' region (L{lbproxy.workers.discovery}), or L{None}.
    """

    config: str
    number: int
    slot: int
    listeners: Tuple[Tuple[str, int, str], ...]
    shared: Optional[int] = None
    stats: Optional[int] = None
    generation: int = 1
    found: Optional[int] = None

    def encode(self) -> str:
        return json.dumps(attr.asdict(self, recurse=False))

    @classmethod
    def decode(cls, text: str) -> WorkerArguments:
        values = json.loads(text)
        values["listeners"] = tuple(tuple(entry) for entry in values["listeners"])
        return cls(**values)


#: PyPy's JIT thresholds, its defaults: a loop is compiled after this many
#: iterations, a function after this many calls, and a bridge (the code after
#: a guard that fails) after this many failures of its guard.
JIT_THRESHOLDS = {"threshold": 1039, "function_threshold": 1619, "trace_eagerness": 200}

#: The most the thresholds are divided by (below that, rare paths compile).
MAX_JIT_SHARE = 4


def jit_share(workers: int, cpus: int) -> int:
    """How many of the group's workers share each CPU it may run on (1 to L{MAX_JIT_SHARE})."""
    return max(1, min(MAX_JIT_SHARE, -(-workers // max(1, cpus))))


def tune_jit(workers: int, cpus: Optional[int] = None, jit: Any = None) -> Optional[Dict[str, int]]:
    """
    On PyPy, when workers share CPUs: the JIT's thresholds divided by how many
    workers share each CPU.  Each worker has its own JIT, counting the loops,
    calls and guard failures of its own requests: two workers on one core each
    see half the requests a second that one process there sees, and with the
    default thresholds each takes twice as long to compile its hot paths.
    Halved, a worker reaches them in the same time as one process (it also
    compiles paths half as frequent, which one process leaves to the
    interpreter: its counters decay at every minor collection).  Measured in
    docs/workers.md ("Where the second worker's CPU went").  With a CPU per
    worker (C{workers = auto}) nothing changes.

    @param cpus: The CPUs the process may run on (default: its affinity).
    @param jit: The C{pypyjit} module (default: imported; absent on CPython).
    @return: The thresholds set, or L{None} when none were.
    """
    if jit is None:
        try:
            import pypyjit as jit  # type: ignore[import-not-found, no-redef]
        except ImportError:
            return None
    if cpus is None:
        cpus = cores()
    share = jit_share(workers, cpus)
    if share == 1:
        return None
    thresholds = {name: value // share for name, value in JIT_THRESHOLDS.items()}
    jit.set_param(**thresholds)
    return thresholds


def worker_config(config: ProxyConfig) -> ProxyConfig:
    """A worker's view of the configuration: no admin listener (the supervisor's)."""
    return attr.evolve(config, admin=None)


class WorkerProxyService(ProxyService):
    """
    The proxy in a worker: its listeners are the inherited sockets, adopted,
    never bound here.
    """

    def __init__(
        self,
        config: ProxyConfig,
        reactor: Any,
        listeners: Sequence[Tuple[str, int, str]],
        found: Optional[Tuple[int, int]] = None,
    ) -> None:
        #: The supervisor's DNS answers: (region's file descriptor, slot).
        self._found = found
        self._inherited: Dict[str, Tuple[int, str]] = {
            description: (fd, family) for description, fd, family in listeners
        }
        #: How the adopted sockets' connections spread over the workers.
        self.balance: Optional[AcceptBalance] = None
        super().__init__(config, reactor)

    def discovered_pools(self) -> Any:
        """DNS answers from the supervisor (which alone looks up), when it publishes them."""
        if self._found is None:
            return super().discovered_pools()
        from lbproxy.workers.discovery import FoundRegion, PublishedPools

        fd, slot = self._found
        return PublishedPools(self, self.reactor, self._servers_changed, FoundRegion(fd), slot)

    def listen_proxy(self, description: str, where: str) -> IListeningPort:
        inherited = self._inherited.get(description)
        if inherited is None:
            raise StartError(f"{where}: the supervisor passed no socket for {description}")
        fd, family = inherited
        factory: Any = self.site
        if is_tls_listen(description):
            factory = TLSMemoryBIOFactory(self.tls, False, factory)
        port: IListeningPort = self.reactor.adoptStreamPort(fd, FAMILIES[family], factory)
        reuse_read_buffer(port)
        if self.balance is not None:
            self.balance.adopt(port)
        # adoptStreamPort works on a duplicate: this one is not needed again.
        os.close(fd)
        return port


def _log_to_stderr() -> None:
    """Each log event as one line of text on standard error, for the supervisor."""

    def observer(event: Dict[str, Any]) -> None:
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text += "\n" + failure.getTraceback()
        for line in text.splitlines() or [""]:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)  # type: ignore[list-item]


def run(arguments: WorkerArguments) -> int:
    """Serve until told to stop; the process's exit status."""
    from twisted.internet import reactor as default_reactor

    from lbproxy.dispatch import install_quick_dispatch

    reactor: Any = default_reactor
    install_quick_dispatch(reactor)  # one legacy log context per poll (lbproxy/dispatch.py)
    _log_to_stderr()
    try:
        config = worker_config(load(arguments.config))
        thresholds = tune_jit(config.workers)
        if thresholds is not None:
            log.info(
                "JIT thresholds for workers sharing CPUs: {thresholds}",
                thresholds=", ".join(f"{k}={v}" for k, v in thresholds.items()),
            )
        found = None
        if arguments.found is not None and arguments.shared is not None:
            found = (arguments.found, arguments.slot)
        service = WorkerProxyService(config, reactor, arguments.listeners, found)
        if arguments.shared is not None:
            from lbproxy.workers.shared import attach_worker

            service.balance = attach_worker(service, arguments.shared, arguments.slot)
            if found is not None:
                # The rows of the discovered servers, then the supervisor's news.
                service.discovered.start()  # type: ignore[attr-defined]
        # SIGTERM before "listening on" is logged, as ProcessControl does: a
        # stop sent as soon as the worker says it listens is a graceful stop,
        # not the default action.  (The reactor puts its own in as it starts;
        # running() puts this one back.)
        # (The name stop is looked up only once the reactor runs, after it is
        # defined below.)
        signal.signal(
            signal.SIGTERM,
            lambda number, frame: reactor.callFromThread(lambda: reactor.callWhenRunning(stop)),
        )
        service.privilegedStartService()
    except (ConfigError, StartError, SystemExit) as e:
        sys.stderr.write(f"cannot start: {e}\n")
        return 1
    # Start-up's heap out of the collector's sight before the listeners
    # start, without the collection first: with it, a burst of connections
    # went all to one worker in 5 of 9 runs of the spread test (cause not
    # found; freezing alone, 0 of 8).  The worker's start-up garbage is a few
    # hundred objects, which the collector frees later.
    settle_heap(collect=False)
    service.startService()
    if service.balance is not None:
        service.balance.start()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    if arguments.stats is not None:
        from lbproxy.workers.stats import Publisher, StatsRegions

        publisher = Publisher(
            StatsRegions(arguments.stats),
            service,
            arguments.number,
            arguments.generation,
            arguments.slot,
        )
        publisher.start(reactor)
        # The last counters, once the requests in flight are done.
        reactor.addSystemEventTrigger("after", "shutdown", publisher.stop)

    def deferred(action: Any) -> Any:
        def handler(number: int, frame: Any) -> None:
            reactor.callFromThread(action)

        return handler

    def reopen() -> None:
        if service.access_log is not None:
            service.access_log.reopen()
            log.info("access log reopened: {path}", path=service.access_log.path)

    def running() -> None:
        # After the reactor's own handlers went in.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, deferred(reopen))
        signal.signal(signal.SIGTERM, deferred(stop))
        _watch_supervisor(reactor, stop, news)
        os.write(1, b"ready\n")

    def news() -> None:
        # The supervisor published DNS answers: read them now.
        if found is not None:
            service.discovered.poll()  # type: ignore[attr-defined]

    stopping: List[bool] = []

    def stop() -> None:
        if stopping or not reactor.running:
            return
        stopping.append(True)
        linger(service, reactor, min(LINGER, config.shutdown_timeout)).addCallback(
            lambda _: reactor.stop()
        )

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    reactor.callWhenRunning(running)
    reactor.run()
    return 0


def linger(service: ProxyService, reactor: Any, seconds: float) -> Deferred[None]:
    """
    The start of a worker's graceful stop: stop accepting (the other workers
    take the new connections from the shared socket), answer every further
    request with C{Connection: close}, and give idle keep-alive connections
    C{seconds} to send one more request before the drain closes them.  A
    client busy on its connection gets its answer and the close with it,
    instead of racing a close of an idle connection.  Fires when no client
    connection is left or C{seconds} have passed.
    """
    balance = getattr(service, "balance", None)
    if balance is not None:
        balance.stop()
    ports, service.ports = service.ports, {}
    for port in ports.values():
        port.stopListening()
    site = service.site
    site.closing = True
    done: Deferred[None] = Deferred()
    deadline = reactor.seconds() + seconds

    def check() -> None:
        if not site.channels or reactor.seconds() >= deadline:
            done.callback(None)
        else:
            reactor.callLater(0.05, check)

    check()
    return done


def _watch_supervisor(reactor: Any, stop: Any, news: Any) -> None:
    """
    Stop when standard input, a pipe from the supervisor, ends; a byte on
    it is news (new DNS answers published): C{news()}, once per read.
    """
    from twisted.internet import stdio
    from twisted.internet.protocol import Protocol

    class Watch(Protocol):
        def dataReceived(self, data: bytes) -> None:
            news()

        def connectionLost(self, reason: Any = None) -> None:
            stop()

    stdio.StandardIO(  # type: ignore[call-arg]
        Watch(), stdin=0, stdout=os.open(os.devnull, os.O_WRONLY), reactor=reactor
    )


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: python -m lbproxy.workers.worker JSON (started by lbproxy)\n")
        raise SystemExit(2)
    raise SystemExit(run(WorkerArguments.decode(argv[0])))


if __name__ == "__main__":
    main()
