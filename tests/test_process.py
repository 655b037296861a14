"""
lbproxy.ops.process: systemd notifications over a real datagram socket, and
reloads from the file applied to a proxy running in memory.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

from twisted.trial import unittest

from lbproxy.ops.process import ProcessControl, notify
from lbproxy.testing import ProxyHarness

CONFIG = """
[proxy]
listen = tcp:8080
pool = web

[pool:web]
servers =
    {servers}
"""


class NotifyTests(unittest.SynchronousTestCase):
    def test_without_notify_socket_nothing_is_sent(self) -> None:
        self.assertFalse(notify("READY=1", environ={}))

    def test_state_reaches_the_socket(self) -> None:
        # A short path: AF_UNIX paths are limited to about 100 bytes.
        directory = tempfile.mkdtemp(prefix="lbn")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "notify")
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        receiver.bind(path)
        receiver.settimeout(5)
        self.assertTrue(notify("READY=1\nSTATUS=ok", environ={"NOTIFY_SOCKET": path}))
        self.assertEqual(receiver.recv(100), b"READY=1\nSTATUS=ok")

    def test_unreachable_socket_is_reported_not_raised(self) -> None:
        path = os.path.join(self.mktemp(), "absent")
        self.assertFalse(notify("READY=1", environ={"NOTIFY_SOCKET": path}))


class ReloadTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.path = self.mktemp()
        self.write("http://127.0.0.1:8001")
        with open(self.path) as f:
            self.harness = ProxyHarness(f.read())
        self.addCleanup(self.harness.stop)
        self.control = ProcessControl(self.harness.service, self.path, self.harness.clock)

    def write(self, servers: str) -> None:
        with open(self.path, "w") as f:
            f.write(CONFIG.format(servers=servers))

    def test_reload_applies_the_file(self) -> None:
        self.write("http://127.0.0.1:8001 weight=1\n    http://127.0.0.1:8002")
        self.control.reload()
        self.assertEqual(self.harness.service.reloads, {"ok": 1, "refused": 0})
        servers = [s.name for s in self.harness.service.pools["web"].servers]
        self.assertEqual(servers, ["127.0.0.1:8001", "127.0.0.1:8002"])

    def test_bad_file_is_refused_and_the_running_configuration_stays(self) -> None:
        self.write("http://127.0.0.1:8001 weight=x")
        self.control.reload()
        self.assertEqual(self.harness.service.reloads, {"ok": 0, "refused": 1})
        self.assertEqual(len(self.harness.service.pools["web"].servers), 1)
        self.assertEqual(self.harness.request().status, 200)
