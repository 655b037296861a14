"""
Routes and header rules: which pool takes a request (or which redirect or
direct answer it gets), and what is set, added or removed on its way.

Pure code: no reactor, no twisted.web.  L{lbproxy.config} reads the
C{[route:NAME]} sections and the rule keys with the parsers here; the
service compiles a L{Router} once per configuration; the front asks it once
per request.
"""

from lbproxy.routing.router import Route, Router, host_name
from lbproxy.routing.routes import (
    ROUTE_KEYS,
    DirectAnswer,
    Redirect,
    RouteConfig,
    RouteError,
    build_route,
    rewrite_target,
)
from lbproxy.routing.rules import (
    Change,
    HeaderRule,
    apply,
    changes,
    parse_request_rules,
    parse_response_rules,
)
from lbproxy.routing.template import Facts, Template, compile_template

__all__ = [
    "ROUTE_KEYS",
    "Change",
    "DirectAnswer",
    "Facts",
    "HeaderRule",
    "Redirect",
    "Route",
    "RouteConfig",
    "RouteError",
    "Router",
    "Template",
    "apply",
    "build_route",
    "changes",
    "compile_template",
    "host_name",
    "parse_request_rules",
    "parse_response_rules",
    "rewrite_target",
]
