"""
Value templates: text with C{{variable}} places, compiled once at config
load and rendered per request from a L{Facts} record.

C{{{} and C{}}} stand for a literal brace.  Unknown variables are refused at
load with the list of known ones.
"""

from __future__ import annotations

from typing import Callable, Dict, FrozenSet, List, Optional, Tuple, Union

import attr


@attr.s(slots=True, auto_attribs=True)
class Facts:
    """
    What a template may say about one request.

    @ivar method: The request method.
    @ivar scheme: C{b"http"} or C{b"https"}: how the client reached us.
    @ivar host: The host name of the request's C{Host}, without its port;
        empty when the request has none.
    @ivar uri: The request target as the client sent it (origin-form).
    @ivar client: The client's address.
    @ivar request_id: The request's X-Request-ID.
    @ivar server: The name of the server that answered (responses only).
    """

    method: bytes = b""
    scheme: bytes = b"http"
    host: bytes = b""
    uri: bytes = b"/"
    client: bytes = b""
    request_id: bytes = b""
    server: bytes = b"-"


def _path(facts: Facts) -> bytes:
    return facts.uri.partition(b"?")[0]


def _query(facts: Facts) -> bytes:
    return facts.uri.partition(b"?")[2]


#: Every variable, and how it is read from the facts.
VARIABLES: Dict[str, Callable[[Facts], bytes]] = {
    "scheme": lambda f: f.scheme,
    "host": lambda f: f.host,
    "uri": lambda f: f.uri,
    "path": _path,
    "query": _query,
    "method": lambda f: f.method,
    "client": lambda f: f.client,
    "request_id": lambda f: f.request_id,
    "server": lambda f: f.server,
}

#: The variables of a redirect's URL template.
URL_VARIABLES: FrozenSet[str] = frozenset({"scheme", "host", "uri", "path", "query"})
#: The variables of a request header rule.
REQUEST_VARIABLES: FrozenSet[str] = frozenset(VARIABLES) - {"server"}
#: The variables of a response header rule.
RESPONSE_VARIABLES: FrozenSet[str] = frozenset(VARIABLES)

Part = Union[bytes, Callable[[Facts], bytes]]


@attr.s(frozen=True, slots=True, auto_attribs=True, eq=False)
class Template:
    """
    A compiled template.

    @ivar text: The template as written.
    @ivar constant: The value when the template has no variable, else
        L{None}.
    @ivar parts: Literal bytes and variable readers, in order.
    """

    text: str
    constant: Optional[bytes]
    parts: Tuple[Part, ...]

    def render(self, facts: Optional[Facts]) -> bytes:
        if self.constant is not None:
            return self.constant
        assert facts is not None
        return b"".join(p if isinstance(p, bytes) else p(facts) for p in self.parts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Template) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def compile_template(text: str, allowed: FrozenSet[str]) -> Template:
    """
    Compile C{text}; raises C{ValueError} for an unknown variable, an
    unclosed or stray brace, or a byte other than visible ASCII, space and
    tab.
    """
    for char in text:
        if not (" " <= char <= "~" or char == "\t"):
            raise ValueError(f"{text!r}: only printable ASCII may be written, found {char!r}")
    parts: List[Part] = []
    literal: List[str] = []
    i, end = 0, len(text)
    while i < end:
        char = text[i]
        if char in "{}" and text[i : i + 2] in ("{{", "}}"):
            literal.append(char)
            i += 2
            continue
        if char == "}":
            raise ValueError(f"{text!r}: a '}}' without its '{{' (write '}}}}' for a brace)")
        if char == "{":
            close = text.find("}", i)
            if close < 0:
                raise ValueError(f"{text!r}: a '{{' without its '}}' (write '{{{{' for a brace)")
            name = text[i + 1 : close]
            if name not in allowed:
                known = ", ".join("{" + n + "}" for n in sorted(allowed))
                raise ValueError(f"{text!r}: unknown variable {{{name}}} (known: {known})")
            if literal:
                parts.append("".join(literal).encode("ascii"))
                literal = []
            parts.append(VARIABLES[name])
            i = close + 1
            continue
        literal.append(char)
        i += 1
    if literal:
        parts.append("".join(literal).encode("ascii"))
    constant: Optional[bytes] = None
    if all(isinstance(p, bytes) for p in parts):
        constant = b"".join(p for p in parts if isinstance(p, bytes))
    return Template(text, constant, tuple(parts))
