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


def request_headers(
    pairs: Pairs,
    client: bytes,
    scheme: bytes,
    version: bytes,
    via: Optional[bytes],
) -> HeaderList:
    """
    The headers to send to a backend for a client's request.

    Hop-by-hop headers go (those named by C{Connection} too), and so does
    C{Content-Length}: the dispatcher frames the body again.  Then, after the
    removal, so that no client can strip them: C{X-Forwarded-For} gets the
    client address appended; C{X-Forwarded-Proto} and C{X-Forwarded-Host} are
    set from the front connection; C{Via} gets C{<version> <via>} appended.
    C{Host} stays as the client sent it.

    @param pairs: The client's request headers.
    @param client: The client's address, e.g. C{b"192.0.2.7"}.
    @param scheme: C{b"http"} or C{b"https"}: how the client reached us.
    @param version: The client's protocol version, e.g. C{b"1.1"}.
    @param via: This proxy's pseudonym for C{Via}, or L{None} to add none.
    """
    pairs = list(pairs)
    drop = removable(pairs) | {b"content-length"}
    kept: HeaderList = []
    forwarded_for: List[bytes] = []
    vias: List[bytes] = []
    host: Optional[bytes] = None
    for name, values in pairs:
        lower = name.lower()
        if lower in drop:
            continue
        if lower in _SET_BY_PROXY:
            if lower == b"x-forwarded-for":
                forwarded_for.extend(values)
            elif lower == b"via":
                vias.extend(values)
            continue
        if lower == b"host" and values:
            host = values[0]
        kept.append((name, list(values)))
    forwarded_for.append(client)
    kept.append((b"X-Forwarded-For", [b", ".join(forwarded_for)]))
    kept.append((b"X-Forwarded-Proto", [scheme]))
    if host is not None:
        kept.append((b"X-Forwarded-Host", [host]))
    if via is not None:
        vias.append(version + b" " + via)
        kept.append((b"Via", [b", ".join(vias)]))
    elif vias:
        kept.append((b"Via", [b", ".join(vias)]))
    return kept


def response_headers(pairs: Pairs) -> HeaderList:
    """
    The headers of a backend's response that go on to the client: all but
    the hop-by-hop ones (those named by C{Connection} too).
    """
    pairs = list(pairs)
    drop = removable(pairs)
    return [(name, list(values)) for name, values in pairs if name.lower() not in drop]
