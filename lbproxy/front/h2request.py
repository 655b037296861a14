"""
The request of one HTTP/2 stream (L{H2Request}) and what it sees of its
client (L{StreamFront}); made by L{lbproxy.front.h2.ProxyH2Connection}.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any, Callable, Optional

import h2.exceptions
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH

from lbproxy._twisted import H2Stream
from lbproxy.config import FrontLimits
from lbproxy.front.body import StreamedBody
from lbproxy.front.h2head import Refusal
from lbproxy.front.site import ProxyRequest


def _nothing() -> None:
    pass


class StreamFront:
    """
    What an L{H2Request} sees of its client: the front's limits, and its
    stream, which a refusal ends (where HTTP/1.1 closes the connection).

    A refusal decided while Twisted is still making the stream (by
    C{gotLength}) is answered once the connection has the stream (L{open}).
    """

    refused = False

    def __init__(
        self,
        limits: FrontLimits,
        stream: H2Stream,
        call_later: Callable[..., IDelayedCall],
    ) -> None:
        self.limits = limits
        self.transport = stream
        self.call_later = call_later
        self.request: Optional[H2Request] = None
        self._ready = False
        self._answer: Optional[Refusal] = None

    def refuse(self, code: int, phrase: bytes, detail: bytes) -> None:
        """Answer C{code} on this stream; the rest of its body is ignored."""
        if self._answer is not None:
            return
        self.refused = True
        self._answer = (code, phrase, detail)
        if self._ready and self.request is not None:
            self.request.reject(code, phrase, detail)

    def open(self, problem: Optional[Refusal]) -> None:
        """
        The stream exists: answer C{problem} (the header block's, which
        comes first) or a refusal decided meanwhile.
        """
        self._ready = True
        if problem is not None:
            self.refused = True
            self._answer = problem
        if self._answer is not None and self.request is not None:
            self.request.reject(*self._answer)


class H2Request(ProxyRequest):
    """
    The request of one HTTP/2 stream: a L{ProxyRequest} whose request line
    comes from the stream's pseudo-headers, whose body is paused through the
    stream's flow control, and whose refusals end the stream only.
    """

    #: Its stream, as the proxy's front (set by the connection).
    stream_front: StreamFront
    _length_seen = False
    _header_timer: Optional[IDelayedCall] = None

    @property
    def front(self) -> StreamFront:  # type: ignore[override]
        return self.stream_front

    def gotLength(self, length: Optional[int]) -> None:
        """
        The header block is complete (C{length}: its C{content-length}, or
        L{None} when it has none and the method may have a body).  A request
        with a body is handed on in the next reactor turn, its body streaming
        after it; one without waits for the end of its stream, at most
        C{client_header_timeout}.
        """
        front = self.front
        if self._length_seen:
            front.refuse(400, b"Bad Request", b"more than one Content-Length")
            return
        self._length_seen = True
        self.content = BytesIO()
        limit = front.limits.max_body_size
        if length is not None and length < 0:
            front.refuse(400, b"Bad Request", b"invalid Content-Length")
            return
        if limit and length is not None and length > limit:
            front.refuse(413, b"Content Too Large", b"the request body is too large")
            return
        if length == 0:
            if self.requestHeaders.hasHeader(b"content-length"):
                self.body = StreamedBody(0, _nothing, _nothing)
                self.body.finish()
            self._header_timer = front.call_later(
                front.limits.client_header_timeout, self._end_timed_out
            )
            return
        self.body = StreamedBody(length, self._pause_client, self._resume_client)
        stream: Any = self.channel
        self._head = (stream.command, stream.path or b"", b"HTTP/2")
        self._schedule_dispatch()

    def reject(self, code: int, phrase: bytes, detail: bytes) -> None:
        """Answer C{code}; whatever more the stream brings is ignored."""
        self._rejected = True
        self.respond_error(code, phrase, detail)

    def _end_timed_out(self) -> None:
        self._header_timer = None
        self.front.refuse(408, b"Request Timeout", b"the request took too long to arrive")

    def _cancel_header_timer(self) -> None:
        timer, self._header_timer = self._header_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _schedule_dispatch(self) -> None:
        head, self._head = self._head, None
        if head is not None:
            self.front.call_later(0, self._dispatch_early, *head)

    def _dispatch_early(self, command: bytes, path: bytes, version: bytes) -> None:
        body = self.body
        if body is not None and body.complete and body.length is UNKNOWN_LENGTH:
            # The whole body came with the request: it goes with a length.
            body.length = self.received_bytes
        super()._dispatch_early(command, path, version)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._cancel_header_timer()
        # CONNECT has no :path (and is refused by the resource).
        super().requestReceived(command, path or b"", version)

    def _pause_client(self) -> None:
        if self.channel is not None and not self._disconnected:
            self.channel.pauseProducing()  # type: ignore[attr-defined]

    def _resume_client(self) -> None:
        if self.channel is not None and not self._disconnected and not self.finished:
            try:
                self.channel.resumeProducing()  # type: ignore[attr-defined]
            except h2.exceptions.ProtocolError:
                pass

    def cut_short(self) -> None:
        """End a response that cannot be completed: reset its stream."""
        if self.channel is not None and not self._disconnected:
            self.channel.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure) -> None:
        self._cancel_header_timer()
        super().connectionLost(reason)

    def finish(self) -> None:
        self._cancel_header_timer()
        super().finish()


__all__ = ["H2Request", "StreamFront"]
