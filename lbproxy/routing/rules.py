"""
Header rules: C{set}, C{add} and C{remove} on the request that goes to a
server and on the response that goes to the client.

Written one per line in C{request_headers} and C{response_headers}::

    set X-Real-IP {client}
    add Cache-Control no-transform
    remove Server

Rules are checked when the configuration loads; a request pays only for the
rules of its route (none: nothing at all).  Applied as pure functions over
C{(name, values)} pairs (L{apply}), or as a list of changes
(L{changes}) that the forwarder makes to Twisted's header objects in place.
"""

from __future__ import annotations

from typing import Callable, FrozenSet, List, Optional, Sequence, Tuple

import attr

from lbproxy.headers import HOP_BY_HOP, HeaderList, Pairs, is_token
from lbproxy.routing.template import (
    REQUEST_VARIABLES,
    RESPONSE_VARIABLES,
    Facts,
    Template,
    compile_template,
)

#: What a rule can do to a header.
ACTIONS = ("set", "add", "remove")

#: Headers no rule may touch: those of one connection (hop-by-hop), the
#: body's framing, and C{Host} (a route's C{host_rewrite} changes it).
#: Every C{Proxy-*} name is refused too.
FORBIDDEN: FrozenSet[bytes] = HOP_BY_HOP | frozenset({b"content-length", b"host"})


@attr.s(frozen=True, slots=True, auto_attribs=True)
class HeaderRule:
    """
    One rule.

    @ivar action: C{"set"} (replace every value with one), C{"add"} (one
        more value after those there) or C{"remove"} (every value).
    @ivar name: The header name, as written.
    @ivar value: The value's template; L{None} for C{remove}.
    """

    action: str
    name: bytes
    value: Optional[Template] = None


def forbidden_reason(name: bytes) -> Optional[str]:
    """Why no rule may touch the header C{name}, or L{None}."""
    lower = name.lower()
    if lower == b"host":
        return "Host is the route's to change (host_rewrite)"
    if lower in FORBIDDEN or lower.startswith(b"proxy-"):
        return f"{name.decode('ascii')} is a hop-by-hop or framing header: no rule may change it"
    return None


def parse_rule(line: str, variables: FrozenSet[str]) -> HeaderRule:
    """
    Parse one rule line; raises C{ValueError} saying what is wrong.
    """
    words = line.split(None, 2)
    action = words[0].lower() if words else ""
    if action not in ACTIONS:
        raise ValueError(
            f"{line.strip()!r}: a rule starts with set, add or remove, "
            f"such as 'set X-Real-IP {{client}}'"
        )
    if len(words) < 2 or not is_token(words[1].encode("ascii", "replace")):
        raise ValueError(f"{line.strip()!r}: {action} needs a header name after it")
    name = words[1].encode("ascii")
    reason = forbidden_reason(name)
    if reason is not None:
        raise ValueError(f"{line.strip()!r}: {reason}")
    if action == "remove":
        if len(words) > 2:
            raise ValueError(f"{line.strip()!r}: remove takes a header name only")
        return HeaderRule(action, name)
    if len(words) < 3:
        raise ValueError(f"{line.strip()!r}: {action} needs a value after the name")
    return HeaderRule(action, name, compile_template(words[2].strip(), variables))


def _rules_parser(variables: FrozenSet[str]) -> Callable[[str], Tuple[HeaderRule, ...]]:
    def parse(text: str) -> Tuple[HeaderRule, ...]:
        rules = []
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        for number, line in enumerate(lines, 1):
            try:
                rules.append(parse_rule(line, variables))
            except ValueError as e:
                raise ValueError(f"line {number}: {e}") from None
        return tuple(rules)

    return parse


#: The C{request_headers} key: one rule a line.
parse_request_rules = _rules_parser(REQUEST_VARIABLES)
#: The C{response_headers} key: one rule a line.
parse_response_rules = _rules_parser(RESPONSE_VARIABLES)


Change = Tuple[str, bytes, Optional[bytes]]


def changes(rules: Sequence[HeaderRule], facts: Optional[Facts]) -> List[Change]:
    """
    The rules with their values rendered: C{(action, name, value)}, in
    order, C{value} L{None} for C{remove}.
    """
    return [
        (rule.action, rule.name, rule.value.render(facts) if rule.value is not None else None)
        for rule in rules
    ]


def apply(pairs: Pairs, rules: Sequence[HeaderRule], facts: Optional[Facts]) -> HeaderList:
    """
    The headers C{pairs} after C{rules}, in order: C{set} replaces every
    value of the name with one (where the first one was, or at the end),
    C{add} appends a value, C{remove} drops the name.  Names are compared
    without case; a header the rules do not name stays as it was.
    """
    result: HeaderList = [(name, list(values)) for name, values in pairs]
    for action, name, value in changes(rules, facts):
        lower = name.lower()
        at = next((i for i, (n, _) in enumerate(result) if n.lower() == lower), None)
        if action == "remove":
            result = [(n, v) for n, v in result if n.lower() != lower]
        elif action == "set":
            assert value is not None
            if at is None:
                result.append((name, [value]))
            else:
                result[at] = (result[at][0], [value])
                result = [
                    (n, v) for i, (n, v) in enumerate(result) if i == at or n.lower() != lower
                ]
        else:
            assert value is not None
            if at is None:
                result.append((name, [value]))
            else:
                result[at][1].append(value)
    return result
