"""
The retry policy and the attribution of failures: pure decisions, no
Deferreds, no clock (table-tested in C{tests/test_retry.py}).

A failed attempt is classified once (L{lbproxy.upstream.failures.classify})
as a L{Kind}.  The kind says whose failure it is (L{BLAME}): the client's
(never retried, never counted against a server), the server's (counts
toward its ejection; may be retried, L{may_retry}) or ours; and what the
client is answered when the request goes no further (L{ANSWERS}).
"""

from __future__ import annotations

import enum
from typing import Dict, NamedTuple


class Blame(enum.Enum):
    """Whose failure it is."""

    CLIENT = "client"
    SERVER = "server"
    OURS = "ours"


class Kind(enum.Enum):
    """How an attempt failed."""

    #: Twisted's client would not send the request or could not generate
    #: it: its method, target, headers or body are at fault.
    UNSENDABLE = "unsendable"
    #: The client's request body stalled past the idle limit.
    UPLOAD_STALLED = "upload stalled"
    #: Nothing reached the server: no connection, a failed TLS handshake,
    #: a pooled connection that could not take the request.
    NOT_SENT = "not sent"
    #: The server did not begin its response within response_timeout.
    TIMED_OUT = "timed out"
    #: The request was sent (maybe in part) and the attempt failed.
    FAILED = "failed"
    #: The response body failed before any byte of it reached the client.
    BROKEN = "broken"
    #: The response body stalled past the idle limit before any byte of it
    #: reached the client.
    STALLED = "stalled"
    #: The proxy cancelled the attempt for none of the reasons above.
    CANCELLED = "cancelled"


BLAME: Dict[Kind, Blame] = {
    Kind.UNSENDABLE: Blame.CLIENT,
    Kind.UPLOAD_STALLED: Blame.CLIENT,
    Kind.NOT_SENT: Blame.SERVER,
    Kind.TIMED_OUT: Blame.SERVER,
    Kind.FAILED: Blame.SERVER,
    Kind.BROKEN: Blame.SERVER,
    Kind.STALLED: Blame.SERVER,
    Kind.CANCELLED: Blame.OURS,
}


class Answer(NamedTuple):
    """The proxy's own error response."""

    code: int
    phrase: bytes
    detail: bytes
    close: bool = False


ANSWERS: Dict[Kind, Answer] = {
    Kind.UNSENDABLE: Answer(400, b"Bad Request", b"the request cannot be forwarded", True),
    Kind.UPLOAD_STALLED: Answer(408, b"Request Timeout", b"the request body stalled", True),
    Kind.NOT_SENT: Answer(502, b"Bad Gateway", b"no server could take the request"),
    Kind.TIMED_OUT: Answer(504, b"Gateway Timeout", b"the server did not answer in time"),
    Kind.FAILED: Answer(502, b"Bad Gateway", b"the server failed to answer"),
    Kind.BROKEN: Answer(502, b"Bad Gateway", b"the server failed to answer"),
    Kind.STALLED: Answer(504, b"Gateway Timeout", b"the server did not answer in time"),
    Kind.CANCELLED: Answer(502, b"Bad Gateway", b"the request was cancelled"),
}

#: Methods whose requests may be sent again after a failure once sent (RFC
#: 9110 section 9.2.2): doing them twice has the effect of doing them once.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

#: Pause before an attempt goes to a server this request already tried:
#: the first such retry waits this long, each next one twice as long.
RETRY_BACKOFF = 0.05


def may_retry(method: bytes, body_taken: bool, kind: Kind, attempts: int, allowed: int) -> bool:
    """
    Whether a failed attempt may be made again on another server, when that
    cannot make the request act twice.  No response byte has reached the
    client when this is asked.

    @param method: The request's method.
    @param body_taken: A streamed request body was taken (in part) by the
        failed attempt: it cannot be sent again.
    @param kind: How the attempt failed.
    @param attempts: Attempts made so far.
    @param allowed: Attempts allowed in all (C{retries + 1}).
    @returns: C{True} only for a server's failure, with attempts left and
        the body untouched, when nothing reached the server (whatever the
        method) or the method is idempotent.
    """
    if BLAME[kind] is not Blame.SERVER or attempts >= allowed or body_taken:
        return False
    return kind is Kind.NOT_SENT or method in IDEMPOTENT


def backoff(retries_of_tried: int) -> float:
    """
    The pause before the C{retries_of_tried}-th attempt (from 1) that goes
    to a server this request already tried: L{RETRY_BACKOFF}, doubling.
    """
    return RETRY_BACKOFF * (2 ** (retries_of_tried - 1))


__all__ = [
    "ANSWERS",
    "BLAME",
    "IDEMPOTENT",
    "RETRY_BACKOFF",
    "Answer",
    "Blame",
    "Kind",
    "backoff",
    "may_retry",
]
