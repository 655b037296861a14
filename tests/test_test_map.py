"""
Every module of lbproxy has a test module: L{TESTED_BY} maps each one to the
test modules that exercise it, and the tests here keep that map true.

A mapped test module must import the module or its package (the test of
C{lbproxy.config.reader} may import C{lbproxy.config}; a module directly under
C{lbproxy} must be imported itself), or, for the tests that drive the whole
proxy in memory, import C{lbproxy.testing} and name the module in their
docstring.  The check reads the test's source with C{ast}: nothing is
imported or run.  Packages' C{__init__.py} files that only re-export (a
docstring, imports, C{__all__}) are not modules of their own here.

Several modules are also exercised through the running proxy, over real
sockets, by tests that do not import them: L{THROUGH_THE_PROXY} lists those
where that is a large part of the coverage; each such test must exist and
run the proxy (import C{tests.support}, C{lbproxy.testing} or
C{lbproxy.service}).
"""

from __future__ import annotations

import ast
import os
from typing import Dict, Iterator, List, Set, Tuple

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Each module of lbproxy -> the test modules that exercise it.
TESTED_BY: Dict[str, Tuple[str, ...]] = {
    "lbproxy._twisted": (
        "tests.test_twisted_internals",
        "tests.test_response_head",
        "tests.test_retry",
    ),
    "lbproxy.cli": ("tests.test_cli",),
    "lbproxy.demo": ("tests.test_demo",),
    "lbproxy.dispatch": ("tests.test_dispatch",),
    "lbproxy.headers": ("tests.test_headers", "tests.test_edge", "tests.test_accesslog"),
    "lbproxy.listeners": ("tests.test_listeners",),
    "lbproxy.record": ("tests.test_record", "tests.test_lifecycle", "tests.test_accounting"),
    "lbproxy.reload": ("tests.test_service", "tests.test_discovery"),
    "lbproxy.service": ("tests.test_service", "tests.test_reload", "tests.test_snapshot"),
    "lbproxy.tap": ("tests.test_tap",),
    "lbproxy.transports": ("tests.test_transports", "tests.test_transports_writes"),
    "lbproxy.tlsio": ("tests.test_tlsio",),
    "lbproxy.upgrade": ("tests.test_websocket",),
    # balancing: one test module per algorithm, and the shared parts.
    "lbproxy.balancing.consistent_hash": ("tests.balancing.test_consistent_hash",),
    "lbproxy.balancing.interface": ("tests.balancing.test_registry", "tests.balancing.test_walk"),
    "lbproxy.balancing.keys": ("tests.balancing.test_keys", "tests.balancing.test_sticky"),
    "lbproxy.balancing.least_connections": ("tests.balancing.test_least_connections",),
    "lbproxy.balancing.peak_ewma": ("tests.balancing.test_peak_ewma",),
    "lbproxy.balancing.random_two": ("tests.balancing.test_random_two",),
    "lbproxy.balancing.registry": ("tests.balancing.test_registry",),
    "lbproxy.balancing.round_robin": ("tests.balancing.test_round_robin",),
    "lbproxy.balancing.sticky": (
        "tests.balancing.test_sticky",
        "tests.balancing.test_pool_wiring",
        "tests.balancing.test_over_sockets",
    ),
    "lbproxy.balancing.walk": ("tests.balancing.test_walk",),
    "lbproxy.balancing.weighted_round_robin": ("tests.balancing.test_weighted_round_robin",),
    # config: the package's rooms are tested through its public face.
    "lbproxy.config.dns": ("tests.test_dns_records", "tests.test_discovery_dns"),
    "lbproxy.config.errors": ("tests.test_config",),
    "lbproxy.config.found": ("tests.test_dns_records", "tests.test_discovery"),
    "lbproxy.config.model": ("tests.test_config",),
    "lbproxy.config.reader": ("tests.test_config",),
    "lbproxy.config.schema": ("tests.test_config", "tests.test_docs"),
    "lbproxy.config.servers": ("tests.test_config",),
    "lbproxy.config.tls": ("tests.test_tls_front",),
    "lbproxy.config.values": ("tests.test_values", "tests.test_config"),
    # front
    "lbproxy.front.body": ("tests.test_body",),
    "lbproxy.front.channel": ("tests.test_channel", "tests.test_request_head"),
    "lbproxy.front.errors": ("tests.test_errors",),
    "lbproxy.front.h2": ("tests.test_http2",),
    "lbproxy.front.h2head": ("tests.test_http2",),
    "lbproxy.front.h2request": ("tests.test_http2",),
    "lbproxy.front.resource": (
        "tests.test_resource",
        "tests.test_edge",
        "tests.test_routing_front",
    ),
    "lbproxy.front.site": ("tests.test_site", "tests.test_forwarder"),
    "lbproxy.front.tls": ("tests.test_listeners",),
    # ops
    "lbproxy.ops.accesslog": ("tests.test_accesslog", "tests.test_accounting"),
    "lbproxy.ops.accounting": ("tests.test_accounting",),
    "lbproxy.ops.admin": ("tests.test_snapshot", "tests.test_websocket"),
    "lbproxy.ops.history": ("tests.test_history",),
    "lbproxy.ops.metrics": ("tests.test_metrics",),
    "lbproxy.ops.process": ("tests.test_process",),
    "lbproxy.ops.snapshot": ("tests.test_snapshot",),
    "lbproxy.ops.stats": ("tests.test_stats", "tests.test_history"),
    "lbproxy.plugins": ("tests.balancing.test_registry",),
    # routing
    "lbproxy.routing.router": ("tests.test_routing",),
    "lbproxy.routing.routes": ("tests.test_routing", "tests.test_config"),
    "lbproxy.routing.rules": ("tests.test_routing",),
    "lbproxy.routing.template": ("tests.test_routing",),
    # testing
    "lbproxy.testing": ("tests.test_testing",),
    "lbproxy.testing.backends": ("tests.test_testing",),
    "lbproxy.testing.network": ("tests.test_testing",),
    # upstream
    "lbproxy.upstream.attempt": ("tests.test_lifecycle",),
    "lbproxy.upstream.backend": ("tests.test_backend", "tests.test_backend_framing"),
    "lbproxy.upstream.discovered": ("tests.test_discovered",),
    "lbproxy.upstream.discovery": ("tests.test_discovery",),
    "lbproxy.upstream.dnslookup": ("tests.test_discovery_dns", "tests.test_discovery"),
    "lbproxy.upstream.ejection": ("tests.test_pool_parts",),
    "lbproxy.upstream.failures": ("tests.test_retry",),
    "lbproxy.upstream.forwarder": ("tests.test_forwarder",),
    # A Protocol (no code): the pool's calls of it run in every pool test;
    # the shared state behind it is tested through worker processes.
    "lbproxy.upstream.group": ("tests.test_pool",),
    "lbproxy.upstream.health": ("tests.test_health",),
    "lbproxy.upstream.lifecycle": ("tests.test_lifecycle",),
    "lbproxy.upstream.pool": ("tests.test_pool",),
    "lbproxy.upstream.queue": ("tests.test_pool_parts",),
    "lbproxy.upstream.relay": ("tests.test_relay",),
    "lbproxy.upstream.retry": ("tests.test_retry",),
    "lbproxy.upstream.rotation": ("tests.test_rotation",),
    "lbproxy.upstream.server": ("tests.test_server", "tests.test_pool_parts"),
    "lbproxy.upstream.slowstart": ("tests.test_pool_parts",),
    "lbproxy.upstream.tiers": ("tests.test_tiers",),
    "lbproxy.upstream.timers": ("tests.test_pool_parts",),
    "lbproxy.upstream.tunnel": ("tests.test_lifecycle",),
    "lbproxy.upstream.verdict": ("tests.test_pool_parts",),
    # workers: real worker processes behind a supervisor.
    "lbproxy.workers.discovery": ("tests.test_workers_dns",),
    "lbproxy.workers.shared": ("tests.test_workers",),
    "lbproxy.workers.stats": ("tests.test_workers",),
    "lbproxy.workers.supervisor": ("tests.test_workers",),
    "lbproxy.workers.worker": ("tests.test_workers",),
}

#: Modules exercised through the running proxy by tests that do not import
#: them (see the module docstring), beside those in L{TESTED_BY}.
THROUGH_THE_PROXY: Dict[str, Tuple[str, ...]] = {
    "lbproxy.front.tls": ("tests.test_tls_front",),
    "lbproxy.ops.admin": ("tests.test_admin",),
    "lbproxy.reload": ("tests.test_reload",),
    "lbproxy.service": ("tests.test_integration", "tests.test_hardening"),
    "lbproxy.transports": ("tests.test_integration", "tests.test_tls_front", "tests.test_tls"),
    "lbproxy.upgrade": ("tests.test_websocket",),
    "lbproxy.upstream.tunnel": ("tests.test_websocket",),
    "lbproxy.upstream.group": ("tests.test_workers",),
    "lbproxy.upstream.backend": ("tests.test_tls", "tests.test_integration"),
}

#: What a test of the running proxy imports (one of them).
PROXY_RUNNERS = frozenset({"tests.support", "lbproxy.testing", "lbproxy.service"})


def _path(module: str) -> str:
    return os.path.join(ROOT, *module.split("."))


def _parse(path: str) -> ast.Module:
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), path)


def only_reexports(tree: ast.Module) -> bool:
    """
    Whether a module is a docstring, imports, assignments to dunder names
    (C{__all__}, C{__version__}) and aliases (C{_OLD = NEW}) only.
    """
    for index, node in enumerate(tree.body):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if index == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            dunder = all(t.id.startswith("__") for t in node.targets)  # type: ignore[attr-defined]
            if dunder or isinstance(node.value, ast.Name):  # or an old name kept
                continue
        return False
    return True


def lbproxy_modules() -> Iterator[str]:
    """Every module of lbproxy, as a dotted name (re-exporting packages left out)."""
    for folder, folders, files in os.walk(os.path.join(ROOT, "lbproxy")):
        folders[:] = sorted(f for f in folders if not f.startswith(("__", ".")))
        package = os.path.relpath(folder, ROOT).replace(os.sep, ".")
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            if name == "__init__.py":
                if only_reexports(_parse(os.path.join(folder, name))):
                    continue
                yield package
            else:
                yield f"{package}.{name[:-3]}"


def imported(tree: ast.Module) -> Set[str]:
    """
    Every dotted name a module imports, with the packages on the way
    (C{from lbproxy.upstream import tiers} imports C{lbproxy},
    C{lbproxy.upstream} and, maybe, C{lbproxy.upstream.tiers}).
    """
    names: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in found:
            parts = name.split(".")
            names.update(".".join(parts[:n]) for n in range(1, len(parts) + 1))
    return names


def exercises(test_tree: ast.Module, module: str) -> bool:
    """Whether a test module's source shows that it exercises C{module}."""
    names = imported(test_tree)
    package = module.rpartition(".")[0]
    if module in names or (package != "lbproxy" and package in names):
        return True
    docstring = ast.get_docstring(test_tree) or ""
    return "lbproxy.testing" in names and module in docstring.split(":")[0].split()


class TestMapTests(unittest.SynchronousTestCase):
    def test_every_module_is_in_the_map(self) -> None:
        modules = list(lbproxy_modules())
        self.assertIn("lbproxy.service", modules)
        self.assertIn("lbproxy.testing", modules)  # an __init__ with code of its own
        self.assertNotIn("lbproxy.config", modules)  # re-exports only
        missing = sorted(set(modules) - set(TESTED_BY))
        self.assertEqual(missing, [], "modules without a test module in TESTED_BY")
        gone = sorted(set(TESTED_BY) - set(modules))
        self.assertEqual(gone, [], "TESTED_BY names modules that are gone")

    def test_every_mapped_test_module_exists(self) -> None:
        missing: List[str] = []
        for module, tests in sorted(TESTED_BY.items()):
            self.assertTrue(tests, f"{module}: no test module")
            for test in tests:
                if not os.path.isfile(_path(test) + ".py"):
                    missing.append(f"{module}: {test}")
        self.assertEqual(missing, [])

    def test_every_mapped_test_module_exercises_its_module(self) -> None:
        trees: Dict[str, ast.Module] = {}
        wrong: List[str] = []
        for module, tests in sorted(TESTED_BY.items()):
            for test in tests:
                path = _path(test) + ".py"
                if not os.path.isfile(path):
                    continue  # the test above says so
                if test not in trees:
                    trees[test] = _parse(path)
                if not exercises(trees[test], module):
                    wrong.append(f"{test} neither imports {module} nor its package")
        self.assertEqual(wrong, [])

    def test_the_tests_through_the_proxy_exist_and_run_it(self) -> None:
        wrong: List[str] = []
        for module, tests in sorted(THROUGH_THE_PROXY.items()):
            if module not in TESTED_BY:
                wrong.append(f"{module}: not a module in TESTED_BY")
            for test in tests:
                path = _path(test) + ".py"
                if not os.path.isfile(path):
                    wrong.append(f"{module}: {test} does not exist")
                elif not imported(_parse(path)) & PROXY_RUNNERS:
                    wrong.append(f"{module}: {test} does not run the proxy")
        self.assertEqual(wrong, [])


class CheckTests(unittest.SynchronousTestCase):
    """The checks above can fail."""

    def test_imports_with_their_packages(self) -> None:
        tree = ast.parse("from lbproxy.upstream import tiers\nimport lbproxy.config.reader as r\n")
        self.assertEqual(
            imported(tree),
            {
                "lbproxy",
                "lbproxy.upstream",
                "lbproxy.upstream.tiers",
                "lbproxy.config",
                "lbproxy.config.reader",
            },
        )

    def test_a_test_that_imports_neither_the_module_nor_its_package(self) -> None:
        tree = ast.parse(
            '"""Tests."""\nfrom lbproxy import config\nfrom lbproxy.ops import stats\n'
        )
        self.assertTrue(exercises(tree, "lbproxy.config.reader"))
        self.assertTrue(exercises(tree, "lbproxy.ops.admin"))  # the same package
        self.assertFalse(exercises(tree, "lbproxy.service"))  # lbproxy itself is too wide
        self.assertFalse(exercises(tree, "lbproxy.upstream.tiers"))

    def test_a_test_through_the_harness_names_its_module(self) -> None:
        named = ast.parse(
            '"""lbproxy.front.site: in memory."""\nfrom lbproxy.testing import ProxyHarness\n'
        )
        self.assertTrue(exercises(named, "lbproxy.front.site"))
        self.assertFalse(exercises(named, "lbproxy.front.resource"))
        unnamed = ast.parse('"""lbproxy.front.site: in memory."""\nimport attr\n')
        self.assertFalse(exercises(unnamed, "lbproxy.front.site"))

    def test_only_reexports(self) -> None:
        self.assertTrue(only_reexports(ast.parse('"""Doc."""\nfrom a import b\n__all__ = ["b"]\n')))
        self.assertTrue(only_reexports(ast.parse('__version__ = "1"\n')))
        self.assertFalse(only_reexports(ast.parse("from a import b\nb.extend([])\n")))
        self.assertFalse(only_reexports(ast.parse("def f() -> None:\n    pass\n")))
        self.assertTrue(only_reexports(ast.parse("from a import B\n_OLD = B\n")))
        self.assertFalse(only_reexports(ast.parse("X = 1\n")))
