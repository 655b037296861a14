"""
The access log: one line per request, in nginx's combined format (with the
proxy's own fields after it) or as JSON.

Lines go through a buffer of L{BUFFER_SIZE} bytes that is written out when
full and at least once a second (nginx's C{buffer=}/C{flush=}), so that a
busy proxy does not make one write system call per request.  L{reopen}
(SIGUSR1) closes the file and opens the same path again, after logrotate has
moved it.
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import IO, TYPE_CHECKING, Any, Callable, Dict, Optional

import attr
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from lbproxy._twisted import header_map

if TYPE_CHECKING:
    from lbproxy.record import RequestRecord

log = Logger()

#: Bytes of log lines held before they are written.
BUFFER_SIZE = 64 * 1024

#: Seconds a line may wait in the buffer.
FLUSH_INTERVAL = 1.0


#: A byte that a quoted field cannot hold as it is.
_UNQUOTABLE = re.compile(rb"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def _escape(match: re.Match[bytes]) -> bytes:
    return b"\\x%02X" % match.group()[0]


#: The bytes a quoted field holds as they are: printable ASCII but C{"} and C{\\}.
_QUOTABLE = bytes([0x20, 0x21, *range(0x23, 0x5C), *range(0x5D, 0x7F)])


def _quoted(value: bytes) -> str:
    """
    A value for a quoted field of a combined line: printable ASCII stays,
    C{"} and C{\\} and everything else become C{\\xHH} (as nginx does).
    """
    if not value.translate(None, _QUOTABLE):
        return value.decode("ascii")
    return _UNQUOTABLE.sub(_escape, value).decode("ascii")


def _text(value: bytes) -> str:
    return value.decode("utf-8", "backslashreplace")


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Entry:
    """What one line says of a request."""

    time: float
    client: str
    method: bytes
    target: bytes
    protocol: bytes
    status: int
    sent: int
    duration: float
    server: Optional[str]
    attempts: int
    request_id: bytes
    referer: Optional[bytes]
    user_agent: Optional[bytes]
    #: For a tunnel (status 101): the bytes from the client; C{sent} then
    #: counts the bytes to the client after the 101 head.
    received: Optional[int] = None


class _LocalTime:
    """The combined format's C{[24/Nov/2026:17:46:26 +0000]}, made once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._text = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(second))
        return self._text


def combined(entry: Entry, clock: Callable[[float], str]) -> str:
    """
    nginx's combined format, then the duration in seconds, the server
    chosen, the number of attempts and the request id::

        127.0.0.1 - - [24/Nov/2026:17:46:26 +0000] "GET /a HTTP/1.1" 200 12 "-" "curl/7.88.1"
            0.003 b1 1 5f0c...

    (one line; broken here for width).  A tunnel's line (status 101) ends
    with one more field: the bytes received from the client.
    """
    request = _quoted(b"%s %s %s" % (entry.method, entry.target, entry.protocol))
    referer = _quoted(entry.referer) if entry.referer is not None else "-"
    agent = _quoted(entry.user_agent) if entry.user_agent is not None else "-"
    return (
        f'{entry.client} - - [{clock(entry.time)}] "{request}" {entry.status} {entry.sent} '
        f'"{referer}" "{agent}" {entry.duration:.3f} {entry.server or "-"} {entry.attempts} '
        f"{_quoted(entry.request_id) or '-'}"
        f"{'' if entry.received is None else f' {entry.received}'}\n"
    )


def combined_record(record: RequestRecord, now: float, clock: Callable[[float], str]) -> str:
    """
    L{combined} for the L{entry} of C{record} at C{now}, made straight from
    the record (the same line, byte for byte, without an L{Entry} between).
    """
    headers = header_map(record.headers)
    referer = headers.get(b"Referer")
    agent = headers.get(b"User-Agent")
    server = record.server
    received = record.received
    request = _quoted(b"%s %s %s" % (record.method, record.target, record.protocol))
    return (
        f'{record.client} - - [{clock(now)}] "{request}" {record.status} {record.sent} '
        f'"{_quoted(referer[0]) if referer else "-"}" '
        f'"{_quoted(agent[0]) if agent else "-"}" {record.duration:.3f} '
        f"{(server is not None and server.name) or '-'} {record.attempts} "
        f"{_quoted(record.request_id) or '-'}"
        f"{'' if received is None else f' {received}'}\n"
    )


def entry(record: RequestRecord, now: float) -> Entry:
    """The access log's view of a finished request, at C{now}."""
    headers = header_map(record.headers)
    referer = headers.get(b"Referer")
    agent = headers.get(b"User-Agent")
    server = record.server
    return Entry(
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
        received=record.received,
    )


def as_json(entry: Entry, clock: Callable[[float], str]) -> str:
    """One JSON object per line; absent values are C{null}."""
    record: Dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(entry.time))
        + f".{int(entry.time * 1000) % 1000:03d}Z",
        "client": entry.client,
        "method": _text(entry.method),
        "target": _text(entry.target),
        "protocol": _text(entry.protocol),
        "status": entry.status,
        "bytes": entry.sent,
        "duration": round(entry.duration, 6),
        "server": entry.server,
        "attempts": entry.attempts,
        "request_id": _text(entry.request_id) or None,
        "referer": _text(entry.referer) if entry.referer is not None else None,
        "user_agent": _text(entry.user_agent) if entry.user_agent is not None else None,
    }
    if entry.received is not None:
        record["received"] = entry.received
    return json.dumps(record, separators=(",", ":")) + "\n"


FORMATS: Dict[str, Callable[[Entry, Callable[[float], str]], str]] = {
    "combined": combined,
    "json": as_json,
}


class AccessLog:
    """
    Writes access log lines to a file (or standard output for C{-}).

    @raises OSError: From the constructor, when the file cannot be opened.
    """

    def __init__(self, path: str, format: str, clock: IReactorTime) -> None:
        self.path = path
        self.format = format
        self._format = FORMATS[format]
        self._clock = _LocalTime()
        self._pending: list = []
        self._pending_bytes = 0
        self._file: Optional[IO[str]] = None
        self._open()
        self._flusher = LoopingCall(self.flush)
        self._flusher.clock = clock
        self._flusher.start(FLUSH_INTERVAL, now=False)

    def _open(self) -> None:
        if self.path == "-":
            # The process's real standard output: twistd redirects
            # sys.stdout into its own log.
            self._file = sys.__stdout__
        else:
            self._file = open(self.path, "a", encoding="utf-8", errors="backslashreplace")

    def write_record(self, record: RequestRecord, now: float) -> None:
        """Write the line of a finished request, at C{now}."""
        if self._format is combined:
            line = combined_record(record, now, self._clock)
        else:
            line = self._format(entry(record, now), self._clock)
        self._pending.append(line)
        self._pending_bytes += len(line)
        if self._pending_bytes >= BUFFER_SIZE:
            self.flush()

    def write(self, entry: Entry) -> None:
        line = self._format(entry, self._clock)
        self._pending.append(line)
        self._pending_bytes += len(line)
        if self._pending_bytes >= BUFFER_SIZE:
            self.flush()

    def flush(self) -> None:
        if not self._pending or self._file is None:
            return
        text = "".join(self._pending)
        self._pending = []
        self._pending_bytes = 0
        try:
            self._file.write(text)
            self._file.flush()
        except (OSError, ValueError) as e:
            log.error("access log {path}: cannot write: {error}", path=self.path, error=e)

    def reopen(self) -> None:
        """Write out what is held, close the file and open the path again."""
        self.flush()
        if self.path == "-":
            return
        old = self._file
        try:
            self._open()
        except OSError as e:
            log.error("access log {path}: cannot reopen: {error}", path=self.path, error=e)
            return
        if old is not None:
            old.close()

    def close(self) -> None:
        self.flush()
        if self._flusher.running:
            self._flusher.stop()
        if self._file is not None and self.path != "-":
            self._file.close()
        self._file = None
