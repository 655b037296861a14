"""
lbproxy.cli: the lbproxy command (check, init, version), run in process.
"""

from __future__ import annotations

import contextlib
import io
from typing import List, Tuple

from twisted.trial import unittest

from lbproxy import __version__
from lbproxy.cli import main, starter
from lbproxy.config import ConfigError, parse


def run(argv: List[str]) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as e:  # argparse's --version and usage errors
            status = int(e.code or 0)
    return status, out.getvalue(), err.getvalue()


class CheckTests(unittest.SynchronousTestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_good_file_prints_its_summary(self) -> None:
        path = self.write(
            "[proxy]\nlisten = tcp:8080\npool = web\n[pool:web]\nservers = http://127.0.0.1:8001\n"
        )
        status, out, err = run(["check", path])
        self.assertEqual((status, err), (0, ""))
        self.assertIn("1 server", out)

    def test_bad_file_prints_one_line_and_fails(self) -> None:
        path = self.write(
            "[proxy]\nlisten = tcp:8080\npool = web\n[pool:web]\nservers = http://127.0.0.1:8001 weight=x\n"
        )
        status, out, err = run(["check", path])
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err.count("\n"), 1)
        self.assertIn("[pool:web] servers", err)

    def test_missing_file_fails(self) -> None:
        status, _, err = run(["check", self.mktemp()])
        self.assertEqual(status, 1)
        self.assertTrue(err)


class InitTests(unittest.SynchronousTestCase):
    def test_starter_is_a_valid_configuration(self) -> None:
        status, out, _ = run(["init", "http://127.0.0.1:8001", "http://127.0.0.1:8002"])
        self.assertEqual(status, 0)
        config = parse(out)
        self.assertEqual(config.pools["web"].algorithm, "round_robin")
        self.assertEqual(len(config.pools["web"].servers), 2)
        self.assertEqual(
            config.admin.listen if config.admin else None, "tcp:8081:interface=127.0.0.1"
        )

    def test_weights_choose_weighted_round_robin(self) -> None:
        text = starter(["http://127.0.0.1:8001 weight=3"], "tcp:80", "tcp:9999:interface=127.0.0.1")
        self.assertEqual(parse(text).pools["web"].algorithm, "weighted_round_robin")
        self.assertIn("http://127.0.0.1:9999/", text)

    def test_bad_server_is_refused(self) -> None:
        self.assertRaises(ConfigError, starter, ["ftp://x"], "tcp:80", "tcp:81")
        status, out, err = run(["init", "ftp://x"])
        self.assertEqual((status, out), (1, ""))
        self.assertTrue(err)


class OtherCommandTests(unittest.SynchronousTestCase):
    def test_version(self) -> None:
        self.assertEqual(run(["version"]), (0, f"lbproxy {__version__}\n", ""))
        status, out, _ = run(["--version"])
        self.assertEqual((status, out.strip()), (0, f"lbproxy {__version__}"))

    def test_no_command_is_a_usage_error(self) -> None:
        status, out, err = run([])
        self.assertEqual((status, out), (2, ""))
        self.assertIn("a command is required", err)
