"""
A client's request body, streamed to a backend as it arrives.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Deque, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

#: Bytes of request body held while the backend is slower than the client;
#: past this, the client connection is paused until the backend catches up.
BUFFER_LIMIT = 256 * 1024


@implementer(IBodyProducer)
class StreamedBody:
    """
    The body of one client request: the HTTP server feeds it, the backend
    agent consumes it.

    Bytes that arrive before the backend connection is ready, or while the
    backend is paused, are held up to L{BUFFER_LIMIT}; past that the client
    is paused (C{pause_client}) until the backend has taken them
    (C{resume_client}).  So memory per upload stays bounded whatever its
    size.

    A body can be sent once.  L{started} says whether an attempt took any of
    it, after which it cannot be replayed to another server.

    @ivar length: The declared length, or C{UNKNOWN_LENGTH} for a chunked
        body (which then goes chunked to the backend too).
    """

    def __init__(
        self,
        length: Optional[int],
        pause_client: Callable[[], None],
        resume_client: Callable[[], None],
        limit: int = BUFFER_LIMIT,
    ) -> None:
        self.length = UNKNOWN_LENGTH if length is None else length
        self.started = False
        self.complete = False
        self._pause_client = pause_client
        self._resume_client = resume_client
        self._limit = limit
        self._held: Deque[bytes] = deque()
        self._held_bytes = 0
        self._client_paused = False
        self._consumer: Optional[IConsumer] = None
        self._consumer_paused = False
        self._stopped = False
        self._done: Optional[Deferred[None]] = None
        #: Called once the whole body has been handed to the backend.
        self.on_sent: Optional[Callable[[], None]] = None

    # -- the client side ---------------------------------------------------

    def feed(self, data: bytes) -> None:
        """
        Bytes of the body arrived from the client.
        """
        if self._stopped:
            return
        consumer = self._consumer
        if consumer is not None and not self._consumer_paused and not self._held:
            consumer.write(data)
            return
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes > self._limit:
            # Paused on every arrival past the limit, so that a resume by
            # someone else cannot let the held bytes grow without bound.
            self._client_paused = True
            self._pause_client()

    def finish(self) -> None:
        """
        The whole body has arrived.
        """
        self.complete = True
        self._flush()

    def fail(self, reason: Failure) -> None:
        """
        The client went away before the whole body arrived.
        """
        self._held.clear()
        self._held_bytes = 0
        done, self._done = self._done, None
        if done is not None and not done.called:
            done.errback(reason)

    # -- IBodyProducer, driven by the agent --------------------------------

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self.started = True
        self._consumer = consumer
        if self.length == 0:
            return succeed(None)
        self._done = Deferred()
        result = self._done
        self._flush()
        return result

    def pauseProducing(self) -> None:
        self._consumer_paused = True

    def resumeProducing(self) -> None:
        self._consumer_paused = False
        self._flush()

    def stopProducing(self) -> None:
        # The backend side gave up: drop what is held and let the client
        # finish sending (and get its response).
        self._stopped = True
        self._held.clear()
        self._held_bytes = 0
        self._done = None
        self._resume()

    def _flush(self) -> None:
        consumer = self._consumer
        if consumer is None or self._stopped:
            return
        held = self._held
        while held and not self._consumer_paused:
            data = held.popleft()
            self._held_bytes -= len(data)
            consumer.write(data)
        if self._held_bytes <= self._limit:
            self._resume()
        if not held and self.complete:
            done, self._done = self._done, None
            if done is not None and not done.called:
                if self.on_sent is not None:
                    self.on_sent()
                done.callback(None)

    def _resume(self) -> None:
        if self._client_paused:
            self._client_paused = False
            self._resume_client()
