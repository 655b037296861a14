"""
What happened in the last quarter of an hour, one second at a time: the
responses by status class and the p50/p99 latency of each second, per pool
and per server, and the state changes of servers.

Memory is fixed when a L{Timeline} is made (about 60 KB for 900 seconds);
counting a request is a few integer updates in preallocated arrays.  The
percentiles of a second are worked out once, when the second is over.
Nothing here knows of the reactor: times come in as arguments.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from typing import Any, Deque, Dict, Iterable, List, Mapping, Optional, Protocol, Sequence

import attr

#: Seconds a timeline covers: 15 minutes.
SPAN = 900

#: State changes a pool remembers.
MAX_EVENTS = 200

#: Seconds whose latency buckets a timeline keeps (the one being counted
#: and the last ones over): what a worker publishes for its supervisor to
#: merge (L{Timeline.recent}, L{Timeline.merge}).
RECENT = 6

CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_CLASS_INDEX = {name: i for i, name in enumerate(CLASSES)}
_NONE = math.nan


def bucket_percentiles(
    counts: Sequence[int], bounds: Sequence[float], qs: Iterable[float]
) -> List[Optional[float]]:
    """
    The durations below which the fraction C{q} of the durations counted in
    C{counts} fell: the upper bound of the bucket it falls in (the last
    bucket counts what is over the last bound, and answers the last bound),
    or L{None} when nothing was counted.

    @param counts: Counts by bucket: C{len(bounds) + 1} of them, the one at
        C{i} for durations up to C{bounds[i]}.
    """
    total = sum(counts)
    answers: List[Optional[float]] = []
    for q in qs:
        if total == 0:
            answers.append(None)
            continue
        rank = q * total
        seen = 0
        for i, n in enumerate(counts):
            seen += n
            if seen >= rank and n:
                answers.append(bounds[min(i, len(bounds) - 1)])
                break
    return answers


class Timeline:
    """
    The last C{span} seconds of one pool's or one server's responses: per
    second, the count of each status class and the p50 and p99 latency.

    Slots are a ring indexed by the second modulo C{span}; each remembers
    which second it holds, so that a second nothing happened in reads as
    zero however long ago its slot was last written.  The latency buckets of
    the second being counted are kept apart, and turned into its two
    percentiles when it is over (or read).
    """

    __slots__ = (
        "span",
        "_bounds",
        "_seconds",
        "_counts",
        "_p50",
        "_p99",
        "_open",
        "_buckets",
        "_ring",
        "_ring_seconds",
    )

    def __init__(self, bounds: Sequence[float], span: int = SPAN) -> None:
        self.span = span
        self._bounds = bounds
        self._seconds = array("q", [-1]) * span
        self._counts = array("q", [0]) * (span * len(CLASSES))
        self._p50 = array("d", [_NONE]) * span
        self._p99 = array("d", [_NONE]) * span
        #: The second whose latency buckets are being filled (-1: none).
        self._open = -1
        #: The latency buckets of the last L{RECENT} seconds counted, by
        #: second modulo RECENT, and the second each holds; C{_buckets} is
        #: the open second's.
        self._ring = [array("q", [0]) * (len(bounds) + 1) for _ in range(RECENT)]
        self._ring_seconds = array("q", [-1]) * RECENT
        self._buckets = self._ring[0]

    def add(self, status: str, bucket: int, now: float) -> None:
        """
        Count one response of status class C{status} (C{"2xx"}) that took a
        duration of latency bucket C{bucket} (an index into the bounds), at
        time C{now}.  A time earlier than the second being counted (a clock
        stepped back) counts in that second.
        """
        second = int(now)
        if second > self._open:
            self._start(second)
        else:
            second = self._open
        self._counts[(second % self.span) * len(CLASSES) + _CLASS_INDEX[status]] += 1
        self._buckets[bucket] += 1

    def _start(self, second: int) -> None:
        self._close()
        index = second % self.span
        self._seconds[index] = second
        width = len(CLASSES)
        counts = self._counts
        for i in range(index * width, index * width + width):
            counts[i] = 0
        self._p50[index] = self._p99[index] = _NONE
        buckets = self._buckets = self._ring[second % RECENT]
        self._ring_seconds[second % RECENT] = second
        for i in range(len(buckets)):
            buckets[i] = 0
        self._open = second

    def recent(self, now: float) -> List[List[Any]]:
        """
        The seconds over (before C{now}'s) of the last L{RECENT} that had
        responses, oldest first: C{[second, counts by status class, {latency
        bucket: count}]} each (the buckets without a count left out), for
        another process to L{merge}.
        """
        current = int(now)
        width = len(CLASSES)
        out: List[List[Any]] = []
        for second in range(current - RECENT + 1, current):
            if second < 0 or self._ring_seconds[second % RECENT] != second:
                continue
            if self._seconds[second % self.span] != second:
                continue
            base = (second % self.span) * width
            counts = list(self._counts[base : base + width])
            buckets = self._ring[second % RECENT]
            out.append([second, counts, {i: n for i, n in enumerate(buckets) if n}])
        return out

    def merge(self, second: int, counts: Sequence[int], buckets: Mapping[int, int]) -> bool:
        """
        Add another timeline's C{second} (as L{recent} gives it) to this
        one: seconds are merged in order, so one older than the second being
        counted here is dropped (False).  Its percentiles are those of the
        merged buckets.
        """
        if second < self._open:
            return False
        if second > self._open:
            self._start(second)
        base = (second % self.span) * len(CLASSES)
        for i, n in enumerate(counts[: len(CLASSES)]):
            self._counts[base + i] += int(n)
        mine = self._buckets
        top = len(mine) - 1
        for bucket, n in buckets.items():
            mine[min(max(int(bucket), 0), top)] += int(n)
        return True

    def _close(self) -> None:
        """Work out the percentiles of the open second (again, if it had them)."""
        if self._open < 0:
            return
        index = self._open % self.span
        p50, p99 = bucket_percentiles(self._buckets, self._bounds, (0.5, 0.99))
        self._p50[index] = _NONE if p50 is None else p50
        self._p99[index] = _NONE if p99 is None else p99

    def series(self, first: int, last: int) -> Dict[str, List[Any]]:
        """
        The seconds from C{first} to C{last} (both included; those outside
        the span read as nothing): a list per status class of response
        counts, and C{p50_ms} and C{p99_ms}, lists of milliseconds or
        L{None} for a second without responses.  Read C{last} once it is
        over: the second being counted has no percentiles yet.
        """
        if first <= self._open <= last:
            self._close()
        oldest = last - self.span + 1
        width = len(CLASSES)
        out: Dict[str, List[Any]] = {name: [] for name in CLASSES}
        p50s: List[Optional[float]] = []
        p99s: List[Optional[float]] = []
        columns = [out[name] for name in CLASSES]
        seconds, counts = self._seconds, self._counts
        for second in range(first, last + 1):
            index = second % self.span
            if second < oldest or seconds[index] != second:
                for column in columns:
                    column.append(0)
                p50s.append(None)
                p99s.append(None)
                continue
            base = index * width
            for i, column in enumerate(columns):
                column.append(counts[base + i])
            p50s.append(_milliseconds(self._p50[index]))
            p99s.append(_milliseconds(self._p99[index]))
        out["p50_ms"] = p50s
        out["p99_ms"] = p99s
        return out


def _milliseconds(seconds: float) -> Optional[float]:
    return None if math.isnan(seconds) else round(seconds * 1000, 3)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Event:
    """
    A server's change of state: C{DOWN}, C{UP} (active health checks),
    C{ejected}, C{reinstated} (passive checks), C{drained}, C{maint},
    C{enabled}, C{weight} (an operator).
    """

    time: float
    server: str
    event: str
    detail: str = ""

    def as_json(self) -> Dict[str, Any]:
        return {
            "time": round(self.time, 3),
            "server": self.server,
            "event": self.event,
            "detail": self.detail,
        }


class EventLog:
    """The last L{MAX_EVENTS} state changes of a pool's servers, oldest first."""

    __slots__ = ("events",)

    def __init__(self, size: int = MAX_EVENTS) -> None:
        self.events: Deque[Event] = deque(maxlen=size)

    def add(self, now: float, server: str, event: str, detail: str = "") -> None:
        self.events.append(Event(now, server, event, detail))

    def between(self, first: int, last: int) -> List[Event]:
        """The events of the seconds C{first} to C{last}, both included."""
        return [e for e in self.events if first <= int(e.time) <= last]


class _Url(Protocol):
    @property
    def url(self) -> str: ...


class _ServerCounts(Protocol):
    @property
    def timeline(self) -> Timeline: ...


class _PoolCounts(Protocol):
    @property
    def timeline(self) -> Timeline: ...

    @property
    def events(self) -> EventLog: ...


class ServerHistory(Protocol):
    """What the history reads of a server (a L{lbproxy.upstream.pool.ServerState})."""

    @property
    def name(self) -> str: ...

    @property
    def config(self) -> _Url: ...

    @property
    def stats(self) -> _ServerCounts: ...


class PoolHistory(Protocol):
    """What the history reads of a pool (a L{lbproxy.upstream.pool.Pool})."""

    @property
    def name(self) -> str: ...

    @property
    def stats(self) -> _PoolCounts: ...

    @property
    def servers(self) -> Sequence[ServerHistory]: ...


def history(
    pools: Iterable[PoolHistory],
    now: float,
    started_at: float,
    since: Optional[int] = None,
    complete: Optional[int] = None,
) -> Dict[str, Any]:
    """
    The history of C{pools} as the admin listener serves it (C{GET
    /history}): the seconds after C{since} (all those kept, when L{None} or
    older) up to the last one that is over, and the state changes of those
    seconds.  Seconds before C{started_at} are left out.

    A client that asks again with C{since} set to the answer's C{last}
    gets each second and each event once.

    @param complete: The last second whose counts are all in (a supervisor
        merges its workers' seconds a little after they end), if not the
        last one over.
    """
    last = int(now) - 1
    if complete is not None:
        last = min(last, complete)
    first = max(last - SPAN + 1, int(started_at))
    if since is not None:
        first = max(first, since + 1)
    answer_pools = []
    for pool in pools:
        answer_pools.append(
            {
                "name": pool.name,
                "series": pool.stats.timeline.series(first, last),
                "events": [e.as_json() for e in pool.stats.events.between(first, last)],
                "servers": [
                    {
                        "name": s.name,
                        "url": s.config.url,
                        "series": s.stats.timeline.series(first, last),
                    }
                    for s in pool.servers
                ],
            }
        )
    return {
        "now": round(now, 3),
        "span_seconds": SPAN,
        "first": first,
        "last": last,
        "pools": answer_pools,
    }
