"""
The C{[route:NAME]} sections: their keys, the values they parse to, and the
rules across keys.

A route matches on host names, path prefixes, methods and headers (each
optional) and does one thing: sends the request to a pool (optionally with
its path prefix and C{Host} rewritten), redirects it, or answers it
directly.  L{lbproxy.config} reads the sections with L{ROUTE_KEYS} and builds
each with L{build_route}; L{lbproxy.routing.router} compiles them.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Callable, Dict, FrozenSet, Mapping, Optional, Tuple

import attr

from lbproxy.headers import is_token, parse_authority
from lbproxy.routing.rules import HeaderRule, parse_request_rules, parse_response_rules
from lbproxy.routing.template import URL_VARIABLES, Template, compile_template


def parse_bool(text: str) -> bool:
    """C{yes}/C{true}/C{on}/C{1} or C{no}/C{false}/C{off}/C{0}."""
    value = text.strip().lower()
    if value in ("yes", "true", "on", "1"):
        return True
    if value in ("no", "false", "off", "0"):
        return False
    raise ValueError(f"must be yes or no, got {text.strip()!r}")


#: The statuses a redirect may have.
REDIRECT_STATUSES = (301, 302, 307, 308)

_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?$")
_POOL_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class RouteError(ValueError):
    """A rule across the keys of one route broken; C{key} names the key."""

    def __init__(self, key: Optional[str], message: str) -> None:
        super().__init__(message)
        self.key = key


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Redirect:
    """A route's redirect: a status and the C{Location} template."""

    status: int
    location: Template


@attr.s(frozen=True, slots=True, auto_attribs=True)
class DirectAnswer:
    """A route's own answer: a status and a short plain-text body."""

    status: int
    phrase: bytes
    body: bytes


@attr.s(frozen=True, slots=True, auto_attribs=True)
class RouteConfig:
    """
    One C{[route:NAME]} section.

    @ivar hosts: Lower-case names without port; C{*.example.com} for any
        name under C{example.com}.  Empty: any host.
    @ivar paths: Path prefixes, matched on segment boundaries.  Empty: any.
    @ivar methods: The methods it matches, or L{None} for all.
    @ivar headers: C{(lower-case name, value)} pairs that must all be
        present; a value of L{None} asks only that the header be there.
    @ivar pool: The pool that takes its requests, if that is its action.
    @ivar redirect: Its redirect, if that is its action.
    @ivar answer: Its direct answer, if that is its action.
    @ivar rewrite_prefix: What replaces the matched prefix (C{/} when
        C{strip_prefix} is on), or L{None} to leave the path alone.
    @ivar host_rewrite: The C{Host} its requests are sent with, if not the
        client's.
    """

    name: str
    hosts: Tuple[str, ...] = ()
    paths: Tuple[str, ...] = ()
    methods: Optional[FrozenSet[bytes]] = None
    headers: Tuple[Tuple[bytes, Optional[bytes]], ...] = ()
    pool: Optional[str] = None
    redirect: Optional[Redirect] = None
    answer: Optional[DirectAnswer] = None
    rewrite_prefix: Optional[str] = None
    host_rewrite: Optional[str] = None
    request_headers: Tuple[HeaderRule, ...] = ()
    response_headers: Tuple[HeaderRule, ...] = ()

    def matches_everything(self) -> bool:
        """Whether every request matches this route."""
        return not self.hosts and not self.paths and self.methods is None and not self.headers


# -- single values --------------------------------------------------------------


def parse_hosts(text: str) -> Tuple[str, ...]:
    """C{host}: names separated by spaces, exact or C{*.example.com}."""
    hosts = []
    for word in text.split():
        name = word.lower()
        if name.endswith(".") and len(name) > 1:
            name = name[:-1]
        if name.startswith("[") and name.endswith("]"):
            if parse_authority(name.encode("ascii", "replace")) is None:
                raise ValueError(f"{word!r} is not a valid IPv6 address in brackets")
        else:
            base = name[2:] if name.startswith("*.") else name
            if ":" in base:
                raise ValueError(
                    f"{word!r}: write the name without a port (a route matches every port)"
                )
            if "*" in base:
                raise ValueError(
                    f"{word!r}: the only wildcard is a leading '*.', as in *.example.com"
                )
            if not all(_LABEL.match(label) for label in base.split(".")):
                raise ValueError(f"{word!r} is not a host name")
        if name in hosts:
            raise ValueError(f"{word!r} is listed twice")
        hosts.append(name)
    if not hosts:
        raise ValueError("needs at least one name (leave host out to match any host)")
    return tuple(hosts)


def _check_prefix(word: str) -> str:
    if not word.startswith("/"):
        raise ValueError(f"{word!r}: a path prefix starts with '/'")
    if any(not "!" <= c <= "~" for c in word) or "?" in word or "#" in word:
        raise ValueError(f"{word!r}: a path prefix is visible ASCII, without '?' or '#'")
    return word


def parse_paths(text: str) -> Tuple[str, ...]:
    """C{path}: prefixes separated by spaces."""
    paths = []
    for word in text.split():
        _check_prefix(word)
        if word in paths:
            raise ValueError(f"{word!r} is listed twice")
        paths.append(word)
    if not paths:
        raise ValueError("needs at least one prefix, such as /api (leave path out to match any)")
    return tuple(paths)


def parse_prefix(text: str) -> str:
    """C{rewrite_prefix}: one path prefix."""
    words = text.split()
    if len(words) != 1:
        raise ValueError(f"must be one path prefix, such as /v2, got {text.strip()!r}")
    return _check_prefix(words[0])


def parse_methods(text: str) -> FrozenSet[bytes]:
    """C{methods}: tokens separated by spaces, as written (case counts)."""
    methods = set()
    for word in text.split():
        if not is_token(word.encode("ascii", "replace")):
            raise ValueError(f"{word!r} is not a method")
        methods.add(word.encode("ascii"))
    if not methods:
        raise ValueError("needs at least one method, such as GET HEAD")
    return frozenset(methods)


def parse_header_matches(text: str) -> Tuple[Tuple[bytes, Optional[bytes]], ...]:
    """C{header}: one a line, C{NAME: VALUE} (that value) or C{NAME} (present)."""
    found = []
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for number, line in enumerate(lines, 1):
        name, colon, value = line.partition(":")
        name = name.strip()
        if not is_token(name.encode("ascii", "replace")):
            raise ValueError(
                f"line {number}: {line!r}: write NAME: VALUE (or NAME alone for any value)"
            )
        value = value.strip()
        if colon and (not value or any(not " " <= c <= "~" for c in value)):
            raise ValueError(f"line {number}: {line!r}: the value is printable ASCII, not empty")
        found.append((name.lower().encode("ascii"), value.encode("ascii") if colon else None))
    return tuple(found)


def parse_pool_name(text: str) -> str:
    name = text.strip()
    if not _POOL_NAME.match(name):
        raise ValueError(f"a pool name is made of letters, digits and -._, got {name!r}")
    return name


def parse_redirect(text: str) -> Redirect:
    """C{redirect}: C{STATUS URL-TEMPLATE}, e.g. C{301 https://{host}{uri}}."""
    words = text.split()
    statuses = "|".join(str(s) for s in REDIRECT_STATUSES)
    if len(words) != 2 or not words[0].isdigit() or int(words[0]) not in REDIRECT_STATUSES:
        raise ValueError(
            f"must be {statuses} and a URL, such as 301 https://{{host}}{{uri}}, "
            f"got {text.strip()!r}"
        )
    url = words[1]
    if not url.startswith(("http://", "https://", "{scheme}://", "/")) or url.startswith("//"):
        raise ValueError(f"{url!r}: the URL starts with http://, https://, {{scheme}}:// or a '/'")
    return Redirect(int(words[0]), compile_template(url, URL_VARIABLES))


def parse_return(text: str) -> DirectAnswer:
    """C{return}: C{STATUS [TEXT]}, e.g. C{503 down for maintenance}."""
    words = text.split(None, 1)
    if not words or not words[0].isdigit() or not 200 <= int(words[0]) <= 599:
        raise ValueError(
            f"must be a status from 200 to 599 and an optional text, such as "
            f"'200 ok', got {text.strip()!r}"
        )
    status = int(words[0])
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Status"
    body = words[1].strip() if len(words) > 1 else phrase
    if any(not " " <= c <= "~" for c in body):
        raise ValueError(f"{body!r}: the text is printable ASCII")
    data = b"" if status in (204, 304) else body.encode("ascii") + b"\n"
    if status in (204, 304) and len(words) > 1:
        raise ValueError(f"a {status} answer has no body: write the status alone")
    return DirectAnswer(status, phrase.encode("ascii"), data)


def parse_host_rewrite(text: str) -> str:
    value = text.strip()
    if parse_authority(value.encode("ascii", "replace")) is None:
        raise ValueError(f"must be a host name and an optional port, got {value!r}")
    return value


# -- the schema ------------------------------------------------------------------

#: The keys of a [route:NAME] section: their parsers and defaults.
ROUTE_KEYS: Dict[str, Tuple[Callable[[str], object], object]] = {
    "host": (parse_hosts, ()),
    "path": (parse_paths, ()),
    "methods": (parse_methods, None),
    "header": (parse_header_matches, ()),
    "pool": (parse_pool_name, None),
    "redirect": (parse_redirect, None),
    "return": (parse_return, None),
    "strip_prefix": (parse_bool, False),
    "rewrite_prefix": (parse_prefix, None),
    "host_rewrite": (parse_host_rewrite, None),
    "request_headers": (parse_request_rules, ()),
    "response_headers": (parse_response_rules, ()),
}

_ACTIONS = ("pool", "redirect", "return")


def build_route(name: str, values: Mapping[str, object], written: FrozenSet[str]) -> RouteConfig:
    """
    A route from its parsed C{values} (every key of L{ROUTE_KEYS});
    C{written} names the keys the section sets.

    @raises RouteError: When the keys do not go together.
    """
    actions = [key for key in _ACTIONS if key in written]
    if not actions:
        raise RouteError(None, "needs one of pool, redirect or return")
    if len(actions) > 1:
        raise RouteError(actions[1], f"a route does one thing: {actions[0]} is set already")
    action = actions[0]
    for key in ("strip_prefix", "rewrite_prefix", "host_rewrite", "request_headers"):
        if key in written and action != "pool":
            raise RouteError(key, f"only for a route to a pool (this one has {action})")
    rewrite: Optional[str] = values["rewrite_prefix"]  # type: ignore[assignment]
    if values["strip_prefix"]:
        if rewrite is not None:
            raise RouteError("rewrite_prefix", "strip_prefix is set already: use one of them")
        rewrite = "/"
    if (rewrite is not None or "strip_prefix" in written) and not values["path"]:
        key = "strip_prefix" if "strip_prefix" in written else "rewrite_prefix"
        raise RouteError(key, "needs a path: there is no prefix to change")
    return RouteConfig(
        name=name,
        hosts=values["host"],  # type: ignore[arg-type]
        paths=values["path"],  # type: ignore[arg-type]
        methods=values["methods"],  # type: ignore[arg-type]
        headers=values["header"],  # type: ignore[arg-type]
        pool=values["pool"],  # type: ignore[arg-type]
        redirect=values["redirect"],  # type: ignore[arg-type]
        answer=values["return"],  # type: ignore[arg-type]
        rewrite_prefix=rewrite,
        host_rewrite=values["host_rewrite"],  # type: ignore[arg-type]
        request_headers=values["request_headers"],  # type: ignore[arg-type]
        response_headers=values["response_headers"],  # type: ignore[arg-type]
    )


def rewrite_target(target: bytes, prefix: bytes, replacement: bytes) -> bytes:
    """
    C{target} with the matched path C{prefix} replaced by C{replacement}
    (C{/} strips it).  The query stays; the result always starts with
    C{/}: C{/api/x?q} with C{/api} to C{/v2} is C{/v2/x?q}, C{/api} to
    C{/} is C{/}.

    @param prefix: A prefix of the target's path on a segment boundary
        (as L{lbproxy.routing.router.Router.match} found it).
    """
    base = prefix.rstrip(b"/")
    rest = target[len(base) :]
    if not rest or rest[:1] == b"?":
        return replacement + rest
    return replacement.rstrip(b"/") + rest
