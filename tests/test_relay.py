"""
lbproxy.upstream.relay: a server's response head made the client's.  Table
tests over doubles of the request, the response and the lifecycle; the
body's relay is in L{tests.test_lifecycle}, the whole over sockets in
L{tests.test_integration}.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import attr
from twisted.trial import unittest
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from lbproxy.balancing import StickyCookie
from lbproxy.config import ServerConfig
from lbproxy.routing import Facts, Route, parse_response_rules
from lbproxy.upstream.relay import change_headers, end_to_end, relay_head
from lbproxy.upstream.server import ServerState

DATE = b"Sun, 06 Nov 1994 08:49:37 GMT"


class FakeRequest:
    def __init__(self, method: bytes = b"GET") -> None:
        self.method = method
        self.code = 0
        self.phrase = b""
        self.responseHeaders = Headers()

    def setResponseCode(self, code: int, phrase: Optional[bytes] = None) -> None:  # noqa: N802
        self.code, self.phrase = code, phrase or b""


@attr.s(auto_attribs=True)
class FakeResponse:
    code: int = 200
    phrase: bytes = b"OK"
    headers: Headers = attr.ib(factory=Headers)
    length: Any = UNKNOWN_LENGTH


@attr.s(auto_attribs=True)
class FakePool:
    sticky: Optional[StickyCookie[ServerState]] = None


@attr.s(auto_attribs=True)
class FakeLifecycle:
    request: FakeRequest = attr.ib(factory=FakeRequest)
    route: Optional[Route] = None
    facts: Optional[Facts] = None
    pool: FakePool = attr.ib(factory=FakePool)
    cookie_server: Optional[ServerState] = None


def server(name: str = "a") -> ServerState:
    return ServerState(ServerConfig(f"http://{name}:1", "http", name, 1, name=name))


def relayed(
    response: FakeResponse,
    lifecycle: Optional[FakeLifecycle] = None,
    to: Optional[ServerState] = None,
) -> Tuple[FakeRequest, Headers]:
    lifecycle = lifecycle if lifecycle is not None else FakeLifecycle()
    relay_head(lifecycle, to if to is not None else server(), response)  # type: ignore[arg-type]
    return lifecycle.request, lifecycle.request.responseHeaders


def head(headers: Headers, name: bytes) -> Optional[List[bytes]]:
    return headers.getRawHeaders(name)


HOP = [
    b"Keep-Alive",
    b"Proxy-Connection",
    b"Proxy-Authenticate",
    b"TE",
    b"Trailer",
    b"Transfer-Encoding",
    b"Upgrade",
]


class EndToEndTests(unittest.SynchronousTestCase):
    def test_hop_by_hop_headers_and_those_connection_names_are_removed(self) -> None:
        """
        The Connection values handed over (Twisted's parser keeps them apart)
        and a Connection header among the headers both name headers to remove.
        """
        for handed, own in [([b"close, X-Private"], None), (None, [b"close, X-Private"])]:
            headers = Headers({name: [b"x"] for name in HOP})
            if own is not None:
                headers.setRawHeaders(b"Connection", own)
            headers.setRawHeaders(b"X-Private", [b"secret"])
            headers.setRawHeaders(b"X-Public", [b"shown"])
            end_to_end(headers, handed)
            self.assertEqual(list(headers.getAllRawHeaders()), [(b"X-Public", [b"shown"])])

    def test_protected_names_stay_and_nothing_named_leaves_the_rest(self) -> None:
        headers = Headers({b"Content-Type": [b"text/plain"], b"Host": [b"h"], b"X-A": [b"1"]})
        end_to_end(headers, [b"Host, keep-alive"])
        end_to_end(headers, None)
        self.assertEqual(
            list(headers.getAllRawHeaders()),
            [(b"Content-Type", [b"text/plain"]), (b"Host", [b"h"]), (b"X-A", [b"1"])],
        )


class RelayHeadTests(unittest.SynchronousTestCase):
    def test_status_and_the_servers_own_header_object(self) -> None:
        response = FakeResponse(201, b"Made", Headers({b"X-A": [b"1", b"2"], b"Date": [DATE]}))
        request, headers = relayed(response)
        self.assertEqual((request.code, request.phrase), (201, b"Made"))
        self.assertIs(headers, response.headers)
        self.assertEqual(head(headers, b"x-a"), [b"1", b"2"])

    def test_the_fronts_connection_close_is_kept(self) -> None:
        lifecycle = FakeLifecycle()
        lifecycle.request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        response = FakeResponse(headers=Headers({b"Connection": [b"keep-alive"]}))
        _, headers = relayed(response, lifecycle)
        self.assertEqual(head(headers, b"connection"), [b"close"])

    def test_content_length_from_the_known_length_when_a_body_may_follow(self) -> None:
        # (method, status, length) -> Content-Length sent
        cases = [
            (b"GET", 200, 12, [b"12"]),
            (b"GET", 200, 0, [b"0"]),
            (b"POST", 404, 3, [b"3"]),
            (b"GET", 200, UNKNOWN_LENGTH, None),
            (b"HEAD", 200, 12, None),
            (b"GET", 204, 0, None),
            (b"GET", 304, 0, None),
        ]
        for method, code, length, expected in cases:
            lifecycle = FakeLifecycle(request=FakeRequest(method))
            _, headers = relayed(FakeResponse(code, length=length), lifecycle)
            self.assertEqual(head(headers, b"content-length"), expected, (method, code, length))

    def test_a_servers_content_length_is_replaced_by_the_known_one(self) -> None:
        response = FakeResponse(headers=Headers({b"Content-Length": [b"999"]}), length=5)
        _, headers = relayed(response)
        self.assertEqual(head(headers, b"content-length"), [b"5"])

    def test_date_set_when_absent_kept_when_present(self) -> None:
        _, headers = relayed(FakeResponse(headers=Headers({b"Date": [DATE]})))
        self.assertEqual(head(headers, b"date"), [DATE])
        _, headers = relayed(FakeResponse())
        [date] = head(headers, b"date") or [b""]
        self.assertRegex(date.decode(), r"^\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT$")

    def test_the_routes_response_rules_see_the_server(self) -> None:
        rules = parse_response_rules("set X-Served-By {server}\nremove X-Powered-By\nadd X-A b")
        lifecycle = FakeLifecycle(route=Route("r", response_rules=rules), facts=Facts())
        response = FakeResponse(headers=Headers({b"X-Powered-By": [b"php"], b"X-A": [b"a"]}))
        _, headers = relayed(response, lifecycle, server("backend-7"))
        self.assertEqual(head(headers, b"x-served-by"), [b"backend-7"])
        self.assertIsNone(head(headers, b"x-powered-by"))
        self.assertEqual(head(headers, b"x-a"), [b"a", b"b"])

    def test_a_sticky_pool_names_a_server_the_cookie_did_not(self) -> None:
        a, b = server("a"), server("b")
        sticky = StickyCookie("lb", "web", [a, b])
        lifecycle = FakeLifecycle(pool=FakePool(sticky), cookie_server=a)
        _, headers = relayed(FakeResponse(), lifecycle, b)
        self.assertEqual(head(headers, b"set-cookie"), [sticky.set_cookie(b)])
        lifecycle = FakeLifecycle(pool=FakePool(sticky), cookie_server=a)
        _, headers = relayed(FakeResponse(), lifecycle, a)
        self.assertIsNone(head(headers, b"set-cookie"))


class ChangeHeadersTests(unittest.SynchronousTestCase):
    def test_set_add_remove_in_order(self) -> None:
        headers = Headers({b"X-A": [b"1", b"2"], b"X-B": [b"b"]})
        change_headers(
            headers,
            [
                ("set", b"X-A", b"3"),
                ("add", b"X-A", b"4"),
                ("remove", b"X-B", None),
                ("add", b"X-C", b"c"),
            ],
        )
        self.assertEqual(head(headers, b"x-a"), [b"3", b"4"])
        self.assertIsNone(head(headers, b"x-b"))
        self.assertEqual(head(headers, b"x-c"), [b"c"])
