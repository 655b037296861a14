"""
lbproxy.config.values: the parsers of single configuration values.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial import unittest

from lbproxy.config import values


class DurationTests(unittest.SynchronousTestCase):
    def test_units(self) -> None:
        cases = {"500ms": 0.5, "2s": 2.0, "1.5m": 90.0, "1h": 3600.0, " 3s ": 3.0, "0s": 0.0}
        for text, seconds in cases.items():
            self.assertEqual(values.parse_duration(text), seconds, text)

    def test_bare_numbers_and_junk_are_refused(self) -> None:
        for text in ("5", "", "s", "2 days", "-1s"):
            error = self.assertRaises(ValueError, values.parse_duration, text)
            self.assertIn("unit", str(error))

    def test_positive_duration_refuses_zero(self) -> None:
        self.assertRaises(ValueError, values.parse_positive_duration, "0ms")
        self.assertEqual(values.parse_positive_duration("1ms"), 0.001)


class NumberTests(unittest.SynchronousTestCase):
    def test_sizes_use_units_of_1024(self) -> None:
        parse = values.parse_size(1, 1 << 30)
        self.assertEqual(parse("512"), 512)
        self.assertEqual(parse("32KB"), 32 * 1024)
        self.assertEqual(parse("10mb"), 10 << 20)
        self.assertEqual(parse("1GiB"), 1 << 30)
        self.assertRaises(ValueError, parse, "2GB")
        self.assertRaises(ValueError, parse, "0")
        self.assertRaises(ValueError, parse, "ten")

    def test_whole_numbers_in_range(self) -> None:
        parse = values.parse_int(1, 10)
        self.assertEqual(parse(" 7 "), 7)
        for text in ("0", "11", "-1", "1.5", "x"):
            error = self.assertRaises(ValueError, parse, text)
            self.assertIn("from 1 to 10", str(error))

    def test_balance_factor(self) -> None:
        self.assertEqual(values.parse_balance_factor("1.25"), 1.25)
        for text in ("1", "0.5", "101", "x"):
            self.assertRaises(ValueError, values.parse_balance_factor, text)

    def test_status_range(self) -> None:
        self.assertEqual(values.parse_status_range("200-399"), (200, 399))
        self.assertEqual(values.parse_status_range("204"), (204, 204))
        for text in ("399-200", "99", "600", "2xx"):
            self.assertRaises(ValueError, values.parse_status_range, text)


class WordTests(unittest.SynchronousTestCase):
    def test_bool(self) -> None:
        for text in ("yes", "True", "on", "1"):
            self.assertIs(values.parse_bool(text), True)
        for text in ("no", "false", "OFF", "0"):
            self.assertIs(values.parse_bool(text), False)
        self.assertRaises(ValueError, values.parse_bool, "maybe")

    def test_health_check(self) -> None:
        self.assertEqual(values.parse_health_check("GET /healthz"), ("GET", "/healthz"))
        for text in ("GET", "GET healthz", "G(T /", "GET /a b"):
            self.assertRaises(ValueError, values.parse_health_check, text)

    def test_via_and_log_format_and_access_log(self) -> None:
        self.assertEqual(values.parse_via("edge-1"), "edge-1")
        self.assertIsNone(values.parse_via("off"))
        self.assertRaises(ValueError, values.parse_via, "two words")
        self.assertEqual(values.parse_log_format("json"), "json")
        self.assertRaises(ValueError, values.parse_log_format, "xml")
        self.assertIsNone(values.parse_access_log("off"))
        self.assertEqual(values.parse_access_log(" - "), "-")

    def test_token_needs_16_token_characters(self) -> None:
        self.assertEqual(values.parse_token("a" * 16), "a" * 16)
        self.assertRaises(ValueError, values.parse_token, "a" * 15)
        self.assertRaises(ValueError, values.parse_token, "a" * 15 + " b")

    def test_algorithm_must_be_known(self) -> None:
        self.assertEqual(values.parse_algorithm("round_robin"), "round_robin")
        self.assertRaises(ValueError, values.parse_algorithm, "fastest_first")

    def test_file_path_must_be_readable(self) -> None:
        path = self.mktemp()
        self.assertRaises(ValueError, values.parse_file_path, path)
        with open(path, "w") as f:
            f.write("x")
        self.assertEqual(values.parse_file_path(path), path)


class EndpointTests(unittest.SynchronousTestCase):
    def test_listen_takes_lines_of_endpoints(self) -> None:
        self.assertEqual(
            values.parse_listen("tcp:8080\n  unix:/tmp/lb.sock\n"),
            ("tcp:8080", "unix:/tmp/lb.sock"),
        )
        self.assertRaises(ValueError, values.parse_listen, "  \n")
        self.assertRaises(ValueError, values.parse_listen, "nonsense:1")

    def test_single_endpoint(self) -> None:
        self.assertEqual(values.parse_single_endpoint("tcp:9090"), "tcp:9090")
        self.assertRaises(ValueError, values.parse_single_endpoint, "tcp:1\ntcp:2")

    def test_systemd_endpoints_are_checked_by_form_only(self) -> None:
        self.assertEqual(
            values.parse_endpoint("systemd:domain=INET:index=0"), "systemd:domain=INET:index=0"
        )
        for text in (
            "systemd:domain=INET",
            "systemd:domain=X:index=0",
            "systemd:domain=INET:index=a",
        ):
            self.assertRaises(ValueError, values.parse_endpoint, text)

    def test_local_endpoints(self) -> None:
        cases = {
            "unix:/run/lb.sock": True,
            "tcp:8081:interface=127.0.0.1": True,
            "tcp6:8081:interface=\\:\\:1": True,
            "tcp:8081:interface=localhost": True,
            "tcp:8081": False,
            "tcp:8081:interface=0.0.0.0": False,
            "ssl:443": False,
        }
        for description, local in cases.items():
            self.assertIs(values.is_local_endpoint(description), local, description)

    def test_addresses_as_logs_show_them(self) -> None:
        self.assertEqual(values.describe_address(IPv4Address("TCP", "10.0.0.1", 80)), "10.0.0.1:80")
        self.assertEqual(values.describe_address(IPv6Address("TCP", "::1", 80)), "[::1]:80")
        self.assertEqual(values.describe_address(UNIXAddress(b"/run/lb.sock")), "/run/lb.sock")
        self.assertEqual(values.describe_address(UNIXAddress(None)), "a UNIX socket")
