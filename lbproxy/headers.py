"""
Header rules of a proxy, as pure functions over C{(name, values)} pairs.

Names are compared case-insensitively and kept as given.  Values of a
repeated header stay in their order.  Nothing here knows twisted.web: the
forwarder turns Twisted's C{Headers} into pairs and back.
"""

from __future__ import annotations

import ipaddress
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
        # RFC 9113 section 3.2.1 (h2c): connection-specific, listed in
        # Connection or not.
        b"http2-settings",
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


#: What goes from every request without a C{Connection} header
#: (L{request_changes}), made once.
_REQUEST_DROP: FrozenSet[bytes] = HOP_BY_HOP | _ANSWERED_HERE


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
    drop = removable(pairs)
    drop = _REQUEST_DROP if drop is HOP_BY_HOP else drop | _ANSWERED_HERE
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


# -- the request head's own syntax --------------------------------------------

#: The bytes of a token (RFC 9110 section 5.6.2): methods and field names.
TOKEN_BYTES = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

#: Control bytes, less HTAB: never in a field value (RFC 9110 section 5.5).
#: Bytes 0x80-0xFF (obs-text) are not among them: they pass unchanged.
CONTROL_BYTES = bytes(range(0x00, 0x09)) + bytes(range(0x0A, 0x20)) + b"\x7f"

#: Visible ASCII (VCHAR): the only bytes of a request target.
VISIBLE_BYTES = bytes(range(0x21, 0x7F))

#: What a registered name in a Host may hold: RFC 3986's unreserved and
#: sub-delims.  Percent-encoding is refused: no DNS name needs it, and
#: backends disagree on whether to decode it.
_REG_NAME_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;="
_HEX_BYTES = b"0123456789abcdefABCDEF"

#: Default ports of the schemes an absolute-form target may name.
DEFAULT_PORTS = {b"http": 80, b"https": 443}


def is_token(data: bytes) -> bool:
    """Whether C{data} is a token: one or more tchar."""
    return bool(data) and not data.translate(None, TOKEN_BYTES)


def has_control_byte(value: bytes) -> bool:
    """Whether a field value holds a control byte other than HTAB."""
    return len(value.translate(None, CONTROL_BYTES)) != len(value)


def is_visible_ascii(data: bytes) -> bool:
    """Whether C{data} is one or more bytes of visible ASCII (0x21-0x7E)."""
    return bool(data) and not data.translate(None, VISIBLE_BYTES)


def field_line_problem(line: bytes) -> Optional[bytes]:
    """
    Why a header (or trailer) field line C{name ":" value} must be refused,
    or L{None}: the name must be a token (no whitespace before the colon),
    and the value must hold no control byte but HTAB.
    """
    name, colon, value = line.partition(b":")
    if not colon:
        return b"a header line without a colon"
    if not is_token(name):
        return b"a header name that is not a token"
    if has_control_byte(value):
        return b"a control byte in a header value"
    return None


_BWS = b" \t"


def chunk_extension_problem(ext: bytes) -> Optional[bytes]:
    """
    Why the extensions of a chunk line must be refused, or L{None}.

    C{ext} is what follows the chunk size, from its first C{;} on (RFC 9112
    section 7.1.1): C{*( BWS ";" BWS name [ BWS "=" BWS ( token /
    quoted-string ) ] )}.  Extensions are dropped, never forwarded, but a
    parser further on may read an unclosed quote or a stray byte differently,
    so only that grammar passes.
    """
    i, end = 0, len(ext)
    while i < end:
        while i < end and ext[i] in _BWS:
            i += 1
        if i == end:
            return None
        if ext[i] != 0x3B:  # ";"
            return b"a chunk extension without its ';'"
        i += 1
        while i < end and ext[i] in _BWS:
            i += 1
        start = i
        while i < end and ext[i] in TOKEN_BYTES:
            i += 1
        if i == start:
            return b"a chunk extension name that is not a token"
        j = i
        while j < end and ext[j] in _BWS:
            j += 1
        if j == end or ext[j] != 0x3D:  # "="
            i = j
            continue
        i = j + 1
        while i < end and ext[i] in _BWS:
            i += 1
        if i < end and ext[i] == 0x22:  # '"'
            i += 1
            while i < end and ext[i] != 0x22:
                byte = ext[i]
                if byte == 0x5C:  # a backslash quotes the next byte
                    i += 1
                    if i == end:
                        break
                    byte = ext[i]
                if byte != 0x09 and (byte < 0x20 or byte == 0x7F):
                    return b"a control byte in a chunk extension"
                i += 1
            if i >= end:
                return b"an unclosed quote in a chunk extension"
            i += 1
        else:
            start = i
            while i < end and ext[i] in TOKEN_BYTES:
                i += 1
            if i == start:
                return b"a chunk extension value that is neither token nor quoted"
    return None


def parse_authority(value: bytes) -> Optional[Tuple[bytes, Optional[int]]]:
    """
    The host and port of C{uri-host [":" port]} (RFC 9110 section 7.2, RFC
    3986 section 3.2.2), or L{None} when C{value} is not one.

    The host is an IP literal in brackets (an IPv6 address, no zone) or a
    registered name or IPv4 address of letters, digits and C{-._~!$&'()*+,;=};
    it may not be empty.  A port, when the colon is there, is 1 to 5 digits
    from 1 to 65535.  Userinfo (C{user@host}) is not an authority here.

    @returns: C{(host, port)}, the host as given, the port L{None} when
        absent.
    """
    if value.startswith(b"["):
        end = value.find(b"]")
        if end < 0:
            return None
        host, rest = value[: end + 1], value[end + 1 :]
        if not _is_ipv6(value[1:end]):
            return None
    else:
        host, colon, port_text = value.partition(b":")
        rest = colon + port_text
        if not host or host.translate(None, _REG_NAME_BYTES):
            return None
    if not rest:
        return host, None
    digits = rest[1:]
    if rest[:1] != b":" or not 0 < len(digits) <= 5 or not digits.isdigit():
        return None
    port = int(digits)
    if not 0 < port <= 65535:
        return None
    return host, port


def _is_ipv6(text: bytes) -> bool:
    if not text or text.translate(None, _HEX_BYTES + b":."):
        return False  # also refuses a zone ("%25eth0") and IPvFuture ("v1.x")
    try:
        ipaddress.IPv6Address(text.decode("ascii"))
    except ValueError:
        return False
    return True


def absolute_target(target: bytes) -> Optional[Tuple[bytes, bytes, bytes]]:
    """
    An absolute-form request target (RFC 9112 section 3.2.2) with an
    C{http} or C{https} scheme, taken apart: C{(scheme, authority,
    origin_form)}, the scheme lower-cased, the authority as given (not yet
    checked: see L{parse_authority}), and the origin-form target that goes to
    a backend (C{/} when the path is empty, the query kept).  L{None} when
    C{target} is not of that form.
    """
    scheme, sep, rest = target.partition(b"://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS:
        return None
    end = len(rest)
    for delimiter in (b"/", b"?"):
        at = rest.find(delimiter)
        if 0 <= at < end:
            end = at
    authority, tail = rest[:end], rest[end:]
    if not tail.startswith(b"/"):
        tail = b"/" + tail
    return scheme, authority, tail


def target_problem(method: bytes, target: bytes) -> Optional[bytes]:
    """
    Why the request target of a request line must be refused with 400, or
    L{None} (RFC 9112 section 3.2): visible ASCII only, no fragment
    (C{#}, which no request target has); then origin-form
    (C{/...}), absolute-form with an C{http} or C{https} scheme and a valid
    authority, or C{*} for OPTIONS.  A CONNECT request is left to the proxy
    resource, which refuses it with 501 whatever its target.
    """
    if not is_visible_ascii(target):
        return b"the request target holds bytes other than visible ASCII"
    if b"#" in target:
        return b"a fragment in the request target"
    if target.startswith(b"/"):
        return None
    if target == b"*":
        return None if method == b"OPTIONS" else b"the * target is only for OPTIONS"
    if method == b"CONNECT":
        return None
    absolute = absolute_target(target)
    if absolute is None:
        return b"invalid request target"
    if parse_authority(absolute[1]) is None:
        return b"invalid authority in the request target"
    return None


def same_authority(host: bytes, authority: bytes, scheme: bytes) -> bool:
    """
    Whether a Host value names the same host and port as the authority of
    an absolute-form target of C{scheme}: host names compared without case,
    an absent port taken as the scheme's default.
    """
    ours, theirs = parse_authority(host), parse_authority(authority)
    if ours is None or theirs is None:
        return False
    default = DEFAULT_PORTS.get(scheme)
    return ours[0].lower() == theirs[0].lower() and (ours[1] or default) == (theirs[1] or default)
