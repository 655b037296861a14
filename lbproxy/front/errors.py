"""
The proxy's own error answers, in one format.

An error page is a status line, a one-line plain-text body C{CODE PHRASE:
DETAIL} whose detail is a fixed text (nothing a client sent is reflected),
C{Content-Type: text/plain; charset=utf-8}, C{Content-Length}, and when
asked C{Retry-After} and C{Connection: close}.  It is written in one of two
ways: onto a twisted.web request (L{ErrorPage.write_to}, what
C{ProxyRequest.respond_error} does), or as whole response bytes for a
connection refused before any request object exists (L{error_response}: the
channel's refusals, the connection limit, the admin listener's body limit).
The admin API answers its errors in JSON (L{api_error}), the format its
clients read.
"""

from __future__ import annotations

import json
from typing import List, Optional, Tuple

import attr
from twisted.web import http
from twisted.web.http import datetimeToString

_TEXT = b"text/plain; charset=utf-8"


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ErrorPage:
    """
    One error answer.

    @ivar detail: A fixed text: nothing taken from the request.
    @ivar close: Close the connection after the response.
    @ivar retry_after: Seconds for a C{Retry-After} header, if any.
    """

    code: int
    phrase: bytes
    detail: bytes
    close: bool = False
    retry_after: Optional[int] = None

    def body(self) -> bytes:
        return b"%d %s: %s\n" % (self.code, self.phrase, self.detail)

    def raw(self) -> bytes:
        """
        The whole response as bytes, for a transport with no request on it.
        """
        body = self.body()
        head: List[Tuple[bytes, bytes]] = [
            (b"Content-Type", _TEXT),
            (b"Content-Length", b"%d" % len(body)),
        ]
        if self.retry_after is not None:
            head.append((b"Retry-After", b"%d" % self.retry_after))
        if self.close:
            head.append((b"Connection", b"close"))
        lines = b"".join(b"%s: %s\r\n" % field for field in head)
        return b"HTTP/1.1 %d %s\r\n%s\r\n%s" % (self.code, self.phrase, lines, body)

    def write_to(self, request: http.Request) -> None:
        """
        Answer C{request} with this page and finish it.  Headers set for
        the response before are dropped (but C{Connection}); the caller
        checks that the request can still be answered.
        """
        body = self.body()
        request.setResponseCode(self.code, self.phrase)
        headers = request.responseHeaders
        for name in list(name for name, _ in headers.getAllRawHeaders()):
            if name.lower() != b"connection":
                headers.removeHeader(name)
        if self.close and request.channel is not None:
            request.channel.persistent = False
            headers.setRawHeaders(b"Connection", [b"close"])
        if self.retry_after is not None:
            headers.setRawHeaders(b"Retry-After", [b"%d" % self.retry_after])
        headers.setRawHeaders(b"Content-Type", [_TEXT])
        headers.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
        headers.setRawHeaders(b"Date", [datetimeToString()])
        request.write(body)
        request.finish()


def error_response(code: int, phrase: bytes, detail: bytes) -> bytes:
    """
    A complete response that ends the connection: status, a one-line text
    body of the proxy's own (nothing from the request), C{Connection: close}.
    """
    return ErrorPage(code, phrase, detail, close=True).raw()


def api_error(request: http.Request, code: int, message: str) -> bytes:
    """
    The admin API's error: C{code}, and C{{"error": message}} as JSON, the
    body for the resource to return.
    """
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps({"error": message}, indent=1).encode("utf-8") + b"\n"
