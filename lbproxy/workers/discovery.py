"""
DNS discovery in a worker group: looked up once, by the supervisor, and
published to the workers.

The supervisor runs the pools' L{lbproxy.upstream.discovery.Discovery}
services as a single process does.  After every change of a pool's
servers (and at start and reload) it gives each discovered server a row of
the shared table (L{lbproxy.workers.shared}) and writes one document into
a memory file of its own, the L{FoundRegion}: per pool, the last good
answer of each DNS line, and the row of each discovered server (by row
key).  A sequence number, odd while the document is being written, lets a
worker take a whole copy without a lock.

A worker looks up nothing: its L{PublishedPools} take the answers from the
region (at start, then whenever the sequence moves: the supervisor writes a
byte to each worker's standard input when it publishes, and a worker also
reads the sequence every L{POLL} seconds, a safety net) and apply a change
as a single process applies a DNS change
(L{lbproxy.upstream.discovery.update_pool}: servers that stay keep
their state, new ones start with slow start, removed ones finish their
requests), then read the rows: a discovered server's in-flight sum, health
verdict, ejection, drain, maint and weight are the group's, as a listed
server's are.

Freeing a row: a removed server's row stays given while any worker may
still write to it.  Each worker writes into its own word of the region the
last sequence it applied I{and} after which it holds no row of a removed
server (it keeps one while its own requests to that server are in flight,
and drops it once they are done).  The supervisor frees the row of a
server removed at sequence I{n} once every live worker's word is at least
I{n} and the row's in-flight sum is 0.

Bounds: at most L{MAX_DISCOVERED_ROWS} discovered servers per pool have a
row, and the table has L{lbproxy.workers.shared.MAX_SERVERS} rows in all;
a discovered server beyond either is served with per-worker state (logged
once per pool).  The document is at most L{MAX_DOCUMENT} bytes; a larger
one is not published (logged) and the workers keep the last one.
"""

from __future__ import annotations

import json
import mmap
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Tuple

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from lbproxy.config.dns import Found
from lbproxy.reload import server_key
from lbproxy.upstream.discovered import DiscoveredPools
from lbproxy.workers.shared import (
    MAX_SERVERS,
    MAX_SLOTS,
    GroupState,
    SharedTable,
    memory_file,
    row_key,
)

log = Logger()

#: Discovered servers of one pool that get a row of the shared table.
MAX_DISCOVERED_ROWS = 256

#: The largest document the supervisor publishes.
MAX_DOCUMENT = 1 << 20

#: How often a worker looks at the region's sequence number unbidden (the
#: supervisor's byte on its standard input is what brings news at once).
POLL = 1.0

#: How often a worker that still holds rows of removed servers (its
#: requests to them in flight) looks whether they are done.
PRUNE_POLL = 0.1

#: Words: the sequence, the document's length, then each slot's applied
#: sequence; the document follows.
_APPLIED = 2
_DOCUMENT = (_APPLIED + MAX_SLOTS) * 8
_SIZE = _DOCUMENT + MAX_DOCUMENT


class FoundRegion:
    """The memory file the supervisor publishes its DNS answers in."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, _SIZE)
        self.words = memoryview(self._map).cast("q")

    @classmethod
    def create(cls) -> FoundRegion:
        return cls(memory_file("lbproxy-found", _SIZE))

    @property
    def sequence(self) -> int:
        return int(self.words[0])

    def write(self, document: bytes) -> int:
        """Publish C{document} (supervisor only): its sequence number."""
        if len(document) > MAX_DOCUMENT:
            raise ValueError(f"{len(document)} bytes, more than {MAX_DOCUMENT}")
        sequence = self.sequence + 1
        self.words[0] = sequence  # odd: being written
        self._map[_DOCUMENT : _DOCUMENT + len(document)] = document
        self.words[1] = len(document)
        self.words[0] = sequence + 1
        return sequence + 1

    def read(self) -> Optional[Tuple[int, bytes]]:
        """The last whole document and its sequence; L{None} while one is being written."""
        before = self.sequence
        if before % 2:
            return None
        length = min(int(self.words[1]), MAX_DOCUMENT)
        document = self._map[_DOCUMENT : _DOCUMENT + length]
        if self.sequence != before:
            return None
        return before, document

    def applied(self, slot: int) -> int:
        return int(self.words[_APPLIED + slot])

    def set_applied(self, slot: int, sequence: int) -> None:
        self.words[_APPLIED + slot] = sequence


def _encode_found(found: Found) -> List[Any]:
    return [found.priority, found.target, found.port, found.address, found.weight]


def _decode_found(values: List[Any]) -> Found:
    priority, target, port, address, weight = values
    return Found(int(priority), target, int(port), str(address), int(weight))


# ---------------------------------------------------------------------------
# The supervisor's side


class FoundPublisher:
    """
    The supervisor's: rows for the discovered servers, the answers published,
    rows of removed servers freed once no worker can write to them.

    @param live_slots: The slots of the live workers.
    """

    def __init__(
        self,
        service: Any,
        state: GroupState,
        region: FoundRegion,
        live_slots: Callable[[], List[int]],
    ) -> None:
        self.service = service
        self.state = state
        self.region = region
        self.live_slots = live_slots
        #: Told after each publication (the workers are woken to read it).
        self.notify: Optional[Callable[[], None]] = None
        #: Rows of removed servers not yet freed: the sequence they left at.
        self.held: Dict[int, int] = {}
        #: The rows of each pool's discovered servers, as last published.
        self.published: Dict[str, Set[int]] = {}
        self._warned: Set[str] = set()
        self._release = LoopingCall(self.release)

    def publish(self) -> None:
        """Rows for every pool's discovered servers, then the document."""
        table = self.state.table
        used, free = table.scan()
        free.reverse()  # lowest first, popped from the end
        pools: Dict[str, Any] = {}
        current: Dict[str, Set[int]] = {}
        for name, pool in self.service.pools.items():
            config = pool.config
            if not config.discovery:
                continue
            listed = set(config.servers)
            share = self.state.shares.get(name)
            rows: Dict[str, int] = {}
            left_out = 0
            for server in pool.servers:
                if server.config in listed:
                    continue
                key = row_key(name, server_key(server.config))
                row = used.get(key)
                if row is None:
                    if len(rows) >= MAX_DISCOVERED_ROWS or not free:
                        left_out += 1
                        continue
                    row = free.pop()
                    table.take_row(row, key)
                    used[key] = row
                elif len(rows) >= MAX_DISCOVERED_ROWS:
                    left_out += 1
                    continue
                table.publish(row, server)
                rows[key.hex()] = row
                if share is not None:
                    share.rows[server] = row
            if share is not None:
                # Removed servers: no longer the supervisor's to publish.
                staying = set(pool.servers)
                for server in [s for s in share.rows if s not in staying]:
                    del share.rows[server]
            self._warn(name, left_out)
            current[name] = set(rows.values())
            discovery = self.service.discovered.answers(name)
            pools[name] = {
                "answers": {
                    source: [_encode_found(f) for f in found] for source, found in discovery.items()
                },
                "rows": rows,
            }
        document = json.dumps({"pools": pools}, separators=(",", ":")).encode("utf-8")
        try:
            sequence = self.region.write(document)
        except ValueError as e:
            log.warn("DNS discovery: cannot publish the servers found to the workers: {e}", e=e)
            return
        kept: Set[int] = set().union(*current.values()) if current else set()
        for rows_before in self.published.values():
            for row in rows_before - kept:
                self.held.setdefault(row, sequence)
        for row in list(self.held):
            if row in kept:
                del self.held[row]
        self.published = current
        self.state.held_rows = set(self.held)
        self.release()
        if self.notify is not None:
            self.notify()

    def _warn(self, pool: str, left_out: int) -> None:
        if not left_out:
            self._warned.discard(pool)
        elif pool not in self._warned:
            self._warned.add(pool)
            log.warn(
                "pool {pool}: {n} servers found in DNS get no shared row "
                "(at most {most} a pool, {total} in all): each worker keeps their state",
                pool=pool,
                n=left_out,
                most=MAX_DISCOVERED_ROWS,
                total=MAX_SERVERS,
            )

    def release(self) -> None:
        """Free the held rows no live worker can still write to."""
        if not self.held:
            return
        table = self.state.table
        slots = self.live_slots()
        lowest = min((self.region.applied(slot) for slot in slots), default=None)
        for row, sequence in list(self.held.items()):
            if (lowest is None or lowest >= sequence) and table.inflight(row) == 0:
                table.free_row(row)
                del self.held[row]
        self.state.held_rows = set(self.held)

    def slot_ended(self, slot: int) -> None:
        """A worker ended: its word no longer holds anything back."""
        self.region.set_applied(slot, 0)

    def start(self, clock: Any) -> None:
        self._release.clock = clock
        self._release.start(0.25, now=False)

    def stop(self) -> None:
        if self._release.running:
            self._release.stop()


# ---------------------------------------------------------------------------
# A worker's side


class PublishedPools(DiscoveredPools):
    """
    A worker's DNS discovery: no lookups, the supervisor's answers from the
    region, applied like a single process applies a change.
    """

    def __init__(
        self,
        parent: Any,
        reactor: Any,
        changed: Callable[[str], None],
        region: FoundRegion,
        slot: int,
    ) -> None:
        super().__init__(parent, reactor, server_key, changed)
        self.region = region
        self.slot = slot
        self.sequence = -1
        self._answers: Dict[str, Dict[str, Tuple[Found, ...]]] = {}
        self._rows: Dict[str, Dict[str, int]] = {}
        #: Rows of servers removed from a pool, kept while this worker's
        #: own requests to them are in flight.
        self.leaving: Dict[Any, Tuple[Any, int]] = {}
        self._poll = LoopingCall(self.poll)
        self._prune_call: Any = None
        self._read()

    def answers(self, pool: str) -> Mapping[str, Tuple[Found, ...]]:
        return self._answers.get(pool, {})

    def apply(self, config: Any, pools: Mapping[str, Any], policies: Mapping[str, Any]) -> None:
        """Only the pools to change: the lookups are the supervisor's."""
        self.pools, self.policies = pools, policies

    def _read(self) -> Optional[Dict[str, Dict[str, Tuple[Found, ...]]]]:
        """Take the published document if it is new: the answers before it."""
        taken = self.region.read()
        if taken is None or taken[0] == self.sequence:
            return None
        sequence, document = taken
        try:
            pools = json.loads(document.decode("utf-8"))["pools"] if document else {}
        except (ValueError, KeyError):
            return None
        before = self._answers
        self._answers = {
            name: {
                source: tuple(_decode_found(f) for f in found)
                for source, found in values["answers"].items()
            }
            for name, values in pools.items()
        }
        self._rows = {name: dict(values["rows"]) for name, values in pools.items()}
        self.sequence = sequence
        return before

    def poll(self) -> None:
        """Apply a new document, if any, and tell the supervisor what is applied."""
        if not self.leaving and self.region.sequence == self.sequence:
            # Nothing new (one word read), and what is applied is told already.
            return
        before = self._read()
        if before is not None:
            for name, pool in self.pools.items():
                if not pool.config.discovery:
                    continue
                if self._answers.get(name, {}) != before.get(name, {}):
                    self._apply_change(name, pool)
                self.map_rows(name, pool)
        self._prune()
        if not self.leaving:
            self.region.set_applied(self.slot, self.sequence)
        elif self._prune_call is None and self._poll.running:
            self._prune_call = self.reactor.callLater(PRUNE_POLL, self._prune_poll)

    def _prune_poll(self) -> None:
        self._prune_call = None
        self.poll()

    def _apply_change(self, name: str, pool: Any) -> None:
        names = {s.name for s in pool.servers}
        self._rediscovered(name)
        now = {s.name for s in pool.servers}
        added, removed = sorted(now - names), sorted(names - now)
        log.info(
            "pool {pool}: servers found in DNS (from the supervisor): {change}; now {count}",
            pool=name,
            change="; ".join(
                part
                for part in (
                    "added " + ", ".join(added) if added else "",
                    "removed " + ", ".join(removed) if removed else "",
                )
                if part
            )
            or "changed",
            count=len(pool.servers),
        )

    def map_rows(self, name: str, pool: Any) -> None:
        """The rows of the pool's discovered servers, as published."""
        share = pool.shared
        if share is None:
            return
        rows = self._rows.get(name, {})
        listed = set(pool.config.servers)
        staying = set(pool.servers)
        for server in list(share.rows):
            if server not in staying:
                self.leaving[server] = (share, share.rows.pop(server))
        for server in pool.servers:
            if server.config in listed:
                continue
            row = rows.get(row_key(name, server_key(server.config)).hex())
            if row is None:
                share.rows.pop(server, None)
            else:
                share.rows[server] = row
        share.invalidate()

    def _prune(self) -> None:
        """Drop removed servers' rows once this worker has nothing in flight to them."""
        for server, (share, row) in list(self.leaving.items()):
            table: SharedTable = share.table
            if table.inflight_of(row, self.slot) <= 0:
                del self.leaving[server]
                share.rows.pop(server, None)
            else:
                share.rows[server] = row
            share.invalidate()

    def start(self) -> None:
        """Map the rows (the table is attached), then follow the region."""
        for name, pool in self.pools.items():
            if pool.config.discovery:
                self.map_rows(name, pool)
        self.region.set_applied(self.slot, self.sequence)
        self._poll.clock = self.reactor
        self._poll.start(POLL, now=False)

    def stop(self) -> None:
        if self._poll.running:
            self._poll.stop()
        if self._prune_call is not None and self._prune_call.active():
            self._prune_call.cancel()
        self._prune_call = None


__all__ = ["MAX_DISCOVERED_ROWS", "FoundPublisher", "FoundRegion", "PublishedPools"]
