"""
A strict HTTP/1.1 request-stream parser (RFC 9112, RFC 9110): the reference
that says what a stream of bytes means, with no leniency anywhere a second
parser could read the same bytes another way.

It refuses: a line ending that is not CRLF (bare CR or LF anywhere in a head,
a chunk line or a trailer section); a request line that is not exactly
C{token SP target SP HTTP/1.0|HTTP/1.1}; a target with a byte outside visible
ASCII, or a form its method does not allow; a field name that is not a token,
whitespace before the colon, obs-fold; a field value byte that is a control
(anything below 0x20 but HTAB, and 0x7F); framing that is not exactly one of
C{Content-Length: 1*DIGIT} (one field, one value) or C{Transfer-Encoding:
chunked} (HTTP/1.1 only, never with a Content-Length); a chunk size that is
not C{1*HEXDIG}, a chunk extension that is not C{;name[=token|quoted-string]},
chunk data not followed by CRLF; an HTTP/1.1 request without exactly one Host
field; a Host (or absolute-form authority) that is not C{uri-host [":" port]}
with a non-empty host; CONNECT (what follows is a tunnel, not requests).

It accepts what is unambiguous even where a proxy may choose to refuse it
(obs-text in values, empty list elements, leading zeros in lengths, chunk
extensions, trailer fields, an absolute-form target with a Host that differs:
RFC 9112 section 3.2.2 says the target's authority wins).  Being stricter than
this reference is never a fault; being more lenient is.

Read as the backend (C{as_backend=True}), a forwarded request must also be
unambiguous about its host: an absolute-form target whose authority differs
from the Host field is refused there, since two servers could route it
differently.
"""

from __future__ import annotations

import ipaddress
import re
from typing import List, Optional, Sequence, Tuple

import attr

_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
# Field value bytes (RFC 9110 section 5.5): VCHAR, SP, HTAB, obs-text.
_FIELD_BYTES = frozenset([0x09, 0x20] + list(range(0x21, 0x7F)) + list(range(0x80, 0x100)))
_VCHAR = frozenset(range(0x21, 0x7F))
_UNRESERVED_SUBDELIMS = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;="
)
_HEX = frozenset(b"0123456789abcdefABCDEF")
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
# A chunk line: the size, then extensions.  The proxy discards extensions,
# so their finer grammar cannot change what a backend receives; what the
# reference holds them to is what could move the end of the line for another
# parser: no control bytes, and every quote closed (a quote-aware parser
# reads a quoted-string past a CRLF).
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]+)((?:[ \t]*;(?:[^\"\x00-\x08\x0a-\x1f\x7f]|" + _QUOTED + rb")*)*)"
)
_VERSION = re.compile(rb"HTTP/1\.[01]")
# Larger numbers are refused, not parsed: a parser that overflows reads them
# as something else.
MAX_DECIMAL_DIGITS = 18
MAX_HEX_DIGITS = 15


class Refused(Exception):
    """The bytes from here on are not a valid request; the message says why."""


class _Incomplete(Exception):
    pass


@attr.s(frozen=True, auto_attribs=True)
class Message:
    """One request as the reference reads it."""

    method: bytes
    target: bytes
    version: bytes
    headers: Tuple[Tuple[bytes, bytes], ...]
    body: bytes
    framing: str  # "none", "length" or "chunked"
    authority: bytes  # the effective host[:port], lower-cased
    path: bytes  # the target in origin form (or "*")

    def values(self, name: bytes) -> List[bytes]:
        lower = name.lower()
        return [v for n, v in self.headers if n.lower() == lower]

    def describe(self) -> str:
        """One line for a diff: the parts that must survive the proxy."""
        body = self.body[:60] + (b"..." if len(self.body) > 60 else b"")
        framing = self.framing if self.body else "-"
        return (
            f"{_show(self.method)} {_show(self.path)} authority={_show(self.authority)}"
            f" framing={framing} body={body!r}"
        )


@attr.s(frozen=True, auto_attribs=True)
class Reading:
    """
    What a byte stream means: the complete requests in order, then either
    the end of the stream, a refusal (the next bytes are invalid), an
    incomplete request, or a close (a request ended the connection; the
    C{rest} is never read).
    """

    messages: Tuple[Message, ...]
    refusal: Optional[str] = None
    incomplete: bool = False
    closed: bool = False
    rest: bytes = b""
    #: After a close: how the C{rest} reads.  A server must not act on
    #: these (RFC 9112 section 9.6); if it does, it must read them so.
    after_close: Tuple[Message, ...] = ()

    @property
    def persistent(self) -> bool:
        """Whether another request may follow on the connection."""
        return self.refusal is None and not self.incomplete and not self.closed

    def describe(self) -> str:
        lines = [m.describe() for m in self.messages]
        if self.refusal is not None:
            lines.append("REFUSED: " + self.refusal)
        elif self.incomplete:
            lines.append("INCOMPLETE")
        elif self.closed:
            lines.append(f"CLOSE ({len(self.rest)} bytes never read)")
        return "\n".join(lines)


def _show(data: bytes) -> str:
    return repr(data)[2:-1]


def parse(data: bytes, as_backend: bool = False) -> Reading:
    """Read a whole client stream (or what a backend received)."""
    messages: List[Message] = []
    pos = 0
    while True:
        # RFC 9112 section 2.2: empty lines before a request line are ignored.
        while data.startswith(b"\r\n", pos):
            pos += 2
        if pos == len(data):
            return Reading(tuple(messages))
        try:
            message, pos = _request(data, pos, as_backend)
        except Refused as e:
            return Reading(tuple(messages), refusal=str(e))
        except _Incomplete:
            return Reading(tuple(messages), incomplete=True)
        messages.append(message)
        if _closes(message):
            rest = data[pos:]
            after = parse(rest, as_backend).messages
            return Reading(tuple(messages), closed=True, rest=rest, after_close=after)


def _closes(message: Message) -> bool:
    tokens = set()
    for value in message.values(b"connection"):
        tokens.update(t.strip(b" \t").lower() for t in value.split(b","))
    if message.version == b"HTTP/1.1":
        return b"close" in tokens
    return b"keep-alive" not in tokens or b"close" in tokens


def _line(data: bytes, pos: int, where: str) -> Tuple[bytes, int]:
    """The line at C{pos} without its CRLF, and the position after it."""
    end = data.find(b"\r\n", pos)
    stop = len(data) if end < 0 else end
    line = data[pos:stop]
    if end < 0 and line.endswith(b"\r") and b"\r" not in line[:-1] and b"\n" not in line:
        raise _Incomplete()
    if b"\n" in line:
        raise Refused(f"bare LF in {where}")
    if b"\r" in line:
        raise Refused(f"bare CR in {where}")
    if end < 0:
        raise _Incomplete()
    return line, end + 2


def _fields(data: bytes, pos: int, section: str) -> Tuple[List[Tuple[bytes, bytes]], int]:
    """A field section (C{"header"} or C{"trailer"}) up to and including its empty line."""
    fields = []
    while True:
        line, pos = _line(data, pos, f"a {section} line")
        if not line:
            return fields, pos
        if line[:1] in (b" ", b"\t"):
            raise Refused(f"obs-fold in a {section} section")
        name, colon, value = line.partition(b":")
        if not colon:
            raise Refused(f"a {section} line without a colon: {_show(line)}")
        if not name or not _TCHAR.issuperset(name):
            raise Refused(f"{section} name is not a token: {_show(name)}")
        value = value.strip(b" \t")
        if not _FIELD_BYTES.issuperset(value):
            raise Refused(f"control byte in a {section} value: {_show(name)}")
        fields.append((name, value))


def valid_host(value: bytes) -> bool:
    """C{uri-host [":" port]} with a non-empty host (RFC 9110 section 7.2, 4.2.1)."""
    if value.startswith(b"["):
        close = value.find(b"]")
        if close < 0:
            return False
        try:
            ipaddress.IPv6Address(value[1:close].decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return False
        rest = value[close + 1 :]
        return rest == b"" or (rest[:1] == b":" and rest[1:].isdigit() or rest == b":")
    host, colon, port = value.partition(b":")
    if not host or (colon and port and not port.isdigit()):
        return False
    if not _UNRESERVED_SUBDELIMS.union(b"%").issuperset(host):
        return False
    for i, c in enumerate(host):
        if c == 0x25 and not (
            _HEX.issuperset(host[i + 1 : i + 3]) and len(host[i + 1 : i + 3]) == 2
        ):
            return False
    return True


def _target(method: bytes, target: bytes) -> Tuple[Optional[bytes], bytes]:
    """The authority (absolute form) or L{None}, and the origin-form path."""
    if not target or not _VCHAR.issuperset(target):
        raise Refused(f"request target byte outside visible ASCII: {_show(target)}")
    if method == b"CONNECT":
        raise Refused("CONNECT: what follows would be a tunnel")
    if target == b"*":
        if method != b"OPTIONS":
            raise Refused(f"* target with {_show(method)}")
        return None, target
    if target.startswith(b"/"):
        return None, target
    lower = target.lower()
    for scheme in (b"http://", b"https://"):
        if lower.startswith(scheme):
            rest = target[len(scheme) :]
            cut = min([i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0] or [len(rest)])
            authority, path = rest[:cut], rest[cut:]
            if b"@" in authority:
                raise Refused("userinfo in the target")
            if b"#" in authority or not valid_host(authority):
                raise Refused(f"invalid authority in the target: {_show(authority)}")
            if not path.startswith(b"/"):
                path = b"/" + path
            return authority.lower(), path
    raise Refused(f"invalid request target form: {_show(target)}")


def _request(data: bytes, pos: int, as_backend: bool) -> Tuple[Message, int]:
    line, pos = _line(data, pos, "the request line")
    parts = line.split(b" ")
    if len(parts) != 3:
        raise Refused(f"request line is not method SP target SP version: {_show(line[:80])}")
    method, target, version = parts
    if not method or not _TCHAR.issuperset(method):
        raise Refused(f"method is not a token: {_show(method)}")
    if not _VERSION.fullmatch(version):
        raise Refused(f"version is not HTTP/1.0 or HTTP/1.1: {_show(version)}")
    authority, path = _target(method, target)
    headers, pos = _fields(data, pos, "header")
    message = Message(method, target, version, tuple(headers), b"", "none", b"", path)

    hosts = message.values(b"host")
    if len(hosts) > 1:
        raise Refused("more than one Host")
    if version == b"HTTP/1.1" and not hosts:
        raise Refused("HTTP/1.1 without Host")
    if hosts and not valid_host(hosts[0]):
        raise Refused(f"invalid Host: {_show(hosts[0])}")
    if authority is None:
        authority = hosts[0].lower() if hosts else b""
    elif as_backend and hosts and hosts[0].lower() != authority:
        raise Refused("absolute-form authority and Host disagree")

    codings = message.values(b"transfer-encoding")
    lengths = message.values(b"content-length")
    if codings:
        if version != b"HTTP/1.1":
            raise Refused("Transfer-Encoding in HTTP/1.0")
        if lengths:
            raise Refused("both Transfer-Encoding and Content-Length")
        listed = [c.strip(b" \t").lower() for v in codings for c in v.split(b",")]
        listed = [c for c in listed if c]
        if listed != [b"chunked"]:
            raise Refused(
                "transfer codings other than exactly chunked: " + _show(b",".join(listed))
            )
        body, pos = _chunked(data, pos)
        framing = "chunked"
    elif lengths:
        if len(lengths) > 1:
            raise Refused("more than one Content-Length")
        value = lengths[0]
        if not value.isdigit() or not value.isascii():
            raise Refused(f"Content-Length is not 1*DIGIT: {_show(value)}")
        if len(value.lstrip(b"0")) > MAX_DECIMAL_DIGITS:
            raise Refused("Content-Length too large")
        n = int(value)
        if len(data) - pos < n:
            raise _Incomplete()
        body, pos = data[pos : pos + n], pos + n
        framing = "length"
    else:
        body, framing = b"", "none"
    return attr.evolve(message, body=body, framing=framing, authority=authority), pos


def _chunked(data: bytes, pos: int) -> Tuple[bytes, int]:
    parts = []
    while True:
        line, pos = _line(data, pos, "a chunk line")
        match = _CHUNK_LINE.fullmatch(line)
        if match is None:
            raise Refused(f"invalid chunk line: {_show(line[:60])}")
        digits = match.group(1).lstrip(b"0")
        if len(digits) > MAX_HEX_DIGITS:
            raise Refused("chunk size too large")
        size = int(digits or b"0", 16)
        if size == 0:
            _, pos = _fields(data, pos, "trailer")
            return b"".join(parts), pos
        if len(data) - pos < size + 2:
            if data[pos + size : pos + size + 2] not in (b"", b"\r"):
                raise Refused("chunk data not followed by CRLF")
            raise _Incomplete()
        if data[pos + size : pos + size + 2] != b"\r\n":
            raise Refused("chunk data not followed by CRLF")
        parts.append(data[pos : pos + size])
        pos += size + 2


def same_requests(expected: Sequence[Message], got: Sequence[Message]) -> List[str]:
    """
    The differences that matter between requests the reference read from a
    client and requests a backend received: count, method, origin-form
    target, authority, body.  (Headers the proxy adds or removes, and how
    it frames the body, are its business.)
    """
    problems = []
    if len(got) > len(expected):
        problems.append(
            f"the backend received {len(got)} requests, the client sent {len(expected)}"
        )
    for i, (e, g) in enumerate(zip(expected, got)):
        for what in ("method", "path", "authority", "body"):
            if what == "authority" and not e.authority:
                continue  # an HTTP/1.0 request without one: the proxy names the server
            if getattr(e, what) != getattr(g, what):
                problems.append(f"request {i + 1}: {what} differs")
    return problems
