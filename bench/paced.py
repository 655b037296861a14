"""
Latency at a fixed request rate, without coordinated omission.

    python3 bench/paced.py http://127.0.0.1:8080/ --rate 1000 --seconds 10

wrk sends the next request on a connection only when the previous answer
has come: a stall of the server holds back the requests that would have
been sent during it, so they are never measured late (coordinated
omission), and wrk runs the load core flat out, so its tail is the machine's
as much as the server's.  This client instead sends requests on a fixed
schedule (request i is due at start + i / rate), over a pool of keep-alive
connections, and measures each latency from the moment the request was due
to the end of its response: a request that waited for a free connection, or
for the client itself, is counted as late as it was.  At a rate well below
what every proxy can serve, the difference between proxies is their own
tail.  The client's own lateness (how late it woke up to send, the same for
every server measured) is reported beside it as C{client_lag_p99_ms}.

The first C{--warmup} seconds (2 by default) run at the same rate on the
same connections but are not measured: a server's first requests on new
connections, and (on PyPy) the JIT compiling the paths that this traffic
takes and the load before it did not, are a start-up cost, not the tail of
a server at that rate.  Errors are counted in the warm-up too.

It prints one JSON object: the rate, the requests due, answered and failed,
p50/p90/p99/p99.9/max latency in milliseconds, and the most requests that
waited at once for a free connection (more than a few: the server did not
keep up with the rate, and the figures are queueing).  Responses must carry
Content-Length (every proxy in the bench answers so).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
from collections import deque
from typing import Deque, Dict, List, Optional
from urllib.parse import urlsplit


class Connection(asyncio.Protocol):
    """One keep-alive connection: at most one request in flight."""

    def __init__(self, client: PacedClient) -> None:
        self.client = client
        self.transport: Optional[asyncio.Transport] = None
        self.buffer = bytearray()
        self.due: Optional[float] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, due: float) -> None:
        assert self.transport is not None
        self.due = due
        self.transport.write(self.client.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.due is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in bytes(self.buffer[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            status = bytes(self.buffer[9:12])
            del self.buffer[:total]
            due, self.due = self.due, None
            self.client.answered(self, due, status == b"200")

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.client.lost(self)


class PacedClient:
    def __init__(
        self, host: str, port: int, rate: float, seconds: float, tls: bool, warmup: float = 0.0
    ) -> None:
        self.host, self.port, self.rate, self.seconds = host, port, rate, seconds
        self.tls = tls
        self.warmup = warmup
        #: Requests due before this moment are the warm-up's (set by L{run}).
        self.measured_from = 0.0
        self.request = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        self.idle: Deque[Connection] = deque()
        self.waiting: Deque[float] = deque()
        self.latencies: List[float] = []
        self.warmup_answered = 0
        self.lags: List[float] = []
        self.errors = 0
        self.outstanding = 0
        self.most_waiting = 0
        self.all_sent = False
        self.loop = asyncio.get_event_loop()
        self.finished = self.loop.create_future()

    async def connect(self, count: int) -> None:
        context = None
        if self.tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        for _ in range(count):
            _, protocol = await self.loop.create_connection(
                lambda: Connection(self), self.host, self.port, ssl=context
            )
            self.idle.append(protocol)

    def answered(self, connection: Connection, due: float, ok: bool) -> None:
        if ok:
            if due >= self.measured_from:
                self.latencies.append(self.loop.time() - due)
            else:
                self.warmup_answered += 1
        else:
            self.errors += 1
        self._next(connection)

    def lost(self, connection: Connection) -> None:
        if connection.due is not None:
            self.errors += 1
            connection.due = None
            self._done_one()
        elif connection in self.idle:
            self.idle.remove(connection)

    def _next(self, connection: Connection) -> None:
        self._done_one()
        if self.waiting:
            connection.send(self.waiting.popleft())
        else:
            self.idle.append(connection)

    def _done_one(self) -> None:
        self.outstanding -= 1
        if self.outstanding == 0 and self.all_sent and not self.finished.done():
            self.finished.set_result(None)

    async def run(self) -> None:
        lead = int(self.rate * self.warmup)
        total = lead + int(self.rate * self.seconds)
        start = self.loop.time() + 0.05
        self.measured_from = start + lead / self.rate
        for i in range(total):
            due = start + i / self.rate
            delay = due - self.loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if i >= lead:
                self.lags.append(self.loop.time() - due)
            self.outstanding += 1
            if self.idle:
                self.idle.popleft().send(due)
            else:
                self.waiting.append(due)
                self.most_waiting = max(self.most_waiting, len(self.waiting))
        self.all_sent = True
        if self.outstanding:
            try:
                await asyncio.wait_for(asyncio.shield(self.finished), 10)
            except asyncio.TimeoutError:
                self.errors += self.outstanding


def percentile(sorted_values: List[float], q: float) -> Optional[float]:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def summary(client: PacedClient) -> Dict[str, object]:
    values = sorted(client.latencies)
    lags = sorted(client.lags)

    def ms(value: Optional[float]) -> Optional[float]:
        return None if value is None else round(1000 * value, 3)

    return {
        "rate": client.rate,
        "seconds": client.seconds,
        "warmup_s": client.warmup,
        "due": len(client.lags),
        "answered": len(values),
        # Answered in the warm-up (not in the figures; the server's CPU time
        # over the whole run is for these and the answered ones).
        "warmup_answered": client.warmup_answered,
        "errors": client.errors,
        "p50_ms": ms(percentile(values, 0.50)),
        "p90_ms": ms(percentile(values, 0.90)),
        "p99_ms": ms(percentile(values, 0.99)),
        "p999_ms": ms(percentile(values, 0.999)),
        "max_ms": ms(values[-1] if values else None),
        "client_lag_p99_ms": ms(percentile(lags, 0.99)),
        # Requests that found every connection busy (at most this many at
        # once): then the server did not keep up with the rate at that
        # moment, and beyond a few the figures are queueing, not its tail.
        "most_waiting": client.most_waiting,
    }


async def measure(
    url: str, rate: float, seconds: float, connections: int, warmup: float = 0.0
) -> Dict[str, object]:
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    client = PacedClient(
        parts.hostname or "127.0.0.1",
        parts.port or (443 if tls else 80),
        rate,
        seconds,
        tls,
        warmup,
    )
    await client.connect(connections)
    await client.run()
    return summary(client)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="seconds sent at the rate before the measured ones, not measured",
    )
    args = parser.parse_args()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        result = loop.run_until_complete(
            measure(args.url, args.rate, args.seconds, args.connections, args.warmup)
        )
    finally:
        loop.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
