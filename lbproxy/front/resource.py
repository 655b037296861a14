"""
The proxy as a twisted.web resource: every request of the site comes here.
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Sequence, Set, Tuple

import attr
from twisted.web.http import datetimeToString
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from lbproxy import headers as rules
from lbproxy._twisted import header_map
from lbproxy.front.site import ProxyRequest
from lbproxy.routing import Facts, Route, Router, changes, host_name, rewrite_target
from lbproxy.upstream.forwarder import Forwarder
from lbproxy.upstream.relay import change_headers

Refusal = Tuple[int, bytes, bytes]


#: C{Host} values found valid (L{rules.parse_authority}), at most
#: L{_VALID_HOSTS_KEPT} of them: a client sends the same few again and again.
_valid_hosts: Set[bytes] = set()
_VALID_HOSTS_KEPT = 1000


def refusal(request: ProxyRequest, hosts: Optional[Sequence[bytes]]) -> Optional[Refusal]:
    """
    Why a request must not be forwarded, as C{(code, phrase, detail)}, or
    L{None} when it may be.

    The Host rules (RFC 9110 section 7.2, RFC 9112 section 3.2): exactly
    one C{Host} on an HTTP/1.1 request, at most one on HTTP/1.0, each a
    valid C{uri-host [":" port]}; with an absolute-form target, a C{Host}
    naming the target's authority.

    @param hosts: The request's C{Host} values.
    """
    if request.method == b"CONNECT":
        return (501, b"Not Implemented", b"CONNECT is not supported")
    host: Optional[bytes] = None
    if hosts is None:
        if request.clientproto == b"HTTP/1.1":
            return (400, b"Bad Request", b"an HTTP/1.1 request needs a Host header")
    elif len(hosts) > 1:
        return (400, b"Bad Request", b"more than one Host header")
    else:
        host = hosts[0]
        if host not in _valid_hosts:
            if rules.parse_authority(host) is None:
                return (400, b"Bad Request", b"invalid Host header")
            if len(_valid_hosts) < _VALID_HOSTS_KEPT:
                _valid_hosts.add(host)
    absolute = _absolute(request.uri)
    if absolute is not None and host is not None:
        scheme, authority, _ = absolute
        if not rules.same_authority(host, authority, scheme):
            return (400, b"Bad Request", b"the Host header disagrees with the request target")
    return None


def _absolute(target: bytes) -> Optional[Tuple[bytes, bytes, bytes]]:
    """L{rules.absolute_target}, with the usual origin-form target known at once."""
    if target[:1] == b"/":
        return None
    return rules.absolute_target(target)


def normalize(request: ProxyRequest, hosts: Optional[Sequence[bytes]]) -> Optional[bytes]:
    """
    Make an absolute-form request origin-form, as a backend expects it: the
    target's path and query go on as C{request.target}, its authority as
    the C{Host} header (RFC 9112 section 3.2.2), which C{X-Forwarded-Host}
    then repeats.  An OPTIONS request for C{http://host} (no path) becomes
    C{OPTIONS *}.  The channel has checked the target's form and authority.

    @param hosts: The request's C{Host} values.
    @returns: The request's C{Host} from now on, L{None} for none.
    """
    absolute = _absolute(request.uri)
    if absolute is None:
        return hosts[0] if hosts else None
    _, authority, origin = absolute
    if request.method == b"OPTIONS" and request.uri.endswith(b"://" + authority):
        # RFC 9112 section 3.2.4: OPTIONS of the whole server.
        origin = b"*"
    request.target = origin
    request.requestHeaders.setRawHeaders(b"Host", [authority])
    return authority


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Routes:
    """
    The routes of one configuration and the forwarder of each pool they
    name: replaced as one object when a reloaded configuration is applied,
    so that a request sees either the old routes or the new ones.
    """

    router: Router
    forwarders: Dict[str, Forwarder]


class ProxyResource(Resource):
    """
    The root (and only) resource of the proxy's site: it refuses what must
    not reach a backend, picks the request's route, answers redirects and
    direct answers itself and hands everything else to the route's pool's
    forwarder.
    """

    isLeaf = True

    def __init__(self, forwarder: Optional[Forwarder], routes: Optional[Routes] = None) -> None:
        """
        @param forwarder: Where requests go when there are no C{routes}.
        @param routes: The routes; the service replaces them when a
            reloaded configuration is applied.
        """
        super().__init__()
        self.forwarder = forwarder
        self.routes = routes

    def render(self, request: ProxyRequest) -> int:  # type: ignore[override]
        headers = request.requestHeaders
        hosts = header_map(headers).get(b"Host")
        problem = refusal(request, hosts)
        if problem is not None:
            code, phrase, detail = problem
            request.respond_error(code, phrase, detail, close=True)
            return NOT_DONE_YET
        host = normalize(request, hosts)
        routes = self.routes
        if routes is None:
            assert self.forwarder is not None
            self.forwarder.forward(request)
            return NOT_DONE_YET
        record = request.record
        if record is not None:
            scheme = record.scheme
        else:
            scheme = b"https" if request.isSecure() else b"http"
        found = routes.router.match(
            host,
            request.method,
            request.target,
            headers.getRawHeaders,
            scheme,
        )
        if found is None:
            request.respond_error(404, b"Not Found", b"no route for this request")
            return NOT_DONE_YET
        route, prefix = found
        facts: Optional[Facts] = None
        if route.needs_facts:
            facts = Facts(request.method, scheme, host_name(host), request.target)
        if route.pool is not None:
            if route.rewrite_prefix is not None and prefix is not None:
                request.target = rewrite_target(request.target, prefix, route.rewrite_prefix)
            routes.forwarders[route.pool].forward(request, route, facts)
        else:
            answer(request, route, facts)
        return NOT_DONE_YET


def answer(request: ProxyRequest, route: Route, facts: Optional[Facts]) -> None:
    """
    Answer a request with its route's redirect or direct answer, with the
    route's response header rules applied.
    """
    request_id = rules.kept_request_id(request.requestHeaders.getRawHeaders(b"x-request-id"))
    if request_id is None:
        request_id = os.urandom(16).hex().encode("ascii")
    if request.record is not None:
        request.record.request_id = request_id
    headers = request.responseHeaders
    redirect = route.redirect
    if redirect is not None:
        request.setResponseCode(redirect.status)
        headers.setRawHeaders(b"Location", [redirect.location.render(facts)])
        body = b""
    else:
        assert route.answer is not None
        request.setResponseCode(route.answer.status, route.answer.phrase)
        body = route.answer.body
        if body:
            headers.setRawHeaders(b"Content-Type", [b"text/plain; charset=utf-8"])
    if request.code not in (204, 304):
        headers.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
    headers.setRawHeaders(b"Date", [datetimeToString()])
    if route.response_rules:
        if facts is not None:
            address = request.getClientAddress()
            facts.client = getattr(address, "host", "unix").encode("ascii", "replace")
            facts.request_id = request_id
        change_headers(headers, changes(route.response_rules, facts))
    if body:
        request.write(body)
    request.finish()
