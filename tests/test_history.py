"""
The history of the last quarter of an hour (L{lbproxy.ops.history}): per-second
counts and percentiles in a fixed ring, the event log, and the document the
admin listener serves.  Time is a L{task.Clock}.
"""

from __future__ import annotations

import json
from array import array

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from lbproxy.config import parse
from lbproxy.ops.history import MAX_EVENTS, SPAN, EventLog, Timeline, history
from lbproxy.ops.stats import WINDOW_BOUNDS, PoolStats, ServerStats
from lbproxy.upstream.pool import Pool, ServerState
from tests.support import HOST, ProxyTestCase, Response, fetch, proxy_config


def bucket(seconds: float) -> int:
    """The latency bucket of a duration (the first bound at or over it)."""
    return next(i for i, bound in enumerate(WINDOW_BOUNDS) if bound >= seconds)


def series_ms(seconds: float) -> float:
    """The milliseconds a series gives for a duration: its bucket's upper bound."""
    return round(WINDOW_BOUNDS[bucket(seconds)] * 1000, 3)


class TimelineTests(unittest.TestCase):
    def test_recent_seconds_merge_into_another_timeline(self) -> None:
        # Two workers' timelines, merged second by second into a third (the
        # supervisor's): the counts add up and the percentiles are those of
        # all the responses, not an average.
        one, two, merged = Timeline(WINDOW_BOUNDS), Timeline(WINDOW_BOUNDS), Timeline(WINDOW_BOUNDS)
        for _ in range(60):
            one.add("2xx", bucket(0.001), 1000.2)
        for _ in range(40):
            two.add("2xx", bucket(0.1), 1000.5)
        two.add("5xx", bucket(0.1), 1001.5)
        one.add("2xx", bucket(0.001), 1002.5)  # the second being counted
        self.assertEqual([e[0] for e in one.recent(1002.7)], [1000])
        self.assertEqual([e[0] for e in two.recent(1002.7)], [1000, 1001])
        for second in (1000, 1001):
            for worker in (one, two):
                for entry in worker.recent(1002.7):
                    if entry[0] == second:
                        self.assertTrue(merged.merge(*entry))
        series = merged.series(1000, 1001)
        self.assertEqual(series["2xx"], [100, 0])
        self.assertEqual(series["5xx"], [0, 1])
        self.assertEqual(series["p50_ms"][0], series_ms(0.001))
        self.assertEqual(series["p99_ms"][0], series_ms(0.1))
        # A second older than the one merged last is dropped.
        self.assertFalse(merged.merge(999, [1, 0, 0, 0, 0], {}))
        # Seconds older than the ring are no longer offered.
        self.assertEqual(one.recent(1100), [])

    def test_counts_by_class_and_percentiles_per_second(self) -> None:
        clock = task.Clock()
        clock.advance(1000)
        timeline = Timeline(WINDOW_BOUNDS)
        for _ in range(98):
            timeline.add("2xx", bucket(0.002), clock.seconds())
        timeline.add("5xx", bucket(0.5), clock.seconds())
        timeline.add("4xx", bucket(0.5), clock.seconds())
        clock.advance(1.5)
        timeline.add("3xx", bucket(0.01), clock.seconds())
        clock.advance(1)
        series = timeline.series(1000, 1001)
        self.assertEqual(series["2xx"], [98, 0])
        self.assertEqual(series["3xx"], [0, 1])
        self.assertEqual(series["4xx"], [1, 0])
        self.assertEqual(series["5xx"], [1, 0])
        self.assertEqual(series["1xx"], [0, 0])
        # p50 within one bucket (12%) above 2 ms; p99 the slow ones.
        p50, p99 = series["p50_ms"][0], series["p99_ms"][0]
        self.assertTrue(2.0 <= p50 < 2.0 * 1.12, p50)
        self.assertTrue(500.0 <= p99 < 500 * 1.12, p99)
        self.assertTrue(10.0 <= series["p50_ms"][1] < 10 * 1.12)

    def test_a_quiet_second_is_zero_with_no_latency(self) -> None:
        timeline = Timeline(WINDOW_BOUNDS)
        timeline.add("2xx", bucket(0.01), 10.2)
        timeline.add("2xx", bucket(0.01), 13.7)
        series = timeline.series(9, 13)
        self.assertEqual(series["2xx"], [0, 1, 0, 0, 1])
        self.assertEqual(series["p50_ms"][:4], [None, series["p50_ms"][1], None, None])
        self.assertIsNotNone(series["p50_ms"][1])

    def test_the_ring_wraps_and_forgets_what_is_older_than_the_span(self) -> None:
        clock = task.Clock()
        timeline = Timeline(WINDOW_BOUNDS, span=10)
        for _ in range(25):
            timeline.add("2xx", bucket(0.001), clock.seconds())
            timeline.add("5xx", bucket(0.001), clock.seconds())
            clock.advance(1)
        # Seconds 0..24 were written; the ring of 10 keeps 15..24.
        series = timeline.series(10, 24)
        self.assertEqual(series["2xx"], [0] * 5 + [1] * 10)
        self.assertEqual(series["5xx"], [0] * 5 + [1] * 10)
        # A second whose slot was reused by a later one reads as nothing,
        # even when asked for alone.
        self.assertEqual(timeline.series(14, 14)["2xx"], [0])
        # Nothing after a long silence: slots that hold old seconds are zero.
        clock.advance(100)
        self.assertEqual(timeline.series(115, 124)["2xx"], [0] * 10)

    def test_memory_is_fixed_when_made(self) -> None:
        timeline = Timeline(WINDOW_BOUNDS)
        before = _size(timeline)
        for second in range(3 * SPAN):
            for _ in range(3):
                timeline.add("2xx", bucket(0.003 * (1 + second % 7)), second + 0.5)
        timeline.series(2 * SPAN, 3 * SPAN - 1)
        self.assertEqual(_size(timeline), before)
        self.assertLess(before, 100_000)

    def test_a_clock_stepped_back_counts_in_the_open_second(self) -> None:
        timeline = Timeline(WINDOW_BOUNDS)
        timeline.add("2xx", bucket(0.01), 50.0)
        timeline.add("2xx", bucket(0.01), 48.0)
        self.assertEqual(timeline.series(48, 50)["2xx"], [0, 0, 2])

    def test_percentiles_are_worked_out_again_after_a_late_response(self) -> None:
        timeline = Timeline(WINDOW_BOUNDS)
        timeline.add("2xx", bucket(0.001), 5.0)
        self.assertLess(timeline.series(5, 5)["p99_ms"][0], 2)
        timeline.add("2xx", bucket(1.0), 5.9)
        timeline.add("2xx", bucket(1.0), 5.9)
        self.assertGreater(timeline.series(5, 5)["p50_ms"][0], 900)


def _size(timeline: Timeline) -> int:
    """Bytes in the timeline's arrays (sys.getsizeof is not there on PyPy)."""
    total = 0
    for name in Timeline.__slots__:
        value = getattr(timeline, name)
        if isinstance(value, array):
            total += len(value) * value.itemsize
    return total


class EventLogTests(unittest.TestCase):
    def test_keeps_the_last_events_oldest_first(self) -> None:
        events = EventLog()
        for i in range(MAX_EVENTS + 50):
            events.add(float(i), "a", "drained")
        self.assertEqual(len(events.events), MAX_EVENTS)
        self.assertEqual(events.events[0].time, 50.0)
        self.assertEqual(events.events[-1].time, MAX_EVENTS + 49.0)

    def test_between_takes_whole_seconds(self) -> None:
        events = EventLog()
        events.add(9.9, "a", "DOWN", "status 500")
        events.add(10.0, "a", "UP", "status 200")
        events.add(11.999, "b", "drained")
        events.add(12.0, "b", "enabled")
        self.assertEqual([e.event for e in events.between(10, 11)], ["UP", "drained"])
        self.assertEqual(
            events.between(9, 9)[0].as_json(),
            {"time": 9.9, "server": "a", "event": "DOWN", "detail": "status 500"},
        )


POOL = """\
[proxy]
listen = tcp:8080
pool = web
[pool:web]
servers = http://127.0.0.1:8001 name=a
          http://127.0.0.1:8002 name=b
max_fails = 1
fail_timeout = 10s
health_check = GET /
health_fall = 1
health_rise = 1
"""


def make_pool(clock: task.Clock) -> Pool:
    config = parse(POOL, "<test>").pools["web"]
    pool = Pool(config, [ServerState(s) for s in config.servers], clock)
    pool.on_change = lambda server, what, detail: pool.stats.events.add(
        clock.seconds(), server.name, what, detail
    )
    return pool


class PoolEventTests(unittest.TestCase):
    def test_each_state_change_is_told_once(self) -> None:
        clock = task.Clock()
        clock.advance(100)
        pool = make_pool(clock)
        a, b = pool.by_name["a"], pool.by_name["b"]
        pool.drain(a)
        pool.drain(a)  # no change: no event
        clock.advance(1)
        pool.enable(a)
        pool.enable(a)
        pool.maintain(b)
        pool.record_check(a, False, "status 500")
        pool.record_check(a, False, "status 500")
        clock.advance(1)
        pool.record_check(a, True, "status 200")
        pool.record_failure(a)
        clock.advance(10)
        pool.set_weight(a, 3)
        pool.stop()
        seen = [(e.time, e.server, e.event, e.detail) for e in pool.stats.events.events]
        self.assertEqual(
            seen,
            [
                (100.0, "a", "drained", ""),
                (101.0, "a", "enabled", ""),
                (101.0, "b", "maint", ""),
                (101.0, "a", "DOWN", "status 500"),
                (102.0, "a", "UP", "status 200"),
                (102.0, "a", "ejected", "1 failed requests"),
                (112.0, "a", "reinstated", "on probation"),
                (112.0, "a", "weight", "1 to 3"),
            ],
        )

    def test_a_passing_check_reinstates_an_ejected_server(self) -> None:
        clock = task.Clock()
        pool = make_pool(clock)
        a = pool.by_name["a"]
        pool.record_failure(a)
        pool.record_check(a, True, "status 200")
        pool.stop()
        self.assertEqual(
            [(e.event, e.detail) for e in pool.stats.events.events],
            [("ejected", "1 failed requests"), ("reinstated", "health check passed")],
        )


class HistoryDocumentTests(unittest.TestCase):
    def test_pool_and_servers_since_a_second(self) -> None:
        clock = task.Clock()
        clock.advance(1000)
        started = clock.seconds()
        pool = make_pool(clock)
        a = pool.by_name["a"]
        for _ in range(3):
            a.stats.record("GET", "2xx", 0.01, clock.seconds())
            pool.stats.record("2xx", 0.01, clock.seconds())
        pool.stats.record("5xx", 0.001, clock.seconds())  # answered by no server
        pool.drain(a)
        clock.advance(2.5)
        answer = history([pool], clock.seconds(), started)
        self.assertEqual((answer["first"], answer["last"]), (1000, 1001))
        self.assertEqual(answer["span_seconds"], SPAN)
        (web,) = answer["pools"]
        self.assertEqual(web["series"]["2xx"], [3, 0])
        self.assertEqual(web["series"]["5xx"], [1, 0])
        self.assertEqual([s["name"] for s in web["servers"]], ["a", "b"])
        self.assertEqual(web["servers"][0]["url"], "http://127.0.0.1:8001")
        self.assertEqual(web["servers"][0]["series"]["2xx"], [3, 0])
        self.assertEqual(web["servers"][1]["series"]["2xx"], [0, 0])
        self.assertEqual(
            web["events"], [{"time": 1000.0, "server": "a", "event": "drained", "detail": ""}]
        )

        # Asked again from the last second: only what came after, once.
        pool.enable(a)
        a.stats.record("GET", "4xx", 0.01, clock.seconds())
        clock.advance(1)
        again = history([pool], clock.seconds(), started, since=answer["last"])
        self.assertEqual((again["first"], again["last"]), (1002, 1002))
        self.assertEqual(again["pools"][0]["servers"][0]["series"]["4xx"], [1])
        self.assertEqual([e["event"] for e in again["pools"][0]["events"]], ["enabled"])
        nothing_new = history([pool], clock.seconds(), started, since=again["last"])
        self.assertEqual(nothing_new["pools"][0]["series"]["2xx"], [])
        self.assertEqual(nothing_new["pools"][0]["events"], [])

    def test_at_most_the_span_and_nothing_before_the_start(self) -> None:
        clock = task.Clock()
        clock.advance(50)
        pool = make_pool(clock)
        clock.advance(5000)
        answer = history([pool], clock.seconds(), 50.0, since=3)
        self.assertEqual(answer["last"] - answer["first"] + 1, SPAN)
        self.assertEqual(len(answer["pools"][0]["series"]["p99_ms"]), SPAN)
        young = history([pool], 60.2, 50.0)
        self.assertEqual((young["first"], young["last"]), (50, 59))


class StatsHistoryTests(unittest.TestCase):
    def test_server_and_pool_stats_keep_a_timeline(self) -> None:
        server, pool = ServerStats(), PoolStats()
        server.record("GET", "3xx", 0.02, 7.5)
        pool.record("3xx", 0.02, 7.5)
        self.assertEqual(server.timeline.series(7, 7)["3xx"], [1])
        self.assertEqual(pool.timeline.series(7, 7)["3xx"], [1])
        self.assertEqual(server.recent.count(8.0), 1)


class HistoryEndpointTests(ProxyTestCase):
    """C{GET /history} on a live proxy's admin listener, over real sockets."""

    def admin_get(self, target: str, method: str = "GET") -> defer.Deferred[Response]:
        return threads.deferToThread(fetch, self.admin, method, target, host=f"{HOST}:{self.admin}")

    @defer.inlineCallbacks
    def test_history_adds_up_to_status_and_shows_a_drain(self):  # type: ignore[no-untyped-def]
        a, b = self.backend("a"), self.backend("b")
        text = proxy_config([f"{a.url} name=a", f"{b.url} name=b"])
        text += f"[admin]\nlisten = tcp:0:interface={HOST}\n"
        proxy = self.start_proxy(text)
        assert proxy.admin_port is not None
        self.admin = proxy.admin_port.getHost().port
        for _ in range(10):
            yield self.fetch("GET", "/")
        drained = yield self.admin_get("/pools/test/servers/b/drain", "POST")
        self.assertEqual(drained.status, 200)
        status = json.loads((yield self.admin_get("/status")).body)
        served = {s["name"]: s["requests_served"] for s in status["pools"][0]["servers"]}
        self.assertEqual(served, {"a": 5, "b": 5})
        # The last second of traffic is in the history once it is over.
        yield task.deferLater(reactor, 1.0 - reactor.seconds() % 1 + 0.01, lambda: None)
        response = yield self.admin_get("/history")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("Content-Type"), ["application/json"])
        answer = json.loads(response.body)
        (pool,) = answer["pools"]
        self.assertEqual(sum(pool["series"]["2xx"]), 10)
        self.assertEqual(
            {s["name"]: sum(s["series"]["2xx"]) for s in pool["servers"]}, {"a": 5, "b": 5}
        )
        self.assertTrue(any(v is not None for v in pool["series"]["p50_ms"]))
        self.assertEqual([(e["server"], e["event"]) for e in pool["events"]], [("b", "drained")])
        # Nothing new since the last second: empty series, no events.
        again = json.loads((yield self.admin_get(f"/history?since={answer['last']}")).body)
        self.assertLessEqual(len(again["pools"][0]["series"]["2xx"]), 1)
        self.assertEqual(sum(again["pools"][0]["series"]["2xx"]), 0)
        self.assertEqual(again["pools"][0]["events"], [])

    @defer.inlineCallbacks
    def test_a_bad_since_is_400_and_writes_are_405(self):  # type: ignore[no-untyped-def]
        a = self.backend("a")
        text = proxy_config([f"{a.url} name=a"]) + f"[admin]\nlisten = tcp:0:interface={HOST}\n"
        proxy = self.start_proxy(text)
        assert proxy.admin_port is not None
        self.admin = proxy.admin_port.getHost().port
        for bad in ("abc", "-5", "1.5", "9" * 20):
            response = yield self.admin_get(f"/history?since={bad}")
            self.assertEqual(response.status, 400, bad)
            self.assertIn(b"since must be", response.body)
        response = yield self.admin_get("/history", "POST")
        self.assertEqual(response.status, 405)
