#!/usr/bin/env python3
"""
What matching a request to its route costs, with 1, 100 and 1000 routes.

    .venv/bin/python bench/routing.py [--rounds 5] [--number 200000]

For each size, a configuration is made with that many routes (a quarter by
exact host, a quarter by wildcard host, a quarter by path prefix under one
host, a quarter by host and path), compiled once, and
L{lbproxy.routing.Router.match} is timed over a mix of requests: some that
match early, late, by wildcard, and some that match no route (the default
pool), which are the most expensive to answer.  A second figure adds a
route's header rules (three request rules with a variable) to show what a
request pays for them.

Prints nanoseconds per match (the best of C{--rounds}), per kind of
request.  Nothing is sent over a network; this measures the routing code
alone.  Pure: no reactor, nothing written to disk.
"""

from __future__ import annotations

import argparse
import platform
import sys
import timeit
from typing import Callable, List, Optional, Sequence, Tuple

from lbproxy.config import parse
from lbproxy.routing import Facts, Router, changes


def configuration(size: int) -> str:
    lines = ["[proxy]", "listen = tcp:1", "pool = web", "[pool:web]", "servers = http://h:1"]
    lines += ["[pool:api]", "servers = http://h:2"]
    for i in range(size):
        lines.append(f"[route:r{i}]")
        kind = i % 4
        if kind == 0:
            lines.append(f"host = app{i}.example.com")
        elif kind == 1:
            lines.append(f"host = *.tenant{i}.example.net")
        elif kind == 2:
            lines.append(f"path = /svc{i}")
        else:
            lines.append(f"host = www.example.org\npath = /p{i}")
        lines.append("pool = api")
        lines.append(
            "request_headers =\n  set X-Real-IP {client}\n  set X-Route r\n  remove Cookie"
        )
    return "\n".join(lines) + "\n"


def no_headers(name: bytes) -> Optional[List[bytes]]:
    return None


def requests(size: int) -> List[Tuple[str, bytes, bytes]]:
    """Kinds of request, as (label, Host, target)."""
    last = size - 1
    found = [
        ("first route (exact host)", b"app0.example.com", b"/"),
        ("no route: default pool", b"unknown.example.com", b"/some/where?x=1"),
    ]
    if size >= 4:
        found += [
            ("wildcard host", b"a.b.tenant1.example.net:8080", b"/"),
            ("path prefix", b"x.test", b"/svc2/items?id=1"),
            (
                "last route",
                b"www.example.org" if last % 4 == 3 else b"x.test",
                f"/p{last}/x".encode() if last % 4 == 3 else f"/svc{last}".encode(),
            ),
        ]
    return found


def measure(call: Callable[[], object], number: int, rounds: int) -> float:
    best = min(timeit.repeat(call, number=number, repeat=rounds))
    return best / number * 1e9


def main(argv: Sequence[str]) -> None:
    options = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    options.add_argument("--rounds", type=int, default=5)
    options.add_argument("--number", type=int, default=200_000)
    args = options.parse_args(argv)
    print(f"{platform.python_implementation()} {platform.python_version()}")
    print(f"{'routes':>6}  {'request':<26} {'ns/match':>9} {'+ rules':>9}")
    for size in (1, 100, 1000):
        router: Router = parse(configuration(size)).router()
        for label, host, target in requests(size):
            found = router.match(host, b"GET", target, no_headers)
            assert found is not None
            route = found[0]
            facts = Facts(b"GET", b"http", host, target, b"192.0.2.1", b"id")

            def match(
                router: Router = router, host: bytes = host, target: bytes = target
            ) -> object:
                return router.match(host, b"GET", target, no_headers)

            def match_and_rules(
                router: Router = router,
                host: bytes = host,
                target: bytes = target,
                facts: Facts = facts,
            ) -> object:
                route = router.match(host, b"GET", target, no_headers)[0]  # type: ignore[index]
                return changes(route.request_rules, facts)

            plain = measure(match, args.number, args.rounds)
            ruled = measure(match_and_rules, args.number, args.rounds)
            rules = f"{ruled:9.0f}" if route.request_rules else f"{'-':>9}"
            print(f"{size:>6}  {label:<26} {plain:9.0f} {rules}")


if __name__ == "__main__":
    main(sys.argv[1:])
