"""
DNS service discovery, the pure half: the C{dns://} and C{dns+srv://} lines
of a C{servers} list, the C{[proxy] resolver} key, and the rules that turn
what a DNS answer names (L{Found}) into servers (L{ServerConfig}).

No reactor and no twisted.names here: L{lbproxy.config} imports this module.
The lookups themselves are L{lbproxy.upstream.discovery}'s job.
"""

from __future__ import annotations

import ipaddress
import re
from typing import List, Mapping, Optional, Sequence, Tuple

import attr

__all__ = [
    "ADDRESS",
    "SRV",
    "DnsEntry",
    "Found",
    "MAX_SERVERS",
    "is_dns_entry",
    "parse_dns_entry",
    "parse_resolver",
    "resolv_conf_nameservers",
]

#: The kinds of entry: SRV records, or A and AAAA records.
SRV = "dns+srv"
ADDRESS = "dns"

#: Servers one entry may name; records beyond are left out (and logged).
MAX_SERVERS = 256

#: Name servers the C{resolver} key may list.
MAX_RESOLVERS = 8

_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


@attr.s(frozen=True, slots=True, auto_attribs=True)
class DnsEntry:
    """
    A line of a C{servers} list whose servers are found in DNS.

    @ivar source: The entry as it is looked up and shown in logs, e.g.
        C{dns+srv://_http._tcp.app.service.consul} or
        C{dns://app.internal:8000}; two lines with the same source are one.
    @ivar kind: L{SRV} or L{ADDRESS}.
    @ivar name: The DNS name queried, lower case, without a final dot.
    @ivar port: The servers' port (L{ADDRESS}); 0 for L{SRV}, whose records
        carry their ports.
    @ivar weight: The C{weight=} option: every server's weight; L{None} for
        the records' weights (L{SRV}) or 1 (L{ADDRESS}).
    @ivar max_connections: The C{max_connections=} option, for each server.
    @ivar backup: The C{backup} option: every server found is a backup.
    """

    source: str
    kind: str
    name: str
    port: int = 0
    weight: Optional[int] = None
    max_connections: Optional[int] = None
    backup: bool = False


@attr.s(frozen=True, slots=True, auto_attribs=True, order=True)
class Found:
    """
    One server a DNS answer names.

    @ivar address: The IPv4 or IPv6 address to connect to.
    @ivar port: Its port.
    @ivar target: The SRV record's target (L{None} for an A or AAAA record).
    @ivar priority: The SRV record's priority (lower is preferred).
    @ivar weight: The SRV record's weight.
    """

    priority: int
    target: Optional[str]
    port: int
    address: str
    weight: int = 0


def is_dns_entry(line: str) -> bool:
    """Whether a line of a C{servers} list is a DNS entry rather than a URL."""
    return line.startswith((f"{SRV}://", f"{ADDRESS}://"))


def check_dns_name(name: str) -> str:
    """
    A DNS name as written, lower case and without its final dot; raises
    C{ValueError} when it is not one (labels of letters, digits, C{-} and
    C{_}, at most 63 characters each, 253 in all).
    """
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{name!r} is not a DNS name")
    return name


def parse_dns_entry(line: str, options: Mapping[str, str], backup: bool) -> DnsEntry:
    """
    Parse the URL of a DNS entry, C{dns+srv://NAME} or C{dns://NAME[:PORT]},
    with its options already split (C{weight}, C{max_connections} as text).

    @raises ValueError: With the end of the error line.
    """
    kind, _, rest = line.partition("://")
    if "name" in options:
        raise ValueError(
            f"{line!r}: option 'name' cannot be given to a DNS entry: its servers "
            f"are named after what DNS answers (target:port, or address:port)"
        )
    if any(c in rest for c in "/?#@[]"):
        raise ValueError(f"{line!r}: a DNS entry names a host only: no path, user or brackets")
    host, sep, port_text = rest.partition(":")
    port = 0
    if kind == SRV:
        if sep:
            raise ValueError(f"{line!r}: SRV records carry the port: write no port")
    elif sep:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"{line!r}: the port must be a number from 1 to 65535")
        port = int(port_text)
    else:
        port = 80
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        raise ValueError(f"{line!r}: an address needs no DNS: write http://{host}:{port or 80}")
    try:
        name = check_dns_name(host)
    except ValueError as e:
        raise ValueError(f"{line!r}: {e}") from None
    source = f"{kind}://{name}" + (f":{port}" if kind == ADDRESS else "")
    weight = int(options["weight"]) if "weight" in options else None
    limit = options.get("max_connections")
    return DnsEntry(
        source=source,
        kind=kind,
        name=name,
        port=port,
        weight=weight,
        max_connections=int(limit) if limit is not None else None,
        backup=backup,
    )


def parse_resolver(text: str) -> Optional[Tuple[Tuple[str, int], ...]]:
    """
    The C{[proxy] resolver} key: C{system} (L{None}: the name servers of
    C{/etc/resolv.conf}), or name server addresses separated by spaces or
    lines, each an IP address with an optional port: C{10.0.0.2},
    C{127.0.0.1:8600}, C{[::1]:53}.
    """
    words = text.split()
    if words == ["system"]:
        return None
    if not words:
        raise ValueError("must be system, or addresses such as 127.0.0.1:8600")
    if len(words) > MAX_RESOLVERS:
        raise ValueError(f"lists at most {MAX_RESOLVERS} name servers, got {len(words)}")
    servers = []
    for word in words:
        host, port = word, "53"
        if word.startswith("["):
            host, sep, port = word[1:].partition("]:")
            if not sep:
                host, port = word[1:].rstrip("]"), "53"
        elif word.count(":") == 1:
            host, _, port = word.partition(":")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(
                f"{word!r} is not an IP address with an optional port "
                f"(such as 127.0.0.1:8600 or [::1]:53; names cannot be used here)"
            ) from None
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{word!r}: the port must be a number from 1 to 65535")
        servers.append((str(address), int(port)))
    return tuple(servers)


def resolv_conf_nameservers(text: str) -> List[Tuple[str, int]]:
    """
    The C{nameserver} lines of a C{resolv.conf(5)} file, port 53; C{127.0.0.1}
    when there is none (as the C library does).
    """
    servers = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                servers.append((str(ipaddress.ip_address(words[1])), 53))
            except ValueError:
                continue
    return servers[:MAX_RESOLVERS] or [("127.0.0.1", 53)]


def preferred_address(addresses: Sequence[str]) -> str:
    """
    The address a server with several is reached at: the lowest, IPv4 before
    IPv6, so that the choice does not move when a DNS server rotates them.
    """
    return min(addresses, key=lambda a: (":" in a, ipaddress.ip_address(a)))


def found_name(entry: DnsEntry, found: Found) -> str:
    """A discovered server's name: C{target:port} (SRV) or C{address:port}."""
    if found.target is not None:
        return f"{found.target}:{found.port}"
    shown = f"[{found.address}]" if ":" in found.address else found.address
    return f"{shown}:{found.port}"
