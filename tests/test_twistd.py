"""
The installed program: the twistd plugin, `twistd -n lbproxy` as a real
subprocess driven by real clients, and `lbproxy check`.
"""

from __future__ import annotations

import os
import re
import sys
from typing import List, Optional

from twisted.application.service import IServiceMaker
from twisted.internet import defer, error, protocol, reactor, task
from twisted.plugin import getPlugins
from twisted.trial import unittest

from tests.support import (
    CLIENT_TIMEOUT,
    Backend,
    RSSSampler,
    curl,
    proxy_config,
    streaming_handler,
)

BIN = os.path.dirname(sys.executable)


def tool(name: str) -> str:
    path = os.path.join(BIN, name)
    if not os.path.exists(path):
        raise AssertionError(f"{path} is missing: install the project into this interpreter")
    return path


#: Peak RSS growth allowed while 300 MiB pass through: a sixth of it.
FLAT_TRANSFER_MIB = 48


class _Process(protocol.ProcessProtocol):
    """A subprocess whose output is collected; waits for a line pattern or the exit."""

    def __init__(self) -> None:
        self.output = b""
        self.exited: defer.Deferred[int] = defer.Deferred()
        self.waiting: List[tuple] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data
        for entry in list(self.waiting):
            pattern, d = entry
            match = re.search(pattern, self.output)
            if match:
                self.waiting.remove(entry)
                d.callback(match)

    errReceived = outReceived

    def wait_for(self, pattern: bytes) -> defer.Deferred[re.Match]:
        d: defer.Deferred[re.Match] = defer.Deferred()
        self.waiting.append((pattern, d))
        self.outReceived(b"")
        d.addTimeout(CLIENT_TIMEOUT, reactor)
        return d

    def processEnded(self, reason) -> None:  # type: ignore[no-untyped-def]
        code = reason.value.exitCode if isinstance(reason.value, error.ProcessTerminated) else 0
        for _, d in self.waiting:
            d.errback(AssertionError(f"process ended; output:\n{self.output.decode()}"))
        self.waiting = []
        self.exited.callback(code if code is not None else -1)


def installed_env() -> dict:
    """
    The environment for a subprocess that must use the installed package, not
    the source tree the tests were started from.
    """
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def run(
    test: unittest.TestCase, *argv: str, env: Optional[dict] = None, cwd: Optional[str] = None
) -> _Process:
    proc = _Process()
    environment = installed_env()
    environment.update(env or {})
    transport = reactor.spawnProcess(proc, argv[0], list(argv), env=environment, path=cwd)
    proc.transport = transport  # type: ignore[attr-defined]
    proc.pid = transport.pid  # type: ignore[attr-defined]

    def stop() -> defer.Deferred[int]:
        if not proc.exited.called:
            transport.signalProcess("TERM")
        return proc.exited

    test.addCleanup(stop)
    return proc


class PluginTests(unittest.TestCase):
    def test_plugin_is_found(self) -> None:
        makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
        self.assertIn("lbproxy", makers)
        self.assertEqual(makers["lbproxy"].module, "lbproxy.tap")


class TwistdHelpTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_twistd_help_lists_lbproxy(self):  # type: ignore[no-untyped-def]
        from twisted.internet.utils import getProcessOutputAndValue

        out, err, code = yield getProcessOutputAndValue(
            tool("twistd"), ["--help"], env=installed_env()
        )
        self.assertEqual(code, 0, err)
        self.assertRegex(out.decode(), r"\n\s+lbproxy\s+HTTP load-balancing reverse proxy\n")


class TwistdTests(unittest.TestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def twistd(self, path: str, *extra: str) -> _Process:
        return run(self, tool("twistd"), "-n", "--pidfile=", "lbproxy", "--config", path, *extra)

    @defer.inlineCallbacks
    def test_twistd_serves_and_balances(self):  # type: ignore[no-untyped-def]
        a, b = Backend("a"), Backend("b")
        self.addCleanup(a.stop)
        self.addCleanup(b.stop)
        proc = self.twistd(self.write(proxy_config([a.url, b.url])))
        match = yield proc.wait_for(rb"listening on .*:(\d+)")
        port = int(match.group(1))
        bodies = []
        for _ in range(4):
            out, err, code = yield curl(f"http://127.0.0.1:{port}/x")
            self.assertEqual(code, 0, err)
            bodies.append(out)
        self.assertEqual(bodies, [b"a\n", b"b\n", b"a\n", b"b\n"])
        self.assertNotIn(b"Traceback", proc.output)

    @defer.inlineCallbacks
    def test_short_option_and_demo_backends(self):  # type: ignore[no-untyped-def]
        # --demo serves the configured addresses itself: find free ports first.
        ports = [_free_port() for _ in range(2)]
        text = proxy_config([f"http://127.0.0.1:{p} name=d{i}" for i, p in enumerate(ports)])
        proc = run(
            self, tool("twistd"), "-n", "--pidfile=", "lbproxy", "-c", self.write(text), "--demo"
        )
        match = yield proc.wait_for(rb"listening on .*:(\d+)")
        seen = set()
        for _ in range(2):
            out, err, code = yield curl(f"http://127.0.0.1:{match.group(1).decode()}/")
            seen.add(out)
        self.assertEqual(seen, {b"Hello from demo backend d0\n", b"Hello from demo backend d1\n"})

    @defer.inlineCallbacks
    def test_bad_config_is_one_line_and_nothing_listens(self):  # type: ignore[no-untyped-def]
        path = self.write(
            "[proxy]\nlisten = tcp:0:interface=127.0.0.1\n[pool:web]\n"
            "servers = http://127.0.0.1:1 weight=lots\n"
        )
        proc = self.twistd(path)
        code = yield proc.exited
        self.assertNotEqual(code, 0)
        self.assertNotIn(b"Traceback", proc.output)
        self.assertNotIn(b"listening on", proc.output)
        last = proc.output.decode().strip().splitlines()[-1]
        self.assertTrue(
            last.endswith(
                f"{path}: [pool:web] servers: line 1: 'http://127.0.0.1:1': "
                "weight must be a whole number from 1 to 1000, got 'lots'"
            ),
            last,
        )

    @defer.inlineCallbacks
    def test_missing_file_is_one_line(self):  # type: ignore[no-untyped-def]
        proc = self.twistd("/nonexistent/lbproxy.ini")
        code = yield proc.exited
        self.assertNotEqual(code, 0)
        self.assertNotIn(b"Traceback", proc.output)
        self.assertIn(
            b"/nonexistent/lbproxy.ini: cannot read the file: No such file or directory",
            proc.output,
        )

    @defer.inlineCallbacks
    def test_busy_port_is_one_line(self):  # type: ignore[no-untyped-def]
        taken = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        text = (
            f"[proxy]\nlisten = tcp:{taken.getHost().port}:interface=127.0.0.1\n"
            "[pool:a]\nservers = http://127.0.0.1:1\n"
        )
        proc = self.twistd(self.write(text))
        code = yield proc.exited
        self.assertNotEqual(code, 0)
        self.assertNotIn(b"Traceback", proc.output)
        self.assertIn(b"cannot listen", proc.output)

    @defer.inlineCallbacks
    def test_300_mib_download_keeps_memory_flat(self):  # type: ignore[no-untyped-def]
        def sized(backend, request, body):  # type: ignore[no-untyped-def]
            return streaming_handler(int(request.path[1:]))(backend, request, body)

        big = Backend("big", sized)
        self.addCleanup(big.stop)
        proc = self.twistd(self.write(proxy_config([big.url])))
        match = yield proc.wait_for(rb"listening on .*:(\d+)")
        url = f"http://127.0.0.1:{match.group(1).decode()}"

        @defer.inlineCallbacks
        def download(size: int):  # type: ignore[no-untyped-def]
            out, err, code = yield curl(
                "--output", "/dev/null", "--write-out", "%{size_download}", f"{url}/{size}"
            )
            self.assertEqual((code, int(out or 0)), (0, size), err)

        # A first transfer brings the process to its working size (buffers,
        # and on PyPy the JIT and the garbage collector's steady heap).
        yield download(64 * 1024 * 1024)
        sampler = RSSSampler(proc.pid)
        yield download(300 * 1024 * 1024)
        growth_mib = sampler.stop()
        # Holding the body would grow the process by hundreds of MiB; the
        # bound leaves room for PyPy's transient heap during a transfer,
        # which grows with the baseline heap (more modules, more growth).
        self.assertLess(growth_mib, FLAT_TRANSFER_MIB, f"peak RSS grew by {growth_mib:.1f} MiB")

    @defer.inlineCallbacks
    def test_300_mib_form_upload_keeps_memory_flat(self):  # type: ignore[no-untyped-def]
        # twisted.web parses a form-typed POST body into request.args, reading
        # all of it into memory; the proxy must not.
        size = 300 * 1024 * 1024
        sink = _CountingSink()
        port = reactor.listenTCP(0, sink, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        backend_url = f"http://127.0.0.1:{port.getHost().port}"
        proc = self.twistd(self.write(proxy_config([backend_url], max_body_size="0")))
        match = yield proc.wait_for(rb"listening on .*:(\d+)")
        body = os.path.abspath(self.mktemp())
        with open(body, "wb") as f:
            f.truncate(size)
        url = f"http://127.0.0.1:{match.group(1).decode()}/upload"

        @defer.inlineCallbacks
        def upload():  # type: ignore[no-untyped-def]
            out, err, code = yield curl(
                "--output",
                "/dev/null",
                "--write-out",
                "%{http_code}",
                "-H",
                "Expect:",
                "-H",
                "Content-Type: application/x-www-form-urlencoded",
                "--data-binary",
                f"@{body}",
                url,
            )
            self.assertEqual((code, out), (0, b"200"), err)

        yield upload()
        sampler = RSSSampler(proc.pid)
        yield upload()
        growth_mib = sampler.stop()
        self.assertEqual(sink.bodies[-1], size)
        # Holding the body would grow the process by hundreds of MiB; the
        # bound leaves room for PyPy's transient heap during a transfer,
        # which grows with the baseline heap (more modules, more growth).
        self.assertLess(growth_mib, FLAT_TRANSFER_MIB, f"peak RSS grew by {growth_mib:.1f} MiB")

    @defer.inlineCallbacks
    def test_500_slowloris_connections_cost_little_and_block_nobody(self):  # type: ignore[no-untyped-def]
        import socket

        good = Backend("good")
        self.addCleanup(good.stop)
        proc = self.twistd(self.write(proxy_config([good.url])))
        match = yield proc.wait_for(rb"listening on .*:(\d+)")
        port = int(match.group(1))
        url = f"http://127.0.0.1:{port}/"
        out, err, code = yield curl(url)  # warm up
        sampler = RSSSampler(proc.pid)
        dribblers = []
        for i in range(500):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Part: %d" % i)
            dribblers.append(s)
        self.addCleanup(lambda: [s.close() for s in dribblers])
        for _ in range(20):
            out, err, code = yield curl(url)
            self.assertEqual((code, out), (0, b"good\n"), err)
        for s in dribblers:
            s.sendall(b"more")
        out, err, code = yield curl(url)
        self.assertEqual(out, b"good\n")
        growth = sampler.stop()
        self.assertLess(growth, 16, f"500 slow connections grew RSS by {growth:.1f} MiB")
        self.assertEqual([s.uri for s in good.seen if s.uri == b"/slow"], [])

    @defer.inlineCallbacks
    def test_slow_reader_keeps_memory_flat(self):  # type: ignore[no-untyped-def]
        import socket

        size = 512 * 1024 * 1024
        big = Backend("big", streaming_handler(size))
        self.addCleanup(big.stop)
        proc = self.twistd(self.write(proxy_config([big.url])))
        match = yield proc.wait_for(rb"listening on .*:(\d+)")
        sampler = RSSSampler(proc.pid)
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        reader.connect(("127.0.0.1", int(match.group(1))))
        self.addCleanup(reader.close)
        reader.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        while not big.streams:
            yield task.deferLater(reactor, 0.01, lambda: None)
        # The client reads nothing: the backend must be paused, not buffered.
        yield big.streams[0].paused
        for _ in range(30):
            yield task.deferLater(reactor, 0.01, lambda: None)
        growth = sampler.stop()
        self.assertLess(big.streams[0].sent, 64 * 1024 * 1024)
        self.assertLess(growth, 16, f"a slow reader grew RSS by {growth:.1f} MiB")


class _CountingSink(protocol.Factory):
    """A backend that counts the body bytes of each request and answers 200."""

    noisy = False

    def __init__(self) -> None:
        self.bodies: List[int] = []

    def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
        return _CountingProtocol(self)


class _CountingProtocol(protocol.Protocol):
    def __init__(self, factory: _CountingSink) -> None:
        self.factory = factory
        self.head = b""
        self.remaining = -1

    def dataReceived(self, data: bytes) -> None:
        while data:
            if self.remaining < 0:
                self.head += data
                if b"\r\n\r\n" not in self.head:
                    return
                head, data = self.head.split(b"\r\n\r\n", 1)
                self.head = b""
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                self.remaining = int(length.group(1)) if length else 0
                self.received = 0
            taken = data[: self.remaining]
            data = data[self.remaining :]
            self.remaining -= len(taken)
            self.received += len(taken)
            if self.remaining == 0:
                self.factory.bodies.append(self.received)
                self.remaining = -1
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


class CheckCommandTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_check_good_and_bad(self):  # type: ignore[no-untyped-def]
        from twisted.internet.utils import getProcessOutputAndValue

        good = self.mktemp()
        with open(good, "w") as f:
            f.write(proxy_config(["http://127.0.0.1:9001", "http://127.0.0.1:9002"]))
        out, err, code = yield getProcessOutputAndValue(
            tool("lbproxy"), ["check", good], env=installed_env()
        )
        self.assertEqual(code, 0)
        self.assertEqual(
            out.decode(),
            f"{good}: ok: 1 listener, 1 pool, 2 servers; requests go to pool 'test'\n",
        )
        bad = self.mktemp()
        with open(bad, "w") as f:
            f.write("[proxy]\nlisten = tcp:1\n[pool:a]\nalgorithm = fastest\nservers = http://h\n")
        out, err, code = yield getProcessOutputAndValue(
            tool("lbproxy"), ["check", bad], env=installed_env()
        )
        self.assertEqual(code, 1)
        self.assertEqual(out, b"")
        self.assertEqual(
            err.decode(),
            f"{bad}: [pool:a] algorithm: must be one of round_robin, weighted_round_robin, "
            "least_connections, random_two, peak_ewma, consistent_hash, got 'fastest'\n",
        )
        out, err, code = yield getProcessOutputAndValue(
            tool("lbproxy"), ["frobnicate"], env=installed_env()
        )
        self.assertEqual(code, 2)
        self.assertIn(b"usage: lbproxy", err)
        self.assertIn(b"invalid choice: 'frobnicate'", err)


def lbproxy(*args: str) -> defer.Deferred:
    from twisted.internet.utils import getProcessOutputAndValue

    return getProcessOutputAndValue(tool("lbproxy"), args, env=installed_env())


class CommandLineTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_help_goes_to_stdout_with_exit_0(self):  # type: ignore[no-untyped-def]
        for args, start in (
            (["--help"], b"usage: lbproxy "),
            (["-h"], b"usage: lbproxy "),
            (["check", "--help"], b"usage: lbproxy check "),
            (["init", "--help"], b"usage: lbproxy init "),
        ):
            out, err, code = yield lbproxy(*args)
            self.assertEqual((code, err), (0, b""), args)
            self.assertTrue(out.startswith(start), out)
        out, err, code = yield lbproxy("--help")
        for word in (b"check", b"init", b"version", b"twistd -n lbproxy -c FILE"):
            self.assertIn(word, out)

    @defer.inlineCallbacks
    def test_version(self):  # type: ignore[no-untyped-def]
        from lbproxy import __version__

        for args in (["--version"], ["version"]):
            out, err, code = yield lbproxy(*args)
            self.assertEqual((code, out, err), (0, f"lbproxy {__version__}\n".encode(), b""))

    @defer.inlineCallbacks
    def test_no_command_is_usage_on_stderr_with_exit_2(self):  # type: ignore[no-untyped-def]
        out, err, code = yield lbproxy()
        self.assertEqual((code, out), (2, b""))
        self.assertIn(b"usage: lbproxy", err)
        self.assertIn(b"a command is required", err)

    @defer.inlineCallbacks
    def test_init_writes_a_configuration_that_checks_and_serves(self):  # type: ignore[no-untyped-def]
        a, b = Backend("a"), Backend("b")
        self.addCleanup(a.stop)
        self.addCleanup(b.stop)
        out, err, code = yield lbproxy("init", a.url, b.url)
        self.assertEqual((code, err), (0, b""))
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(out)
        checked, err, code = yield lbproxy("check", path)
        self.assertEqual(
            (code, checked.decode()),
            (0, f"{path}: ok: 1 listener, 1 pool, 2 servers; requests go to pool 'web'\n"),
        )
        self.assertIn(b"listen = tcp:8080:interface=127.0.0.1", out)
        # With other listeners (the defaults may be taken here), it serves.
        out, err, code = yield lbproxy(
            "init",
            "--listen=tcp:0:interface=127.0.0.1",
            "--admin=tcp:0:interface=127.0.0.1",
            a.url,
            f"{b.url} weight=2",
        )
        self.assertEqual(code, 0, err)
        self.assertIn(b"algorithm = weighted_round_robin", out)
        with open(path, "wb") as f:
            f.write(out)
        proc = run(self, tool("twistd"), "-n", "lbproxy", "-c", path, cwd=os.path.dirname(path))
        match = yield proc.wait_for(rb"lbproxy listening on 127\.0\.0\.1:(\d+)")
        bodies = []
        for _ in range(3):
            body, err, code = yield curl(f"http://127.0.0.1:{match.group(1).decode()}/")
            bodies.append(body)
        self.assertEqual(sorted(bodies), [b"a\n", b"b\n", b"b\n"])

    @defer.inlineCallbacks
    def test_init_refuses_a_bad_url_in_one_line(self):  # type: ignore[no-untyped-def]
        out, err, code = yield lbproxy("init", "ftp://files.example")
        self.assertEqual((code, out), (1, b""))
        self.assertEqual(
            err,
            b"<lbproxy init>: [pool:web] servers: line 1: 'ftp://files.example': "
            b"the URL must start with http:// or https://\n",
        )

    @defer.inlineCallbacks
    def test_short_form_runs_twice_in_one_directory(self):  # type: ignore[no-untyped-def]
        # twistd writes twistd.pid in the current directory by default; in
        # the foreground (-n) lbproxy writes none unless --pidfile asks.
        a = Backend("a")
        self.addCleanup(a.stop)
        here = os.path.abspath(self.mktemp())
        os.mkdir(here)
        with open(os.path.join(here, "lbproxy.ini"), "w") as f:
            f.write(proxy_config([a.url]))
        ports = []
        for _ in range(2):
            proc = run(self, tool("twistd"), "-n", "lbproxy", "-c", "lbproxy.ini", cwd=here)
            match = yield proc.wait_for(rb"lbproxy listening on 127\.0\.0\.1:(\d+)")
            ports.append(match.group(1).decode())
        for port in ports:
            body, err, code = yield curl(f"http://127.0.0.1:{port}/")
            self.assertEqual((code, body), (0, b"a\n"), err)
        self.assertEqual(sorted(os.listdir(here)), ["lbproxy.ini"])
        # An explicit --pidfile is written.
        proc = run(
            self,
            tool("twistd"),
            "-n",
            "--pidfile=mine.pid",
            "lbproxy",
            "-c",
            "lbproxy.ini",
            cwd=here,
        )
        yield proc.wait_for(rb"lbproxy listening on")
        with open(os.path.join(here, "mine.pid")) as f:
            self.assertEqual(int(f.read()), proc.pid)


def _free_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port
