"""
Routes and header rules as pure code: matching, prefix rewriting, redirect
templates, header rules and the configuration's one-line errors, as tables.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from twisted.trial import unittest

from lbproxy import routing
from lbproxy.config import ConfigError, parse
from lbproxy.routing import Facts, Router, compile_template, rewrite_target
from lbproxy.routing.template import REQUEST_VARIABLES, URL_VARIABLES


def config_text(routes: str, proxy: str = "", pools: Sequence[str] = ("a", "b", "c")) -> str:
    text = "[proxy]\nlisten = tcp:1\n" + proxy
    for name in pools:
        text += f"[pool:{name}]\nservers = http://{name}.internal\n"
    return text + routes


def router(routes: str, proxy: str = "", pools: Sequence[str] = ("a", "b", "c")) -> Router:
    return parse(config_text(routes, proxy, pools)).router()


def no_headers(name: bytes) -> Optional[List[bytes]]:
    return None


def headers_of(values: Dict[bytes, List[bytes]]):  # type: ignore[no-untyped-def]
    return lambda name: values.get(name)


def error(text: str) -> str:
    try:
        parse(text, "t.ini")
    except ConfigError as e:
        return str(e)
    raise AssertionError("no error")


ROUTES = """
[route:api]
host = example.com *.example.com
path = /api /v1/
pool = a
[route:admin]
host = admin.example.com
pool = b
[route:static]
path = /static
methods = GET HEAD
pool = c
[route:canary]
header = X-Canary: 1
pool = b
[route:any-example]
host = *.example.org
pool = c
"""


class MatchTests(unittest.TestCase):
    def test_table(self) -> None:
        r = router(ROUTES, "pool = a\n")
        cases = [
            # host, method, target, headers, (route, prefix)
            (b"example.com", b"GET", b"/api", {}, ("api", b"/api")),
            (b"example.com", b"GET", b"/api/", {}, ("api", b"/api")),
            (b"example.com", b"GET", b"/api/x/y", {}, ("api", b"/api")),
            (b"example.com", b"GET", b"/api?q=1", {}, ("api", b"/api")),
            (b"example.com", b"GET", b"/apix", {}, (None, None)),
            (b"EXAMPLE.com:8080", b"GET", b"/api", {}, ("api", b"/api")),
            (b"example.com.", b"GET", b"/api", {}, ("api", b"/api")),
            (b"www.example.com", b"POST", b"/api", {}, ("api", b"/api")),
            (b"a.b.example.com", b"GET", b"/api", {}, ("api", b"/api")),
            (b"badexample.com", b"GET", b"/api", {}, (None, None)),
            # a prefix with a trailing slash does not match without it
            (b"example.com", b"GET", b"/v1/x", {}, ("api", b"/v1/")),
            (b"example.com", b"GET", b"/v1", {}, (None, None)),
            # first match in file order: admin.example.com is under *.example.com
            (b"admin.example.com", b"GET", b"/api", {}, ("api", b"/api")),
            (b"admin.example.com", b"GET", b"/other", {}, ("admin", None)),
            # methods
            (b"x.test", b"GET", b"/static/a.css", {}, ("static", b"/static")),
            (b"x.test", b"POST", b"/static/a.css", {}, (None, None)),
            # headers
            (b"x.test", b"GET", b"/", {b"x-canary": [b"1"]}, ("canary", None)),
            (b"x.test", b"GET", b"/", {b"x-canary": [b"2"]}, (None, None)),
            # wildcards do not match the bare name
            (b"www.example.org", b"GET", b"/", {}, ("any-example", None)),
            (b"example.org", b"GET", b"/", {}, (None, None)),
            # no Host (HTTP/1.0): routes without host only
            (None, b"GET", b"/static/x", {}, ("static", b"/static")),
            (None, b"GET", b"/api", {}, (None, None)),
            (b"[::1]:8080", b"GET", b"/api", {}, (None, None)),
            (b"x.test", b"OPTIONS", b"*", {}, (None, None)),
        ]
        for host, method, target, headers, (name, prefix) in cases:
            found = r.match(host, method, target, headers_of(headers))
            assert found is not None
            route, matched = found
            self.assertEqual((route.name, matched), (name, prefix), (host, method, target))
            if name is None:
                self.assertIs(route, r.default)
                self.assertEqual(route.pool, "a")

    def test_without_a_default_pool_nothing_matches(self) -> None:
        r = router(ROUTES)
        self.assertIsNone(r.default)
        self.assertIsNone(r.match(b"nowhere.test", b"GET", b"/", no_headers))

    def test_root_prefix_and_route_without_conditions(self) -> None:
        r = router("[route:r]\npath = /\npool = a\n", pools=("a",))
        found = r.match(b"h", b"GET", b"/x", no_headers)
        assert found is not None
        self.assertEqual((found[0].name, found[1]), ("r", b"/"))

    def test_scheme_tells_plain_from_tls_connections(self) -> None:
        r = router(
            "[route:plain]\nscheme = http\nredirect = 301 https://{host}{uri}\n"
            "[route:secure]\nscheme = https\npath = /s\npool = a\n[route:rest]\npool = b\n",
            pools=("a", "b"),
        )
        cases = [
            (b"http", b"/s", "plain"),
            (b"http", b"/x", "plain"),
            (b"https", b"/s", "secure"),
            (b"https", b"/x", "rest"),
        ]
        for scheme, target, name in cases:
            found = r.match(b"h", b"GET", target, no_headers, scheme)
            assert found is not None
            self.assertEqual(found[0].name, name, (scheme, target))
        # Without the argument a request is taken as plain HTTP.
        found = r.match(b"h", b"GET", b"/s", no_headers)
        assert found is not None
        self.assertEqual(found[0].name, "plain")
        self.assertIn(
            "[route:x] scheme: must be http or https, got 'ftp'",
            error(config_text("[route:x]\nscheme = ftp\npool = a\n", "", ("a",))),
        )

    def test_header_without_a_value_asks_for_presence(self) -> None:
        r = router(
            "[route:r]\nheader =\n  X-A\n  X-B: yes\npool = a\n[route:b]\npool = b\n",
            pools=("a", "b"),
        )
        cases = [
            ({b"x-a": [b""], b"x-b": [b"yes"]}, "r"),
            ({b"x-a": [b"1"], b"x-b": [b"no", b"yes"]}, "r"),
            ({b"x-b": [b"yes"]}, "b"),
        ]
        for headers, name in cases:
            found = r.match(b"h", b"GET", b"/", headers_of(headers))
            assert found is not None
            self.assertEqual(found[0].name, name, headers)

    def test_many_routes_keep_file_order(self) -> None:
        # Routes spread over the host and segment indexes still answer in
        # file order: a later, more specific route never wins.
        text = "[route:all-b]\nhost = *.b.test\npool = a\n"
        for i in range(50):
            text += f"[route:r{i}]\nhost = h{i}.b.test h{i}.c.test\npath = /p{i}\npool = b\n"
        text += "[route:rest]\npool = c\n"
        r = parse(config_text(text, pools=("a", "b", "c"))).router()
        for host, target, name in [
            (b"h7.b.test", b"/p7", "all-b"),
            (b"h7.c.test", b"/p7/x", "r7"),
            (b"h7.c.test", b"/p8", "rest"),
            (b"zz.c.test", b"/p1", "rest"),
        ]:
            found = r.match(host, b"GET", target, no_headers)
            assert found is not None
            self.assertEqual(found[0].name, name, (host, target))


class RewriteTests(unittest.TestCase):
    def test_table(self) -> None:
        cases = [
            (b"/api/x?q", b"/api", b"/", b"/x?q"),
            (b"/api", b"/api", b"/", b"/"),
            (b"/api/", b"/api", b"/", b"/"),
            (b"/api?q", b"/api", b"/", b"/?q"),
            (b"/api/x", b"/api/", b"/", b"/x"),
            (b"/api/x", b"/api", b"/v2", b"/v2/x"),
            (b"/api/x", b"/api", b"/v2/", b"/v2/x"),
            (b"/api", b"/api", b"/v2", b"/v2"),
            (b"/api?q", b"/api", b"/v2", b"/v2?q"),
            (b"/x/y", b"/", b"/app", b"/app/x/y"),
        ]
        for target, prefix, replacement, expected in cases:
            self.assertEqual(rewrite_target(target, prefix, replacement), expected, target)

    def test_strip_and_rewrite_compile_into_the_route(self) -> None:
        r = router(
            "[route:s]\npath = /s\nstrip_prefix = yes\npool = a\n"
            "[route:w]\npath = /w\nrewrite_prefix = /new\nhost_rewrite = app.internal:8080\npool = b\n"
            "[route:c]\npool = c\n"
        )
        s = r.match(b"h", b"GET", b"/s/x", no_headers)
        w = r.match(b"h", b"GET", b"/w/x", no_headers)
        assert s is not None and w is not None
        self.assertEqual((s[0].rewrite_prefix, s[0].host_rewrite), (b"/", None))
        self.assertEqual((w[0].rewrite_prefix, w[0].host_rewrite), (b"/new", b"app.internal:8080"))


FACTS = Facts(
    method=b"GET",
    scheme=b"http",
    host=b"example.com",
    uri=b"/a/b?x=1",
    client=b"192.0.2.7",
    request_id=b"abc",
    server=b"app1",
)


class TemplateTests(unittest.TestCase):
    def test_rendering(self) -> None:
        cases = [
            ("https://{host}{uri}", b"https://example.com/a/b?x=1"),
            ("{scheme}://{host}/new{path}", b"http://example.com/new/a/b"),
            ("/search?{query}", b"/search?x=1"),
            ("{{literal}} {method}", b"{literal} GET"),
            ("plain", b"plain"),
        ]
        for text, expected in cases:
            self.assertEqual(
                compile_template(text, URL_VARIABLES | {"method"}).render(FACTS), expected
            )

    def test_a_template_without_variables_is_a_constant(self) -> None:
        template = compile_template("max-age=1", REQUEST_VARIABLES)
        self.assertEqual(template.constant, b"max-age=1")
        self.assertEqual(template.render(None), b"max-age=1")

    def test_errors(self) -> None:
        cases = [
            (
                "{nope}",
                "'{nope}': unknown variable {nope} (known: {host}, {path}, {query}, {scheme}, {uri})",
            ),
            ("{host", "'{host': a '{' without its '}' (write '{{' for a brace)"),
            ("a}b", "'a}b': a '}' without its '{' (write '}}' for a brace)"),
            (
                "{client}",
                "'{client}': unknown variable {client} (known: {host}, {path}, {query}, {scheme}, {uri})",
            ),
            ("caf\u00e9", "'caf\u00e9': only printable ASCII may be written, found '\u00e9'"),
        ]
        for text, message in cases:
            with self.assertRaises(ValueError) as caught:
                compile_template(text, URL_VARIABLES)
            self.assertEqual(str(caught.exception), message)


class HeaderRuleTests(unittest.TestCase):
    def rules(self, text: str, response: bool = False):  # type: ignore[no-untyped-def]
        parse_rules = routing.parse_response_rules if response else routing.parse_request_rules
        return parse_rules(text)

    def test_set_add_remove_table(self) -> None:
        before = [
            (b"Host", [b"example.com"]),
            (b"X-Thing", [b"1", b"2"]),
            (b"Accept", [b"*/*"]),
        ]
        cases = [
            ("set X-Real-IP {client}", before + [(b"X-Real-IP", [b"192.0.2.7"])]),
            (
                "set x-thing one",
                [(b"Host", [b"example.com"]), (b"X-Thing", [b"one"]), (b"Accept", [b"*/*"])],
            ),
            (
                "add X-THING 3",
                [
                    (b"Host", [b"example.com"]),
                    (b"X-Thing", [b"1", b"2", b"3"]),
                    (b"Accept", [b"*/*"]),
                ],
            ),
            ("add X-New {request_id}", before + [(b"X-New", [b"abc"])]),
            ("remove x-thing", [(b"Host", [b"example.com"]), (b"Accept", [b"*/*"])]),
            ("remove X-Absent", before),
            (
                "remove X-Thing\nadd X-Thing a\nadd X-Thing b",
                [(b"Host", [b"example.com"]), (b"Accept", [b"*/*"]), (b"X-Thing", [b"a", b"b"])],
            ),
            (
                "set X-Where {scheme}://{host}{path}",
                before + [(b"X-Where", [b"http://example.com/a/b"])],
            ),
        ]
        for text, expected in cases:
            self.assertEqual(routing.apply(before, self.rules(text), FACTS), expected, text)

    def test_response_rules_may_name_the_server(self) -> None:
        rules = self.rules("set X-Served-By {server}\nremove Server", response=True)
        after = routing.apply([(b"Server", [b"gunicorn"])], rules, FACTS)
        self.assertEqual(after, [(b"X-Served-By", [b"app1"])])

    def test_errors(self) -> None:
        cases = [
            ("set", "line 1: 'set': set needs a header name after it"),
            ("set X-A", "line 1: 'set X-A': set needs a value after the name"),
            (
                "put X-A 1",
                "line 1: 'put X-A 1': a rule starts with set, add or remove, such as 'set X-Real-IP {client}'",
            ),
            ("remove X-A 1", "line 1: 'remove X-A 1': remove takes a header name only"),
            ("set X(A) 1", "line 1: 'set X(A) 1': set needs a header name after it"),
            (
                "set X-A 1\nset Connection close",
                "line 2: 'set Connection close': Connection is a hop-by-hop or framing header: no rule may change it",
            ),
            (
                "remove Transfer-Encoding",
                "line 1: 'remove Transfer-Encoding': Transfer-Encoding is a hop-by-hop or framing header: no rule may change it",
            ),
            (
                "add Content-Length 5",
                "line 1: 'add Content-Length 5': Content-Length is a hop-by-hop or framing header: no rule may change it",
            ),
            (
                "set Upgrade h2c",
                "line 1: 'set Upgrade h2c': Upgrade is a hop-by-hop or framing header: no rule may change it",
            ),
            (
                "set Proxy-Anything x",
                "line 1: 'set Proxy-Anything x': Proxy-Anything is a hop-by-hop or framing header: no rule may change it",
            ),
            (
                "set Keep-Alive 5",
                "line 1: 'set Keep-Alive 5': Keep-Alive is a hop-by-hop or framing header: no rule may change it",
            ),
            (
                "set TE trailers",
                "line 1: 'set TE trailers': TE is a hop-by-hop or framing header: no rule may change it",
            ),
            (
                "set Trailer X",
                "line 1: 'set Trailer X': Trailer is a hop-by-hop or framing header: no rule may change it",
            ),
            (
                "set Host other",
                "line 1: 'set Host other': Host is the route's to change (host_rewrite)",
            ),
            (
                "set X-S {server}",
                "line 1: '{server}': unknown variable {server} (known: {client}, {host}, {method}, {path}, {query}, {request_id}, {scheme}, {uri})",
            ),
        ]
        for text, message in cases:
            with self.assertRaises(ValueError) as caught:
                self.rules(text)
            self.assertEqual(str(caught.exception), message, text)


POOLS = "[proxy]\nlisten = tcp:1\n[pool:a]\nservers = http://h\n"


class ConfigErrorTests(unittest.TestCase):
    def test_messages(self) -> None:
        cases = [
            ("[route:r]\npath = /x\n", "t.ini: [route:r] needs one of pool, redirect or return"),
            (
                "[route:r]\npool = a\nreturn = 200\n",
                "t.ini: [route:r] return: a route does one thing: pool is set already",
            ),
            (
                "[route:r]\npool = nope\n",
                "t.ini: [route:r] pool: no [pool:nope] section (defined: a)",
            ),
            (
                "[route:r]\npool = a\nhost = *\n",
                "t.ini: [route:r] host: '*': the only wildcard is a leading '*.', as in *.example.com",
            ),
            (
                "[route:r]\npool = a\nhost = www.*.com\n",
                "t.ini: [route:r] host: 'www.*.com': the only wildcard is a leading '*.', as in *.example.com",
            ),
            (
                "[route:r]\npool = a\nhost = example.com:80\n",
                "t.ini: [route:r] host: 'example.com:80': write the name without a port (a route matches every port)",
            ),
            (
                "[route:r]\npool = a\nhost = ex_ample..com\n",
                "t.ini: [route:r] host: 'ex_ample..com' is not a host name",
            ),
            (
                "[route:r]\npool = a\nhost = a.test A.test\n",
                "t.ini: [route:r] host: 'A.test' is listed twice",
            ),
            (
                "[route:r]\npool = a\npath = api\n",
                "t.ini: [route:r] path: 'api': a path prefix starts with '/'",
            ),
            (
                "[route:r]\npool = a\npath = /a?b\n",
                "t.ini: [route:r] path: '/a?b': a path prefix is visible ASCII, without '?' or '#'",
            ),
            (
                "[route:r]\npool = a\nmethods = GET P(ST\n",
                "t.ini: [route:r] methods: 'P(ST' is not a method",
            ),
            (
                "[route:r]\npool = a\nheader = X-A:\n",
                "t.ini: [route:r] header: line 1: 'X-A:': the value is printable ASCII, not empty",
            ),
            (
                "[route:r]\npool = a\nheader = X A: 1\n",
                "t.ini: [route:r] header: line 1: 'X A: 1': write NAME: VALUE (or NAME alone for any value)",
            ),
            (
                "[route:r]\nredirect = 303 /x\n",
                "t.ini: [route:r] redirect: must be 301|302|307|308 and a URL, such as 301 https://{host}{uri}, got '303 /x'",
            ),
            (
                "[route:r]\nredirect = 301 example.com\n",
                "t.ini: [route:r] redirect: 'example.com': the URL starts with http://, https://, {scheme}:// or a '/'",
            ),
            (
                "[route:r]\nredirect = 301 https://{hots}/\n",
                "t.ini: [route:r] redirect: 'https://{hots}/': unknown variable {hots} (known: {host}, {path}, {query}, {scheme}, {uri})",
            ),
            (
                "[route:r]\nreturn = 700\n",
                "t.ini: [route:r] return: must be a status from 200 to 599 and an optional text, such as '200 ok', got '700'",
            ),
            (
                "[route:r]\nreturn = 204 nothing\n",
                "t.ini: [route:r] return: a 204 answer has no body: write the status alone",
            ),
            (
                "[route:r]\nreturn = 200\nstrip_prefix = yes\npath = /x\n",
                "t.ini: [route:r] strip_prefix: only for a route to a pool (this one has return)",
            ),
            (
                "[route:r]\nredirect = 301 /\nhost_rewrite = x\n",
                "t.ini: [route:r] host_rewrite: only for a route to a pool (this one has redirect)",
            ),
            (
                "[route:r]\nreturn = 200\nrequest_headers = set X-A 1\n",
                "t.ini: [route:r] request_headers: only for a route to a pool (this one has return)",
            ),
            (
                "[route:r]\npool = a\nstrip_prefix = yes\n",
                "t.ini: [route:r] strip_prefix: needs a path: there is no prefix to change",
            ),
            (
                "[route:r]\npool = a\npath = /x\nstrip_prefix = yes\nrewrite_prefix = /y\n",
                "t.ini: [route:r] rewrite_prefix: strip_prefix is set already: use one of them",
            ),
            (
                "[route:r]\npool = a\npath = /x\nrewrite_prefix = y\n",
                "t.ini: [route:r] rewrite_prefix: 'y': a path prefix starts with '/'",
            ),
            (
                "[route:r]\npool = a\nhost_rewrite = a b\n",
                "t.ini: [route:r] host_rewrite: must be a host name and an optional port, got 'a b'",
            ),
            (
                "[route:r]\npool = a\nresponse_headers = set Connection close\n",
                "t.ini: [route:r] response_headers: line 1: 'set Connection close': Connection is a hop-by-hop or framing header: no rule may change it",
            ),
            (
                "[route:r]\npool = a\npoll = a\n",
                "t.ini: [route:r] poll: unknown key (did you mean pool? known: host, path, methods, scheme, header, pool, redirect, return, strip_prefix, rewrite_prefix, host_rewrite, request_headers, response_headers)",
            ),
            (
                "[route:all]\npool = a\n[route:late]\npath = /x\npool = a\n",
                "t.ini: [route:late] can never match: [route:all] before it matches every request",
            ),
            (
                "[route:a b]\npool = a\n",
                "t.ini: [route:a b] a route name is made of letters, digits and -._",
            ),
            (
                "[rout:x]\npool = a\n",
                "t.ini: [rout:x] unknown section (did you mean [route:x]? known: [proxy], [admin], [pool:NAME], [tls:NAME], [route:NAME])",
            ),
            (
                "[route:r]\npath = /x\npool = a\n[pool:b]\nservers = http://i\n",
                "t.ini: [pool:b] no route and not [proxy] pool sends requests to this pool: route to it or remove it",
            ),
        ]
        for text, message in cases:
            self.assertEqual(error(POOLS + text), message, text)

    def test_global_rules_are_proxy_keys(self) -> None:
        self.assertEqual(
            error(POOLS.replace("tcp:1\n", "tcp:1\nrequest_headers = set Content-Length 1\n")),
            "t.ini: [proxy] request_headers: line 1: 'set Content-Length 1': "
            "Content-Length is a hop-by-hop or framing header: no rule may change it",
        )

    def test_default_pool_with_routes(self) -> None:
        # With routes, [proxy] pool is the default pool, not required; with
        # none, the only pool still takes everything.
        routed = parse(POOLS + "[route:r]\npath = /x\npool = a\n")
        self.assertIsNone(routed.pool)
        self.assertEqual(routed.used_pools(), frozenset({"a"}))
        self.assertIn("1 route, no default pool (404)", routed.summary())
        plain = parse(POOLS)
        self.assertEqual(plain.pool, "a")
        self.assertIn("requests go to pool 'a'", plain.summary())
        both = parse(
            POOLS.replace("tcp:1\n", "tcp:1\npool = a\n") + "[route:r]\nreturn = 200\npath = /h\n"
        )
        self.assertIn("1 route, default pool 'a'", both.summary())

    def test_route_values(self) -> None:
        c = parse(
            POOLS + "[route:r]\nhost = Example.COM. *.example.com\npath = /api /v1\nmethods = GET\n"
            "header = X-A: 1\nredirect = 308 https://{host}{uri}\n"
            "response_headers = set X-A 1\n"
            "[route:m]\npath = /m\nreturn = 503 down for maintenance\n"
            "[route:h]\npath = /h\nreturn = 204\n[route:d]\npool = a\n"
        )
        r, m, h, _ = c.routes
        self.assertEqual(r.hosts, ("example.com", "*.example.com"))
        self.assertEqual(r.paths, ("/api", "/v1"))
        self.assertEqual(r.methods, frozenset({b"GET"}))
        self.assertEqual(r.headers, ((b"x-a", b"1"),))
        assert r.redirect is not None
        self.assertEqual(r.redirect.status, 308)
        assert m.answer is not None and h.answer is not None
        self.assertEqual((m.answer.status, m.answer.body), (503, b"down for maintenance\n"))
        self.assertEqual(
            (h.answer.status, h.answer.phrase, h.answer.body), (204, b"No Content", b"")
        )


def naive_match(routes, host, method, target, headers):  # type: ignore[no-untyped-def]
    """The rules read literally: every route in file order, nothing indexed."""
    name = routing.host_name(host).decode()
    path = target.split(b"?")[0].decode()
    for route in routes:
        if route.hosts and not any(
            name == h or (h.startswith("*.") and name.endswith(h[1:])) for h in route.hosts
        ):
            continue
        matched = None
        if route.paths:
            for p in route.paths:
                if path == p or path.startswith(p if p.endswith("/") else p + "/"):
                    matched = p
                    break
            else:
                continue
        if route.methods is not None and method not in route.methods:
            continue
        if any(
            not headers.get(n) or (v is not None and v not in headers[n]) for n, v in route.headers
        ):
            continue
        return route.name, matched
    return None


class CompiledEqualsNaiveTests(unittest.TestCase):
    def test_random_configurations(self) -> None:
        import random

        rng = random.Random(15)
        names = ["a.test", "b.a.test", "c.b.a.test", "x.test", "a.other"]
        hosts = names + ["*.a.test", "*.b.a.test", "*.test"]
        paths = ["/", "/api", "/api/", "/api/v1", "/static", "/s", "//x"]
        targets = [
            b"/",
            b"/api",
            b"/api/",
            b"/api/v1/x",
            b"/apix",
            b"/static?x",
            b"/s/t",
            b"//x/y",
            b"*",
        ]
        for _ in range(200):
            text = ""
            for i in range(rng.randint(1, 12)):
                text += f"[route:r{i}]\npool = a\n"
                if rng.random() < 0.7:
                    text += f"host = {' '.join(rng.sample(hosts, rng.randint(1, 3)))}\n"
                if rng.random() < 0.7:
                    text += f"path = {' '.join(rng.sample(paths, rng.randint(1, 2)))}\n"
                if rng.random() < 0.2:
                    text += "methods = POST\n"
                if rng.random() < 0.2:
                    text += "header = X-A: 1\n"
            try:
                config = parse(config_text(text, pools=("a",)))
            except ConfigError:
                continue  # a route that matches everything before others
            r = config.router()
            for host in [None] + [n.encode() for n in names] + [b"A.TEST:81"]:
                for target in targets:
                    for method in (b"GET", b"POST"):
                        for headers in ({}, {b"x-a": [b"1"]}):
                            found = r.match(host, method, target, headers_of(headers))
                            got = None
                            if found is not None:
                                got = (found[0].name, found[1].decode() if found[1] else None)
                            self.assertEqual(
                                got,
                                naive_match(config.routes, host, method, target, headers),
                                (text, host, target, method, headers),
                            )


class ReadmeExampleTests(unittest.TestCase):
    def test_the_readme_example_is_a_valid_configuration(self) -> None:
        import os
        import re

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(root, "README.md")) as f:
            readme = f.read()
        start = readme.index("\n## Routes and header rules\n")
        block = re.search(r"```ini\n(.*?)```", readme[start:], re.S)
        assert block is not None
        c = parse(block.group(1), "README.md")
        self.assertEqual([r.name for r in c.routes], ["health", "admin", "api", "static"])
        self.assertEqual(
            routing.apply([], c.response_headers, None)[0],
            (b"Strict-Transport-Security", [b"max-age=63072000; includeSubDomains"]),
        )
        found = c.router().match(b"example.com", b"GET", b"/api/users", no_headers)
        assert found is not None
        self.assertEqual((found[0].pool, found[0].rewrite_prefix), ("api", b"/"))
