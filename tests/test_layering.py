"""
The house's rules about who may know whom, read from the source: no import
circles among lbproxy's modules; the pure layers (balancing, routing,
headers, config) never load the reactor or twisted.web; no module reads
another object's private attributes.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from typing import Dict, Iterator, List, Set, Tuple

from twisted.trial import unittest

import lbproxy

PACKAGE_DIR = os.path.dirname(os.path.abspath(lbproxy.__file__))

#: Reads of another object's private attributes that are known and waiting
#: to move into lbproxy/_twisted.py (the one module that may name Twisted's
#: internals): (module, expression).  The test fails when an entry no
#: longer occurs, so that the list only shrinks.
KNOWN_PRIVATE_READS: Set[Tuple[str, str]] = set()

#: Modules allowed to name Twisted's private parts.
TWISTED_INTERNALS_MODULE = "lbproxy._twisted"


def modules() -> Dict[str, str]:
    """Every module of the lbproxy package: dotted name -> file path."""
    found = {}
    root = os.path.dirname(PACKAGE_DIR)
    for folder, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            dotted = os.path.relpath(path, root)[: -len(".py")].replace(os.sep, ".")
            if dotted.endswith(".__init__"):
                dotted = dotted[: -len(".__init__")]
            found[dotted] = path
    return found


def parse(path: str) -> ast.Module:
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), path)


def imported(module: str, tree: ast.Module, known: Dict[str, str]) -> Set[str]:
    """
    The lbproxy modules C{module} imports, anywhere in it (at the top, in a
    function, under C{TYPE_CHECKING}: a circle of type-only imports is a
    circle of knowledge all the same).  C{from P import M} names the module
    C{P.M} when there is one, else C{P}.  Importing C{a.b.c} runs the
    packages C{a} and C{a.b} first: they count too, unless C{module} is
    inside them (then they are already running).
    """
    package = module if known[module].endswith("__init__.py") else module.rpartition(".")[0]
    out: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                out.add(candidate if candidate in known else base)
    with_packages = set(out)
    for name in out:
        parts = name.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if not (module == parent or module.startswith(parent + ".")):
                with_packages.add(parent)
    return {name for name in with_packages if name in known and name != module}


def find_circle(graph: Dict[str, Set[str]]) -> List[str]:
    """One circle of C{graph} (its modules in order, the first repeated last), or []."""
    done: Set[str] = set()
    path: List[str] = []
    on_path: Set[str] = set()

    def visit(node: str) -> List[str]:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph[node]):
            if nxt in on_path:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in done:
                circle = visit(nxt)
                if circle:
                    return circle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return []

    for start in sorted(graph):
        if start not in done:
            circle = visit(start)
            if circle:
                return circle
    return []


def private_reads(tree: ast.Module) -> Iterator[str]:
    """
    Each C{x._name} in C{tree} where C{x} is not C{self}, C{cls} or
    C{super()}, as source text.
    """
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or (name.startswith("__") and name.endswith("__")):
            continue
        value = node.value
        if isinstance(value, ast.Name) and value.id in ("self", "cls"):
            continue
        if (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Name)
            and value.func.id == "super"
        ):
            continue
        yield ast.unparse(node)


class CircleFinderTests(unittest.TestCase):
    def test_finds_a_circle(self) -> None:
        graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
        self.assertEqual(find_circle(graph), ["a", "b", "c", "a"])

    def test_a_tree_has_none(self) -> None:
        graph = {"a": {"b", "c"}, "b": {"c"}, "c": set()}
        self.assertEqual(find_circle(graph), [])

    def test_type_only_and_relative_imports_count(self) -> None:
        known = {"p": "p/__init__.py", "p.a": "p/a.py", "p.b": "p/b.py"}
        tree = ast.parse(
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from p.b import Thing\n"
            "def f():\n    from . import b\n"
        )
        self.assertEqual(imported("p.a", tree, known), {"p.b"})

    def test_importing_a_module_runs_its_packages(self) -> None:
        known = {
            "p": "p/__init__.py",
            "p.a": "p/a.py",
            "p.c": "p/c.py",
            "q": "q/__init__.py",
            "q.b": "q/b.py",
        }
        tree = ast.parse("from q.b import thing\nimport p.c\n")
        self.assertEqual(imported("p.a", tree, known), {"q", "q.b", "p.c"})


class LayeringTests(unittest.TestCase):
    def test_no_import_circles(self) -> None:
        known = modules()
        graph = {name: imported(name, parse(path), known) for name, path in known.items()}
        self.assertIn("lbproxy.ops.admin", graph["lbproxy.service"])
        circle = find_circle(graph)
        self.assertEqual(circle, [], "import circle: " + " -> ".join(circle))

    def test_pure_layers_load_neither_the_reactor_nor_twisted_web(self) -> None:
        layers = {
            "balancing": "import lbproxy.balancing, lbproxy.balancing.registry as r; r.names()",
            "routing": "import lbproxy.routing, lbproxy.routing.router",
            "headers": "import lbproxy.headers",
            "config": "import lbproxy.config, lbproxy.config.values, lbproxy.config.tls",
        }
        for layer, code in layers.items():
            check = (
                f"import sys; {code}; "
                "print([m for m in sys.modules if m == 'twisted.internet.reactor' "
                "or m.startswith('twisted.web')])"
            )
            out = subprocess.run(
                [sys.executable, "-c", check], capture_output=True, text=True, check=True
            ).stdout
            self.assertEqual(out.strip(), "[]", f"{layer} loads {out.strip()}")

    def test_nothing_reads_another_objects_private_attributes(self) -> None:
        found: Set[Tuple[str, str]] = set()
        for name, path in modules().items():
            if name == TWISTED_INTERNALS_MODULE:
                continue
            found.update((name, text) for text in private_reads(parse(path)))
        self.assertEqual(sorted(found - KNOWN_PRIVATE_READS), [], "private reads")
        self.assertEqual(
            sorted(KNOWN_PRIVATE_READS - found), [], "gone: remove from KNOWN_PRIVATE_READS"
        )

    def test_the_private_read_finder_sees_them(self) -> None:
        tree = ast.parse(
            "def f(self, other):\n    self._a; super()._b(); other._c; other.__class__; x.y._z\n"
        )
        self.assertEqual(sorted(private_reads(tree)), ["other._c", "x.y._z"])
