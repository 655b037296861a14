"""
lbproxy.balancing.keys: request keys for hashing, as tables.  The parsers of
C{hash_key} and the keys of requests are also in L{tests.balancing.test_sticky}.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from twisted.trial import unittest

from lbproxy.balancing.keys import (
    CLIENT_ADDRESS,
    HashKey,
    cookie_value,
    parse_hash_key,
    parse_token_name,
    request_key,
)


def reader(headers: Dict[bytes, List[bytes]]):  # type: ignore[no-untyped-def]
    def read(name: bytes) -> Optional[Sequence[bytes]]:
        return headers.get(name)

    return read


class KeysTests(unittest.SynchronousTestCase):
    def test_token_names(self) -> None:
        for text, expected in [
            ("X-User", "X-User"),
            ("  sid ", "sid"),
            ("a!#$%&'*+.^_`|~9", "a!#$%&'*+.^_`|~9"),
        ]:
            self.assertEqual(parse_token_name(text), expected)
        for text in ("", "a b", "a:b", "a;b", "é", 'a"b'):
            with self.assertRaises(ValueError) as caught:
                parse_token_name(text)
            self.assertIn("must be a name of letters, digits", str(caught.exception))
            self.assertIn(repr(text.strip()), str(caught.exception))

    def test_a_key_as_the_configuration_writes_it(self) -> None:
        for text in ("client_address", "path", "header:x-user", "cookie:Session"):
            key = parse_hash_key(text)
            self.assertEqual(str(key), text)
            self.assertEqual(parse_hash_key(str(key)), key)
        self.assertEqual(CLIENT_ADDRESS, HashKey("client_address"))
        self.assertEqual(str(parse_hash_key("header:X-User")), "header:x-user")  # header names fold

    def test_cookie_names_keep_their_case(self) -> None:
        self.assertEqual(parse_hash_key("cookie:SID"), HashKey("cookie", b"SID"))
        headers = reader({b"cookie": [b"sid=lower; SID=upper"]})
        self.assertEqual(request_key(HashKey("cookie", b"SID"), b"", headers, b"/"), b"upper")

    def test_cookie_values(self) -> None:
        # (Cookie header values, name) -> value
        table = [
            (None, b"sid", None),
            ([], b"sid", None),
            ([b"sid=1"], b"sid", b"1"),
            ([b"a=1", b"b=2; sid=3"], b"sid", b"3"),
            ([b'sid="quoted"'], b"sid", b"quoted"),
            ([b"sid=first; sid=second"], b"sid", b"first"),
            ([b"sidx=1; xsid=2"], b"sid", None),
            ([b"sid"], b"sid", None),  # no '='
            ([b" sid = spaced "], b"sid", b"spaced"),
            ([b"sid="], b"sid", b""),
        ]
        for values, name, expected in table:
            self.assertEqual(cookie_value(values, name), expected, values)

    def test_the_key_of_a_request(self) -> None:
        headers = reader({b"x-user": [b"ann", b"bob"], b"cookie": [b"sid=xyz"]})
        # key -> request key, for client 10.0.0.1 asking for /a/b?c=d
        table = [
            ("client_address", b"10.0.0.1"),
            ("path", b"/a/b"),
            ("header:X-User", b"ann,bob"),
            ("header:X-None", None),
            ("cookie:sid", b"xyz"),
            ("cookie:other", None),
        ]
        for text, expected in table:
            self.assertEqual(
                request_key(parse_hash_key(text), b"10.0.0.1", headers, b"/a/b?c=d"), expected
            )
        self.assertEqual(request_key(HashKey("path"), b"", headers, b"/only"), b"/only")
        self.assertIsNone(
            request_key(HashKey("header", b"x-user"), b"", reader({b"x-user": []}), b"/")
        )
