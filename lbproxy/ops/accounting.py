"""
What a finished request leaves behind: its counts (against its server, or
its pool when no server took it) and its access log line.  Reads the
request's L{RequestRecord} and nothing else.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Optional

from twisted.internet.interfaces import IReactorTime

from lbproxy.ops import accesslog
from lbproxy.ops.stats import METHOD_LABELS, WINDOW_BOUNDS, status_class
from lbproxy.record import RequestRecord


class Accounting:
    """
    Counts finished requests and writes their access log lines.

    @ivar access_log: Where the lines go; L{None} for no access log.  The
        service replaces it when a reloaded configuration names another.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.access_log: Optional[accesslog.AccessLog] = None

    def request_done(self, record: RequestRecord) -> None:
        """
        Count a finished request against its server (or its pool when no
        server took it) and write its access log line.
        """
        server = record.server
        method = METHOD_LABELS.get(record.method, "OTHER")
        klass = status_class(record.status)
        now = self._clock.seconds()
        pool = record.pool
        # A tunnel's latency is its time to the 101, not how long it stayed open.
        latency = record.duration if record.switched_after is None else record.switched_after
        bucket = bisect_left(WINDOW_BOUNDS, latency)
        if server is not None:
            server.stats.record_bucket(method, klass, latency, bucket, now)
        elif pool is not None:
            pool.stats.record_unrouted(method, klass)
        if pool is not None:
            pool.stats.record_bucket(klass, bucket, now)
        access_log = self.access_log
        if access_log is not None:
            access_log.write_record(record, now)


#: The access log's view of a finished request (kept here for callers).
entry = accesslog.entry


__all__ = ["Accounting", "entry"]
