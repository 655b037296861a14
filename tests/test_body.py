"""
StreamedBody: bounded holding, backpressure both ways, completion and failure.
"""

from __future__ import annotations

from typing import List

from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.iweb import UNKNOWN_LENGTH

from lbproxy.front.body import StreamedBody


class StreamedBodyTests(unittest.TestCase):
    def setUp(self) -> None:
        self.events: List[str] = []
        self.body = StreamedBody(
            None,
            lambda: self.events.append("pause"),
            lambda: self.events.append("resume"),
            limit=10,
        )
        self.consumer = StringTransport()

    def test_length(self) -> None:
        self.assertIs(self.body.length, UNKNOWN_LENGTH)
        self.assertEqual(StreamedBody(7, list, list).length, 7)

    def test_bytes_before_the_backend_is_ready_are_held_then_sent(self) -> None:
        self.body.feed(b"abc")
        self.body.feed(b"def")
        self.assertFalse(self.body.started)
        done = self.body.startProducing(self.consumer)
        self.assertTrue(self.body.started)
        self.assertEqual(self.consumer.value(), b"abcdef")
        self.assertNoResult(done)
        self.body.feed(b"g")
        self.assertEqual(self.consumer.value(), b"abcdefg")
        self.body.finish()
        self.successResultOf(done)

    def test_client_paused_past_the_limit_and_resumed_when_drained(self) -> None:
        self.body.feed(b"x" * 8)
        self.assertEqual(self.events, [])
        self.body.feed(b"x" * 8)
        self.assertEqual(self.events, ["pause"])
        self.body.feed(b"x" * 8)  # paused again: a stray resume cannot let it grow
        self.assertEqual(self.events, ["pause", "pause"])
        self.body.startProducing(self.consumer)
        self.assertEqual(self.events, ["pause", "pause", "resume"])
        self.assertEqual(len(self.consumer.value()), 24)

    def test_backend_pause_holds_bytes(self) -> None:
        self.body.startProducing(self.consumer)
        self.body.pauseProducing()
        self.body.feed(b"12345")
        self.body.feed(b"6789012")
        self.assertEqual(self.consumer.value(), b"")
        self.assertEqual(self.events, ["pause"])
        self.body.resumeProducing()
        self.assertEqual(self.consumer.value(), b"123456789012")
        self.assertEqual(self.events, ["pause", "resume"])

    def test_completion_waits_for_held_bytes(self) -> None:
        done = self.body.startProducing(self.consumer)
        self.body.pauseProducing()
        self.body.feed(b"abc")
        self.body.finish()
        self.assertNoResult(done)
        self.body.resumeProducing()
        self.successResultOf(done)
        self.assertEqual(self.consumer.value(), b"abc")

    def test_client_failure_fails_the_upload(self) -> None:
        done = self.body.startProducing(self.consumer)
        self.body.feed(b"ab")
        self.body.fail(Failure(ConnectionLost()))
        self.failureResultOf(done, ConnectionLost)

    def test_stop_drops_held_bytes_and_lets_the_client_go_on(self) -> None:
        self.body.feed(b"x" * 20)
        self.body.startProducing(self.consumer)
        self.body.pauseProducing()
        self.body.feed(b"y" * 20)
        self.body.stopProducing()
        self.assertEqual(self.events[-1], "resume")
        self.body.feed(b"z")
        self.body.resumeProducing()
        self.assertNotIn(b"z", self.consumer.value())

    def test_empty_body(self) -> None:
        body = StreamedBody(0, list, list)
        body.finish()
        self.successResultOf(body.startProducing(self.consumer))
        self.assertEqual(self.consumer.value(), b"")
