"""
The counters behind /status and /metrics: last-minute percentiles, the
histogram, labels.  Pure: times are arguments.
"""

from __future__ import annotations

from twisted.trial import unittest

from lbproxy.ops.stats import (
    HISTOGRAM_BOUNDS,
    WINDOW_BOUNDS,
    Histogram,
    LastMinute,
    ServerStats,
    method_label,
    status_class,
)


class LastMinuteTests(unittest.TestCase):
    def test_percentiles_are_within_one_bucket(self) -> None:
        recent = LastMinute()
        # 98 fast requests (2 ms) and 2 slow ones (400 ms).
        for i in range(98):
            recent.add(0.002, 1000.0 + i * 0.1)
        recent.add(0.4, 1010.0)
        recent.add(0.4, 1010.5)
        p50, p99 = recent.percentiles(1011.0, 0.5, 0.99)
        assert p50 is not None and p99 is not None
        self.assertTrue(0.002 <= p50 <= 0.002 * 1.12, p50)
        self.assertTrue(0.4 <= p99 <= 0.4 * 1.12, p99)
        self.assertEqual(recent.count(1011.0), 100)

    def test_old_seconds_leave_the_window(self) -> None:
        recent = LastMinute()
        recent.add(1.0, 100.0)
        recent.add(0.001, 130.0)
        self.assertEqual(recent.count(130.0), 2)
        # 100 is more than a minute before 161: only the request at 130 counts.
        self.assertEqual(recent.count(161.0), 1)
        (p50,) = recent.percentiles(161.0, 0.5)
        assert p50 is not None
        self.assertLess(p50, 0.002)
        # A slot reused for a later second starts from zero.
        recent.add(0.5, 160.0 + 40)  # same slot as 140, a minute later
        self.assertEqual(recent.count(200.0), 1)

    def test_nothing_recent_is_none(self) -> None:
        recent = LastMinute()
        self.assertEqual(recent.percentiles(5.0, 0.5, 0.99), [None, None])
        recent.add(0.01, 5.0)
        self.assertEqual(recent.percentiles(100.0, 0.5), [None])

    def test_durations_beyond_the_last_bound_are_counted(self) -> None:
        recent = LastMinute()
        recent.add(WINDOW_BOUNDS[-1] * 10, 1.0)
        (p50,) = recent.percentiles(1.0, 0.5)
        self.assertEqual(p50, WINDOW_BOUNDS[-1])


class HistogramTests(unittest.TestCase):
    def test_buckets_are_cumulative_and_end_with_inf(self) -> None:
        histogram = Histogram()
        for duration in (0.001, 0.005, 0.03, 100.0):
            histogram.add(duration)
        buckets = dict(histogram.buckets())
        self.assertEqual(len(buckets), len(HISTOGRAM_BOUNDS) + 1)
        self.assertEqual(buckets["0.005"], 2)  # le is inclusive
        self.assertEqual(buckets["0.025"], 2)
        self.assertEqual(buckets["0.05"], 3)
        self.assertEqual(buckets["60.0"], 3)
        self.assertEqual(buckets["+Inf"], 4)
        self.assertAlmostEqual(histogram.total, 100.036)


class LabelTests(unittest.TestCase):
    def test_methods_outside_the_known_set_are_other(self) -> None:
        self.assertEqual(method_label(b"GET"), "GET")
        self.assertEqual(method_label(b"PATCH"), "PATCH")
        self.assertEqual(method_label(b"get"), "OTHER")
        self.assertEqual(method_label(b"BREW"), "OTHER")
        self.assertEqual(method_label(b"\xff"), "OTHER")

    def test_status_classes(self) -> None:
        self.assertEqual(
            [status_class(c) for c in (100, 204, 304, 404, 499, 503, 600, 0)],
            ["1xx", "2xx", "3xx", "4xx", "4xx", "5xx", "5xx", "1xx"],
        )

    def test_server_stats_record(self) -> None:
        stats = ServerStats()
        stats.record("GET", "2xx", 0.01, 10.0)
        stats.record("GET", "2xx", 0.02, 10.5)
        stats.record("POST", "5xx", 0.03, 11.0)
        self.assertEqual(stats.requests, {("GET", "2xx"): 2, ("POST", "5xx"): 1})
        self.assertEqual(stats.served, 3)
        self.assertEqual(stats.recent.count(11.0), 3)
