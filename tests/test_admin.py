"""
The admin listener over real sockets: /status, the write actions (drain,
enable, maint, weight), the token and origin checks, and /metrics parsed with
prometheus_client's own parser and checked against the traffic sent.
"""

from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence, Tuple

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, threads

from tests.support import (
    HOST,
    ProxyTestCase,
    Response,
    fetch,
    held_handler,
    proxy_config,
    raw_exchange,
    refused_url,
    wait_until,
)

TOKEN = "s3cret-token-for-the-tests"


def admin_config(servers: Sequence[str], token: Optional[str] = None, **proxy: str) -> str:
    text = proxy_config(servers, **proxy)
    text += f"[admin]\nlisten = tcp:0:interface={HOST}\n"
    if token is not None:
        text += f"token = {token}\n"
    return text


class AdminTestCase(ProxyTestCase):
    def start_admin(self, text: str) -> None:
        proxy = self.start_proxy(text)
        assert proxy.admin_port is not None
        self.admin = proxy.admin_port.getHost().port

    def admin_call(
        self,
        method: str,
        target: str,
        body: Optional[bytes] = None,
        headers: Sequence[Tuple[str, str]] = (),
    ) -> defer.Deferred[Response]:
        return threads.deferToThread(
            fetch, self.admin, method, target, headers, body, f"{HOST}:{self.admin}"
        )

    @defer.inlineCallbacks
    def status(self):  # type: ignore[no-untyped-def]
        response = yield self.admin_call("GET", "/status")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("Content-Type"), ["application/json"])
        return json.loads(response.body)

    @defer.inlineCallbacks
    def server_status(self, name: str):  # type: ignore[no-untyped-def]
        status = yield self.status()
        return {s["name"]: s for s in status["pools"][0]["servers"]}[name]

    @defer.inlineCallbacks
    def send(self, n: int) -> defer.Deferred[List[bytes]]:  # type: ignore[misc]
        bodies = []
        for _ in range(n):
            response = yield self.fetch("GET", "/")
            bodies.append(response.body)
        return bodies


class StatusTests(AdminTestCase):
    @defer.inlineCallbacks
    def test_status_reports_pools_servers_and_traffic(self):  # type: ignore[no-untyped-def]
        a, b = self.backend("a"), self.backend("b")
        dead = refused_url()
        self.start_admin(
            admin_config(
                [f"{a.url} name=a", f"{b.url} name=b weight=3", f"{dead} name=dead"],
                algorithm="weighted_round_robin",
                pool={"max_fails": "0"},
            )
        )
        yield self.send(10)
        status = yield self.status()
        self.assertEqual(status["config"], "test.ini")
        (pool,) = status["pools"]
        self.assertEqual(pool["name"], "test")
        self.assertTrue(pool["takes_requests"])
        servers = {s["name"]: s for s in pool["servers"]}
        self.assertEqual(set(servers), {"a", "b", "dead"})
        self.assertEqual(servers["b"]["weight"], 3)
        self.assertEqual(servers["b"]["effective_weight"], 3.0)
        self.assertEqual(servers["a"]["state"], "UP")
        self.assertEqual(servers["a"]["in_flight"], 0)
        # Every request was answered by a or b; the dead server failed its
        # attempts, which went on to another server.
        self.assertEqual(servers["a"]["requests_served"] + servers["b"]["requests_served"], 10)
        self.assertEqual(servers["a"]["requests_served"], len(a.seen))
        self.assertEqual(servers["dead"]["requests_served"], 0)
        self.assertGreater(servers["dead"]["failed_connects"], 0)
        self.assertEqual(servers["dead"]["failed_attempts"], servers["dead"]["failed_connects"])
        self.assertEqual(pool["retries_made"], servers["dead"]["failed_connects"])
        self.assertEqual(servers["a"]["requests_last_minute"], servers["a"]["requests_served"])
        latency = servers["a"]["latency_ms"]
        self.assertGreater(latency["p50"], 0)
        self.assertGreaterEqual(latency["p99"], latency["p50"])
        self.assertIsNone(servers["dead"]["latency_ms"]["p50"])

    @defer.inlineCallbacks
    def test_in_flight_is_reported_while_a_request_is_held(self):  # type: ignore[no-untyped-def]
        a = self.backend("a", held_handler)
        self.start_admin(admin_config([f"{a.url} name=a"]))
        pending = self.fetch("GET", "/")
        yield wait_until(lambda: a.held)
        server = yield self.server_status("a")
        self.assertEqual(server["in_flight"], 1)
        a.held[0].callback(b"done")
        response = yield pending
        self.assertEqual(response.body, b"done")
        server = yield self.server_status("a")
        self.assertEqual(server["in_flight"], 0)
        self.assertEqual(server["requests_served"], 1)

    @defer.inlineCallbacks
    def test_dashboard_is_one_self_contained_page(self):  # type: ignore[no-untyped-def]
        a = self.backend("a")
        self.start_admin(admin_config([a.url]))
        response = yield self.admin_call("GET", "/")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("Content-Type"), ["text/html; charset=utf-8"])
        page = response.body.decode()
        self.assertIn("/status", page)
        # Nothing is fetched from elsewhere: no external scripts, styles or fonts.
        self.assertNotIn("src=", page.replace("script-src", ""))
        self.assertNotIn("http://", page.replace("http://www.w3.org/2000/svg", ""))
        self.assertNotIn("https://", page)
        self.assertEqual(response.header("X-Frame-Options"), ["DENY"])

    @defer.inlineCallbacks
    def test_unknown_paths_and_methods(self):  # type: ignore[no-untyped-def]
        a = self.backend("a")
        self.start_admin(admin_config([f"{a.url} name=a"]))
        cases = [
            ("GET", "/nothing", 404),
            ("POST", "/status", 405),
            ("GET", "/pools/test/servers/a/drain", 405),
            ("POST", "/pools/test/servers/a/weight", 405),
            ("POST", "/pools/test/servers/a/explode", 404),
            ("POST", "/pools/nope/servers/a/drain", 404),
            ("POST", "/pools/test/servers/nope/drain", 404),
        ]
        for method, target, code in cases:
            response = yield self.admin_call(method, target)
            self.assertEqual(response.status, code, (method, target))
            self.assertIn("error", json.loads(response.body))
        self.assertEqual(a.seen, [])

    @defer.inlineCallbacks
    def test_large_or_unsized_body_is_refused_413(self):  # type: ignore[no-untyped-def]
        a = self.backend("a")
        self.start_admin(admin_config([f"{a.url} name=a"], algorithm="weighted_round_robin"))
        big = (
            b"PUT /pools/test/servers/a/weight HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
        )
        answer = yield threads.deferToThread(raw_exchange, self.admin, big + b"1" * 5000)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)
        chunked = (
            b"PUT /pools/test/servers/a/weight HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n1\r\n2\r\n0\r\n\r\n"
        )
        answer = yield threads.deferToThread(raw_exchange, self.admin, chunked)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)
        server = yield self.server_status("a")
        self.assertEqual(server["weight"], 1)


class WriteActionTests(AdminTestCase):
    @defer.inlineCallbacks
    def test_drain_via_api_sends_nothing_new_and_lets_in_flight_finish(self):  # type: ignore[no-untyped-def]
        a = self.backend("a", held_handler)
        b = self.backend("b")
        self.start_admin(admin_config([f"{a.url} name=a", f"{b.url} name=b"]))
        pending = self.fetch("GET", "/slow")
        yield wait_until(lambda: a.held)
        response = yield self.admin_call("POST", "/pools/test/servers/a/drain")
        self.assertEqual(response.status, 200)
        self.assertEqual(json.loads(response.body)["state"], "DRAINING")
        bodies = yield self.send(6)
        self.assertEqual(bodies, [b"b\n"] * 6)
        self.assertEqual(len(a.seen), 1)
        server = yield self.server_status("a")
        self.assertEqual((server["state"], server["in_flight"]), ("DRAINING", 1))
        # The request in flight finishes normally.
        a.held[0].callback(b"finished")
        response = yield pending
        self.assertEqual((response.status, response.body), (200, b"finished"))
        response = yield self.admin_call("POST", "/pools/test/servers/a/enable")
        self.assertEqual(json.loads(response.body)["state"], "UP")
        pending = self.fetch("GET", "/")
        yield wait_until(lambda: len(a.held) == 2)
        a.held[1].callback(b"back")
        response = yield pending
        self.assertEqual(response.body, b"back")

    @defer.inlineCallbacks
    def test_maint_takes_a_server_out_and_pauses_its_health_checks(self):  # type: ignore[no-untyped-def]
        a, b = self.backend("a"), self.backend("b")
        self.start_admin(
            admin_config(
                [f"{a.url} name=a", f"{b.url} name=b"],
                pool={
                    "health_check": "GET /health",
                    "health_interval": "50ms",
                    "health_timeout": "50ms",
                },
            )
        )
        yield wait_until(lambda: any(s.uri == b"/health" for s in a.seen))
        server = yield self.server_status("a")
        self.assertEqual(server["last_health_check"], "status 200")
        response = yield self.admin_call("POST", "/pools/test/servers/a/maint")
        self.assertEqual(json.loads(response.body)["state"], "MAINT")
        checks_before = [s for s in a.seen if s.uri == b"/health"]
        bodies = yield self.send(4)
        self.assertEqual(bodies, [b"b\n"] * 4)
        # b's checks go on; a gets no check while in maintenance.
        b_checks = len([s for s in b.seen if s.uri == b"/health"])
        yield wait_until(lambda: len([s for s in b.seen if s.uri == b"/health"]) >= b_checks + 3)
        self.assertEqual([s for s in a.seen if s.uri == b"/health"], checks_before)
        self.assertEqual([s for s in a.seen if s.uri != b"/health"], [])
        response = yield self.admin_call("POST", "/pools/test/servers/a/enable")
        self.assertEqual(json.loads(response.body)["state"], "UP")
        bodies = yield self.send(4)
        self.assertIn(b"a\n", bodies)

    @defer.inlineCallbacks
    def test_weight_changes_the_share(self):  # type: ignore[no-untyped-def]
        a, b = self.backend("a"), self.backend("b")
        self.start_admin(
            admin_config([f"{a.url} name=a", f"{b.url} name=b"], algorithm="weighted_round_robin")
        )
        response = yield self.admin_call("PUT", "/pools/test/servers/a/weight", b"4")
        self.assertEqual(response.status, 200)
        answer = json.loads(response.body)
        self.assertEqual((answer["weight"], answer["effective_weight"]), (4, 4.0))
        bodies = yield self.send(10)
        self.assertEqual(bodies.count(b"a\n"), 8)
        for bad in (b"0", b"1001", b"x", b""):
            response = yield self.admin_call("PUT", "/pools/test/servers/a/weight", bad)
            self.assertEqual(response.status, 400, bad)
        server = yield self.server_status("a")
        self.assertEqual(server["weight"], 4)

    @defer.inlineCallbacks
    def test_weight_on_round_robin_is_409(self):  # type: ignore[no-untyped-def]
        a = self.backend("a")
        self.start_admin(admin_config([f"{a.url} name=a"], algorithm="round_robin"))
        response = yield self.admin_call("PUT", "/pools/test/servers/a/weight", b"3")
        self.assertEqual(response.status, 409)

    @defer.inlineCallbacks
    def test_server_names_default_to_host_and_port(self):  # type: ignore[no-untyped-def]
        a = self.backend("a")
        self.start_admin(admin_config([a.url]))
        name = a.url[len("http://") :]
        response = yield self.admin_call("POST", f"/pools/test/servers/{name}/drain")
        self.assertEqual(response.status, 200)
        self.assertEqual(json.loads(response.body)["name"], name)


class TokenTests(AdminTestCase):
    @defer.inlineCallbacks
    def test_writes_need_the_token_reads_do_not(self):  # type: ignore[no-untyped-def]
        a, b = self.backend("a"), self.backend("b")
        self.start_admin(admin_config([f"{a.url} name=a", f"{b.url} name=b"], token=TOKEN))
        target = "/pools/test/servers/a/drain"
        for headers in (
            [],
            [("Authorization", "Bearer wrong-token-wrong-token")],
            [("Authorization", TOKEN)],
        ):
            response = yield self.admin_call("POST", target, headers=headers)
            self.assertEqual(response.status, 401, headers)
            self.assertEqual(response.header("WWW-Authenticate"), ['Bearer realm="lbproxy"'])
        server = yield self.server_status("a")
        self.assertEqual(server["state"], "UP")
        response = yield self.admin_call(
            "POST", target, headers=[("Authorization", f"Bearer {TOKEN}")]
        )
        self.assertEqual(response.status, 200)
        server = yield self.server_status("a")
        self.assertEqual(server["state"], "DRAINING")
        response = yield self.admin_call("GET", "/metrics")
        self.assertEqual(response.status, 200)

    @defer.inlineCallbacks
    def test_write_from_another_origin_is_refused(self):  # type: ignore[no-untyped-def]
        a = self.backend("a")
        self.start_admin(admin_config([f"{a.url} name=a"]))
        target = "/pools/test/servers/a/drain"
        for origin in ("http://evil.example", "null"):
            response = yield self.admin_call("POST", target, headers=[("Origin", origin)])
            self.assertEqual(response.status, 403, origin)
        server = yield self.server_status("a")
        self.assertEqual(server["state"], "UP")
        # The dashboard's own origin may write.
        response = yield self.admin_call(
            "POST", target, headers=[("Origin", f"http://{HOST}:{self.admin}")]
        )
        self.assertEqual(response.status, 200)


class HostTests(AdminTestCase):
    @defer.inlineCallbacks
    def test_without_a_token_only_addresses_and_localhost_are_served(self):  # type: ignore[no-untyped-def]
        a = self.backend("a")
        self.start_admin(admin_config([f"{a.url} name=a"]))
        for host, code in (
            (f"evil.example:{self.admin}", 403),
            ("rebound.test", 403),
            (f"localhost:{self.admin}", 200),
            (f"127.0.0.1:{self.admin}", 200),
            (f"[::1]:{self.admin}", 200),
        ):
            response = yield threads.deferToThread(
                fetch, self.admin, "GET", "/status", (), None, host
            )
            self.assertEqual(response.status, code, host)
        response = yield threads.deferToThread(
            fetch, self.admin, "POST", "/pools/test/servers/a/drain", (), None, "evil.example"
        )
        self.assertEqual(response.status, 403)
        server = yield self.server_status("a")
        self.assertEqual(server["state"], "UP")

    @defer.inlineCallbacks
    def test_with_a_token_any_host_name(self):  # type: ignore[no-untyped-def]
        a = self.backend("a")
        self.start_admin(admin_config([f"{a.url} name=a"], token=TOKEN))
        response = yield threads.deferToThread(
            fetch, self.admin, "GET", "/status", (), None, "lb.example.net:9090"
        )
        self.assertEqual(response.status, 200)


def samples(text: str) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    """Every sample of a metrics text, parsed by prometheus_client, by name and labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


class MetricsTests(AdminTestCase):
    @defer.inlineCallbacks
    def test_metrics_match_the_traffic_sent(self):  # type: ignore[no-untyped-def]
        def teapot(backend, request, body):  # type: ignore[no-untyped-def]
            request.setResponseCode(503)
            return b"no"

        a = self.backend("a")
        b = self.backend("b", teapot)
        dead = refused_url()
        self.start_admin(
            admin_config(
                [f"{a.url} name=a", f"{b.url} name=b", f"{dead} name=dead"],
                pool={"max_fails": "0"},
            )
        )
        for _ in range(6):
            yield self.fetch("GET", "/")
        for _ in range(3):
            yield self.fetch("POST", "/", body=b"x")
        yield self.fetch("BREW", "/")
        response = yield self.admin_call("GET", "/metrics")
        self.assertEqual(response.status, 200)
        self.assertTrue(response.header("Content-Type")[0].startswith("text/plain"))
        values = samples(response.body.decode())

        def value(name: str, **labels: str) -> float:
            return values[(name, tuple(sorted(labels.items())))]

        by_server: Dict[str, float] = {}
        for (name, labels), v in values.items():
            if name == "lbproxy_requests_total":
                server = dict(labels)["server"]
                by_server[server] = by_server.get(server, 0) + v
        seen_a = len(a.seen)
        seen_b = len(b.seen)
        self.assertEqual(seen_a + seen_b, 10)
        self.assertEqual(by_server, {"a": seen_a, "b": seen_b})
        a_get = len([s for s in a.seen if s.method == b"GET"])
        self.assertEqual(
            value(
                "lbproxy_requests_total", pool="test", server="a", method="GET", status_class="2xx"
            ),
            a_get,
        )
        b_post = len([s for s in b.seen if s.method == b"POST"])
        if b_post:
            self.assertEqual(
                value(
                    "lbproxy_requests_total",
                    pool="test",
                    server="b",
                    method="POST",
                    status_class="5xx",
                ),
                b_post,
            )
        # An unknown method is counted as OTHER, not as a series of its own.
        self.assertNotIn("BREW", response.body.decode())
        other = sum(
            v
            for (name, labels), v in values.items()
            if name == "lbproxy_requests_total" and dict(labels)["method"] == "OTHER"
        )
        self.assertEqual(other, 1)
        self.assertEqual(
            value("lbproxy_request_duration_seconds_count", pool="test", server="a"), seen_a
        )
        self.assertEqual(
            value("lbproxy_request_duration_seconds_bucket", pool="test", server="a", le="+Inf"),
            seen_a,
        )
        self.assertGreater(
            value("lbproxy_request_duration_seconds_sum", pool="test", server="a"), 0
        )
        connect_failures = value(
            "lbproxy_backend_connect_failures_total", pool="test", server="dead"
        )
        self.assertGreater(connect_failures, 0)
        self.assertEqual(value("lbproxy_retries_total", pool="test"), connect_failures)
        self.assertEqual(value("lbproxy_in_flight_requests", pool="test", server="a"), 0)
        self.assertEqual(value("lbproxy_server_up", pool="test", server="a"), 1)
        self.assertEqual(value("lbproxy_server_state", pool="test", server="a", state="UP"), 1)
        self.assertEqual(value("lbproxy_server_state", pool="test", server="a", state="DOWN"), 0)
        self.assertEqual(value("lbproxy_queue_length", pool="test"), 0)

    @defer.inlineCallbacks
    def test_unrouted_requests_and_health_state(self):  # type: ignore[no-untyped-def]
        a = self.backend("a")
        self.start_admin(admin_config([f"{a.url} name=a"]))
        yield self.admin_call("POST", "/pools/test/servers/a/drain")
        response = yield self.fetch("GET", "/")
        self.assertEqual(response.status, 503)
        response = yield self.admin_call("GET", "/metrics")
        values = samples(response.body.decode())
        key = (
            "lbproxy_requests_total",
            tuple(
                sorted(
                    {"pool": "test", "server": "", "method": "GET", "status_class": "5xx"}.items()
                )
            ),
        )
        self.assertEqual(values[key], 1)
        state = ("lbproxy_server_state", (("pool", "test"), ("server", "a"), ("state", "DRAINING")))
        self.assertEqual(values[state], 1)


class AuditTests(AdminTestCase):
    @defer.inlineCallbacks
    def test_every_write_is_logged_with_who_and_what_changed(self):  # type: ignore[no-untyped-def]
        from tests.test_health import capture_log

        a, b = self.backend("a"), self.backend("b")
        self.start_admin(
            admin_config(
                [f"{a.url} name=a", f"{b.url} name=b weight=2"],
                token=TOKEN,
                algorithm="weighted_round_robin",
            )
        )
        lines = capture_log(self)
        auth = [("Authorization", f"Bearer {TOKEN}")]
        for method, target, body in (
            ("POST", "/pools/test/servers/a/drain", None),
            ("POST", "/pools/test/servers/a/maint", None),
            ("POST", "/pools/test/servers/a/enable", None),
            ("PUT", "/pools/test/servers/b/weight", b"5"),
        ):
            response = yield self.admin_call(method, target, body, headers=auth)
            self.assertEqual(response.status, 200, response.body)
        response = yield self.admin_call("POST", "/pools/test/servers/b/drain")
        self.assertEqual(response.status, 401)
        who = rf"by {HOST}:\d+"
        expected = [
            rf"^admin: drain test/a {who} with the token: UP -> DRAINING$",
            rf"^admin: maint test/a {who} with the token: DRAINING -> MAINT$",
            rf"^admin: enable test/a {who} with the token: MAINT -> UP$",
            rf"^admin: weight test/b {who} with the token: weight 2 -> 5$",
            rf"^admin: drain test/b {who} refused \(401\)$",
        ]
        self.assertEqual(len(lines), len(expected), lines)
        for line, pattern in zip(lines, expected):
            self.assertRegex(line, pattern)

    @defer.inlineCallbacks
    def test_without_a_token_the_log_says_so(self):  # type: ignore[no-untyped-def]
        from tests.test_health import capture_log

        a = self.backend("a")
        self.start_admin(admin_config([f"{a.url} name=a"]))
        lines = capture_log(self)
        response = yield self.admin_call("POST", "/pools/test/servers/a/drain")
        self.assertEqual(response.status, 200)
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(
            lines[0],
            rf"^admin: drain test/a by {HOST}:\d+ \(no token configured\): UP -> DRAINING$",
        )


class NamingTests(AdminTestCase):
    @defer.inlineCallbacks
    def test_status_counters_cannot_be_read_as_settings(self):  # type: ignore[no-untyped-def]
        # retries = 2 is a setting; the count of retries made is another name.
        a = self.backend("a")
        self.start_admin(admin_config([f"{a.url} name=a"], pool={"retries": "2"}))
        yield self.send(3)
        status = yield self.status()
        pool = status["pools"][0]
        server = pool["servers"][0]
        self.assertEqual(pool["retries_made"], 0)
        self.assertEqual(
            (server["requests_served"], server["failed_attempts"], server["failed_connects"]),
            (3, 0, 0),
        )
        settings = {"retries", "requests", "failures", "connect_failures"}
        self.assertEqual(settings & (set(pool) | set(server)), set())

    def test_addresses_in_log_lines_are_in_url_form(self) -> None:
        from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

        from lbproxy.config.values import describe_address

        self.assertEqual(describe_address(IPv4Address("TCP", "127.0.0.1", 8081)), "127.0.0.1:8081")
        self.assertEqual(describe_address(IPv6Address("TCP", "::1", 8081)), "[::1]:8081")
        self.assertEqual(describe_address(UNIXAddress(b"/run/lb.sock")), "/run/lb.sock")

    def test_an_ipv6_listener_is_logged_in_url_form(self) -> None:
        from tests.test_health import capture_log

        a = self.backend("a")
        lines = capture_log(self)
        self.start_proxy(
            proxy_config([a.url]).replace(f"tcp:0:interface={HOST}", r"tcp6:0:interface=\:\:1")
        )
        ours = [line for line in lines if line.startswith("lbproxy")]
        self.assertEqual(ours, [f"lbproxy listening on [::1]:{self.port}"])
