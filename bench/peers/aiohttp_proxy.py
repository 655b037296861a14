"""
A streaming reverse proxy in aiohttp: the plain-Python peer of the benchmark.

    python aiohttp_proxy.py PORT http://HOST:PORT [http://HOST:PORT ...]

Round robin over the backends, one keep-alive connection pool to them,
request and response bodies streamed both ways, hop-by-hop headers stripped.
Runs on uvloop when it can be imported.  No access log: this is the peer at
its fastest, not a feature match for lbproxy.
"""

import itertools
import sys
from typing import AsyncIterator, Optional

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "proxy-connection", "proxy-authenticate")
    + ("proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade")
)
CHUNK = 64 * 1024
SESSION = web.AppKey("session", ClientSession)


def end_to_end(headers: "CIMultiDictProxy[str]") -> "CIMultiDict[str]":
    """The headers less hop-by-hop ones, including those Connection names."""
    drop = set(HOP_BY_HOP)
    for value in headers.getall("Connection", ()):
        drop.update(token.strip().lower() for token in value.split(","))
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


def make_app(backends: "list[str]") -> web.Application:
    targets = itertools.cycle(backends)

    async def forward(request: web.Request) -> web.StreamResponse:
        url = URL(next(targets) + request.raw_path, encoded=True)
        body = request.content.iter_chunked(CHUNK) if request.body_exists else None
        response: Optional[web.StreamResponse] = None
        try:
            async with request.app[SESSION].request(
                request.method,
                url,
                headers=end_to_end(request.headers),
                data=body,
                allow_redirects=False,
            ) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                response.headers.extend(end_to_end(upstream.headers))
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except ClientError:
            if response is not None and response.prepared:
                raise  # cut short: aiohttp closes the client's connection
            return web.Response(status=502, text="bad gateway\n")

    async def session(app: web.Application) -> AsyncIterator[None]:
        connector = TCPConnector(limit=0, keepalive_timeout=60)
        app[SESSION] = ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            timeout=ClientTimeout(total=None, sock_connect=3, sock_read=60),
        )
        yield
        await app[SESSION].close()

    app = web.Application(client_max_size=0)
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    port, backends = int(sys.argv[1]), sys.argv[2:]
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = None
    web.run_app(
        make_app(backends), host="127.0.0.1", port=port, access_log=None, print=None, loop=loop
    )


if __name__ == "__main__":
    main()
