"""
A real WebSocket server or client (the C{websockets} package, asyncio), run
as a subprocess by tests/test_websocket.py so that nothing but the proxy
runs in the test's reactor.

    python tests/ws_peer.py server
        Echoes every message.  Prints its port on the first line of
        stdout.  Commands (text messages): C{push N SIZE} sends N binary
        messages of SIZE bytes, then the text C{pushed}; C{hold} stops
        reading until a line arrives on stdin, then answers
        C{got <bytes read since the hold>} after the text C{end}.
    python tests/ws_peer.py client URL SCENARIO [CAFILE]
        Runs SCENARIO against URL and prints one JSON object on the last
        line of stdout: C{{"ok": true, ...}} or C{{"ok": false, "error": ...}}.
        A C{wss://} URL is reached on 127.0.0.1, its certificate checked
        against CAFILE.
        Where a scenario waits for the test, it prints C{waiting} and reads
        a line from stdin.

No keepalive pings on either side: a test of the idle timeout must see an
idle tunnel.
"""

import asyncio
import json
import ssl
import sys
import time

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed


def pattern(index, size):
    """The bytes of message C{index}: different for every message."""
    block = bytes((index + i) % 251 for i in range(251))
    return (block * (size // 251 + 1))[:size]


async def stdin_line():
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, sys.stdin.readline)


# -- server -------------------------------------------------------------------


async def handle(ws):
    async for message in ws:
        if isinstance(message, str) and message.startswith("push "):
            _, n, size = message.split()
            for i in range(int(n)):
                await ws.send(pattern(i, int(size)))
            await ws.send("pushed")
        elif message == "hold":
            await stdin_line()
            total = 0
            async for more in ws:
                if more == "end":
                    break
                total += len(more)
            await ws.send(f"got {total}")
        else:
            await ws.send(message)


async def server():
    async with serve(handle, "127.0.0.1", 0, max_size=None, ping_interval=None) as running:
        port = running.sockets[0].getsockname()[1]
        print(port, flush=True)
        await running.serve_forever()


# -- client scenarios ------------------------------------------------------------


async def echo(ws, count=3000):
    """COUNT messages of varied sizes, text and binary, sent and read at once."""

    def message(i):
        if i % 2:
            return f"text {i} " + "y" * (i % 200)
        return pattern(i, (i * 37) % 4000 + 1)

    async def sender():
        for i in range(count):
            await ws.send(message(i))

    task = asyncio.ensure_future(sender())
    for i in range(count):
        got = await ws.recv()
        if got != message(i):
            raise AssertionError(f"echo {i} differs")
    await task
    await ws.send(f"push {count} 100")
    for i in range(count):
        got = await ws.recv()
        if got != pattern(i, 100):
            raise AssertionError(f"pushed message {i} differs")
    if await ws.recv() != "pushed":
        raise AssertionError("no end of push")
    return {"messages": count * 3}


async def large(ws):
    """Large frames both ways: several megabytes each."""
    for i, size in enumerate((3 << 20, 8 << 20, 1 << 20)):
        data = pattern(i, size)
        await ws.send(data)
        if await ws.recv() != data:
            raise AssertionError(f"large frame {size} differs")
    return {"largest": 8 << 20}


async def slow_reader(ws):
    """The server pushes 64 MB that this client reads only once told to."""
    count, size = 64, 1 << 20
    await ws.send(f"push {count} {size}")
    print("waiting", flush=True)
    await stdin_line()
    for i in range(count):
        if await ws.recv() != pattern(i, size):
            raise AssertionError(f"pushed message {i} differs")
    if await ws.recv() != "pushed":
        raise AssertionError("no end of push")
    return {"read": count * size}


async def slow_server(ws):
    """This client sends 64 MB that the server reads only once told to."""
    await ws.send("hold")
    count, size = 64, 1 << 20
    for i in range(count):
        await ws.send(pattern(i, size))
    await ws.send("end")
    got = await ws.recv()
    if got != f"got {count * size}":
        raise AssertionError(f"the server answered {got!r}")
    return {"sent": count * size}


async def idle(ws):
    """One echo, then nothing: the proxy closes the idle tunnel."""
    await ws.send("hello")
    if await ws.recv() != "hello":
        raise AssertionError("no echo")
    started = time.monotonic()
    try:
        await asyncio.wait_for(ws.recv(), 30)
    except ConnectionClosed:
        return {"closed_after": time.monotonic() - started}
    raise AssertionError("a message arrived on an idle tunnel")


async def held(ws):
    """One echo, then wait for the test; then one more echo if still open."""
    await ws.send("first")
    if await ws.recv() != "first":
        raise AssertionError("no echo")
    print("waiting", flush=True)
    await stdin_line()
    try:
        await ws.send("second")
        return {"second": await ws.recv()}
    except ConnectionClosed:
        return {"closed": True}


SCENARIOS = {
    "echo": echo,
    "large": large,
    "slow_reader": slow_reader,
    "slow_server": slow_server,
    "idle": idle,
    "held": held,
}


async def client(url, scenario, ca_file=None):
    tls = {}
    if ca_file is not None:
        tls = {"ssl": ssl.create_default_context(cafile=ca_file), "host": "127.0.0.1"}
    options = dict(max_size=None, max_queue=1, ping_interval=None, open_timeout=20)
    async with connect(url, **options, **tls) as ws:
        return await SCENARIOS[scenario](ws)


def main():
    if sys.argv[1] == "server":
        asyncio.run(server())
        return
    try:
        result = asyncio.run(asyncio.wait_for(client(*sys.argv[2:]), 60))
        result["ok"] = True
    except Exception as e:  # reported to the test, which fails with it
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
