"""
What a finished request leaves behind: its counts (against its server, or
its pool when no server took it) and its access log line.  Reads the
request's L{RequestRecord} and nothing else.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.interfaces import IReactorTime

from lbproxy.ops import accesslog
from lbproxy.ops.stats import method_label, status_class
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
        method = method_label(record.method)
        status = record.status
        klass = status_class(status)
        now = self._clock.seconds()
        pool = record.pool
        duration = record.duration
        if server is not None:
            server.stats.record(method, klass, duration, now)
        elif pool is not None:
            pool.stats.record_unrouted(method, klass)
        if pool is not None:
            pool.stats.record(klass, duration, now)
        access_log = self.access_log
        if access_log is not None:
            access_log.write(entry(record, now))


def entry(record: RequestRecord, now: float) -> accesslog.Entry:
    """The access log's view of a finished request, at C{now}."""
    headers = record.headers
    referer = headers.getRawHeaders(b"referer")
    agent = headers.getRawHeaders(b"user-agent")
    server = record.server
    return accesslog.Entry(
        time=now,
        client=record.client,
        method=record.method,
        target=record.target,
        protocol=record.protocol,
        status=record.status,
        sent=record.sent,
        duration=record.duration,
        server=server.name if server is not None else None,
        attempts=record.attempts,
        request_id=record.request_id,
        referer=referer[0] if referer else None,
        user_agent=agent[0] if agent else None,
    )


__all__ = ["Accounting", "entry"]
