"""
The lines of a pool's C{servers} key: a URL, then C{key=value} options and
C{backup}.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Dict, List, Tuple, Union
from urllib.parse import urlsplit

from lbproxy.config.dns import DnsEntry, is_dns_entry, parse_dns_entry
from lbproxy.config.errors import unknown
from lbproxy.config.model import ServerConfig
from lbproxy.config.values import parse_int

MAX_WEIGHT = 1000

#: The options a server line may carry (besides C{backup}).
SERVER_OPTIONS = ("weight", "name", "max_connections")

_SERVER_NAME = re.compile(r"^[A-Za-z0-9_.:\[\]-]+$")


def parse_server(line: str) -> Union[ServerConfig, DnsEntry]:
    """
    Parse one line of a C{servers} list: a URL (or a DNS entry, see
    L{lbproxy.config.dns}), then C{key=value} options.
    """
    url, *options = line.split()
    if is_dns_entry(url):
        return parse_dns_entry(url, *_server_options(url, options))
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url!r}: the URL must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{url!r}: the URL must not carry a user or password")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{url!r}: the URL names a server only: no path, query or fragment")
    host = parts.hostname
    if not host:
        raise ValueError(f"{url!r}: the URL has no host")
    try:
        host.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(
            f"{url!r}: the host must be ASCII (write an international name in its xn-- form)"
        ) from None
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: the port must be a number from 1 to 65535") from None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    if not 1 <= port <= 65535:
        raise ValueError(f"{url!r}: the port must be a number from 1 to 65535")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{url!r}: {host!r} is not a valid IPv6 address") from None
    shown_host = f"[{host}]" if ":" in host else host
    values, backup = _server_options(url, options)
    values.setdefault("weight", "1")
    values.setdefault("name", f"{shown_host}:{port}")
    if not _SERVER_NAME.match(values["name"]):
        raise ValueError(
            f"{url!r}: name must be made of letters, digits and -._:[], got {values['name']!r}"
        )
    return ServerConfig(
        url=url,
        scheme=parts.scheme,
        host=host,
        port=port,
        weight=int(values["weight"]),
        name=values["name"],
        max_connections=int(values["max_connections"]) if "max_connections" in values else None,
        backup=backup,
    )


def _server_options(url: str, options: List[str]) -> Tuple[Dict[str, str], bool]:
    """
    The options of a server line: C{key=value} texts (weight and
    max_connections checked) and whether C{backup} is among them.
    """
    values: Dict[str, str] = {}
    seen = set()
    backup = False
    for option in options:
        if option == "backup":
            if backup:
                raise ValueError(f"{url!r}: option 'backup' given twice")
            backup = True
            continue
        key, sep, value = option.partition("=")
        if not sep:
            raise ValueError(f"{url!r}: option {option!r} must be written key=value")
        if key not in SERVER_OPTIONS:
            choices = ["backup", "max_connections", "name", "weight"]
            raise ValueError(f"{url!r}: {unknown(f'option {key!r}', key, choices)}")
        if key in seen:
            raise ValueError(f"{url!r}: option {key!r} given twice")
        seen.add(key)
        values[key] = value
    if "weight" in values:
        try:
            values["weight"] = str(parse_int(1, MAX_WEIGHT)(values["weight"]))
        except ValueError as e:
            raise ValueError(f"{url!r}: weight {e}") from None
    if "max_connections" in values:
        try:
            values["max_connections"] = str(parse_int(1, 1_000_000)(values["max_connections"]))
        except ValueError as e:
            raise ValueError(f"{url!r}: max_connections {e}") from None
    return values, backup


def parse_servers(text: str) -> Tuple[Union[ServerConfig, DnsEntry], ...]:
    servers: List[Union[ServerConfig, DnsEntry]] = []
    names: Dict[str, int] = {}
    addresses: Dict[Tuple[str, str, int], int] = {}
    sources: Dict[str, int] = {}
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("needs at least one server, such as http://127.0.0.1:9001")
    for number, line in enumerate(lines, 1):
        try:
            server = parse_server(line)
        except ValueError as e:
            raise ValueError(f"line {number}: {e}") from None
        if isinstance(server, DnsEntry):
            if server.source in sources:
                raise ValueError(
                    f"line {number}: {server.source!r} is already listed on line "
                    f"{sources[server.source]}"
                )
            sources[server.source] = number
            servers.append(server)
            continue
        address = (server.scheme, server.host, server.port)
        if address in addresses:
            raise ValueError(
                f"line {number}: {server.url!r} is already listed on line {addresses[address]}"
            )
        if server.name in names:
            raise ValueError(
                f"line {number}: name {server.name!r} is already used on line {names[server.name]}"
            )
        addresses[address] = number
        names[server.name] = number
        servers.append(server)
    return tuple(servers)
