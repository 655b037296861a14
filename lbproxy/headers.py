"""
Header rules of a proxy, as pure functions over C{(name, values)} pairs.

Names are compared case-insensitively and kept as given.  Values of a
repeated header stay in their order.  Nothing here knows twisted.web: the
forwarder turns Twisted's C{Headers} into pairs and back.
"""

from __future__ import annotations

from typing import FrozenSet, Iterable, List, Optional, Sequence, Tuple

Pairs = Iterable[Tuple[bytes, Sequence[bytes]]]
HeaderList = List[Tuple[bytes, List[bytes]]]

#: Headers that describe one connection, never the message (RFC 9110 section
#: 7.6.1), plus the non-standard ones that clients and servers still send.
HOP_BY_HOP: FrozenSet[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

#: Headers that a C{Connection} header may not remove: the message's target
#: and framing are not the sender's to make disappear.
PROTECTED: FrozenSet[bytes] = frozenset({b"host", b"content-length", b"transfer-encoding"})

#: Headers this proxy sets itself on a forwarded request; a client's
#: X-Forwarded-For and Via are extended, the others replaced.
_SET_BY_PROXY: FrozenSet[bytes] = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"via"}
)


#: Request headers this proxy has dealt with itself: the body is framed again
#: by the dispatcher, and C{Expect: 100-continue} was answered by the HTTP
#: server before the body was read.
_ANSWERED_HERE: FrozenSet[bytes] = frozenset({b"content-length", b"expect"})


def connection_tokens(values: Iterable[bytes]) -> FrozenSet[bytes]:
    """
    The lower-cased header names listed in C{Connection} header values, less
    the L{PROTECTED} ones.
    """
    tokens = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return frozenset(tokens - PROTECTED)


def removable(pairs: Pairs) -> FrozenSet[bytes]:
    """
    The lower-cased names of the hop-by-hop headers of a message: the
    L{HOP_BY_HOP} set and every name its C{Connection} headers list.
    """
    for name, values in pairs:
        if name.lower() == b"connection":
            return HOP_BY_HOP | connection_tokens(values)
    return HOP_BY_HOP


def request_changes(
    pairs: Pairs,
    client: bytes,
    scheme: bytes,
    version: bytes,
    via: Optional[bytes],
) -> Tuple[List[bytes], HeaderList]:
    """
    How a client's request headers change on the way to a backend, as the
    names to remove and the headers to add (after the others, in this order).

    Hop-by-hop headers go (those named by C{Connection} too), and so do
    C{Content-Length} (the dispatcher frames the body again) and C{Expect}
    (the proxy's HTTP server answered it before reading the body).  Then,
    after the removal, so that no client can strip them: C{X-Forwarded-For}
    gets the client address appended; C{X-Forwarded-Proto} and
    C{X-Forwarded-Host} are set from the front connection; C{Via} gets
    C{<version> <via>} appended.  C{Host} stays as the client sent it.

    @param pairs: The client's request headers.
    @param client: The client's address, e.g. C{b"192.0.2.7"}.
    @param scheme: C{b"http"} or C{b"https"}: how the client reached us.
    @param version: The client's protocol version, e.g. C{b"1.1"}.
    @param via: This proxy's pseudonym for C{Via}, or L{None} to add none.
    @returns: C{(remove, add)}: header names as given in C{pairs}, and
        C{(name, values)} pairs.
    """
    pairs = list(pairs)
    drop = removable(pairs) | _ANSWERED_HERE
    remove: List[bytes] = []
    forwarded_for: List[bytes] = []
    vias: List[bytes] = []
    host: Optional[bytes] = None
    for name, values in pairs:
        lower = name.lower()
        if lower in drop:
            remove.append(name)
        elif lower in _SET_BY_PROXY:
            remove.append(name)
            if lower == b"x-forwarded-for":
                forwarded_for.extend(values)
            elif lower == b"via":
                vias.extend(values)
        elif lower == b"host" and values:
            host = values[0]
    forwarded_for.append(client)
    add: HeaderList = [
        (b"X-Forwarded-For", [b", ".join(forwarded_for)]),
        (b"X-Forwarded-Proto", [scheme]),
    ]
    if host is not None:
        add.append((b"X-Forwarded-Host", [host]))
    if via is not None:
        vias.append(version + b" " + via)
    if vias:
        add.append((b"Via", [b", ".join(vias)]))
    return remove, add


def request_headers(
    pairs: Pairs,
    client: bytes,
    scheme: bytes,
    version: bytes,
    via: Optional[bytes],
) -> HeaderList:
    """
    The headers a backend receives for a client's request: L{request_changes}
    applied to C{pairs}.
    """
    pairs = list(pairs)
    remove, add = request_changes(pairs, client, scheme, version, via)
    gone = set(remove)
    return [(name, list(values)) for name, values in pairs if name not in gone] + add


def response_removals(pairs: Pairs) -> List[bytes]:
    """
    The names (as given) of the headers of a backend's response that do not
    go on to the client: the hop-by-hop ones, and those named by
    C{Connection}.
    """
    pairs = list(pairs)
    drop = removable(pairs)
    return [name for name, _ in pairs if name.lower() in drop]


def response_headers(pairs: Pairs) -> HeaderList:
    """
    The headers of a backend's response that go on to the client:
    L{response_removals} applied to C{pairs}.
    """
    pairs = list(pairs)
    gone = set(response_removals(pairs))
    return [(name, list(values)) for name, values in pairs if name not in gone]


#: What a client's X-Request-ID may look like to be kept: short, and nothing
#: that could break a log line.
_REQUEST_ID_BYTES = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:+/="
)
MAX_REQUEST_ID = 128


def kept_request_id(values: Optional[Sequence[bytes]]) -> Optional[bytes]:
    """
    The client's X-Request-ID when it may be kept: exactly one value of 1 to
    L{MAX_REQUEST_ID} letters, digits or C{-_.:+/=}.  L{None} means the
    proxy makes one (and replaces whatever was sent).
    """
    if values is None or len(values) != 1:
        return None
    value = values[0]
    if not 0 < len(value) <= MAX_REQUEST_ID or not _REQUEST_ID_BYTES.issuperset(value):
        return None
    return value
