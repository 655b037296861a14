"""
DNS discovery with worker processes, over real processes and sockets:
`twistd -n lbproxy` with `workers = 2` and a pool from `dns://app.test:PORT`
answered by the test's own authoritative DNS server (twisted.names) on
loopback; backends on 127.0.0.2, .3, .4.  The lookups happen once (in the
supervisor), both workers serve what it found, a change of the records
reaches both, and the discovered servers' state is the group's.

Also, in memory: the region the answers are published in, and when the row
of a removed server is freed.
"""

from __future__ import annotations

import json
import re
import socket
from typing import Dict, List, Tuple

from twisted.internet import defer, reactor, threads
from twisted.names import dns
from twisted.trial import unittest

from lbproxy.workers.discovery import FoundPublisher, FoundRegion
from lbproxy.workers.shared import GroupState, SharedTable, row_key
from tests.dns_support import DNSServer, Zone
from tests.support import (
    HOST,
    Backend,
    curl,
    default_handler,
    fetch,
    held_handler,
    wait_until,
)
from tests.test_operations import OperationsTestCase
from tests.test_twistd import _free_port
from tests.test_workers import admin_until, burst


class WorkersDNSTestCase(OperationsTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.zone = Zone()
        self.dns = DNSServer(self.zone)
        self.addCleanup(self.dns.stop)

    def backend_on(self, host: str, name: str, port: int, handler=default_handler) -> Backend:  # type: ignore[no-untyped-def]
        backend = Backend(name, handler)
        backend.port.stopListening()
        backend.port = reactor.listenTCP(port, backend.site, interface=host)
        backend.url = f"http://{host}:{backend.port.getHost().port}"
        self.addCleanup(backend.stop)
        return backend

    def servers_on(self, *hosts: str, handler=default_handler) -> Tuple[int, List[Backend]]:  # type: ignore[no-untyped-def]
        """A backend on each host, all on one port (named after the host's last byte)."""
        first = self.backend_on(hosts[0], hosts[0].rsplit(".", 1)[1], 0, handler)
        port = first.port.getHost().port
        rest = [self.backend_on(h, h.rsplit(".", 1)[1], port, handler) for h in hosts[1:]]
        return port, [first] + rest

    def start(self, backend_port: int, algorithm: str = "round_robin", extra: str = ""):  # type: ignore[no-untyped-def]
        port, admin_port = _free_port(), _free_port()
        text = (
            f"[proxy]\nlisten = tcp:{port}:interface={HOST}\nworkers = 2\n"
            f"resolver = {self.dns.address[0]}:{self.dns.address[1]}\n"
            f"[admin]\nlisten = tcp:{admin_port}:interface={HOST}\n"
            f"[pool:web]\nalgorithm = {algorithm}\nretries = 0\n{extra}"
            f"servers = dns://app.test:{backend_port}\n"
        )
        path = self.write(text)
        proc = self.twistd(path)
        return port, admin_port, proc

    @defer.inlineCallbacks
    def ready(self, proc, generation: int = 1):  # type: ignore[no-untyped-def]
        for number in range(2):
            yield proc.wait_for(rb"worker %d: lbproxy listening on" % number)

    @defer.inlineCallbacks
    def both_workers_serve(self, port: int, admin_port: int, bodies: List[bytes]):  # type: ignore[no-untyped-def]
        """
        Bursts of keep-alive connections (spread over the workers), then one
        more request on each: every answer from C{bodies}, until both
        workers hold some of the open connections (a worker just started,
        e.g. on PyPy, may take none of the first burst; at most 5 bursts).
        What the second requests got.
        """
        opened: List[socket.socket] = []
        self.addCleanup(lambda: [s.close() for s in opened])
        answers: List[bytes] = []
        body = b""
        for _ in range(5):
            statuses = yield threads.deferToThread(burst, port, 16, opened)
            self.assertEqual(statuses, [200] * 16)
            more = yield threads.deferToThread(_requests_on, opened[-16:])
            self.assertTrue(set(more) <= set(bodies), more)
            answers += more
            # Every connection answered twice and still open: each worker's
            # share of them is what it served.
            body = yield admin_until(
                admin_port,
                "/status",
                lambda b: (
                    sum(w["client_connections"] for w in json.loads(b)["workers"]) == len(opened)
                ),
            )
            workers = json.loads(body)["workers"]
            self.assertEqual(len(workers), 2, body)
            if all(w["client_connections"] for w in workers):
                break
        else:
            self.fail(f"one worker took none of {len(opened)} connections: {body!r}")
        for s in opened:
            s.close()
        return answers


def _requests_on(opened: List[socket.socket]) -> List[bytes]:
    """One more request on each open connection: the bodies."""
    import http.client

    bodies = []
    for sock in opened:
        sock.sendall(b"GET /again HTTP/1.1\r\nHost: example.test\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        bodies.append(response.read().strip())
    return bodies


class DiscoveryOnceTests(WorkersDNSTestCase):
    @defer.inlineCallbacks
    def test_the_supervisor_looks_up_once_and_both_workers_serve_what_it_found(self):  # type: ignore[no-untyped-def]
        backend_port, _ = self.servers_on("127.0.0.2", "127.0.0.3")
        self.zone.a("app.test", "127.0.0.2", "127.0.0.3")
        self.zone.ttl = 3600  # looked up again after dns_max_ttl (60s): not in this test
        port, admin_port, proc = self.start(backend_port)
        yield self.ready(proc)
        answers = yield self.both_workers_serve(port, admin_port, [b"2", b"3"])
        self.assertEqual(set(answers), {b"2", b"3"})
        # One lookup: one query of each type, not one per process.
        asked = [q for q in self.zone.queries if q[0] == "app.test"]
        self.assertEqual(sorted(asked), [("app.test", dns.A), ("app.test", dns.AAAA)], asked)
        self.assertNotIn(b"Traceback", proc.output)

    @defer.inlineCallbacks
    def test_a_change_of_the_records_reaches_both_workers(self):  # type: ignore[no-untyped-def]
        backend_port, backends = self.servers_on("127.0.0.2", "127.0.0.3", "127.0.0.4")
        self.zone.a("app.test", "127.0.0.2", "127.0.0.3")
        port, admin_port, proc = self.start(backend_port, extra="dns_min_ttl = 200ms\n")
        yield self.ready(proc)
        yield self.both_workers_serve(port, admin_port, [b"2", b"3"])
        self.assertTrue(backends[0].seen)
        self.zone.a("app.test", "127.0.0.3", "127.0.0.4")
        for number in range(2):
            yield proc.wait_for(
                rb"worker %d: pool web: servers found in DNS \(from the supervisor\): "
                rb"added 127\.0\.0\.4:%d; removed 127\.0\.0\.2:%d; now 2"
                % (number, backend_port, backend_port)
            )
        answers = yield self.both_workers_serve(port, admin_port, [b"3", b"4"])
        self.assertEqual(set(answers), {b"3", b"4"})
        # The workers' own figures keep what 127.0.0.2 answered before it
        # went: their requests are every request the backends saw.
        yield admin_until(
            admin_port,
            "/status",
            lambda b: (
                sum(w["requests"] for w in json.loads(b)["workers"])
                == sum(len(backend.seen) for backend in backends)
            ),
        )
        self.assertNotIn(b"Traceback", proc.output)


class DiscoveredStateTests(WorkersDNSTestCase):
    @defer.inlineCallbacks
    def test_least_connections_counts_in_flight_over_all_workers(self):  # type: ignore[no-untyped-def]
        # As for listed servers (tests/test_workers.py): requests held by
        # both discovered servers, each on a new connection (either worker),
        # go to the one with fewer in flight summed over the workers.
        backend_port, (a, b) = self.servers_on("127.0.0.2", "127.0.0.3", handler=held_handler)
        self.zone.a("app.test", "127.0.0.2", "127.0.0.3")
        self.zone.ttl = 3600
        port, admin_port, proc = self.start(backend_port, algorithm="least_connections")
        yield self.ready(proc)
        # Both discovered servers have shared rows in every worker: the
        # supervisor's /status shows the sum of their in-flight counts.
        pending = []
        for n in range(1, 9):
            pending.append(threads.deferToThread(fetch, port, "GET", f"/{n}"))
            yield wait_until(lambda n=n: len(a.held) + len(b.held) == n)
            self.assertLessEqual(abs(len(a.held) - len(b.held)), 1, (len(a.held), len(b.held)))
        body = yield admin_until(
            admin_port,
            "/status",
            lambda body: sum(s["in_flight"] for s in json.loads(body)["pools"][0]["servers"]) == 8,
        )
        self.assertEqual(
            sorted(s["in_flight"] for s in json.loads(body)["pools"][0]["servers"]), [4, 4]
        )
        for d in a.held + b.held:
            d.callback(b"done")
        responses = yield defer.gatherResults(pending)
        self.assertEqual({r.status for r in responses}, {200})

    @defer.inlineCallbacks
    def test_a_drain_of_a_discovered_server_applies_to_every_worker_and_survives_reload(self):  # type: ignore[no-untyped-def]
        backend_port, _ = self.servers_on("127.0.0.2", "127.0.0.3")
        self.zone.a("app.test", "127.0.0.2", "127.0.0.3")
        self.zone.ttl = 3600
        port, admin_port, proc = self.start(backend_port)
        yield self.ready(proc)
        yield self.both_workers_serve(port, admin_port, [b"2", b"3"])
        name = f"127.0.0.2:{backend_port}"
        out, err, code = yield curl(
            "-s", "-X", "POST", f"http://{HOST}:{admin_port}/pools/web/servers/{name}/drain"
        )
        self.assertEqual(code, 0, err)
        answers = yield self.both_workers_serve(port, admin_port, [b"3"])
        self.assertEqual(set(answers), {b"3"})
        proc.transport.signalProcess("HUP")
        yield proc.wait_for(rb"workers of generation 2 serve")
        # The old workers finish and exit; then every connection is a new one's.
        yield wait_until(
            lambda: len(re.findall(rb"worker \d \(pid \d+\) ended", proc.output)) == 2, 60
        )
        answers = yield self.both_workers_serve(port, admin_port, [b"3"])
        self.assertEqual(set(answers), {b"3"})
        self.assertNotIn(b"Traceback", proc.output)


class FakeServer:
    def __init__(self, name: str, host: str) -> None:
        from lbproxy.config import ServerConfig

        self.config = ServerConfig(f"http://{host}:80", "http", host, 80, name=name)
        self.name = name
        self.up = True
        self.maint = self.draining = self.ejected = False
        self.weight_override = None


class FakePoolConfig:
    def __init__(self, discovery: bool) -> None:
        self.discovery = ("dns://app.test:80",) if discovery else ()
        self.servers = ()


class FakePool:
    def __init__(self, servers: List[FakeServer]) -> None:
        self.config = FakePoolConfig(True)
        self.servers = servers


class FakeDiscovered:
    def answers(self, pool: str) -> Dict[str, Tuple[object, ...]]:
        return {}


class FakeService:
    def __init__(self, pool: FakePool) -> None:
        self.pools = {"web": pool}
        self.discovered = FakeDiscovered()


class PublisherTests(unittest.TestCase):
    """Rows for discovered servers, and when a removed one's row is freed."""

    def setUp(self) -> None:
        self.two, self.three = FakeServer("two", "10.0.0.2"), FakeServer("three", "10.0.0.3")
        self.pool = FakePool([self.two, self.three])
        self.table = SharedTable.create()
        self.state = GroupState.__new__(GroupState)
        self.state.table = self.table
        self.state.shares = {}
        self.state.held_rows = set()
        self.region = FoundRegion.create()
        self.slots = [0, 1]
        self.publisher = FoundPublisher(
            FakeService(self.pool), self.state, self.region, lambda: self.slots
        )

    def row_of(self, server: FakeServer) -> object:
        return self.table.find(row_key("web", ("" + server.name, "http", server.config.host, 80)))

    def test_the_document_names_each_discovered_servers_row(self) -> None:
        self.publisher.publish()
        sequence, document = self.region.read()  # type: ignore[misc]
        rows = json.loads(document)["pools"]["web"]["rows"]
        self.assertEqual(
            sorted(rows.values()), sorted([self.row_of(self.two), self.row_of(self.three)])
        )
        self.assertEqual(sequence % 2, 0)

    def test_a_removed_servers_row_is_freed_once_every_worker_applied_and_nothing_is_in_flight(
        self,
    ) -> None:
        self.publisher.publish()
        row = self.row_of(self.two)
        self.assertIsNotNone(row)
        self.table.slots = 2
        self.table.add_inflight(row, 1, 1)  # type: ignore[arg-type]
        self.pool.servers = [self.three]
        self.publisher.publish()
        sequence = self.region.sequence
        self.assertEqual(self.state.held_rows, {row})
        # Worker 0 applied; worker 1 has not (and has a request in flight).
        self.region.set_applied(0, sequence)
        self.publisher.release()
        self.assertIsNotNone(self.row_of(self.two))
        self.region.set_applied(1, sequence)
        self.publisher.release()
        self.assertIsNotNone(self.row_of(self.two), "still in flight")
        self.table.add_inflight(row, 1, -1)  # type: ignore[arg-type]
        self.publisher.release()
        self.assertIsNone(self.row_of(self.two))
        self.assertEqual(self.state.held_rows, set())
        self.assertIsNotNone(self.row_of(self.three))

    def test_a_server_back_before_its_row_is_freed_gets_the_same_row(self) -> None:
        self.publisher.publish()
        row = self.row_of(self.two)
        self.pool.servers = [self.three]
        self.publisher.publish()
        self.pool.servers = [self.two, self.three]
        self.publisher.publish()
        self.assertEqual(self.row_of(self.two), row)
        self.assertEqual(self.publisher.held, {})

    def test_at_most_256_discovered_servers_a_pool_get_a_row_logged_once(self) -> None:
        from lbproxy.workers.discovery import MAX_DISCOVERED_ROWS

        self.pool.servers = [
            FakeServer(f"s{n}", f"10.1.{n // 250}.{n % 250}")
            for n in range(MAX_DISCOVERED_ROWS + 2)
        ]
        logged: List[str] = []
        from twisted.logger import formatEvent, globalLogPublisher

        def observer(event: Dict[str, object]) -> None:
            logged.append(formatEvent(event))

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.publisher.publish()
        self.publisher.publish()
        _, document = self.region.read()  # type: ignore[misc]
        self.assertEqual(len(json.loads(document)["pools"]["web"]["rows"]), MAX_DISCOVERED_ROWS)
        warnings = [line for line in logged if "get no shared row" in line]
        self.assertEqual(
            warnings,
            [
                "pool web: 2 servers found in DNS get no shared row (at most 256 a pool, "
                "4096 in all): each worker keeps their state"
            ],
        )


class RegionTests(unittest.TestCase):
    def test_a_reader_takes_only_a_whole_document(self) -> None:
        region = FoundRegion.create()
        self.assertEqual(region.read(), (0, b""))
        sequence = region.write(b'{"pools":{}}')
        self.assertEqual(region.read(), (sequence, b'{"pools":{}}'))
        region.words[0] = sequence + 1  # being written
        self.assertIsNone(region.read())

    def test_a_document_too_large_is_refused(self) -> None:
        from lbproxy.workers.discovery import MAX_DOCUMENT

        region = FoundRegion.create()
        with self.assertRaises(ValueError):
            region.write(b"x" * (MAX_DOCUMENT + 1))
        self.assertEqual(region.sequence, 0)


class WakeTests(unittest.TestCase):
    """A publication wakes the workers (a byte on their standard input), bounded."""

    def test_each_publication_tells_the_supervisor_to_wake_the_workers(self) -> None:
        state = GroupState.__new__(GroupState)
        state.table = SharedTable.create()
        self.addCleanup(__import__("os").close, state.table.fd)
        state.shares = {}
        state.held_rows = set()
        region = FoundRegion.create()
        publisher = FoundPublisher(
            FakeService(FakePool([FakeServer("two", "10.0.0.2")])), state, region, lambda: [0]
        )
        woken: List[int] = []
        publisher.notify = lambda: woken.append(region.sequence)
        publisher.publish()
        publisher.publish()
        self.assertEqual(woken, [2, 4])

    def test_a_worker_is_woken_by_one_byte_and_not_while_its_pipe_is_full(self) -> None:
        from twisted.internet.testing import StringTransport

        from lbproxy.workers.supervisor import WorkerProcess

        worker = WorkerProcess(None, 0, 0, 1)  # type: ignore[arg-type]
        transport = StringTransport()
        worker.transport = transport  # type: ignore[assignment]
        worker.wake()
        self.assertEqual(transport.value(), b"\n")
        worker.pauseProducing()
        worker.wake()
        self.assertEqual(transport.value(), b"\n")
        worker.resumeProducing()
        worker.wake()
        self.assertEqual(transport.value(), b"\n\n")


class WorkerPollTests(unittest.TestCase):
    """A worker's reading of the region: when woken, and its slow safety poll."""

    def test_woken_it_applies_at_once_and_polls_slowly_otherwise(self) -> None:
        from twisted.internet.task import Clock

        from lbproxy.workers.discovery import POLL, PublishedPools

        region = FoundRegion.create()
        self.addCleanup(__import__("os").close, region.fd)
        clock = Clock()

        class Parent:
            pools: Dict[str, object] = {}

        found = PublishedPools(Parent(), clock, lambda name: None, region, 0)
        found.apply(None, {}, {})
        found.start()
        self.addCleanup(found.stop)
        self.assertGreaterEqual(POLL, 1.0)
        sequence = region.write(b'{"pools":{}}')
        found.poll()  # what a byte on standard input calls
        self.assertEqual(found.sequence, sequence)
        self.assertEqual(region.applied(0), sequence)
        # Unwoken, it still finds a publication within POLL seconds.
        sequence = region.write(b'{"pools":{}}')
        clock.advance(POLL)
        self.assertEqual(found.sequence, sequence)
        self.assertEqual(clock.getDelayedCalls()[0].getTime(), clock.seconds() + POLL)

    def test_while_it_holds_a_removed_servers_row_it_looks_every_tenth_of_a_second(self) -> None:
        from twisted.internet.task import Clock

        from lbproxy.workers.discovery import PRUNE_POLL, PublishedPools

        region = FoundRegion.create()
        self.addCleanup(__import__("os").close, region.fd)
        table = SharedTable.create()
        self.addCleanup(__import__("os").close, table.fd)
        table.slots = 1
        key = row_key("web", ("gone", "http", "10.0.0.9", 80))
        row = table.assign([key])[key]
        table.add_inflight(row, 0, 1)
        clock = Clock()

        class Parent:
            pools: Dict[str, object] = {}

        class Share:
            def __init__(self) -> None:
                self.table = table
                self.rows: Dict[object, int] = {}

            def invalidate(self) -> None:
                pass

        found = PublishedPools(Parent(), clock, lambda name: None, region, 0)
        found.apply(None, {}, {})
        found.start()
        self.addCleanup(found.stop)
        gone = object()
        found.leaving[gone] = (Share(), row)
        sequence = region.write(b'{"pools":{}}')
        found.poll()
        self.assertEqual(region.applied(0), 0)  # a row still held: not applied yet
        table.add_inflight(row, 0, -1)  # its request is done
        clock.advance(PRUNE_POLL)
        self.assertEqual(found.leaving, {})
        self.assertEqual(region.applied(0), sequence)
