"""
Request keys and sticky cookies (pure parts).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from twisted.trial import unittest

from lbproxy.balancing import HashKey, StickyCookie, parse_hash_key, prefer, request_key
from lbproxy.balancing.keys import cookie_value
from lbproxy.balancing.sticky import sticky_token

from . import S, order, servers


def reader(headers: Dict[bytes, List[bytes]]):  # type: ignore[no-untyped-def]
    def read(name: bytes) -> Optional[Sequence[bytes]]:
        return headers.get(name)

    return read


class HashKeyTests(unittest.TestCase):
    def test_parse(self) -> None:
        table = [
            ("client_address", HashKey("client_address")),
            (" path ", HashKey("path")),
            ("header:X-User", HashKey("header", b"x-user")),
            ("cookie:session", HashKey("cookie", b"session")),
        ]
        for text, expected in table:
            self.assertEqual(parse_hash_key(text), expected, text)

    def test_parse_errors(self) -> None:
        for text in ("client", "header:", "header:a b", "cookie", "path:x", "url"):
            with self.assertRaises(ValueError) as caught:
                parse_hash_key(text)
            self.assertEqual(
                str(caught.exception),
                f"must be client_address, header:NAME, cookie:NAME or path, got {text!r}",
            )

    def test_request_key(self) -> None:
        headers = reader({b"x-user": [b"ann", b"bob"], b"cookie": [b"a=1; sid=xyz"]})
        table = [
            ("client_address", b"10.0.0.1"),
            ("path", b"/cart/items"),
            ("header:X-User", b"ann,bob"),
            ("header:X-Missing", None),
            ("cookie:sid", b"xyz"),
            ("cookie:none", None),
        ]
        for text, expected in table:
            key = request_key(parse_hash_key(text), b"10.0.0.1", headers, b"/cart/items?x=1")
            self.assertEqual(key, expected, text)

    def test_cookie_value(self) -> None:
        table = [
            (None, None),
            ([b"sid=1"], b"1"),
            ([b"a=2;  sid = 3 ; b=4"], b"3"),
            ([b"a=2", b'sid="q"'], b"q"),
            ([b"sidx=1; xsid=2"], None),
            ([b"sid"], None),
        ]
        for values, expected in table:
            self.assertEqual(cookie_value(values, b"sid"), expected, values)


class StickyCookieTests(unittest.TestCase):
    def test_token_is_opaque_and_stable(self) -> None:
        token = sticky_token("web", "app1")
        self.assertEqual(token, sticky_token("web", "app1"))
        self.assertEqual(len(token), 16)
        self.assertNotIn(b"app1", token)
        self.assertNotEqual(token, sticky_token("api", "app1"))
        self.assertNotEqual(token, sticky_token("web", "app2"))

    def test_cookie_names_a_server(self) -> None:
        listed = servers("a", "b")
        sticky = StickyCookie("srv", "web", listed)
        header = sticky.set_cookie(listed[1])
        self.assertEqual(header, b"srv=" + sticky_token("web", "b") + b"; Path=/; HttpOnly")
        value = header.split(b";")[0]
        self.assertIs(sticky.server([b"x=1; " + value]), listed[1])
        for cookies in (None, [b"srv=nonsense"], [b"other=" + sticky_token("web", "b")]):
            self.assertIsNone(sticky.server(cookies), cookies)

    def test_prefer(self) -> None:
        listed = servers("a", "b", "c")
        self.assertEqual(order(prefer(listed[1], iter(listed))), "b a c")
        self.assertEqual(order(prefer(None, iter(listed))), "a b c")
        listed[1].usable = False
        self.assertEqual(order(prefer(listed[1], iter([listed[0], listed[2]]))), "a c")

    def test_prefer_reads_the_algorithm_only_on_failover(self) -> None:
        read = []

        def algorithm():  # type: ignore[no-untyped-def]
            for server in (S("x"), S("y")):
                read.append(server.name)
                yield server

        chosen = S("s")
        walk = prefer(chosen, algorithm())
        self.assertIs(next(walk), chosen)
        self.assertEqual(read, [])
