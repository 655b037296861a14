"""
Interleaved A/B of two lbproxy installations on the bench's setup.

    python3 bench/ab.py --a /path/to/A/.venv/bin/twistd \\
        --b /path/to/B/.venv/bin/twistd --rounds 6

    python3 bench/ab.py --a .venv/bin/twistd --b .venv/bin/twistd \\
        --workers-a 1 --workers-b 2 --rounds 6

The second form compares one installation with itself at two numbers of
worker processes (the whole process tree is measured, supervisor included;
every process pinned to the proxy's core).

Each round starts A, warms it up, measures it with wrk, stops it, then the
same for B (the order alternates between rounds), against the same three
nginx backends, with the bench's configuration (every feature on) and its
cores (the proxy on CPU 0, the load on CPU 1).  It prints each run's CPU
microseconds per request and the medians: a difference smaller than the
spread of one side's runs is not a difference.  Use it to keep or drop one
change at a time; `bench/bench.py` is the record of where lbproxy stands.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--a", required=True, help="twistd of installation A")
    parser.add_argument("--b", required=True, help="twistd of installation B")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per run")
    parser.add_argument("--duration", type=int, default=5, help="seconds measured per run")
    parser.add_argument("--workers", type=int, default=1, help="workers of both sides")
    parser.add_argument("--workers-a", type=int, help="workers of A (default: --workers)")
    parser.add_argument("--workers-b", type=int, help="workers of B (default: --workers)")
    args = parser.parse_args()
    workers = {
        "A": args.workers if args.workers_a is None else args.workers_a,
        "B": args.workers if args.workers_b is None else args.workers_b,
    }
    print(f"A: {args.a}, {workers['A']} worker(s); B: {args.b}, {workers['B']} worker(s)")
    runs: Dict[str, List[float]] = {"A": [], "B": []}
    p99: Dict[str, List[float]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="lbproxy-ab-") as workdir:
        backends = bench.Backends(workdir)
        try:
            for n in range(args.rounds):
                order = ("A", "B") if n % 2 == 0 else ("B", "A")
                for side in order:
                    twistd = args.a if side == "A" else args.b
                    proc, (port,) = bench.start_listening(
                        lambda ports, twistd=twistd, count=workers[side]: bench.start_lbproxy(
                            twistd, workdir, ports[0], backends.ports, workers=count
                        )
                    )
                    try:
                        bench.wrk(port, args.warmup)
                        result = bench.measured_run(
                            port,
                            args.duration,
                            bench.process_tree(proc.pid),
                            bench.process_tree(backends.proc.pid),
                        )
                    finally:
                        bench.stop(proc)
                    us = float(result["cpu_us_per_request"] or 0.0)
                    runs[side].append(us)
                    p99[side].append(
                        float(result["p99_ms"] or 0.0) / float(result["p50_ms"] or 1.0)
                    )
                    print(
                        f"round {n + 1} {side}: {us:.1f} us/request, {result['rps']:.0f} req/s,"
                        f" p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms,"
                        f" errors {result['errors']}",
                        flush=True,
                    )
        finally:
            backends.stop()
    for side in ("A", "B"):
        values = runs[side]
        print(
            f"{side}: median {statistics.median(values):.1f} us/request"
            f" (min {min(values):.1f}, max {max(values):.1f}),"
            f" p99/p50 median {statistics.median(p99[side]):.1f}"
        )
    a, b = statistics.median(runs["A"]), statistics.median(runs["B"])
    print(f"B - A: {b - a:+.1f} us/request ({100 * (b - a) / a:+.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
