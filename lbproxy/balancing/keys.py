"""
A request's key for hashing (C{hash_key}), and cookies read from requests.

Pure: the caller hands in the client's address, a way to read a request
header's raw values, and the request target.
"""

from __future__ import annotations

import re
from typing import Callable, Optional, Sequence

import attr

#: Reads a request header: its raw values, or None when it is absent.
HeaderReader = Callable[[bytes], Optional[Sequence[bytes]]]

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@attr.s(frozen=True, slots=True, auto_attribs=True)
class HashKey:
    """
    What a request's key is made of: C{kind} is C{client_address},
    C{header}, C{cookie} or C{path}; C{name} the header (lower case) or
    cookie name, else empty.
    """

    kind: str
    name: bytes = b""

    def __str__(self) -> str:
        return f"{self.kind}:{self.name.decode('ascii')}" if self.name else self.kind


CLIENT_ADDRESS = HashKey("client_address")


def parse_token_name(text: str) -> str:
    """A header or cookie name: an HTTP token."""
    text = text.strip()
    if not _TOKEN.match(text):
        raise ValueError(f"must be a name of letters, digits and !#$%&'*+-.^_`|~, got {text!r}")
    return text


def parse_hash_key(text: str) -> HashKey:
    """
    C{client_address}, C{header:NAME}, C{cookie:NAME} or C{path}.
    """
    text = text.strip()
    kind, sep, name = text.partition(":")
    if not sep and kind in ("client_address", "path"):
        return HashKey(kind)
    if sep and kind in ("header", "cookie") and _TOKEN.match(name):
        encoded = name.encode("ascii")
        return HashKey(kind, encoded.lower() if kind == "header" else encoded)
    raise ValueError(f"must be client_address, header:NAME, cookie:NAME or path, got {text!r}")


def cookie_value(values: Optional[Sequence[bytes]], name: bytes) -> Optional[bytes]:
    """
    The value of the first cookie called C{name} in C{Cookie} header
    values, or L{None}.
    """
    if not values:
        return None
    for value in values:
        for pair in value.split(b";"):
            key, sep, found = pair.partition(b"=")
            if sep and key.strip() == name:
                return found.strip().strip(b'"')
    return None


def request_key(
    key: HashKey, client: bytes, header: HeaderReader, target: bytes
) -> Optional[bytes]:
    """
    The key of a request: the client's address, a header's values (joined
    by commas), a cookie's value or the path (the target up to C{?}); None
    when the request has no such header or cookie.
    """
    kind = key.kind
    if kind == "client_address":
        return client
    if kind == "path":
        return target.split(b"?", 1)[0]
    if kind == "header":
        values = header(key.name)
        return b",".join(values) if values else None
    return cookie_value(header(b"cookie"), key.name)
