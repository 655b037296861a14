"""
Where a proxy's CPU per request varies: several measured wrk runs in each
of several fresh processes, on the bench's setup (every feature on, the
proxy on CPU 0, the load on CPU 1).

    python3 bench/spread.py --procs 3 --runs 3
    python3 bench/spread.py --peer --procs 4 --runs 2

For each run it prints the proxy's user and system CPU microseconds per
request (from /proc/PID/stat), req/s and the load average; with `perf`
installed, the system calls and wake-ups per request (tracepoints:
epoll_wait, epoll_ctl, sendto, recvfrom, write, mmap, munmap, brk, context
switches, wake-ups made, page faults), which say whether the work per
request changed or only what it cost.  For lbproxy on CPython it also prints
the cyclic collector's collections per generation made during the runs
(through a `sitecustomize` put on the proxy's PYTHONPATH that counts them
with `gc.callbacks`, read back on SIGUSR2).  `--peer` interleaves the
aiohttp peer's processes with lbproxy's: the same moments of the machine.

A spread within one process as large as between processes says the cause
is the machine at that moment, not something fixed at start-up (hash seed,
memory layout).
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench  # noqa: E402

GC_COUNTER = """
import gc, os, signal, time
_path = os.environ.get("LBPROXY_SPREAD_GC")
if _path:
    _counts = {0: 0, 1: 0, 2: 0}
    _cpu = {0: 0.0, 1: 0.0, 2: 0.0}
    _start = [0.0]
    def _count(phase, info):
        if phase == "start":
            _start[0] = time.thread_time()
        else:
            _counts[info["generation"]] += 1
            _cpu[info["generation"]] += time.thread_time() - _start[0]
    if hasattr(gc, "freeze"):  # CPython's collector (PyPy's is another)
        gc.callbacks.append(_count)
    def _dump(*args):
        with open(_path, "w") as f:
            f.write(repr((_counts, _cpu, gc.get_count() if hasattr(gc, "freeze") else (0,))))
    signal.signal(signal.SIGUSR2, _dump)
"""

EVENTS = [
    "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_epoll_ctl",
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_mmap",
    "syscalls:sys_enter_munmap",
    "syscalls:sys_enter_brk",
    "sched:sched_switch",
    "sched:sched_wakeup",
    "page-faults",
]


def cpu_times(pid: int) -> Tuple[float, float]:
    """User and system CPU seconds of process C{pid}."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / bench.TICK, int(fields[12]) / bench.TICK


def gc_counts(pid: int, path: str) -> Optional[tuple]:
    """The collections the proxy counted so far (GC_COUNTER), if it counts them."""
    try:
        os.unlink(path)
    except OSError:
        pass
    os.kill(pid, signal.SIGUSR2)
    for _ in range(50):
        if os.path.exists(path) and os.path.getsize(path):
            with open(path) as f:
                return ast.literal_eval(f.read())  # type: ignore[no-any-return]
        time.sleep(0.02)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--twistd", default=os.path.join(bench.ROOT, ".venv", "bin", "twistd"))
    parser.add_argument("--procs", type=int, default=3, help="fresh lbproxy processes")
    parser.add_argument("--runs", type=int, default=3, help="measured runs in each process")
    parser.add_argument("--duration", type=int, default=5, help="seconds of each run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per process")
    parser.add_argument("--peer", action="store_true", help="interleave the aiohttp peer")
    args = parser.parse_args()
    perf = shutil.which("perf")
    peer = bench.peer_python(False) if args.peer else None
    if args.peer and peer is None:
        print("no aiohttp peer: run bench/bench.py --install first", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="lbproxy-spread-") as workdir:
        site = os.path.join(workdir, "site")
        os.mkdir(site)
        with open(os.path.join(site, "sitecustomize.py"), "w") as f:
            f.write(GC_COUNTER)
        backends = bench.Backends(workdir)
        kinds = ["lbproxy", "peer"] if args.peer else ["lbproxy"]
        try:
            for n in range(args.procs):
                for kind in kinds:
                    gc_file = os.path.join(workdir, f"gc-{n}")
                    env = {"LBPROXY_SPREAD_GC": gc_file, "PYTHONPATH": site}
                    saved = {k: os.environ.get(k) for k in env}
                    os.environ.update(env)
                    try:
                        if kind == "peer":
                            proc, (port,) = bench.start_listening(
                                lambda ports: bench.start_peer(
                                    peer,  # type: ignore[arg-type]
                                    workdir,
                                    ports[0],
                                    backends.ports,
                                )
                            )
                        else:
                            proc, (port,) = bench.start_listening(
                                lambda ports: bench.start_lbproxy(
                                    args.twistd, workdir, ports[0], backends.ports
                                )
                            )
                    finally:
                        for k, v in saved.items():
                            if v is None:
                                os.environ.pop(k, None)
                            else:
                                os.environ[k] = v
                    try:
                        bench.wrk(port, args.warmup)
                        before = gc_counts(proc.pid, gc_file) if kind == "lbproxy" else None
                        for r in range(args.runs):
                            print(
                                f"{kind} process {n + 1} run {r + 1}: "
                                + one_run(proc.pid, port, args.duration, perf),
                                flush=True,
                            )
                        if before is not None:
                            after = gc_counts(proc.pid, gc_file)
                            if after is not None:
                                made = {g: after[0][g] - before[0][g] for g in (0, 1, 2)}
                                cpu = {g: 1e3 * (after[1][g] - before[1][g]) for g in (0, 1, 2)}
                                print(
                                    f"  collections during the runs by generation {made},"
                                    f" their CPU ms {cpu}, gen-0 count now {after[2][0]}"
                                )
                    finally:
                        bench.stop(proc)
        finally:
            backends.stop()
    return 0


def one_run(pid: int, port: int, seconds: int, perf: Optional[str]) -> str:
    """One measured wrk run of the proxy C{pid}: what it cost, per request."""
    counting = None
    if perf is not None:
        counting = subprocess.Popen(
            [perf, "stat", "-x,", "-e", ",".join(EVENTS), "-p", str(pid), "--"]
            + ["sleep", str(seconds - 0.5)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    user0, sys0 = cpu_times(pid)
    run = bench.wrk(port, seconds)
    user1, sys1 = cpu_times(pid)
    requests = run["requests"] or 1
    text = (
        f"user {1e6 * (user1 - user0) / requests:.1f} sys {1e6 * (sys1 - sys0) / requests:.1f}"
        f" total {1e6 * (user1 - user0 + sys1 - sys0) / requests:.1f} us/request,"
        f" {run['rps']:.0f} req/s, load {os.getloadavg()[0]:.1f}"
    )
    if counting is not None:
        _, err = counting.communicate()
        counted: Dict[str, int] = {}
        for line in err.splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[0].isdigit():
                counted[fields[2].split(":")[-1].replace("sys_enter_", "")] = int(fields[0])
        per = float(run["rps"]) * (seconds - 0.5) or 1.0
        text += "; per request: " + " ".join(f"{k} {v / per:.2f}" for k, v in counted.items())
    return text


if __name__ == "__main__":
    sys.exit(main())
