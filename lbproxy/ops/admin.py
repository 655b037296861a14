"""
The admin listener: what the proxy is doing, and a few things an operator
may change while it runs.

 - C{GET /}: the dashboard, one self-contained HTML page.
 - C{GET /status}: JSON of every pool and server.
 - C{GET /history[?since=SECOND]}: JSON of the last 15 minutes, second by
   second, and the servers' state changes (L{lbproxy.ops.history}).
 - C{GET /metrics}: Prometheus text format (L{lbproxy.ops.metrics}).
 - C{POST /pools/POOL/servers/SERVER/drain|enable|maint} and
   C{PUT /pools/POOL/servers/SERVER/weight} (body: a whole number).

Every write needs C{Authorization: Bearer TOKEN} when C{[admin] token} is
set.  A write from a web page of another origin (its C{Origin} header names
another host) is refused whatever the token, so that a page open in the
operator's browser cannot drain servers behind their back.  Without a token
(a loopback listener), every request must name the listener by an IP address
or C{localhost} in its C{Host} header: a web page that re-points its own
domain name at 127.0.0.1 (DNS rebinding) names its domain, and is refused.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from importlib import resources
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Tuple
from urllib.parse import unquote, urlsplit

import attr
from twisted.logger import Logger
from twisted.web import http, server
from twisted.web.resource import Resource

from lbproxy import __version__
from lbproxy.config import MAX_WEIGHT, ProxyConfig
from lbproxy.config.values import describe_address
from lbproxy.front.errors import api_error, error_response
from lbproxy.ops import metrics
from lbproxy.ops.history import history
from lbproxy.ops.snapshot import (
    PoolSnapshot,
    ProxySnapshot,
    ProxySource,
    ServerSnapshot,
    server_snapshot,
    snapshot,
)
from lbproxy.upstream.pool import Pool, ServerState

#: Largest request body the admin listener reads (a weight is a few bytes).
MAX_ADMIN_BODY = 1024

ACTIONS = ("drain", "enable", "maint")

log = Logger()


class Operated(ProxySource, Protocol):
    """
    What the admin listener reads and drives: the read model's source, the
    running configuration (for the C{[admin]} token) and the pools an
    operator acts on.
    """

    @property
    def config(self) -> ProxyConfig: ...

    @property
    def pools(self) -> Mapping[str, Pool]: ...


def _ms(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else round(seconds * 1000, 3)


def server_status(server: ServerSnapshot) -> Dict[str, Any]:
    """One server in C{/status} (and in the answer to a write action)."""
    return {
        "name": server.name,
        "url": server.url,
        "state": server.state,
        "backup": server.backup,
        "weight": server.weight,
        "effective_weight": server.effective_weight,
        "in_flight": server.in_flight,
        "max_connections": server.max_connections,
        "requests_served": server.served,
        "failed_attempts": server.failures,
        "failed_connects": server.connect_failures,
        "last_health_check": server.last_health_check,
        "requests_last_minute": server.requests_last_minute,
        "latency_ms": {"p50": _ms(server.p50), "p99": _ms(server.p99)},
    }


def pool_status(pool: PoolSnapshot) -> Dict[str, Any]:
    return {
        "name": pool.name,
        "algorithm": pool.algorithm,
        "takes_requests": pool.takes_requests,
        "queue_length": pool.queue_length,
        "retries_made": pool.retries,
        "servers": [server_status(s) for s in pool.servers],
    }


def status(taken: ProxySnapshot) -> Dict[str, Any]:
    """The C{/status} document of a snapshot."""
    document = {
        "version": __version__,
        "uptime_seconds": round(taken.uptime, 3),
        "config": taken.config_path,
        "client_connections": taken.client_connections,
        "reloads": dict(taken.reloads),
        "pools": [pool_status(pool) for pool in taken.pools],
    }
    if taken.workers:
        document["workers"] = [attr.asdict(worker) for worker in taken.workers]
    return document


class AdminResource(Resource):
    """The admin API and dashboard (see the module docstring)."""

    isLeaf = True

    def __init__(self, proxy: Operated, take: Optional[Callable[[], ProxySnapshot]] = None) -> None:
        super().__init__()
        self.proxy = proxy
        #: Takes the snapshot /status and /metrics render (a supervisor of
        #: worker processes passes one that sums the workers' counters).
        self.take: Callable[[], ProxySnapshot] = take or (lambda: snapshot(proxy))
        self._registry: Any = None

    def render(self, request: server.Request) -> bytes:  # type: ignore[override]
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        segments = [unquote(s.decode("utf-8", "replace")) for s in request.postpath or []]
        if segments and segments[-1] == "" and len(segments) > 1:
            segments.pop()
        method = request.method
        if not self._host_allowed(request):
            return _error(request, 403, "name this listener by its IP address or localhost")
        if segments in ([], [""]):
            return self._get_only(request, self._dashboard)
        if segments == ["status"]:
            return self._get_only(request, lambda r: _json(r, 200, status(self.take())))
        if segments == ["history"]:
            return self._get_only(request, self._history)
        if segments == ["metrics"]:
            return self._get_only(request, self._metrics)
        if len(segments) == 5 and segments[0] == "pools" and segments[2] == "servers":
            _, pool_name, _, server_name, action = segments
            if action in ACTIONS:
                allowed = b"POST"
            elif action == "weight":
                allowed = b"PUT"
            else:
                return _error(request, 404, "no such action (drain, enable, maint, weight)")
            if method != allowed:
                request.setHeader(b"Allow", allowed)
                return _error(request, 405, f"use {allowed.decode()}")
            refusal = self._refuse_write(request)
            if refusal is not None:
                log.warn(
                    "admin: {action} {pool}/{server} by {client} refused ({code})",
                    action=action,
                    pool=pool_name,
                    server=server_name,
                    client=describe_address(request.getClientAddress()),
                    code=request.code,
                )
                return refusal
            pool = self.proxy.pools.get(pool_name)
            if pool is None:
                return _error(request, 404, f"no pool {pool_name!r}")
            target = pool.by_name.get(server_name)
            if target is None:
                return _error(request, 404, f"no server {server_name!r} in pool {pool_name!r}")
            return self._act(request, pool, target, action)
        return _error(request, 404, "not found")

    def _host_allowed(self, request: server.Request) -> bool:
        """
        With a token, any C{Host}; without, an IP address or localhost only
        (see the module docstring).
        """
        admin = self.proxy.config.admin
        if admin is not None and admin.token is not None:
            return True
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        name = urlsplit(f"//{host}").hostname or ""
        if name == "localhost":
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    def _get_only(self, request: server.Request, answer: Any) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return _error(request, 405, "use GET")
        body: bytes = answer(request)
        return b"" if request.method == b"HEAD" else body

    def _refuse_write(self, request: server.Request) -> Optional[bytes]:
        origin = request.getHeader(b"origin")
        host = request.getHeader(b"host")
        if origin is not None and (
            host is None or urlsplit(origin.decode("latin-1")).netloc != host.decode("latin-1")
        ):
            # Another site's page, or an opaque origin ("null", which has no netloc).
            return _error(request, 403, "a write from another origin is refused")
        admin = self.proxy.config.admin
        token = admin.token if admin is not None else None
        if token is None:
            return None
        given = request.getHeader(b"authorization") or b""
        scheme, _, value = given.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(
            value.strip(), token.encode("ascii")
        ):
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="lbproxy"')
            return _error(request, 401, "a valid bearer token is required")
        return None

    def _act(self, request: server.Request, pool: Pool, target: ServerState, action: str) -> bytes:
        before = (target.state, target.base_weight)
        if action == "drain":
            pool.drain(target)
        elif action == "maint":
            pool.maintain(target)
        elif action == "enable":
            pool.enable(target)
        else:
            body = request.content.read() if request.content is not None else b""
            text = body.decode("ascii", "replace").strip()
            if not text.isdigit() or not 1 <= int(text) <= MAX_WEIGHT:
                return _error(
                    request, 400, f"the weight must be a whole number from 1 to {MAX_WEIGHT}"
                )
            if not pool.uses_weights:
                algorithm = pool.config.algorithm
                return _error(request, 409, f"pool uses {algorithm}, which ignores weights")
            pool.set_weight(target, int(text))
        self._audit(request, pool, target, action, before)
        return _json(request, 200, server_status(server_snapshot(target, self.proxy.seconds())))

    def _audit(
        self,
        request: server.Request,
        pool: Pool,
        target: ServerState,
        action: str,
        before: Tuple[str, int],
    ) -> None:
        """Log a write action: what, by whom, and what it changed."""
        admin = self.proxy.config.admin
        if action == "weight":
            change = f"weight {before[1]} -> {target.base_weight}"
        else:
            change = f"{before[0]} -> {target.state}"
        log.info(
            "admin: {action} {pool}/{server} by {client} {credential}: {change}",
            action=action,
            pool=pool.name,
            server=target.name,
            client=describe_address(request.getClientAddress()),
            credential="with the token"
            if admin is not None and admin.token is not None
            else "(no token configured)",
            change=change,
        )

    def _dashboard(self, request: server.Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"X-Frame-Options", b"DENY")
        request.setHeader(
            b"Content-Security-Policy",
            b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            b"connect-src 'self'; frame-ancestors 'none'",
        )
        return dashboard_page()

    def _history(self, request: server.Request) -> bytes:
        since: Optional[int] = None
        given = request.args.get(b"since") if request.args else None
        if given:
            text = given[0].decode("ascii", "replace")
            if not text.isdigit() or len(text) > 12:
                return _error(request, 400, "since must be a second (a whole number)")
            since = int(text)
        proxy = self.proxy
        # A supervisor's history is complete a little behind the clock.
        complete = getattr(proxy, "history_complete", None)
        answer = history(proxy.pools.values(), proxy.seconds(), proxy.started_at, since, complete)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(answer, separators=(",", ":")).encode("utf-8") + b"\n"

    def _metrics(self, request: server.Request) -> bytes:
        if self._registry is None:
            self._registry = metrics.registry(self.take)
        body, content_type = metrics.render(self._registry)
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        return body


def dashboard_page() -> bytes:
    return resources.files("lbproxy.ops").joinpath("dashboard.html").read_bytes()


def _json(request: server.Request, code: int, value: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(value, indent=1).encode("utf-8") + b"\n"


def _error(request: server.Request, code: int, message: str) -> bytes:
    return api_error(request, code, message)


class _AdminRequest(server.Request):
    """
    A request of the admin listener: a body over L{MAX_ADMIN_BODY} (or of
    unknown length) is answered 413 and the connection closed; the request
    is never handled.
    """

    _refused = False

    def gotLength(self, length: Optional[int]) -> None:
        if length is None or length > MAX_ADMIN_BODY:
            self._refused = True
            self.content = _Discard()  # type: ignore[assignment]
            transport = self.channel.transport
            if transport is not None:
                transport.write(
                    error_response(413, b"Content Too Large", b"admin request bodies are small")
                )
                transport.loseConnection()
            return
        super().gotLength(length)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self._refused:
            super().requestReceived(command, path, version)


class _Discard:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


class _AdminSite(server.Site):
    noisy = False
    displayTracebacks = False

    def log(self, request: http.Request) -> None:
        pass


def admin_site(proxy: Operated, take: Optional[Callable[[], ProxySnapshot]] = None) -> server.Site:
    return _AdminSite(AdminResource(proxy, take), requestFactory=_AdminRequest)


__all__: List[str] = ["AdminResource", "admin_site", "status"]
