"""
lbproxy as an operator runs it: `twistd -n lbproxy` as a real process, sent
real signals (SIGHUP under load, SIGTERM with a request in flight, SIGUSR1),
telling a test notification socket what it does, serving on a socket passed
by systemd-socket-activate; and the systemd units checked by
systemd-analyze.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from typing import List, Tuple

from twisted.internet import defer, protocol, reactor, threads
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tests.support import (
    CLIENT_TIMEOUT,
    HOST,
    Backend,
    curl,
    fetch,
    held_handler,
    proxy_config,
    refused,
    wait_until,
)
from tests.test_twistd import _free_port, run, tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Notifications(protocol.DatagramProtocol):
    """A stand-in for systemd's notification socket: collects the datagrams."""

    def __init__(self) -> None:
        self.messages: List[str] = []

    def datagramReceived(self, data: bytes, addr: object) -> None:  # type: ignore[override]
        self.messages.append(data.decode())

    def states(self) -> List[str]:
        """The first line of every message (READY=1, RELOADING=1, ...)."""
        return [m.splitlines()[0] for m in self.messages]


def load_loop(port: int, stop: threading.Event, seconds: float = 60.0) -> Tuple[int, List[str]]:
    """
    Send GET requests to the proxy until told to stop (at most C{seconds}
    and 50,000 requests), over keep-alive connections renewed every 20
    requests; return how many succeeded and what went wrong.
    """
    ok = 0
    errors: List[str] = []
    conn = None
    deadline = time.monotonic() + seconds
    for n in range(50_000):
        if stop.is_set() or time.monotonic() > deadline:
            break
        try:
            if conn is None:
                conn = http.client.HTTPConnection(HOST, port, timeout=CLIENT_TIMEOUT)
            conn.request("GET", f"/{n}", headers={"Host": "load.test"})
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                ok += 1
            else:
                errors.append(f"request {n}: status {response.status}")
            if n % 20 == 19 or response.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except Exception as e:  # every failure is a finding
            errors.append(f"request {n}: {e!r}")
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()
    return ok, errors


class OperationsTestCase(unittest.TestCase):
    def setUp(self) -> None:
        # A short directory: UNIX socket paths are limited to 108 bytes.
        self.dir = tempfile.mkdtemp(prefix="lbp-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def write(self, text: str, name: str = "lbproxy.ini") -> str:
        path = os.path.join(self.dir, name)
        with open(path + ".new", "w") as f:
            f.write(text)
        os.replace(path + ".new", path)
        return path

    def backends(self, *names: str, handler=None) -> List[Backend]:  # type: ignore[no-untyped-def]
        made = []
        for name in names:
            backend = Backend(name, handler) if handler else Backend(name)
            self.addCleanup(backend.stop)
            made.append(backend)
        return made

    def twistd(self, path: str, **env: str):  # type: ignore[no-untyped-def]
        """`twistd -n lbproxy -c PATH` as a subprocess, with C{env} added."""
        return run(self, tool("twistd"), "-n", "--pidfile=", "lbproxy", "-c", path, env=env)

    def notifications(self) -> Tuple[str, _Notifications]:
        path = os.path.join(self.dir, "notify")
        receiver = _Notifications()
        port = reactor.listenUNIXDatagram(path, receiver)
        self.addCleanup(port.stopListening)
        return path, receiver


def config_with_port(servers: List[str], port: int, **proxy: str) -> str:
    return proxy_config(servers, **proxy).replace(
        f"listen = tcp:0:interface={HOST}", f"listen = tcp:{port}:interface={HOST}"
    )


class SignalTests(OperationsTestCase):
    @defer.inlineCallbacks
    def test_ready_reloading_stopping_reach_the_notify_socket(self):  # type: ignore[no-untyped-def]
        (a,) = self.backends("a")
        notify_path, receiver = self.notifications()
        port = _free_port()
        path = self.write(config_with_port([a.url], port))
        proc = self.twistd(path, NOTIFY_SOCKET=notify_path)
        yield wait_until(lambda: "READY=1" in receiver.states())
        # READY=1 is sent once the proxy listens: it serves at once.
        response = yield threads.deferToThread(fetch, port)
        self.assertEqual(response.body, b"a\n")
        ready = [m for m in receiver.messages if m.startswith("READY=1")][0]
        self.assertIn("STATUS=", ready)
        self.assertIn(f"MAINPID={proc.transport.pid}", ready)
        proc.transport.signalProcess("HUP")
        yield wait_until(lambda: receiver.states().count("READY=1") == 2)
        self.assertEqual(receiver.states(), ["READY=1", "RELOADING=1", "READY=1"])
        self.assertRegex(receiver.messages[1], r"MONOTONIC_USEC=\d+")
        proc.transport.signalProcess("TERM")
        code = yield proc.exited
        self.assertEqual(code, 0)
        self.assertEqual(receiver.states()[-1], "STOPPING=1")
        self.assertNotIn(b"Traceback", proc.output)

    @defer.inlineCallbacks
    def test_signals_as_soon_as_listening_is_logged_are_handled(self):  # type: ignore[no-untyped-def]
        # "lbproxy listening on" is the line to wait for: the signal handlers
        # are in place before it is written.  Four processes, each sent
        # SIGHUP and SIGUSR1 the moment the line arrives, all survive.
        (a,) = self.backends("a")

        @defer.inlineCallbacks
        def one(number: int):  # type: ignore[no-untyped-def]
            log_path = os.path.join(self.dir, f"access{number}.log")
            text = proxy_config([f"{a.url} name=a"], access_log=log_path)
            proc = self.twistd(self.write(text, f"lbproxy{number}.ini"))
            match = yield proc.wait_for(rb"lbproxy listening on 127\.0\.0\.1:(\d+)")
            proc.transport.signalProcess("HUP")
            proc.transport.signalProcess(signal.SIGUSR1)
            yield proc.wait_for(rb"reloaded ")
            yield proc.wait_for(rb"access log reopened")
            response = yield threads.deferToThread(fetch, int(match.group(1)))
            self.assertEqual(response.body, b"a\n")
            self.assertFalse(proc.exited.called, proc.output)
            proc.transport.signalProcess("TERM")
            code = yield proc.exited
            self.assertEqual(code, 0, proc.output)

        yield defer.gatherResults([one(n) for n in range(4)], consumeErrors=True)

    @defer.inlineCallbacks
    def test_five_reloads_under_load_lose_no_request(self):  # type: ignore[no-untyped-def]
        backends = self.backends("a", "b", "c", "d")
        url = {b.name: f"{b.url} name={b.name}" for b in backends}
        port = _free_port()
        layouts = [
            ["a", "b"],
            ["a", "b", "c"],
            ["b", "c"],
            ["c", "d"],
            ["a", "d"],
            ["a", "b", "c", "d"],
        ]
        path = self.write(config_with_port([url[n] for n in layouts[0]], port))
        proc = self.twistd(path)
        yield proc.wait_for(rb"listening on")
        stop = threading.Event()
        loading = threads.deferToThread(load_loop, port, stop)
        self.addCleanup(stop.set)
        yield wait_until(lambda: sum(len(b.seen) for b in backends) >= 50)
        for number, layout in enumerate(layouts[1:], 1):
            self.write(config_with_port([url[n] for n in layout], port))
            proc.transport.signalProcess("HUP")
            yield proc.wait_for(rb"(?s)(reloaded .*?){%d}" % number)
            # Traffic reaches the servers of the new layout, and only them.
            before = {b.name: len(b.seen) for b in backends}
            yield wait_until(
                lambda layout=layout, before=before: all(
                    len(b.seen) > before[b.name] for b in backends if b.name in layout
                )
            )
            settled = {b.name: len(b.seen) for b in backends}
            goal = sum(settled.values()) + 30
            yield wait_until(lambda goal=goal: sum(len(b.seen) for b in backends) >= goal)
            for b in backends:
                if b.name not in layout:
                    self.assertEqual(len(b.seen), settled[b.name], (number, b.name))
        stop.set()
        ok, errors = yield loading
        self.assertEqual(errors, [])
        self.assertGreater(ok, 200)
        self.assertEqual(ok, sum(len(b.seen) for b in backends))
        self.assertNotIn(b"Traceback", proc.output)

    @defer.inlineCallbacks
    def test_invalid_reload_is_one_line_and_the_proxy_keeps_serving(self):  # type: ignore[no-untyped-def]
        (a,) = self.backends("a")
        port = _free_port()
        text = config_with_port([f"{a.url} name=a"], port)
        path = self.write(text)
        proc = self.twistd(path)
        yield proc.wait_for(rb"listening on")
        # "listening on" is logged before the reactor runs and the signal
        # handlers go in; a served request means they are in.
        yield threads.deferToThread(fetch, port)
        self.write(text.replace("name=a", "weight=heavy"))
        proc.transport.signalProcess("HUP")
        match = yield proc.wait_for(rb"reload refused[^\n]*\n")
        line = match.group(0).decode()
        self.assertIn("the running configuration stays", line)
        self.assertIn("[pool:test] servers: line 1:", line)
        self.assertIn("weight must be a whole number from 1 to 1000, got 'heavy'", line)
        response = yield threads.deferToThread(fetch, port)
        self.assertEqual(response.body, b"a\n")
        self.assertNotIn(b"Traceback", proc.output)

    @defer.inlineCallbacks
    def test_sigterm_lets_the_request_in_flight_finish_and_exits_0(self):  # type: ignore[no-untyped-def]
        (a,) = self.backends("a", handler=held_handler)
        port = _free_port()
        path = self.write(config_with_port([a.url], port))
        proc = self.twistd(path)
        yield proc.wait_for(rb"listening on")
        pending = threads.deferToThread(fetch, port, "GET", "/slow")
        yield wait_until(lambda: a.held)
        proc.transport.signalProcess("TERM")
        yield proc.wait_for(rb"stopping: waiting up to 30s for 1 client connections")
        # No new connections are accepted while it waits.
        yield wait_until(lambda: refused(port))
        self.assertFalse(proc.exited.called)
        a.held[0].callback(b"slow but complete")
        response = yield pending
        self.assertEqual((response.status, response.body), (200, b"slow but complete"))
        code = yield proc.exited
        self.assertEqual(code, 0)
        self.assertNotIn(b"Traceback", proc.output)

    @defer.inlineCallbacks
    def test_sigusr1_reopens_the_access_log(self):  # type: ignore[no-untyped-def]
        (a,) = self.backends("a")
        port = _free_port()
        log_path = os.path.join(self.dir, "access.log")
        path = self.write(
            config_with_port(
                [f"{a.url} name=a"], port, access_log=log_path, access_log_format="json"
            )
        )
        proc = self.twistd(path)
        yield proc.wait_for(rb"listening on")
        yield threads.deferToThread(fetch, port, "GET", "/first")
        os.rename(log_path, log_path + ".1")
        proc.transport.signalProcess(signal.SIGUSR1)
        yield proc.wait_for(rb"access log reopened")
        yield threads.deferToThread(fetch, port, "GET", "/second")
        # Lines are written within a second.
        yield wait_until(lambda: os.path.exists(log_path) and os.path.getsize(log_path) > 0)
        with open(log_path + ".1") as f:
            self.assertIn('"target":"/first"', f.read())
        with open(log_path) as f:
            self.assertIn('"target":"/second"', f.read())

    @defer.inlineCallbacks
    def test_access_log_to_standard_output(self):  # type: ignore[no-untyped-def]
        (a,) = self.backends("a")
        port = _free_port()
        path = self.write(
            config_with_port([f"{a.url} name=a"], port, access_log="-", access_log_format="json")
        )
        proc = self.twistd(path)
        yield proc.wait_for(rb"listening on")
        yield threads.deferToThread(fetch, port, "GET", "/to-stdout")
        # A line of its own on standard output, not wrapped in a twistd log line.
        match = yield proc.wait_for(rb'(?m)^\{"time":[^\n]*"target":"/to-stdout"[^\n]*\}$')
        record = json.loads(match.group(0))
        self.assertEqual((record["status"], record["server"]), (200, "a"))


class SystemdTests(OperationsTestCase):
    @defer.inlineCallbacks
    def test_serves_on_a_socket_passed_by_systemd_socket_activate(self):  # type: ignore[no-untyped-def]
        activate = shutil.which("systemd-socket-activate")
        if activate is None:
            raise AssertionError("systemd-socket-activate is missing: apt-get install systemd")
        (a,) = self.backends("a")
        port = _free_port()
        path = self.write(
            proxy_config([a.url]).replace(
                f"listen = tcp:0:interface={HOST}", "listen = systemd:domain=INET:name=web"
            )
        )
        proc = run(
            self,
            activate,
            "-l",
            f"{HOST}:{port}",
            "--fdname=web",
            tool("twistd"),
            "-n",
            "--pidfile=",
            "lbproxy",
            "-c",
            path,
        )
        yield proc.wait_for(rb"Listening on")
        # The first connection waits in the socket's queue while the proxy starts.
        out, err, code = yield curl(f"http://{HOST}:{port}/")
        self.assertEqual((code, out), (0, b"a\n"), err)
        yield proc.wait_for(rb"lbproxy listening on 127\.0\.0\.1:%d" % port)
        out, err, code = yield curl(f"http://{HOST}:{port}/again")
        self.assertEqual((code, out), (0, b"a\n"), err)
        self.assertNotIn(b"Traceback", proc.output)

    @defer.inlineCallbacks
    def test_missing_systemd_socket_is_one_line(self):  # type: ignore[no-untyped-def]
        path = self.write(
            proxy_config(["http://127.0.0.1:1"]).replace(
                f"listen = tcp:0:interface={HOST}", "listen = systemd:domain=INET:name=web"
            )
        )
        out, err, code = yield getProcessOutputAndValue(tool("lbproxy"), ["check", path])
        self.assertEqual(code, 0, err)
        proc = self.twistd(path)
        code = yield proc.exited
        self.assertEqual(code, 1)
        self.assertIn(
            b"[proxy] listen: cannot listen on systemd:domain=INET:name=web: "
            b"systemd passed no socket named 'web'",
            proc.output,
        )
        self.assertNotIn(b"Traceback", proc.output)

    @defer.inlineCallbacks
    def test_unloadable_tls_ca_file_is_one_line(self):  # type: ignore[no-untyped-def]
        ca = self.write(
            "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n",
            "ca.pem",
        )
        path = self.write(proxy_config(["https://127.0.0.1:1"], pool={"tls_ca_file": ca}))
        proc = self.twistd(path)
        code = yield proc.exited
        self.assertEqual(code, 1)
        self.assertIn(f"{path}: [pool:test] tls_ca_file: cannot load it:".encode(), proc.output)
        self.assertNotIn(b"Traceback", proc.output)

    @defer.inlineCallbacks
    def test_units_pass_systemd_analyze_verify(self):  # type: ignore[no-untyped-def]
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise AssertionError("systemd-analyze is missing: apt-get install systemd")
        # The units as shipped, with /opt/lbproxy (where the README installs
        # the virtual environment) pointing at this test's installation.
        prefix = os.path.dirname(os.path.dirname(tool("twistd")))
        for name in ("lbproxy.service", "lbproxy.socket"):
            with open(os.path.join(ROOT, "etc", name)) as f:
                text = f.read()
            if name.endswith(".service"):
                self.assertIn("/opt/lbproxy", text)
            with open(os.path.join(self.dir, name), "w") as f:
                f.write(text.replace("/opt/lbproxy", prefix))
        out, err, code = yield getProcessOutputAndValue(
            analyze,
            ["verify", "--man=no", "lbproxy.service", "lbproxy.socket"],
            path=self.dir,
            env=dict(os.environ),
        )
        # verify also exits 0 on warnings (unknown keys, bad values): there must be none.
        self.assertEqual((code, out, err), (0, b"", b""))
        with open(os.path.join(ROOT, "etc", "lbproxy.service")) as f:
            unit = f.read()
        for line in (
            "Type=notify",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "Restart=on-failure",
            "DynamicUser=yes",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "PrivateTmp=yes",
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
            "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        ):
            self.assertIn(f"\n{line}\n", unit)
        self.assertRegex(unit, re.compile(r"^LimitNOFILE=\d+$", re.M))
