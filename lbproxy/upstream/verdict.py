"""
The verdict of active health checks: C{health_fall} failures in a row take
an UP server DOWN, C{health_rise} successes in a row bring a DOWN one UP.
Pure counting: the pool acts on the change it returns.
"""

from __future__ import annotations

from typing import Optional

from lbproxy.upstream.server import ServerState

#: The check took the server DOWN.
DOWN = "DOWN"
#: The check brought the server UP.
UP = "UP"
#: The server was UP for the checks but ejected by passive checks, and a
#: check passed: it is back without waiting for C{fail_timeout}.
PASSED = "passed"


def judge(server: ServerState, ok: bool, detail: str, rise: int, fall: int) -> Optional[str]:
    """
    Count one check of C{server} (C{detail}: what was seen), updating its
    C{up} flag and counters; returns the change it makes (L{DOWN}, L{UP},
    L{PASSED}) or L{None}.  C{server.usable} is left to the caller.
    """
    server.last_check = detail
    if ok:
        server.fall_count = 0
        if server.up:
            return PASSED if server.ejected else None
        server.rise_count += 1
        if server.rise_count < rise:
            return None
        server.rise_count = 0
        server.up = True
        return UP
    server.rise_count = 0
    if not server.up:
        return None
    server.fall_count += 1
    if server.fall_count < fall:
        return None
    server.fall_count = 0
    server.up = False
    return DOWN
