"""
Interleaved A/B of two lbproxy installations on the bench's setup.

    python3 bench/ab.py --a /path/to/A/.venv/bin/twistd \\
        --b /path/to/B/.venv/bin/twistd --rounds 6

    python3 bench/ab.py --a .venv/bin/twistd --b .venv/bin/twistd \\
        --workers-a 1 --workers-b 2 --rounds 6

The second form compares one installation with itself at two numbers of
worker processes (the whole process tree is measured, supervisor included;
every process pinned to the proxy's core).

    python3 bench/ab.py --a .venv/bin/twistd --b .venv/bin/twistd \
        --workers-a 1 --workers-b 2 --paced 500 --cpus all --rounds 6

`--env-a NAME=VALUE` / `--env-b NAME=VALUE` change one side's environment
on top of the bench's LBPROXY_ENV (an empty value removes the variable):
PyPy's garbage collector settings, for example, for the same installation.

`--tls` puts both proxies behind a tls: listener (the bench's certificate)
and the load (wrk or bench/paced.py) on https.

`--idle 10` measures the process tree with no traffic instead (CPU
milliseconds over 10 s, from /proc/PID/schedstat): the group's fixed cost.

The third measures at a fixed rate instead of wrk's saturation (bench/paced.py,
the same requests per second for both sides, so the CPU per request is the
same work's) with the proxy on every CPU (--cpus all: two workers can each
have a core, as on a real machine; one process uses one at a time).  This is
how docs/workers.md answers "2 workers against 1" on a 2-core machine.

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
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench  # noqa: E402


def context_switches(pids: List[int]) -> int:
    """Voluntary and involuntary context switches of these processes, summed."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if "ctxt_switches:" in line:
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def on_cpu_ns(pids: List[int]) -> int:
    """Nanoseconds these processes ran (/proc/PID/schedstat: finer than clock ticks)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def idle_run(pid: int, seconds: int) -> float:
    """Milliseconds of CPU the proxy's process tree uses over C{seconds} with no traffic."""
    tree = bench.process_tree(pid)
    before = on_cpu_ns(tree)
    time.sleep(seconds)
    return (on_cpu_ns(tree) - before) / 1e6


def paced_run(
    port: int, rate: float, seconds: int, pid: int, scheme: str = "http"
) -> Dict[str, Any]:
    """CPU of the proxy's tree per request answered at C{rate} requests/s, and its tail."""
    tree = bench.process_tree(pid)
    cpu, switches = bench.cpu_seconds(tree), context_switches(tree)
    p: Dict[str, Any] = bench.paced(port, rate, seconds, scheme=scheme)
    cpu = bench.cpu_seconds(tree) - cpu
    switches = context_switches(tree) - switches
    if "error" in p:
        raise RuntimeError(f"paced run failed: {p['error']}")
    answered = int(p["answered"])
    return {
        "cpu_us_per_request": 1e6 * cpu / answered if answered else None,
        "rps": answered / seconds,
        "p50_ms": p["p50_ms"],
        "p99_ms": p["p99_ms"],
        "errors": p["errors"],
        "switches_per_request": switches / answered if answered else None,
    }


def environment(changes: List[str]) -> Dict[str, str]:
    """The bench's LBPROXY_ENV with C{NAME=VALUE} changes (an empty value removes NAME)."""
    env = dict(bench.LBPROXY_ENV)
    for change in changes:
        name, sep, value = change.partition("=")
        if not sep or not name:
            raise SystemExit(f"--env-a/--env-b: expected NAME=VALUE, got {change!r}")
        if value:
            env[name] = value
        else:
            env.pop(name, None)
    return env


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
    parser.add_argument(
        "--paced",
        type=float,
        default=0.0,
        help="measure at this many requests/s (bench/paced.py) instead of wrk's saturation",
    )
    parser.add_argument(
        "--idle",
        type=int,
        default=0,
        help="measure the CPU of the idle process tree over this many seconds (no load)",
    )
    parser.add_argument(
        "--cpus",
        default=bench.PROXY_CPU,
        help="CPUs of the proxy (taskset list; 'all': every CPU, unpinned)",
    )
    parser.add_argument(
        "--env-a",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment of A on top of the bench's LBPROXY_ENV (NAME= removes it); repeatable",
    )
    parser.add_argument("--env-b", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--tls",
        action="store_true",
        help="the proxy listens on tls: with the bench's certificate; the load speaks https",
    )
    args = parser.parse_args()
    scheme = "https" if args.tls else "http"
    cpus = f"0-{(os.cpu_count() or 1) - 1}" if args.cpus == "all" else args.cpus
    workers = {
        "A": args.workers if args.workers_a is None else args.workers_a,
        "B": args.workers if args.workers_b is None else args.workers_b,
    }
    print(f"A: {args.a}, {workers['A']} worker(s); B: {args.b}, {workers['B']} worker(s)")
    how = f"paced at {args.paced:g} requests/s" if args.paced > 0 else "wrk"
    how += " over TLS" if args.tls else ""
    if args.idle > 0:
        how = f"no traffic, {args.idle} s"
    print(f"proxy on CPUs {cpus}, load on CPU {bench.LOAD_CPU}, measured with {how}")
    envs = {"A": environment(args.env_a), "B": environment(args.env_b)}
    for side in ("A", "B"):
        if envs[side] != bench.LBPROXY_ENV:
            print(f"{side}'s environment: {envs[side]}")
    runs: Dict[str, List[float]] = {"A": [], "B": []}
    p99: Dict[str, List[float]] = {"A": [], "B": []}
    rss: Dict[str, List[float]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="lbproxy-ab-") as workdir:
        backends = bench.Backends(workdir)
        try:
            for n in range(args.rounds):
                order = ("A", "B") if n % 2 == 0 else ("B", "A")
                for side in order:
                    twistd = args.a if side == "A" else args.b
                    bench.LBPROXY_ENV = envs[side]

                    def start(
                        ports: List[int], twistd: str = twistd, count: int = workers[side]
                    ) -> subprocess.Popen:
                        return bench.start_lbproxy(
                            twistd,
                            workdir,
                            ports[0],
                            backends.ports,
                            variant="tls" if args.tls else "",
                            workers=count,
                            cpus=cpus,
                        )

                    proc, (port,) = bench.start_listening(start)
                    try:
                        bench.wait_workers(port)
                        if args.idle > 0:
                            time.sleep(args.warmup)
                            ms = idle_run(proc.pid, args.idle)
                            runs[side].append(ms)
                            print(f"round {n + 1} {side}: idle {ms:.1f} ms CPU", flush=True)
                            continue
                        bench.wrk(port, args.warmup, scheme=scheme)
                        if args.paced > 0:
                            result = paced_run(port, args.paced, args.duration, proc.pid, scheme)
                        else:
                            result = bench.measured_run(
                                port,
                                args.duration,
                                bench.process_tree(proc.pid),
                                bench.process_tree(backends.proc.pid),
                                scheme=scheme,
                            )
                        peak = bench.memory_kib(proc.pid, "VmHWM") / 1024
                    finally:
                        bench.stop(proc)
                    rss[side].append(peak)
                    us = float(result["cpu_us_per_request"] or 0.0)
                    runs[side].append(us)
                    p99[side].append(
                        float(result["p99_ms"] or 0.0) / float(result["p50_ms"] or 1.0)
                    )
                    print(
                        f"round {n + 1} {side}: {us:.1f} us/request, {result['rps']:.0f} req/s,"
                        f" p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms,"
                        f" peak RSS {peak:.0f} MiB, errors {result['errors']}"
                        + (
                            f", {result['switches_per_request']:.2f} context switches/request"
                            if result.get("switches_per_request") is not None
                            else ""
                        ),
                        flush=True,
                    )
        finally:
            backends.stop()
    if args.idle > 0:
        for side in ("A", "B"):
            values = runs[side]
            print(
                f"{side}: median {statistics.median(values):.1f} ms CPU idle over {args.idle} s"
                f" (min {min(values):.1f}, max {max(values):.1f})"
            )
        return 0
    for side in ("A", "B"):
        values = runs[side]
        print(
            f"{side}: median {statistics.median(values):.1f} us/request"
            f" (min {min(values):.1f}, max {max(values):.1f}),"
            f" p99/p50 median {statistics.median(p99[side]):.1f}"
            f" ({min(p99[side]):.1f}-{max(p99[side]):.1f}),"
            f" peak RSS median {statistics.median(rss[side]):.0f} MiB"
        )
    a, b = statistics.median(runs["A"]), statistics.median(runs["B"])
    print(f"B - A: {b - a:+.1f} us/request ({100 * (b - a) / a:+.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
