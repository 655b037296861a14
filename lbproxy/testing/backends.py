"""
The in-memory servers that stand for a configuration's backends: each
records what it receives and can be told to fail.
"""

from __future__ import annotations

from typing import Callable, List, Mapping, Optional, Tuple, Union

import attr
from twisted.web import resource, server
from twisted.web.http_headers import Headers

#: What a callable backend returns: status, headers, body.
Reply = Tuple[int, Mapping[str, str], bytes]


def _bytes(value: Union[str, bytes]) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else value


def _first(headers: Headers, name: Union[str, bytes]) -> Optional[bytes]:
    values = headers.getRawHeaders(_bytes(name))
    return values[0] if values else None


@attr.s(frozen=True, slots=True, auto_attribs=True)
class SeenRequest:
    """
    A request as a backend received it.

    :ivar target: The request target, byte for byte (C{/a?b=1}).
    :ivar body: The whole body (empty when there was none).
    """

    method: bytes
    target: bytes
    headers: Headers
    body: bytes

    def header(self, name: Union[str, bytes]) -> Optional[bytes]:
        """
        :param name: A header name, in any case.
        :returns: The header's first value, or L{None} when it is absent.
        """
        return _first(self.headers, name)


# Behaviours of a backend (MemoryBackend.mode).
SERVE = "serve"
REFUSE = "refuse"
UNREACHABLE = "unreachable"
HANG = "hang"
RESET = "reset"
FAIL = "fail"


class MemoryBackend:
    """
    One server of the configuration, in memory: a twisted.web C{Site} around
    a resource, which records what it receives and can be told to misbehave.

    :ivar name: The server's URL as the configuration writes it.
    :ivar seen: Every request it received, in order (also those it did not
        answer).
    :ivar connections: How many connections were made to it.
    :ivar mode: How it behaves now (L{SERVE} unless told otherwise).
    """

    def __init__(self, name: str, answer: Union[resource.IResource, Callable[..., Reply], None]):
        """
        :param name: The server's URL.
        :param answer: What answers: a twisted.web resource, a callable that
            takes a L{SeenRequest} and returns C{(status, headers, body)}, or
            L{None} for C{200} with the server's URL as the body.
        """
        self.name = name
        self.seen: List[SeenRequest] = []
        self.connections = 0
        self.mode = SERVE
        self.fail_status = 500
        if answer is None:
            body = name.encode("ascii")
            answer = lambda seen: (200, {"Content-Type": "text/plain"}, body)  # noqa: E731
        if not resource.IResource.providedBy(answer):
            answer = _CallableResource(answer)
        self.site = server.Site(answer, timeout=None)
        self.site.requestFactory = _BackendRequest
        self.site.backend = self  # type: ignore[attr-defined]

    def serve(self) -> None:
        """Answer requests normally again."""
        self.mode = SERVE

    def refuse(self) -> None:
        """Refuse new connections (as a closed port does)."""
        self.mode = REFUSE

    def unreachable(self) -> None:
        """Never complete a new connection: the attempt times out."""
        self.mode = UNREACHABLE

    def hang(self) -> None:
        """Accept connections and requests and never answer them."""
        self.mode = HANG

    def reset(self) -> None:
        """Close the connection on each request, without a response."""
        self.mode = RESET

    def fail(self, status: int = 500) -> None:
        """
        Answer every request with an error.

        :param status: The status of the answer.
        """
        self.mode = FAIL
        self.fail_status = status


class _CallableResource(resource.Resource):
    isLeaf = True

    def __init__(self, answer: Callable[[SeenRequest], Reply]) -> None:
        super().__init__()
        self._answer = answer

    def render(self, request: server.Request) -> bytes:
        status, headers, body = self._answer(request.seen)  # type: ignore[attr-defined]
        request.setResponseCode(status)
        for name, value in headers.items():
            request.setHeader(name, value)
        return body


class _BackendRequest(server.Request):
    """Records the request on its backend, then behaves as the backend's mode says."""

    def process(self) -> None:
        backend: MemoryBackend = self.channel.site.backend  # type: ignore[union-attr,attr-defined]
        assert self.content is not None
        body = self.content.read()
        self.content.seek(0)
        headers = Headers()
        for name, values in self.requestHeaders.getAllRawHeaders():
            headers.setRawHeaders(name, list(values))
        self.seen = SeenRequest(self.method, self.uri, headers, body)
        backend.seen.append(self.seen)
        if backend.mode == HANG:
            return
        if backend.mode == RESET:
            self.channel.transport.loseConnection()  # type: ignore[union-attr]
            return
        if backend.mode == FAIL:
            self.setResponseCode(backend.fail_status)
            self.setHeader(b"content-type", b"text/plain")
            self.write(b"failing on purpose\n")
            self.finish()
            return
        super().process()
