"""
The documentation's commands: the README's quick start runs as written, and
no page installs lbproxy from a package index it is not published on.
"""

from __future__ import annotations

import os
import re
from typing import List

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tests.test_twistd import BIN, installed_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name: str) -> str:
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def shell_lines(text: str) -> List[str]:
    """The command lines of the ```sh blocks, without comments."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


class DocumentedCommandTests(unittest.TestCase):
    def test_nothing_is_installed_from_an_index_it_is_not_on(self) -> None:
        for name in ("README.md", "docs/operations.md"):
            for found in re.findall(r"pip install ([^\s`]+)", read(name)):
                # A checkout (.), a path, a wheel, or a build tool.
                self.assertTrue(
                    found in (".", "build") or "/" in found or found.endswith(".whl"),
                    f"{name}: pip install {found}",
                )

    def test_readme_has_contents_quick_start_and_limits(self) -> None:
        readme = read("README.md")
        head = readme[: readme.index("\n## ")]
        for heading in re.findall(r"(?m)^## (.+)$", readme):
            anchor = re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")
            self.assertIn(f"[{heading}](#{anchor})", head, heading)
        self.assertLess(readme.index("## Quick start"), readme.index("## Configuration reference"))
        self.assertIn("## What it does not do (yet)", readme)

    @defer.inlineCallbacks
    def test_quick_start_lbproxy_commands_run_as_written(self):  # type: ignore[no-untyped-def]
        # The lines that run lbproxy (init, check) run in a fresh directory
        # with this interpreter's installed commands in place of .venv/bin;
        # twistd lines are checked for their form (the tests in
        # test_twistd.py run that form).
        lines = shell_lines(section(read("README.md"), "Quick start"))
        commands = [line for line in lines if line.startswith(".venv/bin/lbproxy")]
        self.assertEqual(len(commands), 2, lines)
        here = os.path.abspath(self.mktemp())
        os.mkdir(here)
        for line in commands:
            out, err, code = yield getProcessOutputAndValue(
                "/bin/sh",
                ["-c", line.replace(".venv/bin/", BIN + "/")],
                env=installed_env(),
                path=here,
            )
            self.assertEqual(code, 0, (line, err))
        self.assertIn(b"lbproxy.ini: ok: 1 listener, 1 pool, 2 servers", out)
        twistd = [line for line in lines if "twistd" in line]
        self.assertEqual(
            twistd,
            [".venv/bin/twistd -n lbproxy -c lbproxy.ini"],
        )

    def test_readme_begins_with_the_demo_and_the_test_suite(self) -> None:
        # The first two commands: one installs and runs the demo, one runs
        # the whole test suite (the command .ci/run runs).
        readme = read("README.md")
        first = shell_lines(readme[: readme.index("\n## ")])
        self.assertEqual(
            first,
            [
                "python3 -m venv .venv && .venv/bin/pip install . && "
                ".venv/bin/twistd -n lbproxy -c etc/demo.ini --demo",
                "bash scripts/test.sh",
            ],
        )
        self.assertIn("bash scripts/test.sh", read(".ci/run"))


class TestingKitExampleTests(unittest.SynchronousTestCase):
    def test_readme_example_runs(self) -> None:
        """The README's "Testing your configuration" example runs as written."""
        text = section(read("README.md"), "Testing your configuration")
        [example] = re.findall(r"```python\n(.*?)```", text, re.S)
        self.assertIn("harness.clock.advance(5)", example)
        namespace: dict = {}
        exec(compile(example, "README.md", "exec"), namespace)
        self.assertEqual(len(namespace["harness"].backend("a").seen), 2)
