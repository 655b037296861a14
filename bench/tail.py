#!/usr/bin/env python3
"""
Where a proxy's wrk tail comes from: lbproxy under bench/loopwatch.py on the bench's setup.

    python3 bench/tail.py --twistd .venv-pypy/bin/twistd [--warmup 8] [--duration 10]

Starts the bench's three nginx backends and lbproxy with the bench's
configuration, cores and environment (bench/bench.py: every feature on, the
proxy alone on CPU 0, LBPROXY_ENV), but with the reactor's loop timed by
bench/loopwatch.py (run by the interpreter of C{--twistd}'s installation).
After a wrk warm-up it measures with wrk (50 connections, the latency
percentiles from p50 to p99.9 and the max through a Lua script), stops the
proxy and prints, for the measured seconds only: the turns busy for more than
1, 3, 5, 10 ms per second (wall time, and the thread's CPU time, which the
machine's other work does not inflate), the pauses (turns over 3, 5, 10, 20
ms of CPU) per 100,000 requests, a model of the tail from the turns' CPU
time (a request read in turn i waits for turn i - 1 and is answered at the
end of turn i + 1: the tail with the core to itself), each connection's
gaps (loopwatch --connections), the minor collections (count per second,
durations, what each promotes), the major collection's steps, the JIT's
compilations, the access log's writes, the turns that waited in the
kernel, and the slowest turns with what ran in them.  C{--json} writes all
of it.  C{--env NAME=VALUE} changes the proxy's environment (PyPy's
collector settings); C{--proxy-durations} also reports the proxy's own time
per request (the access log in JSON); C{--heap} the live objects by type.

A diagnosis tool: loopwatch adds a little to every event, so the CPU per
request is not the bench's; bench/ab.py is for that.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench  # noqa: E402

LOOPWATCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "loopwatch.py")

#: wrk's Lua: the latency percentiles a tail needs, in microseconds.
PERCENTILES_LUA = """
done = function(summary, latency, requests)
  for _, p in ipairs({50, 75, 90, 95, 97, 98, 99, 99.5, 99.9}) do
    io.write(string.format("pct %g %d\\n", p, latency:percentile(p)))
  end
  io.write(string.format("pct max %d\\n", latency.max))
end
"""


def wrk_percentiles(port: int, seconds: int, workdir: str) -> Dict[str, Any]:
    script = os.path.join(workdir, "percentiles.lua")
    with open(script, "w") as f:
        f.write(PERCENTILES_LUA)
    out = subprocess.run(
        [
            "taskset",
            "-c",
            bench.LOAD_CPU,
            "wrk",
            "-t1",
            f"-c{bench.CONNECTIONS}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            script,
            f"http://{bench.HOST}:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    match = re.search(r"(\d+) requests in", out)
    result: Dict[str, Any] = {"requests": int(match.group(1)) if match else 0}
    result["ms"] = {p: int(us) / 1000 for p, us in re.findall(r"^pct (\S+) (\d+)$", out, re.M)}
    return result


def wrapper(workdir: str, python: str, out: str, slow_ms: float, heap: bool = False) -> str:
    """An executable that bench.start_lbproxy can run as twistd: loopwatch with C{python}."""
    path = os.path.join(workdir, "twistd-loopwatch")
    with open(path, "w") as f:
        f.write(
            f'#!/bin/sh\nexec "{python}" "{LOOPWATCH}" --out "{out}"'
            f' --slow-ms {slow_ms} --connections{" --heap" if heap else ""} -- "$@"\n'
        )
    os.chmod(path, 0o755)
    return path


def summary(kept: Dict[str, List[Any]], start: float, end: float) -> Dict[str, Any]:
    seconds = end - start
    turns = [t for t in kept["turns"] if start <= t["time"] <= end]
    gc = [g for g in kept["gc"] if start <= g[0] <= end]
    jit = [j for j in kept["jit"] if start <= j[0] <= end]
    minors = [1000 * g[3] for g in gc if g[1] == "minor"]
    majors = [g for g in gc if g[1] == "major"]
    used = [g[4] for g in gc if g[1] == "minor" and len(g) > 4]
    growth = [b - a for a, b in zip(used, used[1:]) if b > a]
    steps = [(g[2], g[3], round(1000 * g[4], 2)) for g in gc if g[1] == "step"]

    def rate(values: List[float], over: float) -> float:
        return round(sum(1 for v in values if v > over) / seconds, 2)

    busy = [t["busy_ms"] for t in turns]
    cpu = [t["cpu_ms"] for t in turns]
    slow = sorted(turns, key=lambda t: -t["cpu_ms"])

    def percentiles(values: List[float]) -> Dict[str, float]:
        values = sorted(values)
        if not values:
            return {}
        return {
            p: values[min(len(values) - 1, int(float(p) / 100 * len(values)))]
            for p in ("50", "90", "99", "99.5", "99.9", "100")
        }

    # What the tail would be if the proxy had its core to itself: each
    # request read from a client in turn i is answered at the end of turn
    # i + 1 (its backend's response read), after waiting for turn i - 1 to
    # end; its latency is taken as the CPU time of the three turns, and the
    # turn reads about a quarter of its events' worth of requests (a
    # request is four events: two reads, two sends).  Needs --slow-ms 0.
    model: List[Any] = []
    for i in range(1, len(turns) - 1):
        model.append((cpu[i - 1] + cpu[i] + cpu[i + 1], turns[i]["events"] / 4))
    model.sort()
    weight = sum(w for _, w in model)

    def modeled(p: float) -> Optional[float]:
        seen = 0.0
        for value, w in model:
            seen += w
            if seen >= p / 100 * weight:
                return round(value, 2)
        return None

    requests_seen = weight or 1.0
    gaps = {
        kind: percentiles([ms for at, ms in values if start <= at <= end])
        for kind, values in kept.get("gaps", {}).items()
    }
    flushes = [f for f in kept.get("flushes", []) if start <= f[0] <= end]
    waited = [t for t in turns if t.get("waits")]
    return {
        "seconds": round(seconds, 2),
        "access_log_writes": {
            "count": len(flushes),
            "wall_ms": percentiles([1000 * f[1] for f in flushes]),
            "cpu_ms_max": round(1000 * max((f[2] for f in flushes), default=0.0), 3),
        },
        "turns_that_waited_in_kernel": {
            "count": len(waited),
            "busy_ms": percentiles([t["busy_ms"] for t in waited]),
        },
        "gaps_ms": gaps,
        "turns_per_s_busy_over_ms": {ms: rate(busy, ms) for ms in (1, 3, 5, 10)},
        "turns_per_s_cpu_over_ms": {ms: rate(cpu, ms) for ms in (1, 3, 5, 10)},
        "cpu_model_ms": {str(p): modeled(p) for p in (50, 90, 99, 99.9)},
        "stall_turns_per_100k_requests": {
            ms: round(1e5 * sum(1 for c in cpu if c > ms) / requests_seen, 1)
            for ms in (3, 5, 10, 20)
        },
        "turns_kept": len(turns),
        "kept_turn_cpu_ms": percentiles(cpu),
        "kept_turn_events": percentiles([t["events"] for t in turns]),
        "minor_gc_per_s": round(len(minors) / seconds, 2),
        "minor_gc_ms": {
            "median": round(statistics.median(minors), 3) if minors else None,
            "p90": round(sorted(minors)[int(0.9 * len(minors))], 3) if minors else None,
            "max": round(max(minors), 3) if minors else None,
        },
        "major_steps": steps,
        "major_collections": len(majors),
        "old_growth_per_minor_kib": round(statistics.median(growth) / 1024) if growth else None,
        "arenas_after_major_mib": [round(g[3] / 2**20, 1) for g in majors],
        "jit_events": len(jit),
        "slowest_turns": slow[:12],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--twistd", required=True)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument(
        "--slow-ms",
        type=float,
        default=0.0,
        help="keep turns busy for over this (0: all, which the model needs)",
    )
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the proxy")
    parser.add_argument("--json", help="write the turns, events and summary here")
    parser.add_argument(
        "--heap", action="store_true", help="the proxy's live objects by type when it stopped"
    )
    parser.add_argument(
        "--proxy-durations",
        action="store_true",
        help="the access log in json: also the proxy's own time per request (read to answered)",
    )
    args = parser.parse_args()
    python = os.path.join(os.path.dirname(os.path.abspath(args.twistd)), "python")
    for item in args.env:
        name, _, value = item.partition("=")
        bench.LBPROXY_ENV[name] = value
    if args.proxy_durations:
        bench.LBPROXY_CONFIG = bench.LBPROXY_CONFIG.replace(
            "access_log = {access_log}\n", "access_log = {access_log}\naccess_log_format = json\n"
        )
    durations: List[float] = []
    with tempfile.TemporaryDirectory(prefix="lbproxy-tail-") as workdir:
        out = os.path.join(workdir, "turns.json")
        twistd = wrapper(workdir, python, out, args.slow_ms, args.heap)
        backends = bench.Backends(workdir)
        try:
            proc, (port,) = bench.start_listening(
                lambda ports: bench.start_lbproxy(twistd, workdir, ports[0], backends.ports)
            )
            try:
                bench.wrk(port, args.warmup)
                start = time.time()
                latency = wrk_percentiles(port, args.duration, workdir)
                end = time.time()
            finally:
                bench.stop(proc)
        finally:
            backends.stop()
        with open(out) as f:
            kept = json.load(f)
        if args.proxy_durations:
            with open(os.path.join(workdir, f"access-{port}.log")) as f:
                for line in f:
                    entry = json.loads(line)
                    at = time.mktime(time.strptime(entry["time"][:19], "%Y-%m-%dT%H:%M:%S"))
                    at += float(entry["time"][19:-1] or 0) - time.timezone
                    if start <= at <= end:
                        durations.append(1000 * entry["duration"])
    result = {"env": bench.LBPROXY_ENV, "wrk": latency, **summary(kept, start, end)}
    latency["rps"] = round(latency["requests"] / (end - start))
    if durations:
        durations.sort()
        result["proxy_ms"] = {
            p: round(durations[min(len(durations) - 1, int(p / 100 * len(durations)))], 3)
            for p in (50, 90, 99, 99.5, 99.9, 100)
        }
    slowest = result.pop("slowest_turns")
    if "heap" in kept:
        print("live objects at exit (type, count, bytes):")
        for name, (count, size) in kept["heap"]["types"][:25]:
            print(f"  {name:60} {count:8} {size / 2**20:7.2f} MiB")
        print(kept["heap"]["stats"])
    print(json.dumps(result, indent=1))
    print("slowest turns (by CPU):")
    for t in slowest:
        print(
            f"  {t['busy_ms']:7.2f} ms wall {t['cpu_ms']:7.2f} ms CPU, {t['events']} events,"
            f" gc {t['gc']}, jit {[j[0] for j in t['jit']]},"
            f" top fd {t['fds'][:2]}, timers {t['timers'][:2]}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**result, "slowest_turns": slowest, "kept": kept}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
