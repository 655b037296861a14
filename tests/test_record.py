"""
lbproxy.record: the one typed record of a request, and the seam through
which the front tells the lifecycle what happens on the client's side.
"""

from __future__ import annotations

import attr
from twisted.trial import unittest
from twisted.web.http_headers import Headers
from zope.interface.verify import verifyClass

from lbproxy.record import IExchange, RequestRecord
from lbproxy.upstream.lifecycle import Lifecycle


def record(headers: Headers) -> RequestRecord:
    return RequestRecord(b"GET", b"/a?b", b"HTTP/1.1", "10.0.0.1", b"http", headers, 12.5)


class RequestRecordTests(unittest.SynchronousTestCase):
    def test_the_front_sets_what_it_knows_the_rest_starts_empty(self) -> None:
        headers = Headers({b"host": [b"example.com"]})
        made = record(headers)
        self.assertEqual(
            (made.method, made.target, made.protocol, made.client, made.scheme, made.started),
            (b"GET", b"/a?b", b"HTTP/1.1", "10.0.0.1", b"http", 12.5),
        )
        self.assertIs(made.headers, headers)  # by reference, not copied
        self.assertEqual(
            (made.request_id, made.pool, made.server, made.attempts),
            (b"", None, None, 0),
        )
        self.assertEqual((made.status, made.sent, made.duration), (0, 0, 0.0))
        self.assertIsNone(made.switched_after)
        self.assertIsNone(made.received)

    def test_the_fields_are_declared_and_nothing_else_can_be_stamped(self) -> None:
        made = record(Headers())
        self.assertEqual(
            [f.name for f in attr.fields(RequestRecord)],
            [
                "method",
                "target",
                "protocol",
                "client",
                "scheme",
                "headers",
                "started",
                "request_id",
                "pool",
                "server",
                "attempts",
                "status",
                "sent",
                "duration",
                "switched_after",
                "received",
            ],
        )
        made.status = 499
        self.assertEqual(made.status, 499)
        with self.assertRaises(AttributeError):
            made.exchange = object()  # type: ignore[attr-defined]

    def test_the_front_fills_every_field_the_constructor_requires(self) -> None:
        with self.assertRaises(TypeError):
            RequestRecord(b"GET", b"/", b"HTTP/1.1", "10.0.0.1", b"http", Headers())  # type: ignore[call-arg]


class ExchangeTests(unittest.SynchronousTestCase):
    def test_the_lifecycle_provides_the_exchange(self) -> None:
        self.assertTrue(IExchange.implementedBy(Lifecycle))
        self.assertTrue(verifyClass(IExchange, Lifecycle))

    def test_the_exchange_is_what_the_front_calls(self) -> None:
        self.assertEqual(sorted(IExchange.names()), ["client_lost", "touch"])
