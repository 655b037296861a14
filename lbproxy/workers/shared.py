"""
The state table the supervisor and its workers share: one row per server,
in a memory file (C{memfd}) every process maps.

A row holds what must be the group's rather than one process's:

 - C{inflight[slot]}: requests in flight to the server from the worker in
   that slot.  Each worker writes only its own column, the supervisor
   zeroes the column of a worker that ended: one writer per word, no locks.
   A server's in-flight count is the sum of its row, read by every worker
   before it chooses (least_connections, random_two, max_connections).
 - C{down}: the active health checks' verdict (they run in the supervisor).
 - C{ejected_until}: passive ejection: a worker that takes a server out
   writes when it comes back; every worker reads it.
 - C{operator}: drain or maint from the admin API (in the supervisor), and
   C{weight}: a weight set at run time (-1: none).

Rows are keyed by pool and server (name and address), so that a reload
maps the servers that stay to the same rows: their state survives it.

The guarantees (README, "Worker processes"): a worker reads the sums when it
builds a request's candidates, so two workers choosing in the same instant
may both take the same least loaded server (least_connections is exact up to
the requests being chosen at that instant, at most one per worker).
C{max_connections} is exact: a worker takes a slot of a limited server by
writing its +1 first and reading the sum after (L{SharedTable.claim}); over
the limit, it withdraws.  Two workers racing for the last slot may both
withdraw, never both go through (docs/workers.md, "max_connections across
workers", has the argument).  Round robin rotates per worker: each worker's
requests are spread evenly, so the sum is too, over time.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
from typing import Any, Dict, List, Optional, Set, Tuple

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

#: Most servers over all pools, and most worker processes alive at once
#: (a reload briefly runs two generations).
MAX_SERVERS = 4096
MAX_SLOTS = 512

_KEY = 4  # 32 bytes of key, as four 64-bit words
_FIELDS = _KEY + 4  # key, used, down, operator, weight
_ROW = _FIELDS + 1 + MAX_SLOTS  # ... ejected_until (a double), inflight[MAX_SLOTS]
_HEADER = 8  # word 0: the highest slot in use + 1

OPERATOR_NONE, OPERATOR_DRAINING, OPERATOR_MAINT = 0, 1, 2

#: How often a worker with requests waiting for a slot looks for one freed
#: by another worker.
QUEUE_POLL = 0.02


#: A lock of this process alone, never contended (a worker has one
#: thread): taking and releasing it is L{barrier}.
_BARRIER = threading.Lock()


def barrier() -> None:
    """
    A full memory barrier: the stores this process made before it are
    visible to every other core before any load made after it.

    Python has no fence of its own.  Taking and releasing an uncontended
    lock runs the C library's atomic read-modify-write instructions
    (glibc's C{sem_wait}/C{sem_post} under CPython's and PyPy's locks: a
    C{lock cmpxchg} on x86-64, which drains the store buffer), and the
    interpreter cannot move a memory access across the call.  Used only
    between a claim's write and its read (docs/workers.md).
    """
    _BARRIER.acquire()
    _BARRIER.release()


def row_key(pool: str, server: Tuple[str, str, str, int]) -> bytes:
    """The 32-byte key of a pool's server (name, scheme, host, port)."""
    return hashlib.sha256(repr((pool, server)).encode("utf-8")).digest()


#: Where each slot's accepting word starts: its worker's open client
#: connections + 1 while it accepts, 0 otherwise (L{AcceptBalance}).
_ACCEPTING = _HEADER + MAX_SERVERS * _ROW


#: Where the change counters start: the supervisor's (health, operator
#: state, weight of any server), then one per slot (its worker's ejections).
#: Each has one writer and only grows; a worker that reads their sum
#: unchanged knows no server's state words changed (L{PoolShare.sync}).
_CHANGES = _ACCEPTING + MAX_SLOTS


def table_size() -> int:
    return (_CHANGES + 1 + MAX_SLOTS) * 8


def memory_file(name: str, size: int) -> int:
    """A new zeroed memory file of C{size} bytes, inheritable by workers: its descriptor."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create(name, 0)
    else:  # pragma: no cover - Linux has memfd_create
        import tempfile

        fd, path = tempfile.mkstemp(prefix=name + "-")
        os.unlink(path)
    os.ftruncate(fd, size)
    os.set_inheritable(fd, True)
    return fd


class SharedTable:
    """The table over a shared mapping; every method is a few word reads or writes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, table_size())
        self.words = memoryview(self._map).cast("q")
        self.doubles = memoryview(self._map).cast("d")

    @classmethod
    def create(cls) -> SharedTable:
        """A new zeroed table in a memory file (inheritable by workers)."""
        return cls(memory_file("lbproxy-shared", table_size()))

    # -- layout ---------------------------------------------------------------

    @staticmethod
    def base(row: int) -> int:
        return _HEADER + row * _ROW

    @property
    def slots(self) -> int:
        return int(self.words[0])

    @slots.setter
    def slots(self, value: int) -> None:
        self.words[0] = value

    def key_of(self, row: int) -> bytes:
        base = self.base(row)
        return bytes(self.words[base : base + _KEY].cast("B"))

    def find(self, key: bytes) -> Optional[int]:
        """The row of C{key}, if one was given to it."""
        for row in range(MAX_SERVERS):
            base = self.base(row)
            if not self.words[base + _KEY]:
                continue
            if self.key_of(row) == key:
                return row
        return None

    def assign(self, keys: List[bytes]) -> Dict[bytes, int]:
        """
        Rows for C{keys} (supervisor only): a key keeps its row; a new one
        takes a free row (never used, or freed by L{release_rows}).  A key
        left without one when every row is taken is not in the answer.
        """
        rows: Dict[bytes, int] = {}
        for key in keys:
            row = self.find(key)
            if row is None:
                row = self._free_row()
                if row is None:
                    continue
                base = self.base(row)
                self.words[base : base + _FIELDS + 1 + MAX_SLOTS] = memoryview(
                    bytes(8 * (_FIELDS + 1 + MAX_SLOTS))
                ).cast("q")
                self.words[base : base + _KEY] = memoryview(key).cast("q")
                self.words[base + _KEY] = 1
                self.words[base + _KEY + 3] = -1
                self.words[_CHANGES] += 1
            rows[key] = row
        return rows

    def _free_row(self) -> Optional[int]:
        for row in range(MAX_SERVERS):
            if not self.words[self.base(row) + _KEY]:
                return row
        return None

    def release_rows(self, keep: List[int]) -> None:
        """Free the rows not in C{keep} that have nothing in flight (supervisor only)."""
        kept = set(keep)
        for row in range(MAX_SERVERS):
            base = self.base(row)
            if self.words[base + _KEY] and row not in kept and self.inflight(row) == 0:
                self.words[base + _KEY] = 0

    def scan(self) -> Tuple[Dict[bytes, int], List[int]]:
        """Every row given to a key, by key, and the free rows: one pass over the table."""
        used: Dict[bytes, int] = {}
        free: List[int] = []
        for row in range(MAX_SERVERS):
            if self.words[self.base(row) + _KEY]:
                used[self.key_of(row)] = row
            else:
                free.append(row)
        return used, free

    def take_row(self, row: int, key: bytes) -> None:
        """Give the free C{row} to C{key}, zeroed (supervisor only; see L{assign})."""
        base = self.base(row)
        self.words[base : base + _FIELDS + 1 + MAX_SLOTS] = memoryview(
            bytes(8 * (_FIELDS + 1 + MAX_SLOTS))
        ).cast("q")
        self.words[base : base + _KEY] = memoryview(key).cast("q")
        self.words[base + _KEY + 3] = -1
        self.words[base + _KEY] = 1
        self.words[_CHANGES] += 1

    def free_row(self, row: int) -> None:
        """Free one row (supervisor only, once no worker writes to it)."""
        self.words[self.base(row) + _KEY] = 0

    def clear_ejection(self, row: int) -> None:
        """The supervisor brought the server back (a passing check): no ejection (counted)."""
        if self.doubles[self.base(row) + _FIELDS] != 0.0:
            self.doubles[self.base(row) + _FIELDS] = 0.0
            self.words[_CHANGES] += 1

    # -- fields ---------------------------------------------------------------

    def inflight(self, row: int) -> int:
        start = self.base(row) + _FIELDS + 1
        return sum(self.words[start : start + self.slots])

    def add_inflight(self, row: int, slot: int, delta: int) -> None:
        self.words[self.base(row) + _FIELDS + 1 + slot] += delta

    def claim(self, row: int, slot: int, limit: int) -> bool:
        """
        Take one of the C{limit} slots of C{row}'s server for the worker in
        C{slot}, exactly over all workers: its +1 first (L{hold}), a barrier,
        then the sum (L{over}); over the limit, the +1 is withdrawn and the
        answer is False (the server is full).  Two workers claiming the last
        slot at once may both withdraw; they never both succeed.
        """
        self.hold(row, slot)
        barrier()
        if self.over(row, limit):
            self.add_inflight(row, slot, -1)
            return False
        return True

    def hold(self, row: int, slot: int) -> None:
        """A claim's first step: the worker's +1, in its own column."""
        self.words[self.base(row) + _FIELDS + 1 + slot] += 1

    def over(self, row: int, limit: int) -> bool:
        """A claim's second step: whether the sum, the claim's +1 in it, exceeds C{limit}."""
        return self.inflight(row) > limit

    def inflight_of(self, row: int, slot: int) -> int:
        return int(self.words[self.base(row) + _FIELDS + 1 + slot])

    def set_accepting(self, slot: int, connections: Optional[int]) -> None:
        """A worker accepts, with this many open connections; or not (L{None})."""
        self.words[_ACCEPTING + slot] = 0 if connections is None else connections + 1

    def least_connections(self, slot: int) -> Optional[int]:
        """The fewest open connections of an accepting worker other than C{slot}'s."""
        least = 0
        for other in range(self.slots):
            value = self.words[_ACCEPTING + other]
            if value and other != slot and (not least or value < least):
                least = value
        return least - 1 if least else None

    def accepting_total(self, slot: int) -> int:
        """The accepting words of the workers other than C{slot}'s, summed (a progress mark)."""
        start = _ACCEPTING
        return int(sum(self.words[start : start + self.slots])) - int(self.words[start + slot])

    def clear_slot(self, slot: int) -> None:
        """A worker ended: its requests are no longer in flight (supervisor only)."""
        self.words[_ACCEPTING + slot] = 0
        for row in range(MAX_SERVERS):
            base = self.base(row)
            if self.words[base + _KEY]:
                self.words[base + _FIELDS + 1 + slot] = 0

    def down(self, row: int) -> bool:
        return bool(self.words[self.base(row) + _KEY + 1])

    def operator(self, row: int) -> int:
        return int(self.words[self.base(row) + _KEY + 2])

    def weight(self, row: int) -> Optional[int]:
        value = int(self.words[self.base(row) + _KEY + 3])
        return None if value < 0 else value

    def ejected_until(self, row: int) -> float:
        return float(self.doubles[self.base(row) + _FIELDS])

    def set_ejected_until(self, row: int, when: float, slot: int = -1) -> None:
        """
        Write a server's ejection (C{slot}: the writer's, -1 the
        supervisor's), then count the change in the writer's own counter:
        x86-64 keeps the two stores in order, so a reader that sees the
        count sees the ejection (L{changes}).
        """
        self.doubles[self.base(row) + _FIELDS] = when
        self.words[_CHANGES + 1 + slot] += 1

    def changes(self) -> int:
        """The sum of the change counters of the supervisor and the live slots."""
        return int(sum(self.words[_CHANGES : _CHANGES + 1 + self.slots]))

    def publish(self, row: int, server: Any) -> None:
        """
        Write what the supervisor decides of C{server} (health, operator,
        weight); a change of any of them is counted (L{changes}).
        """
        base = self.base(row)
        words = self.words
        values = (
            0 if server.up else 1,
            OPERATOR_MAINT if server.maint else OPERATOR_DRAINING if server.draining else 0,
            -1 if server.weight_override is None else server.weight_override,
        )
        changed = False
        for offset, value in enumerate(values, _KEY + 1):
            if words[base + offset] != value:
                words[base + offset] = value
                changed = True
        if not server.ejected and self.doubles[base + _FIELDS] != 0.0:
            # Brought back by a passing health check.
            self.doubles[base + _FIELDS] = 0.0
            changed = True
        if changed:
            words[_CHANGES] += 1


class PoolShare:
    """
    A worker's pool reading and writing the table: installed as
    C{Pool.shared}, it brings the servers' states up to date before each
    choice (L{sync}) and writes the worker's in-flight counts and ejections.
    """

    def __init__(
        self,
        table: SharedTable,
        slot: int,
        pool: Any,
        rows: Dict[Any, int],
        authority: bool = False,
    ) -> None:
        self.table = table
        #: The supervisor's: it decides health, drain, maint and weight
        #: (writes them) and reads only the workers' counts and ejections.
        self.authority = authority
        self.slot = slot
        self.pool = pool
        #: Row of each server (the pool's own ServerState objects).
        self.rows = rows
        self._poll: Optional[LoopingCall] = None
        self._clock: Any = None
        #: The change counters' sum at the last full reading (L{sync}); -1:
        #: read everything next time.
        self._seen = -1
        #: When the earliest ejection read at that time ends (it changes
        #: the server's state without a write).
        self._expires = float("inf")
        #: (server, its row's in-flight words, its max_connections) of the
        #: servers with a row, for the live slots at the last full reading.
        self._counts: List[Tuple[Any, Any, Optional[int]]] = []
        self._slots = -1
        self._servers: Optional[List[Any]] = None
        #: The row of a claim whose +1 is in the table already: the
        #: dispatch that follows it writes nothing more.
        self._claimed: Optional[int] = None

    def invalidate(self) -> None:
        """The rows changed (DNS discovery): read everything at the next L{sync}."""
        self._seen = -1

    def sync(self) -> None:
        """
        The group's view of every server of the pool, into its ServerStates:
        the in-flight sums every time; the states (health, drain, maint,
        weight, ejection) only when a change counter moved, an ejection
        read ended, or the rows or live slots changed.
        """
        table = self.table
        if not self.authority:
            changes = table.changes()
            if (
                changes == self._seen
                and table.slots == self._slots
                and self.pool.servers is self._servers
                and self.pool.clock.seconds() < self._expires
            ):
                for server, words, limit in self._counts:
                    active = server.active = sum(words)
                    if limit is not None:
                        full = active >= limit
                        if full != server.full:
                            server.full = full
                            server.refresh()
                        if full:
                            self._watch()
                return
            self._full_sync(changes)
            return
        # The supervisor (the authority): it takes the workers' ejections
        # and in-flight sums, and publishes its own decisions.
        now = self.pool.clock.seconds()
        for server in self.pool.servers:
            row = self.rows.get(server)
            if row is None:
                continue
            server.active = table.inflight(row)
            ejected = table.ejected_until(row) > now
            if ejected != server.ejected:
                server.ejected = ejected
                server.refresh()
                self._record_ejection(server, ejected, now)
            table.publish(row, server)

    def _record_ejection(self, server: Any, ejected: bool, now: float) -> None:
        """
        The supervisor saw a worker's ejection of C{server} begin or end:
        one event in the pool's history (C{/history}), as a single process
        records its own.  Its time is when the supervisor saw it (at most
        one L{GroupState} refresh late), never before the second being
        merged (L{lbproxy.workers.stats.HistoryFeed}): a client asking
        C{?since=} gets it once.
        """
        events = getattr(getattr(self.pool, "stats", None), "events", None)
        if events is None:
            return
        if ejected:
            events.add(now, server.name, "ejected", "failed requests (a worker's passive checks)")
        else:
            events.add(now, server.name, "reinstated", "on probation")

    def prime(self) -> None:
        """
        Take the ejections the table holds as they are, without an event
        (a reload's new pools: an ejection seen before is not new).
        """
        now = self.pool.clock.seconds()
        for server, row in self.rows.items():
            if self.table.ejected_until(row) > now and not server.ejected:
                server.ejected = True
                server.refresh()

    def _full_sync(self, changes: int) -> None:
        table = self.table
        words = table.words
        now = self.pool.clock.seconds()
        slots = table.slots
        expires = float("inf")
        counts = []
        for server in self.pool.servers:
            row = self.rows.get(server)
            if row is None:
                continue
            start = table.base(row) + _FIELDS + 1
            inflight = words[start : start + slots]
            limit = server.config.max_connections
            counts.append((server, inflight, limit))
            server.active = sum(inflight)
            server.up = not table.down(row)
            operator = table.operator(row)
            server.draining = operator == OPERATOR_DRAINING
            server.maint = operator == OPERATOR_MAINT
            weight = table.weight(row)
            if weight != server.weight_override:
                server.weight_override = weight
                server.weight = server.base_weight * 100
            until = table.ejected_until(row)
            server.ejected = until > now
            if server.ejected:
                expires = min(expires, until)
            server.full = limit is not None and server.active >= limit
            server.refresh()
            if server.full:
                self._watch()
        self._counts = counts
        self._slots = slots
        self._servers = self.pool.servers
        self._expires = expires
        # Read after the states: a change counted meanwhile is read again next time.
        self._seen = changes

    def claim(self, server: Any, limit: int) -> bool:
        """
        A slot of C{server} (at most C{limit} in flight over all workers)
        for a request about to be dispatched (L{SharedTable.claim}); False:
        it is full.  The pool's dispatch follows at once.
        """
        row = self.rows.get(server)
        if row is None:
            # Not in the table (found by DNS discovery): this worker's count.
            return bool(server.active < limit)
        if not self.table.claim(row, self.slot, limit):
            self._watch()
            return False
        self._claimed = row
        return True

    def dispatched(self, server: Any, delta: int) -> None:
        row = self.rows.get(server)
        if row is not None:
            if delta == 1 and self._claimed == row:
                self._claimed = None  # its claim wrote it
                return
            self.table.add_inflight(row, self.slot, delta)

    def ejected(self, server: Any, until: float) -> None:
        row = self.rows.get(server)
        if row is not None:
            self.table.set_ejected_until(row, until, self.slot)

    def watch_queue(self, clock: Any) -> None:
        """
        While requests may wait, look for slots other workers free: the
        poll runs from the moment a server of the pool is seen full (a
        request waits only after that) until the queue is empty.
        """
        self._clock = clock

    def _watch(self) -> None:
        if self._clock is None or self.authority:
            return
        if self._poll is None:
            self._poll = LoopingCall(self._tick)
            self._poll.clock = self._clock
        if not self._poll.running:
            self._poll.start(QUEUE_POLL, now=False)

    def stop(self) -> None:
        """No more polling (the worker stops, or a test ends)."""
        if self._poll is not None and self._poll.running:
            self._poll.stop()

    def _tick(self) -> None:
        if self.pool.queue_length:
            self.sync()
            self.pool.wake()
        else:
            # Nothing waits: a request that finds a server full starts the
            # poll again (L{sync}, L{claim}) before it can wait.
            self.stop()


#: Seconds a worker with more connections than another leaves a readiness
#: of the shared socket to the others; QUEUE_POLL's order of magnitude.
ACCEPT_PAUSE = 0.005


class AcceptBalance:
    """
    Spreads the connections of a shared listening socket over the workers.

    Every worker is woken when a connection arrives and the first to call
    accept() takes it, so left alone one worker (the one running, or the
    hot one) takes most of a burst.  Here each worker publishes its open
    client connections in the table and, woken, accepts one connection
    only, and only when no other accepting worker has fewer than it by
    more than a margin (1 + 1/16th).  Otherwise it leaves the socket
    for L{ACCEPT_PAUSE} seconds to the others; if the queue still holds
    connections then, it accepts one; if the others accepted nothing during
    the pause (they are stuck or gone), two after the next pause, and so on
    doubling (up to 100) while it stays the busier one.  So no connection
    waits long on a worker that does not accept, and a slow one (PyPy
    before its JIT warms up) is not robbed of its share.
    """

    def __init__(self, table: SharedTable, slot: int, site: Any, clock: Any) -> None:
        self.table = table
        self.slot = slot
        self.site = site
        self.clock = clock
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        #: Whether a connection arrived since the timer's last tick.
        self._arrived = False
        self._stopped = False

    def start(self) -> None:
        self.publish()

    def stop(self) -> None:
        """No longer accepting (stopping): the others take every new connection."""
        self._stopped = True
        if self._loop.running:
            self._loop.stop()
        self.table.set_accepting(self.slot, None)

    def publish(self) -> None:
        self.table.set_accepting(self.slot, self.site.open_connections)

    def _arriving(self) -> None:
        """
        A connection arrives: the timer runs.  Connections that close are
        published every 0.25 s while connections keep arriving, and at the
        first arrival after a quiet spell (L{adopt}'s doRead publishes
        before it compares).  A word left stale by closes is only ever too
        high, which makes the others accept, never wait.
        """
        self._arrived = True
        if not self._loop.running and not self._stopped:
            self._loop.start(0.25, now=False)

    def _tick(self) -> None:
        self.publish()
        if not self._arrived:
            self._loop.stop()
        self._arrived = False

    def busier(self) -> bool:
        """Whether another accepting worker has fewer connections by more than the margin."""
        least = self.table.least_connections(self.slot)
        if least is None:
            return False
        return bool(self.site.open_connections > least + 1 + least // 16)

    def adopt(self, port: Any) -> None:
        """Accept on C{port} (a listening port of the shared socket) as described above."""
        from lbproxy._twisted import accept_at_most

        read = port.doRead
        #: How many to accept when a pause ends: doubling while the others
        #: make no progress; and what the others had when the pause began.
        burst = [1]
        others = [0]

        def resume() -> None:
            if not port.connected or port.disconnecting:
                return
            port.startReading()
            # What the others left queued meanwhile (none: accept() finds
            # nothing, at no cost).  Others that accepted meanwhile are
            # working: one only; others that did not may be stuck: more.
            stuck = self.table.accepting_total(self.slot) == others[0]
            before = self.site.open_connections
            accept_at_most(port, burst[0] if stuck else 1)
            read()
            self.publish()
            taken = self.site.open_connections > before
            burst[0] = min(100, burst[0] * 2) if taken and stuck else 1

        def doRead() -> None:
            self._arriving()
            self.publish()
            if self.busier():
                port.stopReading()
                others[0] = self.table.accepting_total(self.slot)
                self.clock.callLater(ACCEPT_PAUSE, resume)
                return
            burst[0] = 1
            accept_at_most(port, 1)
            read()
            self.publish()

        port.doRead = doRead


class GroupState:
    """
    The supervisor's side of the table: rows for its servers, what it
    decides published at once (health verdicts, drain, maint, weight), and
    its own ServerStates kept up to date from the workers' counts (for
    /status and /metrics).
    """

    def __init__(self, service: Any) -> None:
        self.service = service
        self.table = SharedTable.create()
        self.shares: Dict[str, PoolShare] = {}
        #: Rows of servers DNS no longer names that workers may still
        #: write (L{lbproxy.workers.discovery}): not freed by a reload.
        self.held_rows: Set[int] = set()
        self._refresh = LoopingCall(self.sync)
        self._clock = service.reactor

    def map_servers(self) -> None:
        """
        Rows for the running configuration's servers (at start and after a
        reload).  Never fails: servers beyond the table's L{MAX_SERVERS}
        rows keep per-worker state (each worker finds no row for them),
        logged in one line.
        """
        table = self.table
        used: List[int] = []
        self.shares = {}
        left_out: List[str] = []
        for name, pool in self.service.pools.items():
            keys = [row_key(name, _server_key(server)) for server in pool.servers]
            rows = table.assign(keys)
            by_server = {s: rows[k] for s, k in zip(pool.servers, keys) if k in rows}
            left_out.extend(f"{name}/{s.name}" for s in pool.servers if s not in by_server)
            used.extend(by_server.values())
            share = PoolShare(table, -1, pool, by_server, authority=True)
            share.prime()
            self.shares[name] = share
            for server, row in by_server.items():
                table.publish(row, server)
            pool.on_change = self._publishing(name, pool.on_change)
        table.release_rows(used + sorted(self.held_rows))
        if left_out:
            log.warn(
                "{n} servers get no row of the shared table ({most} rows in all), "
                "each worker keeps their state: {servers}",
                n=len(left_out),
                most=MAX_SERVERS,
                servers=", ".join(left_out[:5]) + (", ..." if len(left_out) > 5 else ""),
            )

    def _publishing(self, name: str, recorder: Any) -> Any:
        if getattr(recorder, "publishes", False):
            return recorder

        def changed(server: Any, what: str, detail: str) -> None:
            # Told before the pool changes the server: published right after.
            share = self.shares.get(name)
            row = share.rows.get(server) if share is not None else None
            if row is not None:
                if what in ("UP", "reinstated"):
                    # Back: a worker's ejection ends now, before the next
                    # refresh could read it again as a new one.
                    self.table.clear_ejection(row)
                self._clock.callLater(0, self.table.publish, row, server)
            if recorder is not None:
                recorder(server, what, detail)

        changed.publishes = True  # type: ignore[attr-defined]
        return changed

    def sync(self) -> None:
        for share in self.shares.values():
            share.sync()

    def slot_in_use(self, slot: int) -> None:
        if slot + 1 > self.table.slots:
            self.table.slots = slot + 1

    def slot_ended(self, slot: int) -> None:
        self.table.clear_slot(slot)

    def start(self, clock: Any) -> None:
        self._refresh.clock = clock
        self._refresh.start(0.25)

    def stop(self) -> None:
        if self._refresh.running:
            self._refresh.stop()


def attach_worker(service: Any, fd: int, slot: int) -> AcceptBalance:
    """
    Make a worker's pools read and write the shared table; its own health
    checks are dropped (the supervisor's are the group's).  Its accept
    balance, for its listening ports.
    """
    table = SharedTable(fd)
    for checker in list(service.checkers.values()):
        checker.disownServiceParent()
    service.checkers = {}
    for name, pool in service.pools.items():
        rows: Dict[Any, int] = {}
        for server in pool.servers:
            row = table.find(row_key(name, _server_key(server)))
            if row is not None:
                rows[server] = row
        share = PoolShare(table, slot, pool, rows)
        pool.shared = share
        share.watch_queue(service.reactor)
    return AcceptBalance(table, slot, service.site, service.reactor)


def _server_key(server: Any) -> Tuple[str, str, str, int]:
    config = server.config
    return (config.name, config.scheme, config.host, config.port)


__all__ = ["AcceptBalance", "GroupState", "PoolShare", "SharedTable", "attach_worker", "row_key"]
