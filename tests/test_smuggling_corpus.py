"""
The request-smuggling regression corpus: thousands of generated request
streams sent on raw sockets through the real proxy to a backend that records
the exact bytes it receives, each judged against a strict reference parser
(see C{docs/corpus.md}).  One test per payload family; run alone with
C{python -m twisted.trial tests.test_smuggling_corpus}.
"""

from __future__ import annotations

from typing import Callable, Dict, List

from twisted.internet import defer
from twisted.trial import unittest

from tests.smuggling import harness, payloads, reference
from tests.support import ProxyTestCase, proxy_config, wait_until

CORPUS = payloads.corpus()
# At most this many failing payloads are shown in full per family.
SHOWN = 12


class ReferenceParserTests(unittest.TestCase):
    """The reference itself: a wrong oracle would pass anything."""

    def read(self, data: bytes, **kw: bool) -> reference.Reading:
        return reference.parse(data, **kw)

    def test_plain_requests_in_a_row(self) -> None:
        r = self.read(
            b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
            b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
            b"PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2;x=y\r\nab\r\n1\r\nc\r\n0\r\nT: v\r\n\r\n"
        )
        self.assertEqual(
            [(m.method, m.path, m.body, m.framing) for m in r.messages],
            [
                (b"GET", b"/a", b"", "none"),
                (b"POST", b"/b", b"abc", "length"),
                (b"PUT", b"/c", b"abc", "chunked"),
            ],
        )
        self.assertTrue(r.persistent)

    def test_refusals(self) -> None:
        head = b"POST / HTTP/1.1\r\nHost: h\r\n"
        for data, why in [
            (head + b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "both"),
            (head + b"Content-Length: 1\r\nContent-Length: 1\r\n\r\na", "more than one"),
            (head + b"Content-Length: +1\r\n\r\na", "1*DIGIT"),
            (head + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", "exactly chunked"),
            (head + b"Transfer-Encoding: chunked\r\n\r\n0x1\r\na\r\n0\r\n\r\n", "chunk line"),
            (head + b"Transfer-Encoding: chunked\r\n\r\n1;a\x01\r\na\r\n0\r\n\r\n", "chunk line"),
            (head + b"Transfer-Encoding: chunked\r\n\r\n1\r\nab\r\n0\r\n\r\n", "CRLF"),
            (head + b"X: a\x0bb\r\n\r\n", "control byte"),
            (head + b"X : a\r\n\r\n", "not a token"),
            (head + b"X: a\r\n b\r\n\r\n", "obs-fold"),
            (head + b"X: a\n\r\n", "bare LF"),
            (b"GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n", "visible ASCII"),
            (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "invalid Host"),
            (b"GET / HTTP/1.1\r\nHost: a:x\r\n\r\n", "invalid Host"),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", "more than one Host"),
            (b"GET / HTTP/1.1\r\n\r\n", "without Host"),
            (b"GET /\r\n\r\n", "request line"),
            (b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "HTTP/1.0"),
        ]:
            r = self.read(data)
            self.assertIn(why, r.refusal or "", data)
            self.assertEqual(r.messages, ())

    def test_requests_before_a_refusal_stand(self) -> None:
        r = self.read(
            b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\nX\x01: v\r\n\r\n"
        )
        self.assertEqual([m.path for m in r.messages], [b"/a"])
        self.assertIsNotNone(r.refusal)

    def test_absolute_form_authority_wins_but_not_at_the_backend(self) -> None:
        data = b"GET http://One.test/x HTTP/1.1\r\nHost: two.test\r\n\r\n"
        (m,) = self.read(data).messages
        self.assertEqual((m.authority, m.path), (b"one.test", b"/x"))
        self.assertIn("disagree", self.read(data, as_backend=True).refusal or "")

    def test_close_and_http10_end_the_stream(self) -> None:
        r = self.read(b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual((len(r.messages), r.closed), (1, True))
        r = self.read(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nX")
        self.assertEqual((len(r.messages), r.closed, r.rest), (1, True, b"X"))

    def test_incomplete(self) -> None:
        self.assertTrue(
            self.read(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\nab").incomplete
        )

    def test_corpus_is_large_and_deterministic(self) -> None:
        sizes = {family: len(p) for family, p in CORPUS.items()}
        self.assertGreater(sum(sizes.values()), 5000, sizes)
        self.assertEqual(payloads.corpus(), CORPUS)


class OracleTests(unittest.TestCase):
    """The judgement, on what a backend could have received."""

    def case(self, data: bytes) -> harness.Case:
        (case,) = harness.prepare([payloads.Payload("test", "test", data)])
        case.answer = harness.Answer([(200, {b"x-target-hex": b"2f"})], "all answered")
        return case

    def forwarded(self, *raws: bytes) -> List[harness.Forwarded]:
        return [harness.Forwarded(1, "127.0.0.1", raw) for raw in raws]

    def test_faithful_forwarding_passes(self) -> None:
        case = self.case(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab")
        case.answer = harness.Answer(
            [(200, {b"x-target-hex": b"2f"}), (200, {b"x-target-hex": b"2f5f5f70726f62655f5f"})],
            "all answered",
        )
        fwd = self.forwarded(
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
            harness.PROBE,
        )
        self.assertEqual(harness.judge(case, fwd), [])

    def test_a_smuggled_request_fails(self) -> None:
        case = self.case(
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX"
        )
        fwd = self.forwarded(
            b"POST / HTTP/1.1\r\nHost: h\r\n\r\n", b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"
        )
        problems = harness.judge(case, fwd)
        self.assertIn("the backend received 2 requests, the client sent 0", problems)

    def test_ambiguous_forwarding_fails(self) -> None:
        case = self.case(b"GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n")
        problems = harness.judge(case, self.forwarded(b"GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n"))
        self.assertIn("disagree", problems[0])
        for raw in (
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x0bb\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
        ):
            self.assertIn(
                "not strictly valid", harness.judge(self.case(raw), self.forwarded(raw))[0]
            )

    def test_a_changed_body_or_a_bad_gateway_fails(self) -> None:
        case = self.case(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab")
        fwd = self.forwarded(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nac")
        self.assertIn("request 1: body differs", harness.judge(case, fwd))
        case.answer = harness.Answer([(502, {})], "closed by the proxy")
        self.assertTrue(any("502" in p for p in harness.judge(case, [])))


class SmugglingCorpusTests(ProxyTestCase):
    """
    Every family of the corpus through one proxy and one recording backend.
    """

    @defer.inlineCallbacks
    def check_family(self, family: str):  # type: ignore[no-untyped-def]
        backend = harness.RecordingBackend()
        self.addCleanup(backend.stop)
        self.start_proxy(
            proxy_config(
                [backend.url],
                # No retries, no ejection: each payload's outcome is its own.
                pool={"retries": "0", "max_fails": "0"},
                # Longer than a client waits: a head the proxy thinks is
                # unfinished shows as a stall, not as a 408 refusal.
                client_header_timeout="30s",
            )
        )
        cases = harness.prepare(CORPUS[family])
        yield harness.run(self.port, cases)
        # Late bytes: whatever the proxy still sends after the clients are
        # gone is whole or cut off (the connection closes) within moments.
        yield wait_until(lambda: not backend.pending(), timeout=harness.PAYLOAD_TIMEOUT)
        received = backend.by_source()
        known = {case.source for case in cases}
        failures: List[str] = []
        causes: Dict[str, int] = {}
        for source in set(received) - known:
            failures.append(f"bytes from no payload (source {source}): {received[source]!r}")
        for case in cases:
            problems = harness.judge(case, received.get(case.source, []))
            if problems:
                failures.append(harness.report(case, problems))
                kind = harness.cause(case, problems)
                causes[kind] = causes.get(kind, 0) + 1
        if failures:
            shown = "\n\n".join(failures[:SHOWN])
            rest = [f.splitlines()[0] for f in failures[SHOWN:]]
            more = "\n\nand {} more:\n{}".format(len(rest), "\n".join(rest)) if rest else ""
            ranked = sorted(causes.items(), key=lambda kv: -kv[1])
            tally = "\n".join(f"  {n:5}  {k}" for k, n in ranked)
            self.fail(
                f"{len(failures)} of {len(cases)} {family} payloads were handled unsafely,"
                f" by cause:\n{tally}\n\n{shown}{more}"
            )


def _family_test(family: str) -> Callable[[SmugglingCorpusTests], object]:
    def test(self: SmugglingCorpusTests) -> object:
        return self.check_family(family)

    test.__name__ = "test_" + family.replace("-", "_")
    size = len(CORPUS[family])
    test.__doc__ = f"The {family} family ({size} payloads) is refused or forwarded unambiguously."
    return test


for _family in CORPUS:
    _test = _family_test(_family)
    setattr(SmugglingCorpusTests, _test.__name__, _test)
