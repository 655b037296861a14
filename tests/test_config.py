"""
Configuration parsing: values, defaults, and every error message.
"""

from __future__ import annotations

import os
from typing import Tuple

from twisted.trial import unittest

from lbproxy.config import ConfigError, load, parse, parse_duration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GOOD = """
[proxy]
listen = tcp:8080:interface=127.0.0.1
pool = web

[pool:web]
algorithm = weighted_round_robin
servers =
    http://127.0.0.1:9001 weight=5
    http://127.0.0.1:9002
    https://app3.internal:8443 weight=2
"""


def error(text: str) -> str:
    try:
        parse(text, "t.ini")
    except ConfigError as e:
        return str(e)
    raise AssertionError("no ConfigError raised")


def pool(servers: str, algorithm: str = "weighted_round_robin", extra: str = "") -> str:
    return (
        "[proxy]\nlisten = tcp:8080\n[pool:web]\n"
        f"algorithm = {algorithm}\n{extra}servers =\n    " + servers.replace("\n", "\n    ") + "\n"
    )


class GoodConfigTests(unittest.TestCase):
    def test_issue_example(self) -> None:
        c = parse(GOOD, "t.ini")
        self.assertEqual(c.listen, ("tcp:8080:interface=127.0.0.1",))
        self.assertEqual(c.pool, "web")
        web = c.active_pool()
        self.assertEqual(web.algorithm, "weighted_round_robin")
        self.assertEqual(
            [(s.scheme, s.host, s.port, s.weight, s.name) for s in web.servers],
            [
                ("http", "127.0.0.1", 9001, 5, "127.0.0.1:9001"),
                ("http", "127.0.0.1", 9002, 1, "127.0.0.1:9002"),
                ("https", "app3.internal", 8443, 2, "app3.internal:8443"),
            ],
        )

    def test_defaults(self) -> None:
        c = parse("[proxy]\nlisten = tcp:8080\n[pool:only]\nservers = http://h\n")
        self.assertEqual(c.pool, "only")
        self.assertEqual(c.via, "lbproxy")
        self.assertEqual(c.backend_keepalive, 100)
        self.assertEqual(c.backend_keepalive_timeout, 1.0)
        only = c.active_pool()
        self.assertEqual(only.algorithm, "weighted_round_robin")
        self.assertEqual(
            (only.connect_timeout, only.response_timeout, only.idle_timeout, only.retries),
            (3.0, 30.0, 60.0, 2),
        )
        self.assertEqual((only.servers[0].port, only.servers[0].weight), (80, 1))

    def test_https_default_port_ipv6_and_names(self) -> None:
        c = parse(pool("https://secure.example\nhttp://[::1]:81/ name=local-v6"))
        a, b = c.active_pool().servers
        self.assertEqual((a.port, a.name), (443, "secure.example:443"))
        self.assertEqual((b.host, b.port, b.name), ("::1", 81, "local-v6"))

    def test_several_listeners_and_comments(self) -> None:
        c = parse(
            "# comment\n[proxy]\nlisten =\n  tcp:8080 ; inline comment\n  tcp6:8081\n"
            "via = edge-1\nbackend_keepalive = 8\nbackend_keepalive_timeout = 500ms\n"
            "[pool:a]\nservers = http://h:1\n"
        )
        self.assertEqual(c.listen, ("tcp:8080", "tcp6:8081"))
        self.assertEqual(
            (c.via, c.backend_keepalive, c.backend_keepalive_timeout), ("edge-1", 8, 0.5)
        )

    def test_resilience_keys(self) -> None:
        c = parse(
            "[proxy]\nlisten = tcp:1\n[pool:a]\nservers =\n  http://h max_connections=5\n"
            "  http://i backup\nhealth_check = HEAD /ping\nhealth_host = app.example\n"
            "health_expect = 204\nfail_on_5xx = yes\nslow_start = 30s\nmax_fails = 0\n"
        ).active_pool()
        self.assertEqual((c.servers[0].max_connections, c.servers[1].backup), (5, True))
        self.assertEqual((c.health_check, c.health_host), (("HEAD", "/ping"), "app.example"))
        self.assertEqual((c.health_expect, c.fail_on_5xx), ((204, 204), True))
        self.assertEqual((c.slow_start, c.max_fails), (30.0, 0))

    def test_front_limits(self) -> None:
        c = parse(
            "[proxy]\nlisten = tcp:1\nmax_header_size = 16KB\nmax_body_size = 0\n"
            "max_headers = 50\nclient_header_timeout = 5s\nkeepalive_timeout = 1m\n"
            "max_connections = 500\n[pool:a]\nservers = http://h\n"
        )
        limits = c.limits
        self.assertEqual(
            (limits.max_header_size, limits.max_body_size, limits.max_headers), (16384, 0, 50)
        )
        self.assertEqual((limits.client_header_timeout, c.keepalive_timeout), (5.0, 60.0))
        self.assertEqual(c.max_connections, 500)
        d = parse("[proxy]\nlisten = tcp:1\nmax_body_size = 1g\n[pool:a]\nservers = http://h\n")
        self.assertEqual(d.limits.max_body_size, 1 << 30)

    def test_via_off(self) -> None:
        c = parse("[proxy]\nlisten = tcp:1\nvia = off\n[pool:a]\nservers = http://h\n")
        self.assertIsNone(c.via)

    def test_summary(self) -> None:
        self.assertEqual(
            parse(GOOD, "t.ini").summary(),
            "t.ini: ok: 1 listener, 1 pool, 3 servers; requests go to pool 'web'",
        )

    def test_example_file_is_valid(self) -> None:
        for name in ("lbproxy.ini", "demo.ini"):
            config = load(os.path.join(REPO, "etc", name))
            self.assertTrue(config.active_pool().servers)


class DurationTests(unittest.TestCase):
    def test_units(self) -> None:
        for text, seconds in [
            ("500ms", 0.5),
            ("2s", 2.0),
            ("1m", 60.0),
            ("1.5h", 5400.0),
            (" 10s ", 10.0),
            ("0ms", 0.0),
        ]:
            self.assertEqual(parse_duration(text), seconds)

    def test_unit_required(self) -> None:
        for text in ["10", "", "s", "2 s", "-1s", "1d", "1e3s"]:
            self.assertRaises(ValueError, parse_duration, text)


class ErrorTests(unittest.TestCase):
    """
    Each bad configuration gives one line naming file, section and key.
    """

    def test_messages(self) -> None:
        cases = [
            ("", "t.ini: the [proxy] section is missing"),
            ("listen = x\n", "t.ini: line 1: text before the first [section]: 'listen = x'"),
            ("[proxy]\nlisten\n", "t.ini: line 2: not a 'key = value' line: 'listen'"),
            ("[proxy]\n[proxy]\n", "t.ini: [proxy] line 2: section is defined twice"),
            (
                "[proxy]\nlisten = tcp:1\nlisten = tcp:2\n",
                "t.ini: [proxy] listen: line 3: key is set twice",
            ),
            (
                "[proxy]\nlisten = tcp:1\n[pool:a]\nservers = http://h\n[upstream]\n",
                "t.ini: [upstream] unknown section (known: [proxy], [admin], [pool:NAME], [tls:NAME], [route:NAME])",
            ),
            (
                "[DEFAULT]\nx = 1\n[proxy]\n",
                "t.ini: [DEFAULT] unknown section (known: [proxy], [admin], [pool:NAME], [tls:NAME], [route:NAME])",
            ),
            (
                "[proxy]\nlisten = tcp:1\n[pool:a b]\nservers = http://h\n",
                "t.ini: [pool:a b] a pool name is made of letters, digits and -._",
            ),
            (
                "[proxy]\nlisten = tcp:1\nlistn = 2\n",
                "t.ini: [proxy] listn: unknown key (did you mean listen? known: listen, pool, via, backend_keepalive, "
                "backend_keepalive_timeout, max_header_size, max_headers, max_body_size, "
                "client_header_timeout, client_body_timeout, keepalive_timeout, max_connections, access_log, access_log_format, shutdown_timeout, upgrade, tunnel_timeout, http2, http2_max_streams, workers, request_headers, response_headers, resolver)",
            ),
            ("[proxy]\n[pool:a]\nservers = http://h\n", "t.ini: [proxy] listen: is required"),
            (
                "[proxy]\nlisten = tcp:1\n",
                "t.ini: no [pool:NAME] section: there is nowhere to send requests",
            ),
            (
                "[proxy]\nlisten = bogus:1\n[pool:a]\nservers = http://h\n",
                "t.ini: [proxy] listen: 'bogus:1' is not a valid endpoint: ",
            ),
            (
                "[proxy]\nlisten = tcp:notaport\n[pool:a]\nservers = http://h\n",
                "t.ini: [proxy] listen: 'tcp:notaport' is not a valid endpoint: ",
            ),
            (
                "[proxy]\nlisten = tcp:1\npool = b\n[pool:a]\nservers = http://h\n",
                "t.ini: [proxy] pool: no [pool:b] section (defined: a)",
            ),
            (
                "[proxy]\nlisten = tcp:1\n[pool:a]\nservers = http://h\n[pool:b]\nservers = http://i\n",
                "t.ini: [proxy] pool: is required when there is more than one pool (defined: a, b)",
            ),
            (
                "[proxy]\nlisten = tcp:1\nvia = a b\n[pool:a]\nservers = http://h\n",
                "t.ini: [proxy] via: must be a name made of letters, digits and -._, or off, got 'a b'",
            ),
            (
                "[proxy]\nlisten = tcp:1\nbackend_keepalive = many\n[pool:a]\nservers = http://h\n",
                "t.ini: [proxy] backend_keepalive: must be a whole number from 0 to 100000, got 'many'",
            ),
            (
                "[proxy]\nlisten = tcp:1\nbackend_keepalive_timeout = 5\n[pool:a]\nservers = http://h\n",
                "t.ini: [proxy] backend_keepalive_timeout: expected a duration with a unit "
                "(ms, s, m, h), such as 500ms or 2s, got '5'",
            ),
            (
                "[proxy]\nlisten = tcp:1\n[pool:a]\nalgorithm = random\nservers = http://h\n",
                "t.ini: [pool:a] algorithm: must be one of round_robin, weighted_round_robin, "
                "least_connections, random_two, peak_ewma, consistent_hash, got 'random'",
            ),
            ("[proxy]\nlisten = tcp:1\n[pool:a]\n", "t.ini: [pool:a] servers: is required"),
            (
                "[proxy]\nlisten = tcp:1\n[pool:a]\nservers = http://h\nconnect_timeout = 0s\n",
                "t.ini: [pool:a] connect_timeout: must be longer than 0, got '0s'",
            ),
            (
                "[proxy]\nlisten = tcp:1\n[pool:a]\nservers = http://h\nresponse_timeout = 30\n",
                "t.ini: [pool:a] response_timeout: expected a duration with a unit",
            ),
            (
                "[proxy]\nlisten = tcp:1\nmax_body_size = lots\n[pool:a]\nservers = http://h\n",
                "t.ini: [proxy] max_body_size: expected a size such as 32KB or 10MB, got 'lots'",
            ),
            (
                "[proxy]\nlisten = tcp:1\nmax_header_size = 100\n[pool:a]\nservers = http://h\n",
                "t.ini: [proxy] max_header_size: must be from 1024 to 1048576 bytes, got '100'",
            ),
            (
                "[proxy]\nlisten = tcp:1\n[pool:a]\nservers = http://h\nhealth_check = /healthz\n",
                "t.ini: [pool:a] health_check: must be a method and a path, such as GET /healthz, "
                "got '/healthz'",
            ),
            (
                "[proxy]\nlisten = tcp:1\n[pool:a]\nservers = http://h\nhealth_expect = 200-99\n",
                "t.ini: [pool:a] health_expect: must be a status or a range such as 200-399, "
                "got '200-99'",
            ),
            (
                "[proxy]\nlisten = tcp:1\n[pool:a]\nservers = http://h\nfail_on_5xx = maybe\n",
                "t.ini: [pool:a] fail_on_5xx: must be yes or no, got 'maybe'",
            ),
            (
                "[proxy]\nlisten = tcp:1\n[pool:a]\nservers = http://h backup\n",
                "t.ini: [pool:a] servers: every server is a backup: at least one must not be",
            ),
            (
                "[proxy]\nlisten = tcp:1\n[pool:a]\nservers = http://h max_connections=0\n",
                "t.ini: [pool:a] servers: line 1: 'http://h': max_connections must be a whole "
                "number from 1 to 1000000, got '0'",
            ),
            (
                "[proxy]\nlisten = tcp:1\n[pool:a]\nservers = http://h backup backup\n",
                "t.ini: [pool:a] servers: line 1: 'http://h': option 'backup' given twice",
            ),
            (
                "[proxy]\nlisten = tcp:1\n[pool:a]\nservers = http://h\nretries = 11\n",
                "t.ini: [pool:a] retries: must be a whole number from 0 to 10, got '11'",
            ),
            (
                "[proxy]\nlisten = tcp:1\n[pool:a]\nservers =\n",
                "t.ini: [pool:a] servers: needs at least one server, such as http://127.0.0.1:9001",
            ),
            (
                "[proxy]\nlisten = tcp:1\n[pool:a]\nservers = http://h\ntls_ca_file = /nonexistent\n",
                "t.ini: [pool:a] tls_ca_file: cannot read '/nonexistent': No such file or directory",
            ),
        ]
        for text, expected in cases:
            message = error(text)
            self.assertTrue(message.startswith(expected), f"{message!r} != {expected!r}")
            self.assertNotIn("\n", message)

    def test_server_lines(self) -> None:
        cases = [
            ("ftp://h", "line 1: 'ftp://h': the URL must start with http:// or https://"),
            ("h:80", "line 1: 'h:80': the URL must start with http:// or https://"),
            ("http://u:p@h", "line 1: 'http://u:p@h': the URL must not carry a user or password"),
            (
                "http://h/app",
                "line 1: 'http://h/app': the URL names a server only: no path, query or fragment",
            ),
            (
                "http://h?x",
                "line 1: 'http://h?x': the URL names a server only: no path, query or fragment",
            ),
            ("http://", "line 1: 'http://': the URL has no host"),
            (
                "http://h:99999",
                "line 1: 'http://h:99999': the port must be a number from 1 to 65535",
            ),
            ("http://h:0", "line 1: 'http://h:0': the port must be a number from 1 to 65535"),
            ("http://h:x", "line 1: 'http://h:x': the port must be a number from 1 to 65535"),
            (
                "http://hé",
                "line 1: 'http://hé': the host must be ASCII (write an international "
                "name in its xn-- form)",
            ),
            ("http://h weight", "line 1: 'http://h': option 'weight' must be written key=value"),
            (
                "http://h weight=0",
                "line 1: 'http://h': weight must be a whole number from 1 to 1000, got '0'",
            ),
            (
                "http://h weight=x",
                "line 1: 'http://h': weight must be a whole number from 1 to 1000, got 'x'",
            ),
            ("http://h weight=1 weight=2", "line 1: 'http://h': option 'weight' given twice"),
            (
                "http://h max=3",
                "line 1: 'http://h': unknown option 'max' (known: backup, max_connections, name, weight)",
            ),
            (
                "http://h name=a/b",
                "line 1: 'http://h': name must be made of letters, digits and -._:[], got 'a/b'",
            ),
            ("http://h\nhttp://h:80", "line 2: 'http://h:80' is already listed on line 1"),
            ("http://h name=x\nhttp://i name=x", "line 2: name 'x' is already used on line 1"),
        ]
        for servers, expected in cases:
            message = error(pool(servers))
            self.assertEqual(message, "t.ini: [pool:web] servers: " + expected)

    def test_round_robin_refuses_weights(self) -> None:
        self.assertEqual(
            error(pool("http://a\nhttp://b weight=3", algorithm="round_robin")),
            "t.ini: [pool:web] servers: line 2: weight=3 has no effect with "
            "algorithm = round_robin (use weighted_round_robin)",
        )

    def test_unreadable_file(self) -> None:
        path = self.mktemp()
        with self.assertRaises(ConfigError) as caught:
            load(path)
        self.assertEqual(
            str(caught.exception), f"{path}: cannot read the file: No such file or directory"
        )

    def test_file_errors_name_the_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[proxy]\nlisten = tcp:1\n[pool:a]\nservers = http://h weight=-1\n")
        with self.assertRaises(ConfigError) as caught:
            load(path)
        self.assertEqual(
            str(caught.exception),
            f"{path}: [pool:a] servers: line 1: 'http://h': weight must be a whole number "
            "from 1 to 1000, got '-1'",
        )


class SuggestionTests(unittest.TestCase):
    def test_misspelt_keys_sections_and_options_get_a_suggestion(self) -> None:
        base = "[proxy]\nlisten = tcp:1\n[pool:a]\nservers = http://h\n"
        for text, expected in (
            (
                base + "health_intervall = 2s\n",
                "[pool:a] health_intervall: unknown key (did you mean health_interval? known: algorithm,",
            ),
            (
                base + "helth_check = GET /\n",
                "[pool:a] helth_check: unknown key (did you mean health_check? known:",
            ),
            (
                base.replace("listen =", "vai = x\nlisten ="),
                "[proxy] vai: unknown key (did you mean via? known:",
            ),
            (
                base + "[admn]\nlisten = tcp:1\n",
                "[admn] unknown section (did you mean [admin]? known:",
            ),
            (
                base + "[pools:b]\nservers = http://h\n",
                "[pools:b] unknown section (did you mean [pool:b]? known:",
            ),
            (
                base.replace("[proxy]", "[proxi]"),
                "[proxi] unknown section (did you mean [proxy]? known:",
            ),
            (
                base.replace("http://h", "http://h wieght=2"),
                "[pool:a] servers: line 1: 'http://h': unknown option 'wieght' (did you mean weight? known:",
            ),
            (base + "zzz = 1\n", "[pool:a] zzz: unknown key (known: algorithm,"),
        ):
            with self.assertRaises(ConfigError) as caught:
                parse(text, "t.ini")
            self.assertTrue(
                str(caught.exception).startswith("t.ini: " + expected), str(caught.exception)
            )


class HealthTimeoutTests(unittest.TestCase):
    def timeouts(self, keys: str) -> Tuple[float, float]:
        pool = parse(f"[proxy]\nlisten = tcp:1\n[pool:a]\nservers = http://h\n{keys}").pools["a"]
        return pool.health_interval, pool.health_timeout

    def test_default_timeout_follows_a_short_interval(self) -> None:
        self.assertEqual(self.timeouts(""), (2.0, 1.0))
        self.assertEqual(self.timeouts("health_interval = 200ms\n"), (0.2, 0.2))
        self.assertEqual(self.timeouts("health_interval = 10s\n"), (10.0, 1.0))

    def test_timeout_longer_than_the_interval_is_accepted(self) -> None:
        self.assertEqual(
            self.timeouts("health_interval = 200ms\nhealth_timeout = 5s\n"), (0.2, 5.0)
        )
        self.assertEqual(self.timeouts("health_timeout = 3s\n"), (2.0, 3.0))


class DocumentationTests(unittest.TestCase):
    def test_every_key_is_in_the_example_file_and_the_readme(self) -> None:
        from lbproxy.config import _ADMIN_KEYS, _POOL_KEYS, _PROXY_KEYS
        from lbproxy.routing import ROUTE_KEYS

        with open(os.path.join(REPO, "etc", "lbproxy.ini")) as f:
            example = f.read()
        with open(os.path.join(REPO, "README.md")) as f:
            readme = f.read()
        for section, keys in (
            ("[proxy]", _PROXY_KEYS),
            ("[admin]", _ADMIN_KEYS),
            ("[pool:NAME]", _POOL_KEYS),
            ("[route:NAME]", ROUTE_KEYS),
        ):
            for key in keys:
                self.assertRegex(example, rf"(?m)^;?{key} =", key)
                self.assertIn(f"| `{section}` | `{key}` |", readme, key)


class OperationsKeysTests(unittest.TestCase):
    def test_defaults(self) -> None:
        config = parse(GOOD, "t.ini")
        self.assertIsNone(config.admin)
        self.assertIsNone(config.access_log)
        self.assertEqual(config.access_log_format, "combined")
        self.assertEqual(config.shutdown_timeout, 30.0)

    def test_access_log_and_shutdown_timeout(self) -> None:
        text = GOOD.replace(
            "pool = web",
            "pool = web\naccess_log = -\naccess_log_format = json\nshutdown_timeout = 5s",
        )
        config = parse(text, "t.ini")
        self.assertEqual((config.access_log, config.access_log_format), ("-", "json"))
        self.assertEqual(config.shutdown_timeout, 5.0)
        self.assertIsNone(
            parse(GOOD.replace("pool = web", "pool = web\naccess_log = off")).access_log
        )
        self.assertEqual(
            error(GOOD.replace("pool = web", "pool = web\naccess_log_format = apache")),
            "t.ini: [proxy] access_log_format: must be combined or json, got 'apache'",
        )

    def test_admin_on_loopback_or_unix_needs_no_token(self) -> None:
        for listen in (
            "tcp:9090:interface=127.0.0.1",
            "tcp:9090:interface=127.0.0.2",
            r"tcp6:9090:interface=\:\:1",
            "tcp:9090:interface=localhost",
            "unix:/run/lbproxy-admin.sock",
        ):
            config = parse(GOOD + f"[admin]\nlisten = {listen}\n", "t.ini")
            assert config.admin is not None
            self.assertEqual((config.admin.listen, config.admin.token), (listen, None))

    def test_admin_reachable_from_elsewhere_needs_a_token(self) -> None:
        for listen in (
            "tcp:9090",
            "tcp:9090:interface=0.0.0.0",
            "tcp:9090:interface=10.0.0.2",
            "systemd:domain=INET:name=admin",
        ):
            self.assertEqual(
                error(GOOD + f"[admin]\nlisten = {listen}\n"),
                f"t.ini: [admin] token: {listen!r} is reachable from other machines: set a "
                "token, or listen on a loopback address (interface=127.0.0.1)",
            )
        token = "x" * 20
        config = parse(GOOD + f"[admin]\nlisten = tcp:9090\ntoken = {token}\n", "t.ini")
        assert config.admin is not None
        self.assertEqual(config.admin.token, token)

    def test_admin_errors(self) -> None:
        self.assertEqual(error(GOOD + "[admin]\n"), "t.ini: [admin] listen: is required")
        self.assertTrue(
            error(
                GOOD + "[admin]\nlisten = tcp:9090:interface=127.0.0.1\ntoken = short\n"
            ).startswith("t.ini: [admin] token: must be at least 16 characters")
        )
        self.assertEqual(
            error(
                GOOD
                + "[admin]\nlisten = tcp:1:interface=127.0.0.1\n    tcp:2:interface=127.0.0.1\n"
            ),
            "t.ini: [admin] listen: takes one endpoint",
        )
        self.assertTrue(
            error(GOOD + "[admin]\nlisten = tcp:9090:interface=127.0.0.1\nport = 1\n").startswith(
                "t.ini: [admin] port: unknown key (known: listen, token)"
            )
        )

    def test_systemd_endpoints_are_checked_by_form_only(self) -> None:
        config = parse(
            GOOD.replace("tcp:8080:interface=127.0.0.1", "systemd:domain=INET6:name=http")
        )
        self.assertEqual(config.listen, ("systemd:domain=INET6:name=http",))
        parse(GOOD.replace("tcp:8080:interface=127.0.0.1", "systemd:domain=INET:index=0"))
        for bad in (
            "systemd:domain=INET",
            "systemd:domain=IPX:index=0",
            "systemd:domain=INET:index=x",
        ):
            self.assertIn(
                "is not a valid endpoint: write systemd:domain=INET:name=NAME (or index=N)",
                error(GOOD.replace("tcp:8080:interface=127.0.0.1", bad)),
            )
