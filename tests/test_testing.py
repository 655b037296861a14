"""
lbproxy.testing: the proxy built from an INI text over in-memory backends,
and through it the front and the request lifecycle, without sockets.
"""

from __future__ import annotations

from twisted.trial import unittest
from twisted.web import resource, server

from lbproxy.config import ConfigError
from lbproxy.testing import NoResponseYet, ProxyHarness, SeenRequest

A, B, C = "http://127.0.0.1:8001", "http://127.0.0.1:8002", "http://127.0.0.1:8003"


def ini(servers: str = f"{A}\n    {B}\n    {C}", pool: str = "", proxy: str = "") -> str:
    return f"""
[proxy]
listen = tcp:8080:interface=127.0.0.1
pool = web
{proxy}

[pool:web]
servers =
    {servers}
{pool}
"""


class Harness(unittest.SynchronousTestCase):
    def harness(self, text: str, **kwargs: object) -> ProxyHarness:
        harness = ProxyHarness(text, **kwargs)  # type: ignore[arg-type]
        self.addCleanup(harness.stop)
        return harness


class BalancingTests(Harness):
    def test_round_robin_takes_servers_in_turn(self) -> None:
        harness = self.harness(ini())
        bodies = [harness.request("GET", "/").body.decode() for _ in range(6)]
        self.assertEqual(bodies, [A, B, C, A, B, C])
        self.assertEqual([len(harness.backend(s).seen) for s in (A, B, C)], [2, 2, 2])

    def test_weights_share_the_requests(self) -> None:
        harness = self.harness(
            ini(f"{A} weight=3\n    {B}", pool="algorithm = weighted_round_robin")
        )
        bodies = [harness.request().body.decode() for _ in range(8)]
        self.assertEqual((bodies.count(A), bodies.count(B)), (6, 2))

    def test_backends_are_found_by_url_name_and_address(self) -> None:
        harness = self.harness(ini(f"{A} name=first\n    {B}"))
        self.assertIs(harness.backend("first"), harness.backend(A))
        self.assertIs(harness.backend("127.0.0.1:8001"), harness.backend(A))

    def test_host_names_resolve_in_memory(self) -> None:
        harness = self.harness(ini("http://app.internal:9000\n    http://db.internal:9000"))
        bodies = {harness.request().body for _ in range(2)}
        self.assertEqual(bodies, {b"http://app.internal:9000", b"http://db.internal:9000"})


class ForwardingTests(Harness):
    def test_backend_sees_method_target_body_and_forwarding_headers(self) -> None:
        harness = self.harness(ini(A))
        response = harness.request(
            "POST", "/a/b?c=1", headers={"Host": "shop.example"}, body=b"hello", client="192.0.2.7"
        )
        self.assertEqual(response.status, 200)
        [seen] = harness.backend(A).seen
        self.assertEqual((seen.method, seen.target, seen.body), (b"POST", b"/a/b?c=1", b"hello"))
        self.assertEqual(seen.header("host"), b"shop.example")
        self.assertEqual(seen.header("X-Forwarded-For"), b"192.0.2.7")
        self.assertEqual(seen.header("via"), b"1.1 lbproxy")

    def test_callable_backend_answers(self) -> None:
        def answer(seen: SeenRequest) -> tuple:
            return 201, {"X-Echo": seen.target.decode()}, b"made"

        harness = self.harness(ini(A), backends={A: answer})
        response = harness.request("PUT", "/thing")
        self.assertEqual((response.status, response.body), (201, b"made"))
        self.assertEqual(response.header("x-echo"), b"/thing")

    def test_resource_backend_answers(self) -> None:
        class Teapot(resource.Resource):
            isLeaf = True

            def render_GET(self, request: server.Request) -> bytes:
                request.setResponseCode(418)
                return b"short and stout"

        harness = self.harness(ini(A), backends={"127.0.0.1:8001": Teapot()})
        response = harness.request()
        self.assertEqual((response.status, response.body), (418, b"short and stout"))

    def test_server_error_passes_to_the_client(self) -> None:
        harness = self.harness(ini(A))
        harness.backend(A).fail(500)
        response = harness.request()
        self.assertEqual(response.status, 500)
        self.assertEqual(len(harness.backend(A).seen), 1)

    def test_raw_bytes_that_are_not_http_never_reach_a_backend(self) -> None:
        harness = self.harness(ini(A))
        answer = harness.send_raw(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer)
        self.assertEqual(harness.backend(A).seen, [])


class FailoverTests(Harness):
    def test_refused_connection_is_retried_on_the_next_server(self) -> None:
        harness = self.harness(ini())
        harness.backend(A).refuse()
        bodies = [harness.request().body.decode() for _ in range(4)]
        self.assertNotIn(A, bodies)
        self.assertEqual(harness.backend(A).seen, [])
        self.assertEqual(harness.backend(A).connections, 0)

    def test_all_servers_refusing_gives_502_after_every_retry(self) -> None:
        harness = self.harness(ini(f"{A}\n    {B}", pool="retries = 2"))
        harness.backend(A).refuse()
        harness.backend(B).refuse()
        pending = harness.send()
        harness.clock.advance(5)
        response = pending.response()
        self.assertEqual(response.status, 502)
        self.assertEqual(harness.backend(A).seen + harness.backend(B).seen, [])

    def test_reset_idempotent_request_is_retried(self) -> None:
        harness = self.harness(ini(f"{A}\n    {B}"))
        harness.backend(A).reset()
        response = harness.request()
        self.assertEqual(response.body.decode(), B)
        self.assertEqual(len(harness.backend(A).seen), 1)

    def test_reset_post_is_not_retried(self) -> None:
        harness = self.harness(ini(f"{A}\n    {B}"))
        harness.backend(A).reset()
        response = harness.request("POST", "/", body=b"x")
        self.assertEqual(response.status, 502)
        self.assertEqual(harness.backend(B).seen, [])

    def test_unreachable_server_times_out_then_next_server_answers(self) -> None:
        harness = self.harness(ini(f"{A}\n    {B}", pool="connect_timeout = 2s"))
        harness.backend(A).unreachable()
        pending = harness.send()
        harness.clock.advance(1.9)
        self.assertFalse(pending.answered)
        harness.clock.advance(0.2)
        self.assertEqual(pending.response().body.decode(), B)


class TimeoutTests(Harness):
    def test_response_timeout_gives_504(self) -> None:
        harness = self.harness(ini(A, pool="response_timeout = 5s\nretries = 0"))
        harness.backend(A).hang()
        pending = harness.send()
        self.assertRaises(NoResponseYet, pending.response)
        harness.clock.advance(4.9)
        self.assertFalse(pending.answered)
        harness.clock.advance(0.2)
        self.assertEqual(pending.response().status, 504)
        self.assertEqual(len(harness.backend(A).seen), 1)

    def test_request_needs_an_answer_without_time_passing(self) -> None:
        harness = self.harness(ini(A))
        harness.backend(A).hang()
        self.assertRaises(NoResponseYet, harness.request)


class HealthTests(Harness):
    def test_failing_health_checks_take_a_server_out(self) -> None:
        harness = self.harness(
            ini(
                f"{A}\n    {B}",
                pool="health_check = GET /healthz\nhealth_interval = 1s\nhealth_fall = 2",
            )
        )
        harness.backend(A).fail(503)
        harness.clock.advance(5)
        self.assertTrue(any(s.target == b"/healthz" for s in harness.backend(A).seen))
        before = len(harness.backend(A).seen)
        bodies = {harness.request("GET", "/page").body.decode() for _ in range(4)}
        self.assertEqual(bodies, {B})
        self.assertFalse(any(s.target == b"/page" for s in harness.backend(A).seen[before:]))

    def test_every_server_down_gives_503(self) -> None:
        harness = self.harness(
            ini(f"{A}\n    {B}", pool="health_check = GET /healthz\nhealth_interval = 1s")
        )
        harness.backend(A).fail(500)
        harness.backend(B).fail(500)
        harness.clock.advance(10)
        response = harness.request("GET", "/page")
        self.assertEqual(response.status, 503)
        self.assertFalse(
            any(s.target == b"/page" for s in harness.backend(A).seen + harness.backend(B).seen)
        )
        harness.backend(A).serve()
        harness.clock.advance(10)
        self.assertEqual(harness.request("GET", "/page").body.decode(), A)


class RoutingTests(Harness):
    def test_routes_and_header_rules(self) -> None:
        text = f"""
[proxy]
listen = tcp:8080
pool = web
response_headers = set X-Served-By {{server}}

[route:api]
path = /api/
pool = api
request_headers = set X-Route api

[route:health]
path = /healthz
return = 200 ok

[pool:web]
servers = {A}

[pool:api]
servers = {B}
"""
        harness = self.harness(text)
        api = harness.request("GET", "/api/users")
        self.assertEqual(api.body.decode(), B)
        self.assertEqual(harness.backend(B).seen[0].header("x-route"), b"api")
        self.assertEqual(api.header("x-served-by"), b"127.0.0.1:8002")
        self.assertEqual(harness.request("GET", "/other").body.decode(), A)
        health = harness.request("GET", "/healthz")
        self.assertEqual((health.status, health.body.strip()), (200, b"ok"))
        self.assertEqual(len(harness.backend(A).seen) + len(harness.backend(B).seen), 2)


class ReloadTests(Harness):
    def test_reload_adds_a_server_with_its_backend(self) -> None:
        harness = self.harness(ini(A))
        harness.request()
        harness.reload(ini(f"{A}\n    {B}"), backends={B: lambda seen: (202, {}, b"new")})
        bodies = sorted(harness.request().body for _ in range(2))
        self.assertEqual(bodies, [A.encode(), b"new"])
        self.assertEqual(harness.service.reloads["ok"], 1)

    def test_bad_reload_changes_nothing(self) -> None:
        harness = self.harness(ini(A))
        self.assertRaises(ConfigError, harness.reload, ini(f"{A} weight=x"))
        self.assertEqual(harness.request().body.decode(), A)


class HarnessTests(Harness):
    def test_bad_configuration_is_a_config_error(self) -> None:
        self.assertRaises(ConfigError, ProxyHarness, "[proxy]\nlisten = tcp:1\n")

    def test_backends_not_in_the_configuration_are_refused(self) -> None:
        error = self.assertRaises(
            ValueError, ProxyHarness, ini(A), backends={"http://10.0.0.1:1": None}
        )
        self.assertIn("10.0.0.1", str(error))

    def test_https_servers_are_refused(self) -> None:
        self.assertRaises(ValueError, ProxyHarness, ini("https://127.0.0.1:8443"))

    def test_stop_waits_for_requests_in_flight_until_shutdown_timeout(self) -> None:
        harness = self.harness(ini(A, proxy="shutdown_timeout = 10s"))
        harness.backend(A).hang()
        pending = harness.send()
        harness.service.stopService()
        harness.clock.advance(9.9)
        self.assertFalse(pending.answered)
        harness.clock.advance(0.2)
        self.assertTrue(pending.answered)
