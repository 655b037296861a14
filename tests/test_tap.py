"""
lbproxy.tap: the twistd plugin's options (a refused configuration is one
line and exit status 1) and its service maker.  twistd itself running the
plugin is in L{tests.test_twistd}.
"""

from __future__ import annotations

import io
import sys

from twisted.python import usage
from twisted.trial import unittest

from lbproxy import dispatch as dispatch_module
from lbproxy import service as service_module
from lbproxy.ops.process import ProcessControl
from lbproxy.service import ProxyService
from lbproxy.tap import ConfigRefused, Options, makeService

GOOD = """
[proxy]
listen = tcp:0:interface=127.0.0.1
pool = web

[pool:web]
servers =
    http://127.0.0.1:18001
    http://127.0.0.1:18002
"""


class OptionsTests(unittest.SynchronousTestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def refused(self, arguments: list) -> str:
        """Parse C{arguments}; return what went to stderr, which must be one line."""
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        with self.assertRaises(SystemExit) as caught:
            Options().parseOptions(arguments)
        self.assertEqual(caught.exception.code, 1)
        text = stderr.getvalue()
        self.assertEqual(text.count("\n"), 1, text)
        return text.strip()

    def test_config_long_and_short(self) -> None:
        path = self.write(GOOD)
        for arguments in (["--config", path], ["-c", path], [f"--config={path}"]):
            options = Options()
            options.parseOptions(arguments)
            self.assertEqual(options["config"], path)
            self.assertFalse(options["demo"])
            config = options["proxy_config"]
            self.assertEqual(config.path, path)
            self.assertEqual(sorted(config.pools), ["web"])

    def test_demo_flag(self) -> None:
        options = Options()
        options.parseOptions(["-c", self.write(GOOD), "--demo"])
        self.assertTrue(options["demo"])

    def test_config_is_required(self) -> None:
        self.assertEqual(self.refused([]), "--config FILE is required")

    def test_a_bad_file_is_one_line_naming_file_section_and_key(self) -> None:
        path = self.write(GOOD.replace("pool = web", "pool = web\nlisten_typo = 1"))
        line = self.refused(["-c", path])
        self.assertTrue(line.startswith(path), line)
        self.assertIn("[proxy]", line)
        self.assertIn("listen_typo", line)

    def test_a_missing_file_is_one_line(self) -> None:
        path = self.mktemp()
        line = self.refused(["-c", path])
        self.assertIn(path, line)

    def test_demo_refuses_servers_it_cannot_serve(self) -> None:
        path = self.write(GOOD.replace("http://127.0.0.1:18002", "http://10.1.2.3:80"))
        line = self.refused(["-c", path, "--demo"])
        self.assertIn("--demo serves http:// servers on loopback only", line)
        self.assertIn("http://10.1.2.3:80", line)

    def test_the_refusal_is_a_usage_error(self) -> None:
        """postOptions refuses with a UsageError (parseOptions turns it into one line)."""
        options = Options()
        options["config"] = self.mktemp()
        with self.assertRaises(usage.UsageError) as caught:
            options.postOptions()
        self.assertIsInstance(caught.exception, ConfigRefused)
        self.assertNotIn("\n", str(caught.exception))

    def test_no_default_pidfile_in_the_foreground(self) -> None:
        path = self.write(GOOD)
        self.patch(sys, "argv", ["twistd", "-n", "lbproxy", "-c", path])
        options = Options()
        options.parent = {"nodaemon": True, "pidfile": "twistd.pid"}  # type: ignore[assignment]
        options.parseOptions(["-c", path])
        self.assertEqual(options.parent["pidfile"], "")

    def test_a_pidfile_asked_for_is_kept(self) -> None:
        path = self.write(GOOD)
        self.patch(sys, "argv", ["twistd", "-n", "--pidfile=twistd.pid", "lbproxy", "-c", path])
        options = Options()
        options.parent = {"nodaemon": True, "pidfile": "twistd.pid"}  # type: ignore[assignment]
        options.parseOptions(["-c", path])
        self.assertEqual(options.parent["pidfile"], "twistd.pid")

    def test_a_daemon_keeps_twistds_default(self) -> None:
        path = self.write(GOOD)
        options = Options()
        options.parent = {"nodaemon": False, "pidfile": "twistd.pid"}  # type: ignore[assignment]
        options.parseOptions(["-c", path])
        self.assertEqual(options.parent["pidfile"], "twistd.pid")


class MakeServiceTests(unittest.SynchronousTestCase):
    def options(self, *extra: str) -> Options:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(GOOD)
        options = Options()
        options.parseOptions(["-c", path, *extra])
        return options

    def test_the_proxy_with_its_process_control(self) -> None:
        proxy = makeService(self.options())
        self.assertIsInstance(proxy, ProxyService)
        self.assertFalse(proxy.running)  # nothing listens before twistd starts it
        self.assertEqual(proxy.ports, {})
        children = list(proxy)  # type: ignore[call-overload]
        controls = [c for c in children if isinstance(c, ProcessControl)]
        self.assertEqual(len(controls), 1)
        self.assertEqual(controls[0].path, proxy.config.path)

    def test_under_twistd_the_heap_is_settled_once_running(self) -> None:
        """
        Under twistd (the options have a parent), makeService asks the
        reactor to run L{settle_heap} once it runs, and gives it lbproxy's
        dispatch; made by a test (no parent), it does neither, so no test
        freezes its own process's heap or changes its reactor.
        """
        from twisted.internet import reactor

        def settle() -> bool:
            return True

        self.patch(service_module, "settle_heap", settle)
        asked: list = []
        self.patch(reactor, "callWhenRunning", lambda f, *a, **kw: asked.append(f))
        # The dispatch with one log context per poll goes on twistd's
        # reactor, not on the tests' (lbproxy/dispatch.py).
        self.patch(dispatch_module, "install_quick_dispatch", asked.append)
        makeService(self.options())
        self.assertEqual(asked, [])
        options = self.options()
        options.parent = {"nodaemon": True}  # type: ignore[assignment]
        makeService(options)
        self.assertEqual(asked, [settle, reactor])

    def test_demo_adds_one_backend_service_per_server(self) -> None:
        plain = len(list(makeService(self.options())))  # type: ignore[call-overload]
        with_demo = len(list(makeService(self.options("--demo"))))  # type: ignore[call-overload]
        self.assertEqual(with_demo - plain, 2)
