#!/usr/bin/env python3
"""
lbproxy against nginx, HAProxy and a plain aiohttp proxy, on this machine, in one run.

    python3 bench/bench.py [--install] [--duration 10] [--warmup 10] [--quick] [--only NAME ...]

Three nginx backends (each answers a 10-byte body) sit behind each proxy in
turn: nginx as a proxy, HAProxy, a streaming aiohttp (+uvloop) proxy written
for the bench (bench/peers/aiohttp_proxy.py, on CPython), and lbproxy on
CPython and on PyPy with every feature on (see LBPROXY_CONFIG), all balancing
round robin with keep-alive to the backends.  What routing and TLS cost:
lbproxy again on each interpreter through 100 routes with two header rules
(the -routes entries), and over a tls: listener (the -tls entries, nginx-tls
beside them), with the same load.  Each proxy runs alone on CPU 0
(taskset); wrk, the backends and this script share CPU 1.  Every proxy gets
the same warm-up run and then the same measured wrk run (50 connections).
Then every proxy gets the same paced run (bench/paced.py: a fixed rate of
requests, well below what any of them can serve, latency measured from when
each request was due, so without coordinated omission): its p50/p99 are the
proxy's own tail, which wrk's at full load cannot tell from the machine's.
Then a 300 MiB download and a 300 MiB upload go through each proxy, and
10,000 idle keep-alive client connections are opened to it.

Reported per proxy, cost first: CPU time of the proxy's process tree during
the measured run divided by the requests it served (µs per request), then
requests/s, p50 and p99 latency, peak RSS, the proxy's CPU use and the load
core's, errors, download and upload MiB/s with the RSS growth they caused,
and the RSS cost of an idle client connection.  The measured wrk run is
repeated in rounds (--rounds, 3 by default): after the first pass over every
proxy, each is started again for its warm-up and measured runs, in turn, and
the table shows the median round's figures with the lowest and highest CPU
per request beside them.  When the load core was
saturated, requests/s is a floor set by the load side and only CPU per
request compares (docs/performance.md).  Results go to
bench/results/<time>.json, and the run is compared with the previous one.

Everything runs on 127.0.0.1.  Only the standard library is used here;
lbproxy runs from the virtual environments .venv (CPython) and .venv-pypy
(PyPy), which are created when missing, and the aiohttp peer from
bench/.venv-peer, which --install creates.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import glob
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any, Callable, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
PEER = os.path.join(ROOT, "bench", "peers", "aiohttp_proxy.py")
PACED = os.path.join(ROOT, "bench", "paced.py")
PEER_VENV = os.path.join(ROOT, "bench", ".venv-peer")
PEER_PACKAGES = ["aiohttp", "uvloop"]
HOST = "127.0.0.1"
PROXY_CPU = "0"
LOAD_CPU = "1"
BODY = "0123456789"
BIG = 300 * 1024 * 1024
IDLE_CONNECTIONS = 10_000
CONNECTIONS = 50
#: The paced latency run (bench/paced.py): requests per second, the same for
#: every proxy and below what the slowest can serve on this machine (lbproxy
#: on CPython serves about 5,000 with wrk; 1,000 leave it most of its core).
PACED_RATE = 1000
#: The load core is saturated when it was busy this much of the measured run
#: (by anything: wrk, the backends, or other work on the machine).  Then the
#: proxy was not the bottleneck and its requests/s is a floor.
SATURATED_PCT = 90.0
TICK = os.sysconf("SC_CLK_TCK")
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
    "openssl": "openssl",
}


def log(text: str) -> None:
    print(text, flush=True)


def free_port() -> int:
    """
    A port nothing listens on, below the ephemeral range: other programs on a
    shared machine take ports from that range (port 0) all the time, and
    outgoing connections do too.
    """
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    for _ in range(1000):
        port = random.randrange(10_000, max(low, 10_001))
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def listening_ports(pids: List[int]) -> List[int]:
    """The TCP ports these processes listen on (IPv4), from /proc."""
    inodes = set()
    for p in pids:
        try:
            for fd in os.listdir(f"/proc/{p}/fd"):
                target = os.readlink(f"/proc/{p}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports = []
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def wait_listening(port: int, proc: subprocess.Popen, seconds: float = 30.0) -> None:
    """Wait until this process (or a child of it), not another program, listens on C{port}."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        if port in listening_ports(process_tree(proc.pid)):
            return
        time.sleep(0.05)
    raise RuntimeError(f"process {proc.pid} does not listen on {port} after {seconds} s")


def start_listening(
    start: Callable[[List[int]], subprocess.Popen], count: int = 1
) -> Tuple[subprocess.Popen, List[int]]:
    """
    Start a server with C{start(ports)} on C{count} free ports and wait until
    it listens on them; on a shared machine another program may take a port
    first, and then the server starts again on others (three tries).
    """
    for attempt in range(3):
        ports: List[int] = []
        while len(ports) < count:
            port = free_port()
            if port not in ports:
                ports.append(port)
        proc = start(ports)
        try:
            for port in ports:
                wait_listening(port, proc)
            return proc, ports
        except RuntimeError as e:
            stop(proc)
            if attempt == 2:
                raise
            log(f"   {e}; again on other ports")
    raise AssertionError("unreachable")


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


def cpu_seconds(pids: List[int]) -> float:
    """CPU time (user + system) of these processes and their reaped children."""
    ticks = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone: its time is in its parent's reaped-children fields
        # utime, stime, cutime, cstime (fields 14-17 of proc(5)).
        ticks += sum(int(v) for v in fields[11:15])
    return ticks / TICK


def core_ticks() -> Dict[str, Tuple[int, int]]:
    """Busy and total ticks of each CPU since boot, from /proc/stat."""
    cores: Dict[str, Tuple[int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            # user nice system idle iowait irq softirq steal (guest is in user).
            v = [int(x) for x in values[:8]]
            cores[name[3:]] = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7], sum(v))
    return cores


def busy_pct(
    before: Dict[str, Tuple[int, int]], after: Dict[str, Tuple[int, int]], cpu: str
) -> float:
    busy = after[cpu][0] - before[cpu][0]
    total = after[cpu][1] - before[cpu][1]
    return 100.0 * busy / total if total else 0.0


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


def peer_python(install: bool) -> Optional[str]:
    """The Python of bench/.venv-peer when aiohttp imports there (created with --install)."""
    python = os.path.join(PEER_VENV, "bin", "python")

    def ready() -> bool:
        if not os.path.exists(python):
            return False
        return subprocess.run([python, "-c", "import aiohttp"], capture_output=True).returncode == 0

    if not ready() and install:
        log(f"installing {' '.join(PEER_PACKAGES)} into {os.path.relpath(PEER_VENV, ROOT)}")
        subprocess.run([sys.executable, "-m", "venv", PEER_VENV], check=True)
        pip = [python, "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "aiohttp"], check=True)
        if subprocess.run([*pip, "uvloop"]).returncode != 0:
            log("uvloop did not install: the peer runs on asyncio's own loop")
    return python if ready() else None


def module_version(python: str, module: str) -> str:
    out = subprocess.run(
        [python, "-c", f"import {module}; print({module}.__version__)"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() if out.returncode == 0 else "not installed"


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
        os.chmod(workdir, 0o755)  # nginx's workers are not root
        self.big_file = os.path.join(workdir, "big.bin")
        self.warm_file = os.path.join(workdir, "warm.bin")
        block = os.urandom(1 << 20)
        for path, size in ((self.big_file, BIG), (self.warm_file, BIG // 5)):
            with open(path, "wb") as f:
                for _ in range(size >> 20):
                    f.write(block)
            os.chmod(path, 0o644)
        self.workdir = workdir
        self.proc, self.ports = start_listening(self._start, 3)

    def _start(self, ports: List[int]) -> subprocess.Popen:
        workdir = self.workdir
        servers = "\n".join(
            f"""
    server {{
        listen {HOST}:{port};
        location = / {{ return 200 "{BODY}"; }}
        location = /big {{ alias {self.big_file}; }}
        location = /warm {{ alias {self.warm_file}; }}
        # The whole body is read (into a file) before the answer, so an
        # upload measures 300 MiB through the proxy, not an early answer.
        location = /upload {{
            client_max_body_size 0;
            proxy_pass http://{HOST}:{port}/sink;
        }}
        location = /sink {{ client_max_body_size 0; return 200 "{BODY}"; }}
    }}"""
            for port in ports
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
    client_body_temp_path {workdir}/backends-body;
    proxy_temp_path {workdir}/backends-proxy;
    {servers}
}}
"""
            )
        return subprocess.Popen(["taskset", "-c", LOAD_CPU, "nginx", "-c", conf])

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


def start_nginx_proxy(
    workdir: str, port: int, backends: List[int], tls: bool = False
) -> subprocess.Popen:
    upstream = "\n".join(f"        server {HOST}:{p};" for p in backends)
    listen = f"{HOST}:{port}"
    if tls:
        cert, key = certificate_files(workdir)
        listen += f""" ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3"""
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
        listen {listen};
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
    # Alone on its port, as the other proxies are (it shares it by default).
    noreuseport
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
#: them: a nursery of 32 MB (the default, half the L2 cache, collects so
#: often that it costs a third of the throughput) and major collections from
#: 64 MB of old objects on (the default would be eight nurseries).  96MB and
#: 192MB, the settings before, cost the same CPU per request and peaked at
#: 360 MiB; these peak under 200 MiB (docs/performance.md, "Memory on
#: PyPy").  The major collection marks in 1 MB steps, one after each minor
#: collection, instead of in one pause of 30-40 ms, and starts at 1.4 times
#: what the last one left, so that what grows while it marks stays within
#: the same peak (docs/pypy-tail.md).  CPython ignores them.
LBPROXY_ENV = {
    "PYPY_GC_NURSERY": "32MB",
    "PYPY_GC_MIN": "64MB",
    "PYPY_GC_INCREMENT_STEP": "1MB",
    "PYPY_GC_MAJOR_COLLECT": "1.4",
}


#: lbproxy's configuration in the bench: every feature on, as a deployment
#: runs it.  The access log is written to a file (combined format, buffered),
#: active health checks run on every server (GET / every 2 s), the admin
#: listener (dashboard, /status, /metrics) is up, and every other key keeps
#: its default, as the demo's configuration does: weighted round robin (equal
#: weights, so a strict rotation), passive checks, retries, Via and
#: X-Request-ID.  Only two keys leave their defaults, for the parts of the
#: bench after the measured run: max_body_size = 0 for the 300 MiB upload and
#: max_connections = 20000 for the 10,000 idle connections and the transfers
#: after them.
LBPROXY_CONFIG = """\
[proxy]
listen = tcp:{port}:interface=127.0.0.1:backlog=1024
workers = {workers}
access_log = {access_log}
max_connections = 20000
max_body_size = 0

[admin]
listen = tcp:{admin_port}:interface=127.0.0.1

[pool:bench]
servers =
{servers}
health_check = GET /
"""


#: The admin port of each lbproxy started, by its proxy port.
ADMIN_PORTS: Dict[int, int] = {}

#: The number of worker processes of each lbproxy started, by its port.
WORKERS: Dict[int, int] = {}


#: The routes of the "-routes" entries: this many [route:NAME] sections
#: that the bench's requests (Host 127.0.0.1, path /) do not match, by host
#: (exact and wildcard), by path prefix, and by both, then the one that
#: matches them, with two header rules.
ROUTES = 100
#: The matching route, last in the file: every request goes through it and
#: pays for its two header rules (one on the request, one on the response).
ROUTE_MATCHING = """
[route:bench]
host = {host}
path = /
pool = bench
request_headers = set X-Real-IP {{client}}
response_headers = remove Server
"""


def lbproxy_routes(count: int = ROUTES) -> str:
    """C{count - 1} routes that do not match the bench's requests, then one that does."""
    sections = []
    for i in range(count - 1):
        match = (
            f"host = app{i}.example.com",
            f"host = *.site{i}.example.com",
            f"path = /api{i}",
            f"host = shop{i}.example.com\npath = /cart{i}",
        )[i % 4]
        sections.append(f"\n[route:r{i}]\n{match}\npool = bench\n")
    return "".join(sections) + ROUTE_MATCHING.format(host=HOST)


#: The "-tls" entries: the same listener as tls: with one [tls:NAME]
#: certificate (self-signed ECDSA P-256, made by certificate_files); wrk
#: keeps its connections open, so the measured run is the cost of requests on
#: established TLS connections, the handshakes are in the warm-up.
LBPROXY_TLS = """
[tls:bench]
cert = {cert}
key = {key}
default = yes
"""


def certificate_files(workdir: str) -> Tuple[str, str]:
    """A self-signed certificate for localhost and 127.0.0.1 and its key, made once."""
    cert = os.path.join(workdir, "bench-cert.pem")
    key = os.path.join(workdir, "bench-key.pem")
    if not os.path.exists(cert):
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "7",
                "-subj",
                "/CN=localhost",
                "-addext",
                f"subjectAltName=DNS:localhost,IP:{HOST}",
                "-keyout",
                key,
                "-out",
                cert,
            ],
            check=True,
            capture_output=True,
        )
    return cert, key


def start_lbproxy(
    twistd: str,
    workdir: str,
    port: int,
    backends: List[int],
    variant: str = "",
    workers: int = 1,
    cpus: str = PROXY_CPU,
) -> subprocess.Popen:
    """
    lbproxy with LBPROXY_CONFIG; C{variant} "routes" adds the ROUTES routes,
    "tls" makes its listener tls: with the bench's certificate.  C{cpus}:
    the CPUs of its process tree (taskset's list; bench/ab.py's --cpus).
    """
    conf = os.path.join(workdir, f"lbproxy-{port}.ini")
    admin_port = ADMIN_PORTS[port] = free_port()
    WORKERS[port] = workers
    text = LBPROXY_CONFIG.format(
        port=port,
        workers=workers,
        admin_port=admin_port,
        access_log=os.path.join(workdir, f"access-{port}.log"),
        servers="\n".join(f"    http://{HOST}:{p}" for p in backends),
    )
    if variant == "routes":
        text += lbproxy_routes()
    elif variant == "tls":
        assert "\nlisten = tcp:" in text
        text = text.replace("\nlisten = tcp:", "\nlisten = tls:", 1)
        cert, key = certificate_files(workdir)
        text += LBPROXY_TLS.format(cert=cert, key=key)
    with open(conf, "w") as f:
        f.write(text)
    return subprocess.Popen(
        [
            "taskset",
            "-c",
            cpus,
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


def start_peer(python: str, workdir: str, port: int, backends: List[int]) -> subprocess.Popen:
    return subprocess.Popen(
        [
            "taskset",
            "-c",
            PROXY_CPU,
            python,
            PEER,
            str(port),
            *(f"http://{HOST}:{p}" for p in backends),
        ],
        cwd=workdir,
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


def wrk(
    port: int, seconds: int, connections: int = CONNECTIONS, scheme: str = "http"
) -> Dict[str, float]:
    """One wrk run: requests, rate, latency, errors, and wrk's own CPU time."""
    proc = subprocess.Popen(
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
            f"{scheme}://{HOST}:{port}/",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Reap wrk ourselves: wait4 gives its CPU time, which /proc no longer has
    # once it has exited.  Its output is a few lines, well within a pipe.
    deadline = time.monotonic() + seconds + 60
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}: {err.strip()}")
    result: Dict[str, float] = {"wrk_cpu_s": usage.ru_utime + usage.ru_stime}
    match = re.search(r"(\d+) requests in", out)
    result["requests"] = int(match.group(1)) if match else 0
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


def paced(port: int, rate: float, seconds: int, scheme: str = "http") -> Dict[str, object]:
    """
    Latency at a fixed rate, without coordinated omission (bench/paced.py,
    on the load core, over CONNECTIONS keep-alive connections): p50, p90,
    p99, p99.9 and max from when each request was due, the requests due,
    answered and failed, and the client's own lateness.
    """
    out = subprocess.run(
        [
            "taskset",
            "-c",
            LOAD_CPU,
            sys.executable,
            PACED,
            f"{scheme}://{HOST}:{port}/",
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
            "--connections",
            str(CONNECTIONS),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def measured_run(
    port: int, seconds: int, proxy: List[int], load: List[int], scheme: str = "http"
) -> Dict[str, object]:
    """
    The measured wrk run, with what it cost: CPU time of the proxy's process
    tree (C{proxy}) over the run, per request served; the share of its core
    the proxy used; and how busy the load core was (wrk, the backends' tree
    C{load}, and the whole core as the kernel counts it, other work included).
    """
    cores = core_ticks()
    proxy_cpu, load_cpu = cpu_seconds(proxy), cpu_seconds(load)
    start = time.monotonic()
    run = wrk(port, seconds, scheme=scheme)
    wall = time.monotonic() - start
    proxy_cpu = cpu_seconds(proxy) - proxy_cpu
    load_cpu = cpu_seconds(load) - load_cpu
    cores_after = core_ticks()
    requests = run["requests"]
    result: Dict[str, object] = {
        "cpu_us_per_request": 1e6 * proxy_cpu / requests if requests else None,
        "requests": requests,
        "rps": run["rps"],
        "p50_ms": run.get("p50_ms"),
        "p99_ms": run.get("p99_ms"),
        "errors": run["errors"],
        "proxy_cpu_s": round(proxy_cpu, 2),
        "proxy_cpu_pct": 100.0 * proxy_cpu / wall,
        "proxy_core_busy_pct": busy_pct(cores, cores_after, PROXY_CPU),
        "wrk_cpu_pct": 100.0 * run["wrk_cpu_s"] / wall,
        "backends_cpu_pct": 100.0 * load_cpu / wall,
        "load_core_busy_pct": busy_pct(cores, cores_after, LOAD_CPU),
        "wall_s": round(wall, 2),
    }
    result["load_saturated"] = result["load_core_busy_pct"] >= SATURATED_PCT  # type: ignore[operator]
    return result


def wait_workers(port: int, seconds: float = 60.0) -> None:
    """
    With worker processes: wait until every worker serves (the supervisor's
    /status lists it: a worker publishes its counters as it starts serving).
    The supervisor listens before its workers have started, and on the
    proxy's one core two PyPy workers take seconds to start: without the
    wait, their start-up would eat into the warm-up (the JIT's, which each
    worker does on its own).
    """
    count = WORKERS.get(port, 1)
    if count < 2 or port not in ADMIN_PORTS:
        return
    deadline = time.monotonic() + seconds
    url = f"http://{HOST}:{ADMIN_PORTS[port]}/status"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if len(json.load(answer).get("workers") or []) >= count:
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the {count} workers on port {port} are not serving after {seconds} s")


def worker_spread(admin_port: int) -> Dict[str, object]:
    """
    With worker processes: each worker's share of the requests served so far
    (warm-up and measured run; wrk's connections are kept alive, so the
    share of requests is the share of connections' work), from /status.
    """
    time.sleep(0.5)  # workers publish their counters every 0.25 s
    with urllib.request.urlopen(f"http://{HOST}:{admin_port}/status", timeout=10) as answer:
        document = json.load(answer)
    workers = document.get("workers") or []
    total = sum(w["requests"] for w in workers)
    if len(workers) < 2 or not total:
        return {}
    shares = [round(100.0 * w["requests"] / total, 1) for w in workers]
    return {"worker_request_pct": shares, "max_worker_pct": max(shares)}


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
            "--insecure",  # the bench's own self-signed certificate on https
            # HTTP/1.1 everywhere, as the nginx-tls listener speaks
            # it; and curl before 8.1 (Debian 12's 7.88.1) stalls on an
            # HTTP/2 upload answered before its end (nginx with http2 too).
            "--http1.1",
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


async def _hold_idle(
    port: int, count: int, batch: int, tls: Optional[ssl.SSLContext] = None
) -> List[asyncio.StreamWriter]:
    writers: List[asyncio.StreamWriter] = []
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"

    async def one() -> None:
        reader, writer = await asyncio.open_connection(HOST, port, ssl=tls)
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


def idle_connections(pid: int, port: int, count: int, scheme: str = "http") -> Dict[str, float]:
    """RSS per idle keep-alive client connection, in kB, after C{count} are open."""
    before = memory_kib(pid, "VmRSS")
    loop = asyncio.new_event_loop()
    try:
        tls = None
        if scheme == "https":  # the bench's own self-signed certificate
            tls = ssl.create_default_context()
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
        writers = loop.run_until_complete(_hold_idle(port, count, 250, tls))
        time.sleep(1.0)  # let the proxy settle before reading its memory
        after = memory_kib(pid, "VmRSS")
        for writer in writers:
            writer.close()
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
        return {"error": 1.0, "reason": str(e)}  # type: ignore[dict-item]
    finally:
        loop.close()
    return {"kb_each": (after - before) * 1.024 / count, "connections": count}


def tls_session(port: int) -> Dict[str, object]:
    """The protocol and cipher this machine's OpenSSL (as wrk's) agrees with the proxy."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((HOST, port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                cipher = tls.cipher()
                return {"version": tls.version(), "cipher": cipher[0] if cipher else None}
    except (OSError, ssl.SSLError) as e:
        return {"error": str(e)}


# ---------------------------------------------------------------------------


#: The figures of the measured wrk run, taken from the median round.
MEASURED = (
    "cpu_us_per_request",
    "requests",
    "rps",
    "p50_ms",
    "p99_ms",
    "proxy_cpu_s",
    "proxy_cpu_pct",
    "proxy_core_busy_pct",
    "wrk_cpu_pct",
    "backends_cpu_pct",
    "load_core_busy_pct",
    "wall_s",
    "load_saturated",
)


def run_proxy(  # type: ignore[no-untyped-def]
    name: str, start, args, backends: Backends, workdir: str, only_measured: bool = False
) -> Dict[str, object]:
    """
    Everything measured of one proxy, in a process of its own; with
    C{only_measured}, only its warm-up and measured wrk runs (a later round).
    """
    proc, (port,) = start_listening(lambda ports: start(workdir, ports[0], backends.ports))
    scheme = "https" if name.endswith("-tls") else "http"
    base = f"{scheme}://{HOST}:{port}"
    try:
        wait_workers(port)
        log(f"== {name}: warm-up {args.warmup} s")
        wrk(port, args.warmup, scheme=scheme)
        log(f"== {name}: measured {args.duration} s")
        tree = process_tree(proc.pid)
        result = measured_run(
            port, args.duration, tree, process_tree(backends.proc.pid), scheme=scheme
        )
        if only_measured:
            log(f"   {result['cpu_us_per_request'] or 0:.1f} us/request, {result['rps']:.0f} req/s")
            return result
        if scheme == "https":
            result["tls"] = tls_session(port)
        # The sum of each process's high-water mark: the tree's peak so far
        # (exact for one process; nginx's master adds its own small peak).
        result["peak_rss_mib"] = memory_kib(proc.pid, "VmHWM") / 1024
        if port in ADMIN_PORTS:
            result.update(worker_spread(ADMIN_PORTS[port]))
            if "worker_request_pct" in result:
                log(f"   requests per worker (%): {result['worker_request_pct']}")
        access_log = os.path.join(workdir, f"access-{port}.log")
        if os.path.exists(access_log):  # lbproxy's, evidence that it was on
            time.sleep(1.5)  # written at least once a second
            with open(access_log, "rb") as f:
                result["access_log_lines"] = sum(1 for _ in f)
        if args.paced_rate > 0:
            # After the access log count and the peak RSS, which stay the
            # wrk run's.
            log(f"== {name}: paced {args.paced_rate} req/s for {args.duration} s")
            # The proxy's CPU per request at this rate too: every proxy (and
            # 1 process against 2 workers) doing the same work per second,
            # none of them saturated, so no one's figure is helped by a busy
            # event loop taking many requests per wake-up.
            paced_cpu = cpu_seconds(tree)
            p: Dict[str, Any] = paced(port, args.paced_rate, args.duration, scheme)
            result["paced"] = p
            paced_cpu = cpu_seconds(tree) - paced_cpu
            if "error" not in p:
                # The warm-up's requests (bench/paced.py --warmup) took CPU too.
                answered = int(p["answered"]) + int(p.get("warmup_answered", 0))
                p["cpu_us_per_request"] = 1e6 * paced_cpu / answered if answered else None
                log(
                    f"   paced p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms,"
                    f" p99.9 {p['p999_ms']} ms, max {p['max_ms']} ms, errors {p['errors']}"
                    f" (client lag p99 {p['client_lag_p99_ms']} ms),"
                    f" {p['cpu_us_per_request'] or 0:.1f} us/request"
                )
                if p["most_waiting"] > CONNECTIONS:
                    log(
                        f"   the proxy did not keep up with {args.paced_rate} req/s here"
                        f" ({p['most_waiting']} requests waited at once): queueing, not its tail"
                    )
        log(
            f"   {result['cpu_us_per_request'] or 0:.1f} us/request, {result['rps']:.0f} req/s,"
            f" proxy CPU {result['proxy_cpu_pct']:.0f}%,"
            f" load core {result['load_core_busy_pct']:.0f}% busy"
            f" (wrk {result['wrk_cpu_pct']:.0f}%, backends {result['backends_cpu_pct']:.0f}%)"
        )
        if not args.quick:
            # Idle connections first: the transfers leave freed memory behind
            # that new connections would reuse, hiding their cost.
            log(f"== {name}: idle keep-alive connections, 300 MiB down, 300 MiB up")
            count = IDLE_CONNECTIONS if name != "haproxy" else HAPROXY_MAXCONN - 400
            result["idle"] = idle_connections(proc.pid, port, count, scheme)
            # A first, smaller transfer each way brings buffers (and PyPy's
            # JIT and heap) to their working size.
            transfer(proc.pid, [f"{base}/warm"])
            transfer(
                proc.pid,
                [
                    "-H",
                    "Expect:",
                    "--data-binary",
                    f"@{backends.warm_file}",
                    f"{base}/upload",
                ],
            )
            result["download"] = transfer(proc.pid, [f"{base}/big"])
            result["upload"] = transfer(
                proc.pid,
                [
                    "-H",
                    "Expect:",
                    "--data-binary",
                    f"@{backends.big_file}",
                    f"{base}/upload",
                ],
            )
        return result
    finally:
        stop(proc)


NAMES = {
    "nginx": "nginx (1 worker)",
    "haproxy": "HAProxy (1 thread)",
    "aiohttp-peer": "aiohttp + uvloop, CPython",
    "lbproxy-cpython": "lbproxy, CPython",
    "lbproxy-pypy": "lbproxy, PyPy",
    "lbproxy-cpython-2w": "lbproxy, CPython, 2 workers",
    "lbproxy-pypy-2w": "lbproxy, PyPy, 2 workers",
    # What routing and TLS cost: the same load through ROUTES routes with two
    # header rules, and over TLS (docs/performance.md).
    "nginx-tls": "nginx (1 worker), TLS",
    "lbproxy-cpython-routes": f"lbproxy, CPython, {ROUTES} routes",
    "lbproxy-cpython-tls": "lbproxy, CPython, TLS",
    "lbproxy-pypy-routes": f"lbproxy, PyPy, {ROUTES} routes",
    "lbproxy-pypy-tls": "lbproxy, PyPy, TLS",
}


def take_median_round(result: Dict[str, Any], later: List[Dict[str, Any]]) -> None:
    """
    Put the measured run of the round with the median CPU per request into
    C{result} (the first round's, which also holds the paced run, the
    transfers and the idle connections), every round's figures under
    C{"rounds"} and the errors of all of them under C{"errors"}.
    """
    rounds = [{k: result.get(k) for k in MEASURED + ("errors",)}] + [
        {k: r.get(k) for k in MEASURED + ("errors",)} for r in later
    ]
    costs = sorted(rounds, key=lambda r: r["cpu_us_per_request"] or float("inf"))
    median = costs[(len(costs) - 1) // 2]
    result.update({k: median[k] for k in MEASURED})
    result["errors"] = sum(r["errors"] or 0 for r in rounds)
    result["rounds"] = rounds
    known = [r["cpu_us_per_request"] for r in rounds if r["cpu_us_per_request"]]
    if known:
        result["cpu_us_per_request_range"] = [min(known), max(known)]


def table(results: Dict[str, Dict[str, object]]) -> str:
    rows = [
        "| proxy | CPU µs/request | req/s | p50 ms | p99 ms | peak RSS MiB | "
        "proxy CPU % (its core busy %) | load core busy % (wrk, backends) | errors | "
        "300 MiB down MiB/s (RSS growth) | 300 MiB up MiB/s (RSS growth) | idle connection kB |"
        " paced p50 / p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():

        def transfer_cell(key: str, r: Dict[str, object] = r) -> str:
            t = r.get(key)
            if not isinstance(t, dict):
                return "-"
            if "error" in t:
                return "failed"
            return f"{t['mib_s']:.0f} (+{t['rss_growth_mib']:.0f})"

        def number(key: str, form: str, r: Dict[str, object] = r) -> str:
            value = r.get(key)
            return "-" if value is None else format(value, form)

        idle = r.get("idle")
        idle_cell = (
            "-"
            if not isinstance(idle, dict)
            else ("failed" if "error" in idle else f"{idle['kb_each']:.1f}")
        )
        floor = "≥ " if r.get("load_saturated") else ""
        p = r.get("paced")
        paced_cell = (
            "-"
            if not isinstance(p, dict)
            else ("failed" if "error" in p else f"{p['p50_ms']:.2f} / {p['p99_ms']:.2f}")
        )
        spread = r.get("cpu_us_per_request_range")
        cpu_cell = number("cpu_us_per_request", ".0f") + (
            f" ({spread[0]:.0f}-{spread[1]:.0f})" if isinstance(spread, list) else ""
        )
        rows.append(
            f"| {NAMES.get(name, name)} | {cpu_cell} | "
            f"{floor}{r['rps']:.0f} | {number('p50_ms', '.2f')} | {number('p99_ms', '.2f')} | "
            f"{r['peak_rss_mib']:.0f} | {number('proxy_cpu_pct', '.0f')} "
            f"({number('proxy_core_busy_pct', '.0f')}) | "
            f"{number('load_core_busy_pct', '.0f')} ({number('wrk_cpu_pct', '.0f')}, "
            f"{number('backends_cpu_pct', '.0f')}) | "
            f"{r['errors']:.0f} | {transfer_cell('download')} | {transfer_cell('upload')} | "
            f"{idle_cell} | {paced_cell} |"
        )
    if any(r.get("load_saturated") for r in results.values()):
        rows.append(
            f"\n≥: the load core was at least {SATURATED_PCT:.0f}% busy, so that req/s is a"
            " floor set by the load side, not the proxy's limit; compare CPU per request."
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
        "--install",
        action="store_true",
        help="apt-get install the missing tools (as root) and pip install the aiohttp peer"
        " into bench/.venv-peer",
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds of each measured run")
    parser.add_argument("--warmup", type=int, default=10, help="seconds of each warm-up run")
    parser.add_argument(
        "--paced-rate",
        type=int,
        default=PACED_RATE,
        help="requests/s of the paced latency run (bench/paced.py), as long as the measured"
        " run; 0: none",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="req/s and latency only: no transfers, no idle connections",
    )
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        choices=list(NAMES),
        help="run only these (default: all); the -routes and -tls entries measure what"
        " routing and TLS cost",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="measured wrk runs of each proxy, in turn: after the first pass over every"
        " proxy, each is started again for a warm-up and a measured run, this many times"
        " in all; the table shows the median round's figures",
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

    chosen = args.only or list(NAMES)
    peer = peer_python(args.install)
    if peer is None and "aiohttp-peer" in chosen:
        log(
            f"missing: aiohttp in {os.path.relpath(PEER_VENV, ROOT)}; run with --install"
            " (or leave the peer out with --only)"
        )
        return 1
    log("== preparing lbproxy (CPython in .venv, PyPy in .venv-pypy)")
    cpython = ensure_venv(sys.executable, os.path.join(ROOT, ".venv"))
    pypy = ensure_venv(shutil.which("pypy3") or "pypy3", os.path.join(ROOT, ".venv-pypy"))
    # This script samples /proc and opens the idle connections: it belongs
    # with the load, off the proxy's core.
    os.sched_setaffinity(0, {int(LOAD_CPU)})

    proxies = {
        "nginx": start_nginx_proxy,
        "haproxy": start_haproxy,
        "aiohttp-peer": lambda w, p, b: start_peer(peer or "python3", w, p, b),
        "lbproxy-cpython": lambda w, p, b: start_lbproxy(cpython, w, p, b),
        "lbproxy-pypy": lambda w, p, b: start_lbproxy(pypy, w, p, b),
        "lbproxy-cpython-2w": lambda w, p, b: start_lbproxy(cpython, w, p, b, workers=2),
        "lbproxy-pypy-2w": lambda w, p, b: start_lbproxy(pypy, w, p, b, workers=2),
        "nginx-tls": lambda w, p, b: start_nginx_proxy(w, p, b, tls=True),
        "lbproxy-cpython-routes": lambda w, p, b: start_lbproxy(cpython, w, p, b, "routes"),
        "lbproxy-cpython-tls": lambda w, p, b: start_lbproxy(cpython, w, p, b, "tls"),
        "lbproxy-pypy-routes": lambda w, p, b: start_lbproxy(pypy, w, p, b, "routes"),
        "lbproxy-pypy-tls": lambda w, p, b: start_lbproxy(pypy, w, p, b, "tls"),
    }
    load_before = os.getloadavg()
    results: Dict[str, Dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="lbproxy-bench-") as workdir:
        backends = Backends(workdir)
        try:
            for name in chosen:
                results[name] = run_proxy(name, proxies[name], args, backends, workdir)
            # Later rounds in turn, so that a slow spell of the machine
            # falls on one round of each proxy, not on all of one proxy's.
            later: Dict[str, List[Dict[str, object]]] = {name: [] for name in chosen}
            for round_ in range(2, args.rounds + 1):
                log(f"== round {round_} of {args.rounds}")
                for name in chosen:
                    later[name].append(
                        run_proxy(name, proxies[name], args, backends, workdir, only_measured=True)
                    )
            if args.rounds > 1:
                for name in chosen:
                    take_median_round(results[name], later[name])  # type: ignore[arg-type]
        finally:
            backends.stop()

    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    record = {
        "date": date,
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": _cpu_model(),
            "kernel": platform.release(),
            # Other work on the machine: the 1-minute load average when the
            # run started and when it ended.
            "load_average_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        },
        "versions": {
            "nginx": version_of(["nginx", "-v"]),
            "haproxy": version_of(["haproxy", "-v"]),
            "wrk": version_of(["wrk", "--version"]),
            "openssl": version_of(["openssl", "version"]),
            "cpython": version_of([os.path.join(ROOT, ".venv", "bin", "python"), "--version"]),
            "pypy": version_of([os.path.join(ROOT, ".venv-pypy", "bin", "python"), "--version"]),
            "twisted (cpython)": version_of([cpython, "--version"]),
            "twisted (pypy)": version_of([pypy, "--version"]),
            "peer aiohttp": module_version(peer, "aiohttp") if peer else "not installed",
            "peer uvloop": module_version(peer, "uvloop") if peer else "not installed",
        },
        "settings": {
            "lbproxy_env": LBPROXY_ENV,
            "lbproxy_config": LBPROXY_CONFIG,
            # The "-routes" entries add lbproxy_routes(), the "-tls" ones
            # listen on tls: with LBPROXY_TLS (nginx-tls: the same files).
            "lbproxy_routes": ROUTES,
            "lbproxy_route_matching": ROUTE_MATCHING.format(host=HOST),
            "lbproxy_tls": LBPROXY_TLS,
            "tls_certificate": "self-signed, ECDSA P-256 (openssl req -x509)",
            "connections": CONNECTIONS,
            "paced_rate": args.paced_rate,
            "saturated_pct": SATURATED_PCT,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "proxy_cpu": PROXY_CPU,
            "load_cpu": LOAD_CPU,
            "body_bytes": len(BODY),
            "quick": args.quick,
            "rounds": args.rounds,
        },
        "results": results,
    }
    before = previous_result()
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, date.replace(":", "") + ".json")
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    log("")
    log(table(results))
    log(f"\nwritten to {os.path.relpath(path, ROOT)}")
    if before:
        log(f"compared with {before['date']} (CPU µs per request):")
        for name, r in results.items():
            old = before["results"].get(name, {}).get("cpu_us_per_request")
            new = r.get("cpu_us_per_request")
            if old and new:
                log(f"  {name}: {old:.0f} -> {new:.0f}")
            elif new:
                log(f"  {name}: {new:.0f} (none before)")
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
