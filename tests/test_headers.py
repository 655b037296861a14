"""
The header rules, table-driven.
"""

from __future__ import annotations

from twisted.trial import unittest

from lbproxy.headers import (
    chunk_extension_problem,
    connection_tokens,
    request_headers,
    response_headers,
)


def req(pairs, client=b"192.0.2.7", scheme=b"http", version=b"1.1", via=b"lbproxy"):  # type: ignore[no-untyped-def]
    return request_headers(pairs, client, scheme, version, via)


class ConnectionTokensTests(unittest.TestCase):
    def test_tokens(self) -> None:
        cases = [
            ([b"close"], {b"close"}),
            ([b"Keep-Alive, X-Foo"], {b"keep-alive", b"x-foo"}),
            ([b"a,,b ,  c"], {b"a", b"b", b"c"}),
            ([b"x-one", b"X-Two"], {b"x-one", b"x-two"}),
            ([b"Host, Content-Length, Transfer-Encoding, x"], {b"x"}),
            ([], set()),
        ]
        for values, expected in cases:
            self.assertEqual(connection_tokens(values), expected, values)


class RequestHeaderTests(unittest.TestCase):
    def test_hop_by_hop_removed(self) -> None:
        hop = [
            b"Connection",
            b"Keep-Alive",
            b"Proxy-Connection",
            b"Proxy-Authorization",
            b"Proxy-Authenticate",
            b"TE",
            b"Trailer",
            b"Transfer-Encoding",
            b"Upgrade",
        ]
        for name in hop:
            out = dict(req([(b"Host", [b"h"]), (name, [b"x"])]))
            self.assertNotIn(name, out)
            self.assertIn(b"Host", out)

    def test_names_listed_in_connection_removed(self) -> None:
        out = dict(
            req(
                [
                    (b"Host", [b"h"]),
                    (b"Connection", [b"X-Secret, keep-alive"]),
                    (b"X-Secret", [b"s"]),
                    (b"X-Kept", [b"k"]),
                ]
            )
        )
        self.assertNotIn(b"X-Secret", out)
        self.assertEqual(out[b"X-Kept"], [b"k"])

    def test_connection_cannot_remove_host_or_forwarded_for(self) -> None:
        out = dict(req([(b"Host", [b"h"]), (b"Connection", [b"Host, X-Forwarded-For, Via"])]))
        self.assertEqual(out[b"Host"], [b"h"])
        self.assertEqual(out[b"X-Forwarded-For"], [b"192.0.2.7"])
        self.assertEqual(out[b"Via"], [b"1.1 lbproxy"])

    def test_content_length_is_left_to_the_dispatcher(self) -> None:
        out = dict(req([(b"Host", [b"h"]), (b"Content-Length", [b"5"])]))
        self.assertNotIn(b"Content-Length", out)

    def test_expect_was_answered_by_the_proxy(self) -> None:
        out = dict(req([(b"Host", [b"h"]), (b"Expect", [b"100-continue"])]))
        self.assertNotIn(b"Expect", out)

    def test_order_and_repeats_kept(self) -> None:
        pairs = [
            (b"Host", [b"h"]),
            (b"Accept", [b"a"]),
            (b"X-Multi", [b"1", b"2", b"3"]),
            (b"Cookie", [b"c=1"]),
        ]
        out = req(pairs)
        self.assertEqual(out[:4], [(n, list(v)) for n, v in pairs])

    def test_forwarded_for_appended(self) -> None:
        cases = [
            ([], b"192.0.2.7"),
            ([(b"X-Forwarded-For", [b"10.0.0.1"])], b"10.0.0.1, 192.0.2.7"),
            (
                [(b"X-Forwarded-For", [b"10.0.0.1, 10.0.0.2", b"10.0.0.3"])],
                b"10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7",
            ),
        ]
        for pairs, expected in cases:
            out = dict(req([(b"Host", [b"h"])] + pairs))
            self.assertEqual(out[b"X-Forwarded-For"], [expected])

    def test_forwarded_proto_and_host_replaced(self) -> None:
        out = dict(
            req(
                [
                    (b"Host", [b"shop.example:8080"]),
                    (b"X-Forwarded-Proto", [b"gopher"]),
                    (b"X-Forwarded-Host", [b"evil"]),
                ],
                scheme=b"https",
            )
        )
        self.assertEqual(out[b"X-Forwarded-Proto"], [b"https"])
        self.assertEqual(out[b"X-Forwarded-Host"], [b"shop.example:8080"])
        self.assertEqual(out[b"Host"], [b"shop.example:8080"])

    def test_no_host_no_forwarded_host(self) -> None:
        out = dict(req([], version=b"1.0"))
        self.assertNotIn(b"X-Forwarded-Host", out)
        self.assertEqual(out[b"Via"], [b"1.0 lbproxy"])

    def test_via_appended_or_off(self) -> None:
        out = dict(req([(b"Host", [b"h"]), (b"Via", [b"1.1 edge"])]))
        self.assertEqual(out[b"Via"], [b"1.1 edge, 1.1 lbproxy"])
        out = dict(req([(b"Host", [b"h"]), (b"Via", [b"1.1 edge"])], via=None))
        self.assertEqual(out[b"Via"], [b"1.1 edge"])
        out = dict(req([(b"Host", [b"h"])], via=None))
        self.assertNotIn(b"Via", out)

    def test_names_compared_case_insensitively(self) -> None:
        out = dict(
            req(
                [
                    (b"host", [b"h"]),
                    (b"connection", [b"x-a"]),
                    (b"x-a", [b"1"]),
                    (b"x-forwarded-for", [b"1.2.3.4"]),
                ]
            )
        )
        self.assertNotIn(b"x-a", out)
        self.assertNotIn(b"x-forwarded-for", out)
        self.assertEqual(out[b"X-Forwarded-For"], [b"1.2.3.4, 192.0.2.7"])


class ResponseHeaderTests(unittest.TestCase):
    def test_table(self) -> None:
        cases = [
            ([(b"Content-Type", [b"text/plain"])], [(b"Content-Type", [b"text/plain"])]),
            ([(b"Connection", [b"close"]), (b"Server", [b"s"])], [(b"Server", [b"s"])]),
            (
                [(b"Connection", [b"X-Internal"]), (b"X-Internal", [b"1"]), (b"Date", [b"d"])],
                [(b"Date", [b"d"])],
            ),
            (
                [
                    (b"Keep-Alive", [b"timeout=5"]),
                    (b"Trailer", [b"x"]),
                    (b"Upgrade", [b"h2c"]),
                    (b"Proxy-Authenticate", [b"Basic"]),
                    (b"Set-Cookie", [b"a=1", b"b=2"]),
                ],
                [(b"Set-Cookie", [b"a=1", b"b=2"])],
            ),
            (
                [(b"Connection", [b"content-length"]), (b"Content-Length", [b"3"])],
                [(b"Content-Length", [b"3"])],
            ),
        ]
        for pairs, expected in cases:
            self.assertEqual(response_headers(pairs), expected, pairs)


class ChunkExtensionTests(unittest.TestCase):
    def test_table(self) -> None:
        good = [
            b"",
            b";a",
            b";a=b",
            b" ; a = b ;c",
            b';name="quoted value"',
            b';q="with \\" escaped"',
            b';a="";b=1',
        ]
        bad = [
            b';ext="unterminated',
            b';ext="ends with a backslash\\',
            b";",
            b";=v",
            b";a=",
            b";a=b c",
            b";a=@",
            b";a b",
            b"x;a=b",
            b';a="\x01"',
            b";a\x00",
        ]
        for ext in good:
            self.assertIsNone(chunk_extension_problem(ext), ext)
        for ext in bad:
            self.assertIsNotNone(chunk_extension_problem(ext), ext)
