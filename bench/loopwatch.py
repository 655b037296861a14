"""
What held the reactor: twistd with a timed event loop, for finding the
causes of a tail.

    PYPY_GC_NURSERY=32MB PYPY_GC_MIN=64MB PYPY_GC_INCREMENT_STEP=2MB PYPY_GC_MAJOR_COLLECT=1.6 \\
        .venv-pypy/bin/python bench/loopwatch.py --out turns.json -- \\
        -n --pidfile= lbproxy --config lbproxy.ini

Runs twistd with the arguments after C{--}, with the reactor's loop
replaced by one that times each turn: the timers it ran and the
descriptors it dispatched, in wall time and in the thread's CPU time
(C{time.thread_time}, which a busy machine does not inflate).  A turn busy
for more than C{--slow-ms} (1 by default; the wait in C{epoll} is not
counted) is kept with what ran in it, beside, on PyPy, the garbage
collector's events (minor collections, major collection steps, with their
durations; the memory in use after each minor collection and the
arenas after each major one; C{gc.hooks}) and the JIT's compilations and aborts
(C{pypyjit}) that happened in it.  At exit (SIGTERM, SIGINT) it writes
C{--out}: C{{"turns": [...], "gc": [...], "jit": [...]}}, each entry with
its C{time.time()}, so a client's own measured window can be cut out.

With C{--connections} it also follows each connection through its events
(C{"gaps"} in the file): on a client's connection, the time from sending
a response to reading the next request (the client's own time and the
time the request waited in the socket for the proxy) and from that read
to the next response's send (the proxy's time, the backend's included);
on a backend's, from sending a request to reading the response.  Each
kind is a list of C{[time.time(), milliseconds]}.

It adds a closure per C{callLater} and two clock reads per event: a
diagnosis tool, not for measuring CPU per request.  Only for Twisted's
epoll reactor (the default on Linux).
"""

from __future__ import annotations

import argparse
import array
import atexit
import gc
import json
import resource
import sys
import time
from typing import Any, Dict, List

from twisted.internet import reactor as _reactor

reactor: Any = _reactor
wall, cpu = time.perf_counter, time.thread_time
RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)

#: What ran in the current turn.
current: Dict[str, List[Any]] = {"timers": [], "fds": [], "gc": [], "jit": []}
kept: Dict[str, Any] = {"turns": [], "gc": [], "jit": []}
polled: Dict[str, Any] = {"wall": 0.0, "cpu": 0.0, "returned": False, "waits": 0}


def name_of(f: Any) -> str:
    f = getattr(f, "__func__", f)
    return f"{getattr(f, '__module__', '')}.{getattr(f, '__qualname__', repr(f))}"


def follow_connections() -> Any:
    """
    The per-connection gaps of C{--connections}: a function to call with
    each dispatched event, and the arrays it fills.
    """
    gaps = {kind: (array.array("d"), array.array("d")) for kind in ("client", "proxy", "backend")}
    last: Dict[Any, List[float]] = {}  # transport -> [last read, last send]
    clock = time.time

    def note(kind: str, at: float, since: float) -> None:
        times, values = gaps[kind]
        times.append(at)
        values.append(1000 * (at - since))

    def event(selectable: Any, event: int) -> None:
        kind = type(selectable).__name__
        server = "Server" in kind
        if not server and "Client" not in kind:
            return
        now = clock()
        marks = last.get(selectable)
        if marks is None:
            marks = last[selectable] = [0.0, 0.0]
        if event & 1:  # a read
            if server and marks[1] and marks[1] > marks[0]:
                note("client", now, marks[1])
            elif not server and marks[1] > marks[0]:
                note("backend", now, marks[1])
            marks[0] = now
        else:
            if server and marks[0] > marks[1]:
                note("proxy", now, marks[0])
            marks[1] = now

    def export() -> Dict[str, Any]:
        return {kind: list(zip(t, v)) for kind, (t, v) in gaps.items()}

    return event, export


def install(slow: float, connections: bool = False) -> None:
    call_later = reactor.callLater

    def timed_call_later(delay: float, f: Any, *a: Any, **kw: Any) -> Any:
        name = name_of(f)

        def timed(*a: Any, **kw: Any) -> Any:
            w, c = wall(), cpu()
            try:
                return f(*a, **kw)
            finally:
                current["timers"].append((name, wall() - w, cpu() - c))

        return call_later(delay, timed, *a, **kw)

    reactor.callLater = timed_call_later

    do_read_or_write = reactor._doReadOrWrite
    if connections:
        follow, kept["gaps"] = follow_connections()
    else:
        follow = None

    def timed_read_or_write(selectable: Any, fd: int, event: int) -> Any:
        if follow is not None:
            follow(selectable, event)
        w, c = wall(), cpu()
        try:
            return do_read_or_write(selectable, fd, event)
        finally:
            kind = type(selectable).__name__ + ("/read" if event & 1 else "/write")
            current["fds"].append((kind, wall() - w, cpu() - c))

    reactor._doReadOrWrite = timed_read_or_write

    try:
        from lbproxy.ops.accesslog import AccessLog
    except ImportError:
        pass
    else:
        # The access log's writes: a write(2) to a file can wait in the
        # kernel (for the file system's journal, for instance), which no CPU
        # time shows.
        kept["flushes"] = []
        flush = AccessLog.flush

        def timed_flush(self: Any) -> None:
            w, c = wall(), cpu()
            try:
                flush(self)
            finally:
                kept["flushes"].append((time.time(), wall() - w, cpu() - c))

        AccessLog.flush = timed_flush  # type: ignore[method-assign]

    class TimedPoller:
        def __init__(self, poller: Any) -> None:
            self.poller = poller

        def poll(self, *a: Any) -> Any:
            try:
                return self.poller.poll(*a)
            finally:
                polled.update(wall=wall(), cpu=cpu(), returned=True, waits=switches())

        def __getattr__(self, name: str) -> Any:
            return getattr(self.poller, name)

    hooks = getattr(gc, "hooks", None)
    if hooks is not None:  # PyPy

        def minor(stats: Any) -> None:
            event = ("minor", stats.count, stats.duration)
            current["gc"].append(event)
            kept["gc"].append((time.time(), *event, stats.total_memory_used))

        def step(stats: Any) -> None:
            event = ("step", stats.oldstate, stats.newstate, stats.duration)
            current["gc"].append(event)
            kept["gc"].append((time.time(), *event))

        def collected(stats: Any) -> None:
            kept["gc"].append(
                (
                    time.time(),
                    "major",
                    stats.num_major_collects,
                    stats.arenas_bytes,
                    stats.rawmalloc_bytes_after,
                )
            )

        hooks.on_gc_minor, hooks.on_gc_collect_step = minor, step
        hooks.on_gc_collect = collected
    try:
        import pypyjit  # type: ignore[import-not-found]
    except ImportError:
        pass
    else:

        def compiled(info: Any) -> None:
            event = (info.type, str(info.greenkey)[:100] if info.greenkey else "")
            current["jit"].append(event)
            kept["jit"].append((time.time(), *event))

        def aborted(*a: Any) -> None:
            current["jit"].append(("abort", str(a[-1])[:100] if a else ""))
            kept["jit"].append((time.time(), "abort"))

        pypyjit.set_compile_hook(compiled)
        pypyjit.set_abort_hook(aborted)

    def main_loop() -> None:
        reactor._poller = TimedPoller(reactor._poller)
        while reactor._started:
            try:
                while reactor._started:
                    v0 = switches()
                    w0, c0 = wall(), cpu()
                    reactor.runUntilCurrent()
                    w1, c1 = wall(), cpu()
                    waits = switches() - v0
                    timeout = reactor.timeout()
                    polled["returned"] = False
                    reactor.doIteration(reactor.running and timeout)
                    w2, c2 = wall(), cpu()
                    busy = w1 - w0
                    busy_cpu = c1 - c0
                    if polled["returned"]:
                        busy += w2 - polled["wall"]
                        busy_cpu += c2 - polled["cpu"]
                        waits += switches() - polled["waits"]
                    if busy > slow:
                        kept["turns"].append(turn(busy, busy_cpu, int(waits)))
                    for events in current.values():
                        events.clear()
            except BaseException:
                from twisted.python import log

                log.err()

    reactor.mainLoop = main_loop


def switches() -> int:
    """The thread's voluntary context switches so far (it waited in the kernel)."""
    return resource.getrusage(RUSAGE_THREAD).ru_nvcsw


def turn(busy: float, busy_cpu: float, waits: int = 0) -> Dict[str, Any]:
    def ms(seconds: float) -> float:
        return round(1000 * seconds, 3)

    def heaviest(events: List[Any]) -> List[Any]:
        return [(n, ms(w), ms(c)) for n, w, c in sorted(events, key=lambda e: -e[2])[:5]]

    return {
        "time": time.time(),
        "busy_ms": ms(busy),
        "cpu_ms": ms(busy_cpu),
        "timers": heaviest(current["timers"]),
        "fds": heaviest(current["fds"]),
        "events": len(current["fds"]),
        # Voluntary context switches outside the poll: the turn waited in
        # the kernel (a write to a file, a page fault from disk...).
        "waits": waits,
        "gc": list(current["gc"]),
        "jit": list(current["jit"]),
    }


def heap() -> Dict[str, Any]:
    """The live objects by type (count, bytes), the largest first, after a full collection."""
    gc.collect()
    sizes: Dict[str, List[int]] = {}
    usage = getattr(gc, "get_rpy_memory_usage", None)
    for o in gc.get_objects():
        name = f"{type(o).__module__}.{type(o).__qualname__}"
        entry = sizes.setdefault(name, [0, 0])
        entry[0] += 1
        entry[1] += usage(o) if usage is not None else sys.getsizeof(o)
    top = sorted(sizes.items(), key=lambda item: -item[1][1])[:60]
    stats = str(gc.get_stats()) if hasattr(gc, "get_stats") else ""
    return {"types": top, "stats": stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--out", required=True, help="JSON file written at exit")
    parser.add_argument("--slow-ms", type=float, default=1.0)
    parser.add_argument(
        "--heap", action="store_true", help="at exit, what the live objects are, by type"
    )
    parser.add_argument(
        "--connections", action="store_true", help="also each connection's gaps (see above)"
    )
    parser.add_argument("twistd", nargs=argparse.REMAINDER, help="-- then twistd's arguments")
    args = parser.parse_args()
    install(args.slow_ms / 1000, args.connections)

    def write() -> None:
        if args.heap:
            kept["heap"] = heap()
        if callable(kept.get("gaps")):
            kept["gaps"] = kept["gaps"]()
        with open(args.out, "w") as f:
            json.dump(kept, f)

    atexit.register(write)
    from twisted.scripts.twistd import run

    rest = args.twistd[1:] if args.twistd[:1] == ["--"] else args.twistd
    sys.argv = ["twistd", *rest]
    run()


if __name__ == "__main__":
    main()
