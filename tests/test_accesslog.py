"""
The access log and X-Request-ID: line formats (pure), buffering and reopening
with a test clock, and real requests through the proxy whose lines are parsed
and matched with what was sent.
"""

from __future__ import annotations

import json
import os
import re

from twisted.internet import defer, task
from twisted.trial import unittest
from twisted.web.http_headers import Headers

from lbproxy.headers import kept_request_id
from lbproxy.ops import accesslog
from lbproxy.ops.accesslog import AccessLog, Entry, _LocalTime, as_json, combined
from lbproxy.record import RequestRecord
from tests.support import ProxyTestCase, proxy_config, refused_url

#: nginx's combined format and the fields lbproxy adds after it.
COMBINED = re.compile(
    r'^(?P<client>\S+) - - \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" (?P<status>\d{3}) '
    r'(?P<bytes>\d+) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)" (?P<duration>\d+\.\d{3}) '
    r"(?P<server>\S+) (?P<attempts>\d+) (?P<id>\S+)$"
)


def entry(**changes: object) -> Entry:
    values = dict(
        time=1795000000.25,
        client="127.0.0.1",
        method=b"GET",
        target=b"/a?b=1",
        protocol=b"HTTP/1.1",
        status=200,
        sent=12,
        duration=0.0123,
        server="b1",
        attempts=1,
        request_id=b"abc",
        referer=None,
        user_agent=b"curl/8",
    )
    values.update(changes)
    return Entry(**values)  # type: ignore[arg-type]


class FormatTests(unittest.TestCase):
    def test_combined(self) -> None:
        line = combined(entry(), _LocalTime())
        self.assertEqual(
            line,
            '127.0.0.1 - - [18/Nov/2026:11:06:40 +0000] "GET /a?b=1 HTTP/1.1" 200 12 "-" '
            '"curl/8" 0.012 b1 1 abc\n',
        )
        self.assertRegex(line.rstrip("\n"), COMBINED)

    def test_combined_escapes_what_could_break_the_line(self) -> None:
        line = combined(
            entry(user_agent=b'say "hi"\\\n\xff', target=b"/\x7f", server=None, request_id=b""),
            _LocalTime(),
        )
        self.assertIn('"say \\x22hi\\x22\\x5C\\x0A\\xFF"', line)
        self.assertIn('"GET /\\x7F HTTP/1.1"', line)
        self.assertTrue(line.endswith(" - 1 -\n"), line)
        self.assertEqual(line.count("\n"), 1)

    def test_a_line_made_from_the_record_is_the_entrys_line(self) -> None:
        """
        The line the log writes straight from a request's record is the
        line of its L{accesslog.entry}, byte for byte, for every field's odd
        cases: no server, an empty request id, a tunnel's received bytes,
        quoted bytes, headers absent, empty or repeated.
        """

        class Server:
            def __init__(self, name: str) -> None:
                self.name = name

        headers = [
            Headers(),
            Headers({b"referer": [b"http://r/a b"], b"user-agent": [b'say "hi"\\\n\xff']}),
            Headers({b"Referer": [], b"USER-AGENT": [b"a", b"b"]}),
        ]
        changes = [
            {},
            {"server": Server("b1"), "attempts": 2},
            {"server": Server(""), "request_id": b""},
            {"status": 101, "received": 7, "server": Server("b2")},
            {"target": b'/\x7f"', "method": b"BREW", "protocol": b"HTTP/1.0"},
            {"duration": 12.3456, "sent": 0, "status": 499, "client": "::1"},
        ]
        for header in headers:
            for change in changes:
                values = dict(
                    method=b"GET",
                    target=b"/a?b=1",
                    protocol=b"HTTP/1.1",
                    client="127.0.0.1",
                    scheme=b"http",
                    headers=header,
                    started=0.0,
                    request_id=b"abc",
                    duration=0.0123,
                    status=200,
                    sent=12,
                )
                values.update(change)
                record = RequestRecord(**values)  # type: ignore[arg-type]
                now = 1795000000.25
                expected = combined(accesslog.entry(record, now), _LocalTime())
                self.assertEqual(
                    accesslog.combined_record(record, now, _LocalTime()), expected, values
                )

    def test_json(self) -> None:
        record = json.loads(as_json(entry(referer=b"http://r/", user_agent=None), _LocalTime()))
        self.assertEqual(
            record,
            {
                "time": "2026-11-18T11:06:40.250Z",
                "client": "127.0.0.1",
                "method": "GET",
                "target": "/a?b=1",
                "protocol": "HTTP/1.1",
                "status": 200,
                "bytes": 12,
                "duration": 0.0123,
                "server": "b1",
                "attempts": 1,
                "request_id": "abc",
                "referer": "http://r/",
                "user_agent": None,
            },
        )


class RequestIdRuleTests(unittest.TestCase):
    def test_kept_when_one_well_formed_value(self) -> None:
        self.assertEqual(kept_request_id([b"a-1_B.c:d+e/f="]), b"a-1_B.c:d+e/f=")
        self.assertEqual(kept_request_id([b"x" * 128]), b"x" * 128)

    def test_made_anew_otherwise(self) -> None:
        for values in (None, [], [b""], [b"a", b"b"], [b"x" * 129], [b"a b"], [b'a"b'], [b"\xff"]):
            self.assertIsNone(kept_request_id(values), values)


class FileTests(unittest.TestCase):
    def test_lines_are_buffered_then_written_within_a_second(self) -> None:
        path = self.mktemp()
        clock = task.Clock()
        log = AccessLog(path, "json", clock)
        self.addCleanup(log.close)
        log.write(entry())
        with open(path) as f:
            self.assertEqual(f.read(), "")
        clock.advance(1.0)
        with open(path) as f:
            self.assertEqual(json.loads(f.read())["server"], "b1")

    def test_a_full_buffer_is_written_at_once(self) -> None:
        path = self.mktemp()
        log = AccessLog(path, "combined", task.Clock())
        self.addCleanup(log.close)
        for _ in range(1000):  # about 100 KB of lines
            log.write(entry())
        with open(path) as f:
            self.assertGreater(len(f.read().splitlines()), 500)

    def test_reopen_after_rotation(self) -> None:
        path = self.mktemp()
        clock = task.Clock()
        log = AccessLog(path, "combined", clock)
        self.addCleanup(log.close)
        log.write(entry(target=b"/before"))
        os.rename(path, path + ".1")  # what logrotate does
        log.write(entry(target=b"/held"))
        log.reopen()
        log.write(entry(target=b"/after"))
        clock.advance(1.0)
        with open(path + ".1") as f:
            self.assertEqual(
                [line.split('"')[1] for line in f], ["GET /before HTTP/1.1", "GET /held HTTP/1.1"]
            )
        with open(path) as f:
            self.assertEqual([line.split('"')[1] for line in f], ["GET /after HTTP/1.1"])

    def test_unopenable_path_raises(self) -> None:
        self.assertRaises(OSError, AccessLog, "/nonexistent/dir/access.log", "json", task.Clock())


class AccessLogIntegrationTests(ProxyTestCase):
    def read_lines(self, path: str) -> list:
        self.proxy.access_log.flush()  # type: ignore[union-attr]
        with open(path) as f:
            return f.read().splitlines()

    @defer.inlineCallbacks
    def test_combined_lines_match_the_requests(self):  # type: ignore[no-untyped-def]
        a, b = self.backend("a"), self.backend("b")
        path = os.path.abspath(self.mktemp())
        self.start_proxy(proxy_config([f"{a.url} name=a", f"{b.url} name=b"], access_log=path))
        yield self.fetch(
            "GET", "/one?x=1", headers=[("User-Agent", "tester/1"), ("Referer", "http://r/")]
        )
        yield self.fetch("POST", "/two", body=b"hello", headers=[("X-Request-ID", "client-id-1")])
        lines = self.read_lines(path)
        self.assertEqual(len(lines), 2)
        first, second = (COMBINED.match(line) for line in lines)
        assert first is not None and second is not None, lines
        self.assertEqual(first["client"], "127.0.0.1")
        self.assertEqual(first["request"], "GET /one?x=1 HTTP/1.1")
        self.assertEqual((first["status"], first["bytes"]), ("200", "2"))
        self.assertEqual((first["referer"], first["agent"]), ("http://r/", "tester/1"))
        self.assertEqual((first["server"], first["attempts"]), ("a", "1"))
        # The generated id is the one the backend saw.
        self.assertRegex(first["id"], r"^[0-9a-f]{32}$")
        self.assertEqual(a.seen[0].header(b"x-request-id"), [first["id"].encode()])
        # A client's id is kept, forwarded and logged.
        self.assertEqual(second["request"], "POST /two HTTP/1.1")
        self.assertEqual((second["server"], second["id"]), ("b", "client-id-1"))
        self.assertEqual(b.seen[0].header(b"x-request-id"), [b"client-id-1"])

    @defer.inlineCallbacks
    def test_json_lines_for_failures_and_retries(self):  # type: ignore[no-untyped-def]
        a = self.backend("a")
        dead = refused_url()
        path = os.path.abspath(self.mktemp())
        self.start_proxy(
            proxy_config(
                [f"{dead} name=dead", f"{a.url} name=a"],
                access_log=path,
                access_log_format="json",
                pool={"max_fails": "0"},
            )
        )
        yield self.fetch("GET", "/", headers=[("X-Request-ID", 'bad "id"')])
        yield self.fetch("CONNECT", "example.test:443")
        records = [json.loads(line) for line in self.read_lines(path)]
        self.assertEqual(len(records), 2, records)
        retried, refused = records
        self.assertEqual((retried["server"], retried["attempts"], retried["status"]), ("a", 2, 200))
        self.assertRegex(retried["request_id"], r"^[0-9a-f]{32}$")
        self.assertEqual(a.seen[0].header(b"x-request-id"), [retried["request_id"].encode()])
        self.assertGreater(retried["duration"], 0)
        self.assertEqual(retried["bytes"], 2)
        # Refused by the proxy itself: logged, no server, no attempt.
        self.assertEqual((refused["method"], refused["status"]), ("CONNECT", 501))
        self.assertEqual((refused["server"], refused["attempts"]), (None, 0))

    @defer.inlineCallbacks
    def test_client_gone_before_the_response_is_499(self):  # type: ignore[no-untyped-def]
        from tests.support import held_handler, wait_until

        a = self.backend("a", held_handler)
        path = os.path.abspath(self.mktemp())
        self.start_proxy(
            proxy_config([f"{a.url} name=a"], access_log=path, access_log_format="json")
        )
        import socket

        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        yield wait_until(lambda: a.held)
        sock.close()
        yield wait_until(lambda: a.lost)
        (record,) = [json.loads(line) for line in self.read_lines(path)]
        self.assertEqual((record["status"], record["server"], record["bytes"]), (499, "a", 0))
