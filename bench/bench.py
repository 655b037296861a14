#!/usr/bin/env python3
"""
lbproxy against nginx and HAProxy, on this machine, in one run.

    python3 bench/bench.py [--install] [--duration 15] [--warmup 10] [--only NAME ...]

Three nginx backends (each answers a 10-byte body) sit behind each proxy in
turn: nginx as a proxy, HAProxy, lbproxy on CPython and lbproxy on PyPy, all
balancing round robin with keep-alive to the backends.  Each proxy runs alone
on CPU 0 (taskset); wrk and the backends share CPU 1.  Every proxy gets the
same warm-up run and then the same measured wrk run (50 connections).  Then
a 300 MiB download and a 300 MiB upload go through each proxy, and 10,000
idle keep-alive client connections are opened to it.

Reported per proxy: requests/s, p50 and p99 latency, errors, peak RSS, the
ratio of requests/s to nginx in the same run (the figure to quote: the
machine is shared and noisy), download and upload MiB/s with the RSS growth
they caused, and the RSS cost of an idle client connection.  Results go to
bench/results/<time>.json, and the run is compared with the previous one.

Everything runs on 127.0.0.1.  Only the standard library is used here;
lbproxy runs from the virtual environments .venv (CPython) and .venv-pypy
(PyPy), which are created when missing.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import glob
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
HOST = "127.0.0.1"
PROXY_CPU = "0"
LOAD_CPU = "1"
BODY = "0123456789"
BIG = 300 * 1024 * 1024
IDLE_CONNECTIONS = 10_000
# HAProxy needs two descriptors per connection and will not start when that
# exceeds the process's hard limit (20,000 on the machines we measure on).
HAPROXY_MAXCONN = 9_900
TOOLS = {
    "nginx": "nginx",
    "haproxy": "haproxy",
    "wrk": "wrk",
    "pypy3": "pypy3 pypy3-venv",
    "curl": "curl",
    "taskset": "util-linux",
}


def log(text: str) -> None:
    print(text, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(port: int, proc: subprocess.Popen, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {seconds} s")


def process_tree(pid: int) -> List[int]:
    pids = [pid]
    for path in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(path) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            pids.extend(process_tree(int(path.split("/")[2])))
    return pids


def memory_kib(pid: int, field: str) -> int:
    """Sum of a /proc status field (VmRSS, VmHWM) over a process and its children."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


# ---------------------------------------------------------------------------
# Setup


def missing_tools() -> List[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def install(tools: List[str]) -> None:
    packages = " ".join(TOOLS[t] for t in tools)
    log(f"installing: {packages}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages.split()], check=True, env=env)


def ensure_venv(interpreter: str, path: str) -> str:
    """A virtual environment with this checkout installed; returns its twistd."""
    twistd = os.path.join(path, "bin", "twistd")
    python = os.path.join(path, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([interpreter, "-m", "venv", path], check=True)
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", ROOT],
        check=True,
    )
    subprocess.run([python, "-m", "pip", "install", "-q", ROOT], check=True)
    return twistd


def version_of(argv: List[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "?"


# ---------------------------------------------------------------------------
# The servers


class Backends:
    """Three nginx backends in one nginx process on CPU 1."""

    def __init__(self, workdir: str) -> None:
        self.ports = [free_port() for _ in range(3)]
        os.chmod(workdir, 0o755)  # nginx's workers are not root
        self.big_file = os.path.join(workdir, "big.bin")
        self.warm_file = os.path.join(workdir, "warm.bin")
        block = os.urandom(1 << 20)
        for path, size in ((self.big_file, BIG), (self.warm_file, BIG // 5)):
            with open(path, "wb") as f:
                for _ in range(size >> 20):
                    f.write(block)
            os.chmod(path, 0o644)
        servers = "\n".join(
            f"""
    server {{
        listen {HOST}:{port} reuseport;
        location = / {{ return 200 "{BODY}"; }}
        location = /big {{ alias {self.big_file}; }}
        location = /warm {{ alias {self.warm_file}; }}
        location = /upload {{ client_max_body_size 0; return 200 "{BODY}"; }}
    }}"""
            for port in self.ports
        )
        conf = os.path.join(workdir, "backends.conf")
        with open(conf, "w") as f:
            f.write(
                nginx_main(workdir, "backends")
                + f"""
http {{
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    default_type application/octet-stream;
    sendfile on;
    {servers}
}}
"""
            )
        self.proc = subprocess.Popen(["taskset", "-c", LOAD_CPU, "nginx", "-c", conf])
        for port in self.ports:
            wait_listening(port, self.proc)

    def stop(self) -> None:
        stop(self.proc)


def nginx_main(workdir: str, name: str) -> str:
    return f"""
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 65536;
pid {workdir}/{name}.pid;
error_log {workdir}/{name}.error.log error;
events {{ worker_connections 20000; }}
"""


def start_nginx_proxy(workdir: str, port: int, backends: List[int]) -> subprocess.Popen:
    upstream = "\n".join(f"        server {HOST}:{p};" for p in backends)
    conf = os.path.join(workdir, "nginx-proxy.conf")
    with open(conf, "w") as f:
        f.write(
            nginx_main(workdir, "nginx-proxy")
            + f"""
http {{
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering on;
    upstream backends {{
{upstream}
        keepalive 64;
    }}
    server {{
        listen {HOST}:{port};
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
        )
    return subprocess.Popen(["taskset", "-c", PROXY_CPU, "nginx", "-c", conf])


def start_haproxy(workdir: str, port: int, backends: List[int]) -> subprocess.Popen:
    servers = "\n".join(f"    server b{i} {HOST}:{p}" for i, p in enumerate(backends))
    conf = os.path.join(workdir, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(
            f"""
global
    nbthread 1
    maxconn {HAPROXY_MAXCONN}
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    option http-keep-alive
    http-reuse always
frontend front
    bind {HOST}:{port}
    default_backend pool
backend pool
    balance roundrobin
{servers}
"""
        )
    return subprocess.Popen(["taskset", "-c", PROXY_CPU, "haproxy", "-db", "-f", conf])


#: PyPy's garbage collector settings for lbproxy, as etc/lbproxy.service sets
#: them: a larger nursery makes collections rarer, which removes most of the
#: latency tail (p99) and raises throughput; the minimum heap keeps the heap
#: from growing to 8 nurseries before the first major collection.  CPython
#: ignores both.
LBPROXY_ENV = {"PYPY_GC_NURSERY": "96MB", "PYPY_GC_MIN": "192MB"}


def start_lbproxy(twistd: str, workdir: str, port: int, backends: List[int]) -> subprocess.Popen:
    conf = os.path.join(workdir, f"lbproxy-{port}.ini")
    servers = "\n".join(f"    http://{HOST}:{p}" for p in backends)
    with open(conf, "w") as f:
        f.write(
            f"[proxy]\nlisten = tcp:{port}:interface={HOST}:backlog=1024\n"
            "backend_keepalive_timeout = 60s\n"
            # Room for the 10,000 idle connections and the transfers after
            # them, and for the 300 MiB upload.
            "max_connections = 20000\nmax_body_size = 0\n"
            f"[pool:bench]\nalgorithm = round_robin\nservers =\n{servers}\n"
        )
    return subprocess.Popen(
        [
            "taskset",
            "-c",
            PROXY_CPU,
            twistd,
            "-n",
            "--pidfile=",
            "--logfile=/dev/null",
            "lbproxy",
            "--config",
            conf,
        ],
        cwd=workdir,
        env=dict(os.environ, **LBPROXY_ENV),
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------
# Measurements


def wrk(port: int, seconds: int, connections: int = 50) -> Dict[str, float]:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            LOAD_CPU,
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "--timeout",
            "10s",
            f"http://{HOST}:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    result: Dict[str, float] = {}
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    result["rps"] = float(match.group(1)) if match else 0.0
    for name, key in (("50%", "p50_ms"), ("99%", "p99_ms")):
        match = re.search(rf"^\s+{re.escape(name)}\s+([\d.]+)(us|ms|s)", out, re.M)
        if match:
            value = float(match.group(1))
            result[key] = value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
    errors = 0
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if match:
        errors += sum(int(g) for g in match.groups())
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if match:
        errors += int(match.group(1))
    result["errors"] = errors
    return result


def transfer(pid: int, argv: List[str]) -> Dict[str, float]:
    """Run one curl transfer; MiB/s and the RSS growth (peak over start) it caused."""
    before = memory_kib(pid, "VmRSS")
    peak_before = memory_kib(pid, "VmHWM")
    out = subprocess.run(
        [
            "taskset",
            "-c",
            LOAD_CPU,
            "curl",
            "--silent",
            "--show-error",
            "--max-time",
            "300",
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code} %{speed_download} %{speed_upload}",
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=330,
    )
    fields = out.stdout.split()
    if out.returncode != 0 or len(fields) != 3 or fields[0] != "200":
        return {"error": 1.0}
    speed = max(float(fields[1]), float(fields[2]))
    peak = max(memory_kib(pid, "VmHWM"), peak_before)
    return {"mib_s": speed / (1 << 20), "rss_growth_mib": max(0, peak - before) / 1024}


async def _hold_idle(port: int, count: int, batch: int) -> List[asyncio.StreamWriter]:
    writers: List[asyncio.StreamWriter] = []
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"

    async def one() -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length:\s*(\d+)", head)
        if length:
            await reader.readexactly(int(length.group(1)))
        writers.append(writer)

    for start in range(0, count, batch):
        await asyncio.wait_for(
            asyncio.gather(*(one() for _ in range(min(batch, count - start)))), 60
        )
    return writers


def idle_connections(pid: int, port: int, count: int) -> Dict[str, float]:
    """RSS per idle keep-alive client connection, in kB, after C{count} are open."""
    before = memory_kib(pid, "VmRSS")
    loop = asyncio.new_event_loop()
    try:
        writers = loop.run_until_complete(_hold_idle(port, count, 250))
        time.sleep(1.0)  # let the proxy settle before reading its memory
        after = memory_kib(pid, "VmRSS")
        for writer in writers:
            writer.close()
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
        return {"error": 1.0, "reason": str(e)}  # type: ignore[dict-item]
    finally:
        loop.close()
    return {"kb_each": (after - before) * 1.024 / count, "connections": count}


# ---------------------------------------------------------------------------


def run_proxy(name: str, start, args, backends: Backends, workdir: str) -> Dict[str, object]:  # type: ignore[no-untyped-def]
    port = free_port()
    proc = start(workdir, port, backends.ports)
    try:
        wait_listening(port, proc)
        log(f"== {name}: warm-up {args.warmup} s")
        wrk(port, args.warmup)
        log(f"== {name}: measured {args.duration} s")
        result: Dict[str, object] = dict(wrk(port, args.duration))
        result["peak_rss_mib"] = memory_kib(proc.pid, "VmHWM") / 1024
        if not args.quick:
            # Idle connections first: the transfers leave freed memory behind
            # that new connections would reuse, hiding their cost.
            log(f"== {name}: idle keep-alive connections, 300 MiB down, 300 MiB up")
            count = IDLE_CONNECTIONS if name != "haproxy" else HAPROXY_MAXCONN - 400
            result["idle"] = idle_connections(proc.pid, port, count)
            # A first, smaller transfer each way brings buffers (and PyPy's
            # JIT and heap) to their working size.
            transfer(proc.pid, [f"http://{HOST}:{port}/warm"])
            transfer(
                proc.pid,
                [
                    "-H",
                    "Expect:",
                    "--data-binary",
                    f"@{backends.warm_file}",
                    f"http://{HOST}:{port}/upload",
                ],
            )
            result["download"] = transfer(proc.pid, [f"http://{HOST}:{port}/big"])
            result["upload"] = transfer(
                proc.pid,
                [
                    "-H",
                    "Expect:",
                    "--data-binary",
                    f"@{backends.big_file}",
                    f"http://{HOST}:{port}/upload",
                ],
            )
        return result
    finally:
        stop(proc)


def table(results: Dict[str, Dict[str, object]]) -> str:
    base = results.get("nginx", {}).get("rps") or 0
    rows = [
        "| proxy | req/s | x nginx | p50 ms | p99 ms | errors | peak RSS MiB | "
        "down MiB/s (+RSS) | up MiB/s (+RSS) | idle conn kB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():

        def transfer_cell(key: str, r: Dict[str, object] = r) -> str:
            t = r.get(key)
            if not isinstance(t, dict):
                return "-"
            if "error" in t:
                return "failed"
            return f"{t['mib_s']:.0f} (+{t['rss_growth_mib']:.0f})"

        idle = r.get("idle")
        idle_cell = (
            "-"
            if not isinstance(idle, dict)
            else ("failed" if "error" in idle else f"{idle['kb_each']:.1f}")
        )
        ratio = f"{r['rps'] / base:.3f}" if base else "-"  # type: ignore[operator]
        rows.append(
            f"| {name} | {r['rps']:.0f} | {ratio} | {r.get('p50_ms', 0):.2f} | "
            f"{r.get('p99_ms', 0):.2f} | {r['errors']:.0f} | {r['peak_rss_mib']:.0f} | "
            f"{transfer_cell('download')} | {transfer_cell('upload')} | {idle_cell} |"
        )
    return "\n".join(rows)


def previous_result() -> Optional[dict]:
    files = sorted(glob.glob(os.path.join(RESULTS, "*.json")))
    if not files:
        return None
    with open(files[-1]) as f:
        return json.load(f)  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--install", action="store_true", help="apt-get install the missing tools (as root)"
    )
    parser.add_argument("--duration", type=int, default=15, help="seconds of each measured run")
    parser.add_argument("--warmup", type=int, default=10, help="seconds of each warm-up run")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="req/s and latency only: no transfers, no idle connections",
    )
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        choices=["nginx", "haproxy", "lbproxy-cpython", "lbproxy-pypy"],
    )
    args = parser.parse_args()

    missing = missing_tools()
    if missing and args.install:
        install(missing)
        missing = missing_tools()
    if missing:
        packages = " ".join(TOOLS[t] for t in missing)
        log(
            f"missing: {', '.join(missing)}; install with: apt-get install {packages} "
            "(or run with --install as root)"
        )
        return 1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:  # 10,000 idle connections need room on both sides (root may raise the cap)
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, max(hard, 65536)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    log("== preparing lbproxy (CPython in .venv, PyPy in .venv-pypy)")
    cpython = ensure_venv(sys.executable, os.path.join(ROOT, ".venv"))
    pypy = ensure_venv(shutil.which("pypy3") or "pypy3", os.path.join(ROOT, ".venv-pypy"))

    proxies = {
        "nginx": start_nginx_proxy,
        "haproxy": start_haproxy,
        "lbproxy-cpython": lambda w, p, b: start_lbproxy(cpython, w, p, b),
        "lbproxy-pypy": lambda w, p, b: start_lbproxy(pypy, w, p, b),
    }
    chosen = args.only or list(proxies)
    if "nginx" not in chosen:
        chosen.insert(0, "nginx")  # every ratio needs nginx from the same run
    results: Dict[str, Dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="lbproxy-bench-") as workdir:
        backends = Backends(workdir)
        try:
            for name in chosen:
                results[name] = run_proxy(name, proxies[name], args, backends, workdir)
        finally:
            backends.stop()

    base = results["nginx"]["rps"]
    for r in results.values():
        r["ratio_to_nginx"] = r["rps"] / base if base else None  # type: ignore[operator]
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": _cpu_model(),
            "kernel": platform.release(),
        },
        "versions": {
            "nginx": version_of(["nginx", "-v"]),
            "haproxy": version_of(["haproxy", "-v"]),
            "wrk": version_of(["wrk", "--version"]),
            "cpython": version_of([os.path.join(ROOT, ".venv", "bin", "python"), "--version"]),
            "pypy": version_of([os.path.join(ROOT, ".venv-pypy", "bin", "python"), "--version"]),
            "twisted (cpython)": version_of([cpython, "--version"]),
            "twisted (pypy)": version_of([pypy, "--version"]),
        },
        "settings": {
            "lbproxy_env": LBPROXY_ENV,
            "connections": 50,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "proxy_cpu": PROXY_CPU,
            "load_cpu": LOAD_CPU,
            "body_bytes": len(BODY),
        },
        "results": results,
    }
    before = previous_result()
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, record["date"].replace(":", "") + ".json")  # type: ignore[union-attr]
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    log("")
    log(table(results))
    log(f"\nwritten to {os.path.relpath(path, ROOT)}")
    if before:
        log(f"compared with {before['date']} (ratio to nginx):")
        for name, r in results.items():
            old = before["results"].get(name, {}).get("ratio_to_nginx")
            new = r.get("ratio_to_nginx")
            if old and new:
                log(f"  {name}: {old:.3f} -> {new:.3f}")
    return 0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


if __name__ == "__main__":
    sys.exit(main())
