"""
Routes and header rules over real sockets: real backends on loopback, the
proxy in the test's reactor, http.client and raw sockets as clients, and the
installed C{lbproxy check}.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web import server

from lbproxy import config
from lbproxy.front.resource import Routes
from tests.support import HOST, Backend, ProxyTestCase
from tests.test_twistd import installed_env, tool


def two_pools(a: Backend, b: Backend, routes: str, proxy: str = "") -> str:
    return (
        f"[proxy]\nlisten = tcp:0:interface={HOST}\n{proxy}"
        f"[pool:api]\nservers = {a.url} name=api1\n"
        f"[pool:web]\nservers = {b.url} name=web1\n" + routes
    )


def dressed_handler(backend: Backend, request: server.Request, body: bytes) -> bytes:
    """Answers like an application server that says too much about itself."""
    request.setHeader(b"Server", b"gunicorn/21")
    request.setHeader(b"X-Powered-By", b"flask")
    request.setHeader(b"Content-Length", b"3")
    return b"ok\n"


class RouteTests(ProxyTestCase):
    @defer.inlineCallbacks
    def test_two_pools_by_host_and_path(self):  # type: ignore[no-untyped-def]
        a, b = self.backend("a"), self.backend("b")
        self.start_proxy(
            two_pools(
                a,
                b,
                "[route:api-host]\nhost = api.example.com\npool = api\n"
                "[route:api-path]\nhost = *.example.com example.com\npath = /api\npool = api\n",
                "pool = web\n",
            )
        )
        cases = [
            ("api.example.com", "/anything", b"a\n"),
            ("API.example.com:8080", "/", b"a\n"),
            ("www.example.com", "/api/v1?x=1", b"a\n"),
            ("example.com", "/api", b"a\n"),
            ("example.com", "/apix", b"b\n"),
            ("other.test", "/api", b"b\n"),
        ]
        for host, target, body in cases:
            response = yield self.fetch("GET", target, host=host)
            self.assertEqual((response.status, response.body), (200, body), (host, target))
        self.assertEqual([s.uri for s in a.seen], [b"/anything", b"/", b"/api/v1?x=1", b"/api"])
        self.assertEqual([s.uri for s in b.seen], [b"/apix", b"/api"])
        # Each pool counts its own requests.
        self.assertEqual(self.proxy.pools["api"].by_name["api1"].stats.served, 4)
        self.assertEqual(self.proxy.pools["web"].by_name["web1"].stats.served, 2)

    @defer.inlineCallbacks
    def test_redirect_and_direct_answer_never_reach_a_server(self):  # type: ignore[no-untyped-def]
        a, b = self.backend("a"), self.backend("b")
        self.start_proxy(
            two_pools(
                a,
                b,
                "[route:https]\nhost = old.example.com\nredirect = 301 https://{host}{uri}\n"
                "[route:moved]\npath = /docs\nredirect = 308 /manual{path}\n"
                "[route:health]\npath = /healthz\nreturn = 200 ok\n"
                "[route:maint]\npath = /shop\nreturn = 503 down for maintenance\n"
                "[route:api]\npath = /api\npool = api\n",
                "pool = web\nresponse_headers = set Strict-Transport-Security max-age=63072000\n",
            )
        )
        r = yield self.fetch("GET", "/a/b?c=d", host="OLD.example.com:8080")
        self.assertEqual(r.status, 301)
        self.assertEqual(r.header("Location"), ["https://old.example.com/a/b?c=d"])
        self.assertEqual(r.header("Content-Length"), ["0"])
        self.assertEqual(r.header("Strict-Transport-Security"), ["max-age=63072000"])
        r = yield self.fetch("POST", "/docs/x?y", host="h.test", body=b"abc")
        self.assertEqual((r.status, r.header("Location")), (308, ["/manual/docs/x"]))
        r = yield self.fetch("GET", "/healthz", host="h.test")
        self.assertEqual((r.status, r.reason, r.body), (200, "OK", b"ok\n"))
        self.assertEqual(r.header("Content-Type"), ["text/plain; charset=utf-8"])
        r = yield self.fetch("HEAD", "/healthz", host="h.test")
        self.assertEqual((r.status, r.body, r.header("Content-Length")), (200, b"", ["3"]))
        r = yield self.fetch("GET", "/shop/cart", host="h.test", requests=2)
        self.assertEqual((r.status, r.body), (503, b"down for maintenance\n"))
        self.assertEqual(r.header("Strict-Transport-Security"), ["max-age=63072000"])
        self.assertEqual((a.seen, b.seen), ([], []))

    @defer.inlineCallbacks
    def test_no_default_pool_is_a_404(self):  # type: ignore[no-untyped-def]
        a, b = self.backend("a"), self.backend("b")
        self.start_proxy(
            two_pools(
                a, b, "[route:api]\npath = /api\npool = api\n[route:web]\npath = /w\npool = web\n"
            )
        )
        r = yield self.fetch("GET", "/elsewhere", host="h.test", requests=2)
        self.assertEqual(r.status, 404)
        self.assertEqual(r.body, b"404 Not Found: no route for this request\n")
        r = yield self.fetch("GET", "/api/x", host="h.test")
        self.assertEqual((r.status, r.body), (200, b"a\n"))
        self.assertEqual(len(b.seen), 0)

    @defer.inlineCallbacks
    def test_strip_and_rewrite_prefix_and_host_rewrite(self):  # type: ignore[no-untyped-def]
        a, b = self.backend("a"), self.backend("b")
        self.start_proxy(
            two_pools(
                a,
                b,
                "[route:api]\npath = /api\nstrip_prefix = yes\nhost_rewrite = api.internal\npool = api\n"
                "[route:old]\npath = /v1/\nrewrite_prefix = /legacy\npool = web\n",
            )
        )
        for target in ("/api/users?id=3", "/api", "/api?x"):
            r = yield self.fetch("GET", target, host="front.example")
            self.assertEqual(r.status, 200)
        self.assertEqual([s.uri for s in a.seen], [b"/users?id=3", b"/", b"/?x"])
        self.assertEqual(a.seen[0].header(b"host"), [b"api.internal"])
        self.assertEqual(a.seen[0].header(b"x-forwarded-host"), [b"front.example"])
        r = yield self.fetch("GET", "http://front.example/v1/a/b", host="front.example")
        self.assertEqual(r.status, 200)
        self.assertEqual(b.seen[0].uri, b"/legacy/a/b")
        self.assertEqual(b.seen[0].header(b"host"), [b"front.example"])

    @defer.inlineCallbacks
    def test_header_rules_both_ways(self):  # type: ignore[no-untyped-def]
        a = self.backend("a", dressed_handler)
        b = self.backend("b", dressed_handler)
        self.start_proxy(
            two_pools(
                a,
                b,
                "[route:api]\npath = /api\npool = api\n"
                "request_headers =\n  set X-Client-Address {client}\n  remove X-Forwarded-For\n"
                "response_headers =\n  add X-Served-By {server}\n  set X-Route api\n",
                "pool = web\n"
                "request_headers =\n  set X-Real-IP {client}\n  add X-Tag one\n  remove Cookie\n"
                "  set X-Seen {scheme}://{host}{uri} {request_id}\n"
                "response_headers =\n  remove Server\n  set X-Frame-Options DENY\n"
                "  add X-Tag {request_id}\n",
            )
        )
        sent = [
            ("X-Tag", "zero"),
            ("Cookie", "secret=1"),
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Request-ID", "req-42"),
        ]
        r = yield self.fetch("GET", "/page?q", host="Site.test:81", headers=sent)
        self.assertEqual(r.status, 200)
        seen = b.seen[0]
        self.assertEqual(seen.header(b"x-real-ip"), [HOST.encode()])
        self.assertEqual(seen.header(b"x-tag"), [b"zero", b"one"])
        self.assertEqual(seen.header(b"cookie"), [])
        self.assertEqual(seen.header(b"x-seen"), [b"http://site.test/page?q req-42"])
        self.assertEqual(seen.header(b"x-forwarded-for"), [b"203.0.113.9, " + HOST.encode()])
        self.assertEqual(r.header("Server"), [])
        self.assertEqual(r.header("X-Powered-By"), ["flask"])
        self.assertEqual(r.header("X-Frame-Options"), ["DENY"])
        self.assertEqual(r.header("X-Tag"), ["req-42"])
        self.assertEqual(r.header("X-Route"), [])
        # The route's rules come after the global ones.
        r = yield self.fetch("GET", "/api/x", host="site.test")
        seen = a.seen[0]
        self.assertEqual(seen.header(b"x-client-address"), [HOST.encode()])
        self.assertEqual(seen.header(b"x-real-ip"), [HOST.encode()])
        self.assertEqual(seen.header(b"x-forwarded-for"), [])
        self.assertEqual(r.header("X-Served-By"), ["api1"])
        self.assertEqual(r.header("X-Route"), ["api"])
        self.assertEqual(r.header("Server"), [])
        self.assertEqual(r.body, b"ok\n")

    @defer.inlineCallbacks
    def test_reload_swaps_the_routes_at_once(self):  # type: ignore[no-untyped-def]
        a, b = self.backend("a"), self.backend("b")
        first = two_pools(a, b, "[route:x]\npath = /x\npool = api\n", "pool = web\n")
        self.start_proxy(first)
        before = self.proxy.resource.routes
        r = yield self.fetch("GET", "/x", host="h.test")
        self.assertEqual(r.body, b"a\n")
        second = two_pools(
            a,
            b,
            "[route:x]\npath = /x\npool = web\n[route:h]\npath = /h\nreturn = 204\n"
            "[route:y]\npath = /y\npool = api\n",
            "pool = web\n",
        )
        self.proxy.reload(config.parse(second, "test.ini"))
        after = self.proxy.resource.routes
        self.assertIsInstance(after, Routes)
        self.assertIsNot(after, before)
        assert after is not None
        self.assertEqual(set(after.forwarders), {"api", "web"})
        r = yield self.fetch("GET", "/x", host="h.test")
        self.assertEqual(r.body, b"b\n")
        r = yield self.fetch("GET", "/h", host="h.test")
        self.assertEqual(r.status, 204)
        # A refused reload keeps the routes as they were.
        with self.assertRaises(config.ConfigError):
            self.proxy.reload(config.parse(second.replace("pool = api\n", "pool = gone\n"), "t"))
        self.assertIs(self.proxy.resource.routes, after)


class CheckTests(ProxyTestCase):
    @defer.inlineCallbacks
    def test_lbproxy_check_reports_a_route_mistake_in_one_line(self):  # type: ignore[no-untyped-def]
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                "[proxy]\nlisten = tcp:1\n[pool:a]\nservers = http://127.0.0.1:9\n"
                "[route:r]\npath = /x\npool = a\n"
                "response_headers =\n  set Transfer-Encoding chunked\n"
            )
        out, err, code = yield getProcessOutputAndValue(
            tool("lbproxy"), ["check", path], env=installed_env()
        )
        self.assertEqual(code, 1)
        self.assertEqual(
            (out + err).decode(),
            f"{path}: [route:r] response_headers: line 1: 'set Transfer-Encoding chunked': "
            "Transfer-Encoding is a hop-by-hop or framing header: no rule may change it\n",
        )
        with open(path, "w") as f:
            f.write(
                "[proxy]\nlisten = tcp:1\n[pool:a]\nservers = http://127.0.0.1:9\n"
                "[pool:b]\nservers = http://127.0.0.1:10\n[route:r]\npath = /x\npool = a\n"
            )
        out, err, code = yield getProcessOutputAndValue(
            tool("lbproxy"), ["check", path], env=installed_env()
        )
        self.assertEqual(code, 1)
        self.assertEqual(
            (out + err).decode(),
            f"{path}: [pool:b] no route and not [proxy] pool sends requests to this pool: "
            "route to it or remove it\n",
        )
