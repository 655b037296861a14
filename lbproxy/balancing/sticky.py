"""
Sticky sessions with a cookie, over any algorithm.

The proxy names the server that answered in a cookie (C{sticky_cookie}); a
request that carries it goes to that server while it is usable, and to the
algorithm's pick otherwise.  The cookie's value is an opaque token derived
from the pool's and the server's names: it says nothing of addresses, and it
stays valid across restarts and reloads as long as the server keeps its name.
"""

from __future__ import annotations

import hashlib
from typing import Dict, Generic, Iterator, Optional, Sequence, TypeVar

from lbproxy.balancing.interface import Server
from lbproxy.balancing.keys import cookie_value

S = TypeVar("S", bound=Server)


def sticky_token(pool: str, server: str) -> bytes:
    """The cookie value that names C{server} of C{pool}."""
    data = pool.encode("utf-8") + b"\0" + server.encode("utf-8")
    return hashlib.blake2b(data, digest_size=8, person=b"lbproxy-sticky").hexdigest().encode()


class StickyCookie(Generic[S]):
    """
    The cookie C{name} over the servers of pool C{pool}.
    """

    def __init__(self, name: str, pool: str, servers: Sequence[S]) -> None:
        self.name = name.encode("ascii")
        self.pool = pool
        self._servers: Dict[bytes, S] = {sticky_token(pool, s.name): s for s in servers}

    def server(self, cookies: Optional[Sequence[bytes]]) -> Optional[S]:
        """
        The server that C{Cookie} header values name, or None when they
        carry no such cookie or it names no server of the pool.
        """
        token = cookie_value(cookies, self.name)
        return None if token is None else self._servers.get(token)

    def set_cookie(self, server: Server) -> bytes:
        """A C{Set-Cookie} value that names C{server} for later requests."""
        token = sticky_token(self.pool, server.name)
        return self.name + b"=" + token + b"; Path=/; HttpOnly"


def prefer(server: Optional[S], candidates: Iterator[S]) -> Iterator[S]:
    """
    C{server} first, when usable, then the other C{candidates} (read lazily:
    while the preferred server answers, the algorithm moves nothing).
    """
    if server is None or not server.usable:
        yield from candidates
        return
    yield server
    for candidate in candidates:
        if candidate is not server:
            yield candidate
