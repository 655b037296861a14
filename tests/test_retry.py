"""
The retry policy and the attribution of failures, as tables: pure
functions, no Deferreds, no clock.
"""

from __future__ import annotations

from typing import List, Tuple

from twisted.internet import error
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import ResponseFailed

from lbproxy._twisted import RequestGenerationFailed, RequestNotSent
from lbproxy.upstream.backend import UnsendableRequest
from lbproxy.upstream.failures import classify
from lbproxy.upstream.retry import ANSWERS, BLAME, Blame, Kind, backoff, may_retry

#: (method, body taken, kind, attempts made, attempts allowed) -> retried
RETRIES: List[Tuple[bytes, bool, Kind, int, int, bool]] = [
    # Nothing reached the server: any method goes elsewhere.
    (b"GET", False, Kind.NOT_SENT, 1, 2, True),
    (b"POST", False, Kind.NOT_SENT, 1, 2, True),
    # Sent: only idempotent methods.
    (b"GET", False, Kind.FAILED, 1, 2, True),
    (b"PUT", False, Kind.FAILED, 1, 2, True),
    (b"DELETE", False, Kind.TIMED_OUT, 1, 2, True),
    (b"POST", False, Kind.FAILED, 1, 2, False),
    (b"PATCH", False, Kind.TIMED_OUT, 1, 2, False),
    (b"GET", False, Kind.BROKEN, 1, 2, True),
    (b"POST", False, Kind.BROKEN, 1, 2, False),
    (b"HEAD", False, Kind.STALLED, 1, 3, True),
    # No attempts left.
    (b"GET", False, Kind.NOT_SENT, 2, 2, False),
    (b"GET", False, Kind.FAILED, 1, 1, False),
    # A streamed body taken (in part) cannot be sent again.
    (b"PUT", True, Kind.NOT_SENT, 1, 2, False),
    (b"PUT", True, Kind.FAILED, 1, 2, False),
    # The client's failures and ours: never.
    (b"GET", False, Kind.UNSENDABLE, 1, 5, False),
    (b"GET", False, Kind.UPLOAD_STALLED, 1, 5, False),
    (b"GET", False, Kind.CANCELLED, 1, 5, False),
]

#: (failure, timed out, upload stalled) -> kind
CLASSES: List[Tuple[Exception, bool, bool, Kind]] = [
    (error.ConnectionRefusedError(), False, False, Kind.NOT_SENT),
    (error.ConnectError(), False, False, Kind.NOT_SENT),
    (error.TimeoutError(), False, False, Kind.NOT_SENT),
    (RequestNotSent(), False, False, Kind.NOT_SENT),
    (ResponseFailed([Failure(error.ConnectionLost())]), False, False, Kind.FAILED),
    (UnsendableRequest("invalid method"), False, False, Kind.UNSENDABLE),
    (RequestGenerationFailed([Failure(ValueError())]), False, False, Kind.UNSENDABLE),
    # Cancelled while its body was being sent: not the request's fault.
    (RequestGenerationFailed([Failure(CancelledError())]), False, False, Kind.FAILED),
    (CancelledError(), False, False, Kind.CANCELLED),
    # The proxy cancelled it, and says why.
    (CancelledError(), True, False, Kind.TIMED_OUT),
    (CancelledError(), False, True, Kind.UPLOAD_STALLED),
    (UnsendableRequest("x"), True, False, Kind.TIMED_OUT),
    (error.ConnectionRefusedError(), True, False, Kind.TIMED_OUT),
]


class RetryPolicyTests(unittest.TestCase):
    def test_retries(self) -> None:
        for method, taken, kind, attempts, allowed, expected in RETRIES:
            with self.subTest(method=method, taken=taken, kind=kind, attempts=attempts):
                self.assertEqual(may_retry(method, taken, kind, attempts, allowed), expected)

    def test_classification(self) -> None:
        for value, timed_out, stalled, expected in CLASSES:
            with self.subTest(value=value, timed_out=timed_out, stalled=stalled):
                self.assertEqual(classify(Failure(value), timed_out, stalled), expected)

    def test_the_clients_failures_are_4xx_and_close(self) -> None:
        for kind, blame in BLAME.items():
            answer = ANSWERS[kind]
            with self.subTest(kind=kind):
                if blame is Blame.CLIENT:
                    self.assertTrue(400 <= answer.code < 500 and answer.close)
                else:
                    self.assertTrue(500 <= answer.code < 600)

    def test_every_kind_has_a_blame_and_an_answer(self) -> None:
        self.assertEqual(set(BLAME), set(Kind))
        self.assertEqual(set(ANSWERS), set(Kind))

    def test_backoff_doubles(self) -> None:
        self.assertEqual([backoff(n) for n in (1, 2, 3)], [0.05, 0.1, 0.2])
