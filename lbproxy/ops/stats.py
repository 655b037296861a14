"""
What the proxy counts: per server, per pool, and for the last minute.

Counting is plain integer arithmetic on the request path (a few list and
dict updates per request); the admin API and the metrics collector read the
numbers when asked.  Nothing here knows of the reactor: times come in as
arguments.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Dict, List, Optional, Tuple

from lbproxy.ops.history import EventLog, Timeline, bucket_percentiles

#: Upper bounds (seconds) of the request duration histogram exported to
#: Prometheus (its client's default buckets, plus 30 s and 60 s).
HISTOGRAM_BOUNDS: Tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    30.0,
    60.0,
)

#: Finer bounds for the last minute's percentiles: about 12% apart from
#: 100 microseconds to 2 minutes, so that p50 and p99 are read within 12%.
WINDOW_BOUNDS: Tuple[float, ...] = tuple(0.0001 * 1.12**i for i in range(124))

#: The window of the percentiles and rates, in seconds.
WINDOW = 60

#: Methods counted under their own name; any other is counted as OTHER, so
#: that a client cannot create metric series at will.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"})

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


#: The label of each known method, by the method's bytes.
METHOD_LABELS: Dict[bytes, str] = {name.encode("ascii"): name for name in KNOWN_METHODS}


def method_label(method: bytes) -> str:
    return METHOD_LABELS.get(method, "OTHER")


def status_class(code: int) -> str:
    return STATUS_CLASSES[min(max(code // 100, 1), 5) - 1]


class LastMinute:
    """
    Request durations of the last L{WINDOW} seconds, in per-second slots of
    bucket counts: constant memory, constant work per request.
    """

    __slots__ = ("_slots", "_seconds")

    def __init__(self) -> None:
        self._slots: List[List[int]] = [[0] * (len(WINDOW_BOUNDS) + 1) for _ in range(WINDOW)]
        self._seconds: List[int] = [-1] * WINDOW

    def add(self, duration: float, now: float) -> None:
        self.add_bucket(bisect_left(WINDOW_BOUNDS, duration), now)

    def add_bucket(self, bucket: int, now: float) -> None:
        """Count a duration of latency bucket C{bucket} (an index into L{WINDOW_BOUNDS})."""
        self._slot(now)[bucket] += 1

    def add_counts(self, counts: Dict[int, int], now: float) -> None:
        """Count C{n} durations of each latency bucket, at C{now} (merging another's counts)."""
        slot = self._slot(now)
        for bucket, n in counts.items():
            slot[bucket] += n

    def _slot(self, now: float) -> List[int]:
        second = int(now)
        index = second % WINDOW
        slot = self._slots[index]
        if self._seconds[index] != second:
            self._seconds[index] = second
            for i in range(len(slot)):
                slot[i] = 0
        return slot

    def merged(self, now: float) -> List[int]:
        """The last minute's counts by latency bucket."""
        return self._merged(now)

    def _merged(self, now: float) -> List[int]:
        oldest = int(now) - WINDOW + 1
        total = [0] * (len(WINDOW_BOUNDS) + 1)
        for second, slot in zip(self._seconds, self._slots):
            if second >= oldest:
                for i, n in enumerate(slot):
                    total[i] += n
        return total

    def count(self, now: float) -> int:
        return sum(self._merged(now))

    def percentiles(self, now: float, *qs: float) -> List[Optional[float]]:
        """
        The durations below which the fraction C{q} of the last minute's
        requests fell, in seconds (the upper bound of the bucket it falls
        in), or L{None} when there were none.
        """
        return bucket_percentiles(self._merged(now), WINDOW_BOUNDS, qs)


class Histogram:
    """A cumulative histogram of durations on L{HISTOGRAM_BOUNDS}."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(HISTOGRAM_BOUNDS) + 1)
        self.total = 0.0

    def add(self, duration: float) -> None:
        self.counts[bisect_left(HISTOGRAM_BOUNDS, duration)] += 1
        self.total += duration

    def buckets(self) -> List[Tuple[str, int]]:
        """Prometheus buckets: cumulative counts by upper bound, +Inf last."""
        out = []
        running = 0
        for bound, n in zip(HISTOGRAM_BOUNDS + (float("inf"),), self.counts):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


class ServerStats:
    """
    The counters of one server, kept across configuration reloads for as
    long as the server stays.

    @ivar requests: Requests answered through this server, by (method label,
        status class).
    @ivar failures: Failed attempts (connect errors, timeouts, invalid or cut
        responses, 5xx with C{fail_on_5xx}).
    @ivar connect_failures: Attempts that could not reach the server.
    """

    __slots__ = (
        "requests",
        "served",
        "failures",
        "connect_failures",
        "histogram",
        "recent",
        "timeline",
    )

    def __init__(self) -> None:
        self.requests: Dict[Tuple[str, str], int] = {}
        self.served = 0
        self.failures = 0
        self.connect_failures = 0
        self.histogram = Histogram()
        self.recent = LastMinute()
        self.timeline = Timeline(WINDOW_BOUNDS)

    def record(self, method: str, status: str, duration: float, now: float) -> None:
        self.record_bucket(method, status, duration, bisect_left(WINDOW_BOUNDS, duration), now)

    def record_bucket(
        self, method: str, status: str, duration: float, bucket: int, now: float
    ) -> None:
        """L{record}, with the duration's L{WINDOW_BOUNDS} bucket found already."""
        requests = self.requests
        key = (method, status)
        requests[key] = requests.get(key, 0) + 1
        self.served += 1
        self.histogram.add(duration)
        self.recent.add_bucket(bucket, now)
        self.timeline.add(status, bucket, now)


class PoolStats:
    """
    The counters of one pool that belong to no server: requests answered
    without reaching one (503, 502 after every attempt failed before a
    server was chosen), and retries; the history of all its responses
    (L{Timeline}) and of its servers' state changes (L{EventLog}).
    """

    __slots__ = ("unrouted", "retries", "timeline", "events")

    def __init__(self) -> None:
        self.unrouted: Dict[Tuple[str, str], int] = {}
        self.retries = 0
        self.timeline = Timeline(WINDOW_BOUNDS)
        self.events = EventLog()

    def record(self, status: str, duration: float, now: float) -> None:
        """Count a response of the pool, through a server or not, in its history."""
        self.timeline.add(status, bisect_left(WINDOW_BOUNDS, duration), now)

    def record_bucket(self, status: str, bucket: int, now: float) -> None:
        """L{record}, with the duration's L{WINDOW_BOUNDS} bucket found already."""
        self.timeline.add(status, bucket, now)

    def record_unrouted(self, method: str, status: str) -> None:
        key = (method, status)
        self.unrouted[key] = self.unrouted.get(key, 0) + 1
