"""
The pure half of HTTP/2 on the front (L{lbproxy.front.h2}): the header
block's checks (L{request_head_problem}) and the token buckets that bound
floods (L{TokenBucket}).  No reactor, no connection: times are arguments.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from lbproxy import headers as rules
from lbproxy.config import FrontLimits
from lbproxy.front.channel import request_line_refusal

Refusal = Tuple[int, bytes, bytes]
HeaderList = List[Tuple[bytes, bytes]]

#: Streams a client may reset in a burst, and how many more it earns a
#: second (CVE-2023-44487: each reset stream was a request started for
#: nothing).  A browser cancels a few a second at most.
RESET_BURST = 100
RESET_RATE = 10.0

#: PING and SETTINGS frames a client may send in a burst, and how many more
#: it earns a second: each one is answered, so a flood costs the server
#: what it costs the client.
CONTROL_BURST = 200
CONTROL_RATE = 20.0


class TokenBucket:
    """
    At most C{burst} events at once, and C{rate} more a second after that.
    Times are arguments: a bucket knows no clock.
    """

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        """Spend a token if there is one; C{False} when the bucket is empty."""
        # A clock that steps back refills nothing rather than draining.
        elapsed = max(0.0, now - self.stamp)
        self.stamp = now
        self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate)
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def request_head_problem(
    headers: Sequence[Tuple[bytes, bytes]], limits: FrontLimits
) -> Tuple[Optional[Refusal], HeaderList]:
    """
    Check an HTTP/2 request's header block against the front's rules, and
    make it what an HTTP/1.1 backend expects.

    The same limits as HTTP/1.1: C{:path} at most the request line's 8 KB
    (414), at most C{max_headers} fields and C{max_header_size} bytes
    counted as HTTP/1.1 lines (431), every field valid as an HTTP/1.1 field
    line and the method a token (400).  C{:authority} stands for C{Host}
    (RFC 9113 section 8.3.1): a request needs one of them, and both must
    agree.  Cookie fields, which HTTP/2 sends split, are joined with C{"; "}
    (RFC 9113 section 8.2.3).

    @returns: C{(refusal, headers)}: why the stream must be refused, or
        L{None}; and the header block to build the request from.
    """
    method = path = authority = None
    fields: HeaderList = []
    cookies: List[bytes] = []
    hosts: List[bytes] = []
    size = 0
    count = 0
    for name, value in headers:
        if name.startswith(b":"):
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            fields.append((name, value))
            continue
        count += 1
        size += len(name) + len(value) + 4
        problem = rules.field_line_problem(name + b": " + value)
        if problem is not None:
            return (400, b"Bad Request", problem), fields
        if name == b"cookie":
            cookies.append(value)
        elif name == b"host":
            hosts.append(value)
        else:
            fields.append((name, value))
    if count > limits.max_headers:
        return (431, b"Request Header Fields Too Large", b"too many header fields"), fields
    if size > limits.max_header_size:
        return (431, b"Request Header Fields Too Large", b"the header section is too large"), fields
    if method is None:
        return (400, b"Bad Request", b"invalid method"), fields
    if path is not None:
        if len(path) + len(method) + 10 > limits.max_request_line:
            return (414, b"URI Too Long", b"the request line is too long"), fields
        if not (path.startswith(b"/") or path == b"*"):
            return (400, b"Bad Request", b"invalid request target"), fields
        problem_line = request_line_refusal(method + b" " + path + b" HTTP/1.1")
        if problem_line is not None:
            return problem_line, fields
    elif not rules.is_token(method):
        return (400, b"Bad Request", b"invalid method"), fields
    if authority is not None:
        if any(host != authority for host in hosts):
            return (400, b"Bad Request", b"Host disagrees with :authority"), fields
    elif len(hosts) == 1:
        fields.append((b"host", hosts[0]))
    elif hosts:
        return (400, b"Bad Request", b"more than one Host header"), fields
    else:
        return (400, b"Bad Request", b"an HTTP/2 request needs :authority"), fields
    if cookies:
        fields.append((b"cookie", b"; ".join(cookies)))
    return None, fields


__all__ = [
    "CONTROL_BURST",
    "CONTROL_RATE",
    "HeaderList",
    "RESET_BURST",
    "RESET_RATE",
    "Refusal",
    "TokenBucket",
    "request_head_problem",
]
