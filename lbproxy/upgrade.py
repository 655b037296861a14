"""
Which protocol upgrades (RFC 9110 section 7.8) a request may take through
the proxy, as pure functions over header values.

A request asks for an upgrade with an C{Upgrade} header naming protocols and
the C{upgrade} option in its C{Connection} header.  The proxy passes on the
offered protocols that C{[proxy] upgrade} allows (WebSocket by default), and
only on an HTTP/1.1 C{GET} without a body; everything else is declined as
RFC 9110 lets a server decline: the C{Upgrade} header is dropped with the
other hop-by-hop headers and the request goes on as a plain HTTP/1.1
request.  C{h2c} is never passed on: a backend that switched to HTTP/2
behind a proxy that does not speak it would be an open door for smuggling.
"""

from __future__ import annotations

import re
from typing import FrozenSet, Iterable, List, Optional, Tuple

#: Protocols that are never tunnelled, whatever the configuration says.
NEVER: FrozenSet[bytes] = frozenset({b"h2c"})

_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def protocol_names(values: Iterable[bytes]) -> Optional[List[Tuple[bytes, bytes]]]:
    """
    The protocols of C{Upgrade} header values, as C{(name, offer)} pairs:
    the lower-cased name and the offer as sent (C{name} or
    C{name/version}); L{None} when a value is not a list of such offers.
    """
    offers: List[Tuple[bytes, bytes]] = []
    for value in values:
        for part in value.split(b","):
            offer = part.strip(b" \t")
            if not offer:
                continue
            name, slash, version = offer.partition(b"/")
            if not _TOKEN.match(name) or (slash and not _TOKEN.match(version)):
                return None
            offers.append((name.lower(), offer))
    return offers


def offered_upgrade(
    method: bytes,
    version: bytes,
    connection: Iterable[bytes],
    upgrade: Iterable[bytes],
    has_body: bool,
    allowed: FrozenSet[bytes],
) -> Optional[bytes]:
    """
    The C{Upgrade} value to send to the backend for a request, or L{None}
    when the request is forwarded without one (no upgrade asked for, or
    declined).

    @param connection: The request's C{Connection} header values.
    @param upgrade: Its C{Upgrade} header values.
    @param has_body: Whether the request has a body.
    @param allowed: The lower-cased protocol names that may be tunnelled.
    """
    upgrade = list(upgrade)
    if not upgrade or not allowed or method != b"GET" or version != b"HTTP/1.1" or has_body:
        return None
    options = {token.strip(b" \t").lower() for value in connection for token in value.split(b",")}
    if b"upgrade" not in options:
        return None
    offers = protocol_names(upgrade)
    if offers is None:
        return None
    passed = [offer for name, offer in offers if name in allowed and name not in NEVER]
    if not passed:
        return None
    return b", ".join(passed)


def accepted_switch(offered: bytes, answer: Iterable[bytes]) -> bool:
    """
    Whether a backend's C{101} response switches to a protocol the request
    offered: its C{Upgrade} header names exactly one protocol, by a name
    that C{offered} names.
    """
    offers = protocol_names([offered]) or []
    chosen = protocol_names(list(answer))
    if not chosen or len(chosen) != 1:
        return False
    return chosen[0][0] in {name for name, _ in offers}
