"""
Demo backends: small HTTP servers that say who they are, so that a demo
configuration shows the balancing at once (C{twistd -n lbproxy --demo}).
"""

from __future__ import annotations

from typing import Any, List

from twisted.application import service, strports
from twisted.web import http, resource, server

from lbproxy.config import ProxyConfig


class DemoBackend(resource.Resource):
    """
    Answers every request with one line naming this backend.
    """

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def render(self, request: server.Request) -> bytes:
        body = f"Hello from demo backend {self.name}\n".encode()
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return b"" if request.method == b"HEAD" else body


class _QuietSite(server.Site):
    noisy = False

    def log(self, request: http.Request) -> None:
        pass


def check_demo(config: ProxyConfig) -> None:
    """
    Make sure the demo can serve every server of the configuration.

    @raises ValueError: A server is not on a loopback address or uses
        https, which the demo does not serve.
    """
    for pool in config.pools.values():
        for backend in pool.servers:
            if backend.scheme != "http" or backend.host not in ("127.0.0.1", "::1", "localhost"):
                raise ValueError(
                    f"--demo serves http:// servers on loopback only; "
                    f"[pool:{pool.name}] lists {backend.url}"
                )


def demo_services(config: ProxyConfig, reactor: Any = None) -> List[service.Service]:
    """
    One listener per server of the configuration's pools (see L{check_demo}).
    """
    check_demo(config)
    services: List[service.Service] = []
    for pool in config.pools.values():
        for backend in pool.servers:
            interface = backend.host.replace(":", r"\:")
            site = _QuietSite(DemoBackend(backend.name))
            description = f"tcp:{backend.port}:interface={interface}"
            services.append(strports.service(description, site, reactor=reactor))
    return services
