"""
The routes compiled for matching: built once when a configuration loads,
asked once per request.

Matching is first match in file order, on host, then path prefix, then
method and headers.  The work per request is kept to two dictionary look-ups
and a short list:

1. The host (port cut off, lower-cased) picks a list of candidate routes:
   from a dictionary of exact names; else, for each suffix of the name from
   the longest (C{.b.example.com}, C{.example.com}, C{.com}), from a
   dictionary of wildcard suffixes; else the routes for any host.  Each list
   was made at load time with every route that can match a name of that
   kind (exact names, the wildcards that cover them, routes without
   C{host}), in file order.
2. Within that list, the first segment of the path (C{api} for
   C{/api/v1?x}) picks a shorter list again: the routes with a prefix in
   that segment, and those that match any path, in file order.
3. That list is walked in order: prefixes on segment boundaries, methods,
   headers.

So a request's cost grows with the routes that share its host and first
path segment, not with the number of routes (see C{bench/routing.py}).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import attr

from lbproxy.routing.routes import DirectAnswer, Redirect, RouteConfig
from lbproxy.routing.rules import HeaderRule

#: How a route reads a request header: Twisted's C{Headers.getRawHeaders}.
HeaderGetter = Callable[[bytes], Optional[Sequence[bytes]]]


@attr.s(frozen=True, slots=True, auto_attribs=True, eq=False)
class Route:
    """
    What a matched request does: a route compiled, or the default pool.

    @ivar name: The route's name; L{None} for the default pool.
    @ivar request_rules: The global request header rules, then the route's.
    @ivar response_rules: The same for responses.
    @ivar needs_facts: Whether a rule or the redirect has a variable in it
        (else no L{Facts} record need be made for the request).
    """

    name: Optional[str]
    pool: Optional[str] = None
    redirect: Optional[Redirect] = None
    answer: Optional[DirectAnswer] = None
    rewrite_prefix: Optional[bytes] = None
    host_rewrite: Optional[bytes] = None
    request_rules: Tuple[HeaderRule, ...] = ()
    response_rules: Tuple[HeaderRule, ...] = ()
    needs_facts: bool = False


def _route(
    config: Optional[RouteConfig],
    pool: Optional[str],
    request_rules: Tuple[HeaderRule, ...],
    response_rules: Tuple[HeaderRule, ...],
) -> Route:
    if config is not None:
        request_rules = request_rules + config.request_headers
        response_rules = response_rules + config.response_headers
    rules = request_rules + response_rules
    redirect = config.redirect if config is not None else None
    needs_facts = any(r.value is not None and r.value.constant is None for r in rules) or (
        redirect is not None and redirect.location.constant is None
    )
    if config is None:
        return Route(None, pool, None, None, None, None, request_rules, response_rules, needs_facts)

    def ascii(text: Optional[str]) -> Optional[bytes]:
        return text.encode("ascii") if text is not None else None

    return Route(
        config.name,
        config.pool,
        config.redirect,
        config.answer,
        ascii(config.rewrite_prefix),
        ascii(config.host_rewrite),
        request_rules,
        response_rules,
        needs_facts,
    )


# An entry of a candidate list: the route, its prefixes (None: any path), its
# methods, scheme and header matches.
_Entry = Tuple[
    Route,
    Optional[Tuple[bytes, ...]],
    Optional[frozenset],
    Optional[bytes],
    Tuple[Tuple[bytes, Optional[bytes]], ...],
]


def _any_path(entry: _Entry) -> bool:
    prefixes = entry[1]
    return prefixes is None or b"/" in prefixes


def _first_segment(path: bytes) -> bytes:
    end = path.find(b"/", 1)
    return path[1:end] if end > 0 else path[1:]


class _PathIndex:
    """The candidates for one kind of host, by the path's first segment."""

    __slots__ = ("by_segment", "any_path")

    def __init__(self, entries: List[_Entry]) -> None:
        segments: Dict[bytes, None] = {}
        for entry in entries:
            if not _any_path(entry):
                for prefix in entry[1] or ():
                    segments[_first_segment(prefix)] = None
        self.any_path: Tuple[_Entry, ...] = tuple(e for e in entries if _any_path(e))
        self.by_segment: Dict[bytes, Tuple[_Entry, ...]] = {}
        for segment in segments:
            chosen: List[_Entry] = []
            for entry in entries:
                route, prefixes, methods, scheme, headers = entry
                if prefixes is None or _any_path(entry):
                    # Its prefixes are kept whole: the first one written
                    # that matches is the one reported.
                    chosen.append(entry)
                    continue
                mine = tuple(p for p in prefixes if _first_segment(p) == segment)
                if mine:
                    chosen.append((route, mine, methods, scheme, headers))
            self.by_segment[segment] = tuple(chosen)


class Router:
    """
    Routes compiled for matching (see the module docstring).

    @param routes: The routes, in file order.
    @param default_pool: The pool that takes what no route matches, or
        L{None} (then L{match} answers L{None}: a 404).
    @param request_rules: The global request header rules.
    @param response_rules: The global response header rules.
    """

    def __init__(
        self,
        routes: Sequence[RouteConfig],
        default_pool: Optional[str],
        request_rules: Tuple[HeaderRule, ...] = (),
        response_rules: Tuple[HeaderRule, ...] = (),
    ) -> None:
        entries: List[Tuple[RouteConfig, _Entry]] = []
        for config in routes:
            route = _route(config, config.pool, request_rules, response_rules)
            paths = tuple(p.encode("ascii") for p in config.paths) or None
            entries.append((config, (route, paths, config.methods, config.scheme, config.headers)))
        self.default: Optional[Route] = (
            _route(None, default_pool, request_rules, response_rules)
            if default_pool is not None
            else None
        )
        names = {h for c, _ in entries for h in c.hosts if not h.startswith("*.")}
        suffixes = {h[1:] for c, _ in entries for h in c.hosts if h.startswith("*.")}

        def covers(config: RouteConfig, name: str, wildcard: bool) -> bool:
            # Whether the route matches every name that is `name` (exact) or
            # ends with `name` (a wildcard's suffix, such as ".example.com").
            if not config.hosts:
                return True
            for host in config.hosts:
                if host.startswith("*."):
                    if name.endswith(host[1:]) and (wildcard or name != host[1:]):
                        return True
                elif not wildcard and host == name:
                    return True
            return False

        def index(name: str, wildcard: bool) -> _PathIndex:
            return _PathIndex([e for c, e in entries if covers(c, name, wildcard)])

        self._exact = {n.encode("ascii"): index(n, False) for n in names}
        self._wildcard = {s.encode("ascii"): index(s, True) for s in suffixes}
        self._any = _PathIndex([e for c, e in entries if not c.hosts])

    def _for_host(self, host: Optional[bytes]) -> _PathIndex:
        if not host:
            return self._any
        name = host_name(host)
        found = self._exact.get(name)
        if found is not None:
            return found
        wildcard = self._wildcard
        if wildcard:
            dot = name.find(b".")
            while dot >= 0:
                found = wildcard.get(name[dot:])
                if found is not None:
                    return found
                dot = name.find(b".", dot + 1)
        return self._any

    def match(
        self,
        host: Optional[bytes],
        method: bytes,
        target: bytes,
        header: HeaderGetter,
        scheme: bytes = b"http",
    ) -> Optional[Tuple[Route, Optional[bytes]]]:
        """
        The route of a request, and the path prefix it matched (L{None} when
        the route matches any path); the default pool when no route
        matches; L{None} when there is no default pool either.

        @param host: The request's C{Host} value (a port is ignored), or
            L{None}.
        @param target: The request target in origin-form (or C{*}).
        @param header: Reads a request header by its lower-case name.
        @param scheme: C{b"https"} for a request that came over TLS.
        """
        paths = self._for_host(host)
        query = target.find(b"?")
        path = target if query < 0 else target[:query]
        end = path.find(b"/", 1)
        segment = path[1:end] if end > 0 else path[1:]
        candidates = paths.by_segment.get(segment, paths.any_path)
        for route, prefixes, methods, wanted, headers in candidates:
            matched = None
            if prefixes is not None:
                for prefix in prefixes:
                    size = len(prefix)
                    if path.startswith(prefix) and (
                        len(path) == size or path[size] == 0x2F or prefix[-1] == 0x2F
                    ):
                        matched = prefix
                        break
                else:
                    continue
            if methods is not None and method not in methods:
                continue
            if wanted is not None and wanted != scheme:
                continue
            if headers and not _headers_match(headers, header):
                continue
            return route, matched
        if self.default is None:
            return None
        return self.default, None


def _headers_match(wanted: Tuple[Tuple[bytes, Optional[bytes]], ...], header: HeaderGetter) -> bool:
    for name, value in wanted:
        values = header(name)
        if not values or (value is not None and value not in values):
            return False
    return True


def host_name(host: Optional[bytes]) -> bytes:
    """The name of a C{Host} value, without its port and trailing dot, lower-cased."""
    if not host:
        return b""
    if host[:1] == b"[":
        return host[: host.find(b"]") + 1].lower()
    name = host.partition(b":")[0].lower()
    return name[:-1] if name[-1:] == b"." else name
