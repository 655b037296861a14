"""
What DNS answers name, as servers: the rules from the records of a pool's
C{dns://} and C{dns+srv://} lines (L{Found}) to L{ServerConfig}s, beside the
servers the pool lists.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

from lbproxy.config.dns import MAX_SERVERS, SRV, DnsEntry, Found, found_name
from lbproxy.config.model import PoolConfig, ServerConfig
from lbproxy.config.servers import MAX_WEIGHT


def servers_from(entry: DnsEntry, found: Sequence[Found], weighted: bool) -> List[ServerConfig]:
    """
    The servers that an answer to C{entry} names, in a stable order.

    SRV records: the lowest priority present gives the primaries, every
    other priority gives backups (the pool has one backup tier).  A server's
    weight is the entry's C{weight=}, else the record's (from 1 to 1000; 0
    counts as 1) when the pool's algorithm uses weights, else 1.

    @param weighted: Whether the pool's algorithm uses weights.
    @returns: L{ServerConfig}s, at most L{MAX_SERVERS}, one per name.
    """

    ordered = sorted(set(found))
    lowest = ordered[0].priority if ordered else 0
    servers = []
    names: Set[str] = set()
    for item in ordered:
        name = found_name(entry, item)
        if name in names:
            continue
        names.add(name)
        if entry.weight is not None:
            weight = entry.weight
        elif entry.kind == SRV and weighted:
            weight = min(MAX_WEIGHT, max(1, item.weight))
        else:
            weight = 1
        netloc = f"[{item.address}]" if ":" in item.address else item.address
        servers.append(
            ServerConfig(
                url=f"http://{netloc}:{item.port}",
                scheme="http",
                host=item.address,
                port=item.port,
                weight=weight,
                name=name,
                max_connections=entry.max_connections,
                backup=entry.backup or item.priority > lowest,
            )
        )
        if len(servers) >= MAX_SERVERS:
            break
    return servers


def all_servers(
    config: PoolConfig, answers: Mapping[str, Sequence[Found]]
) -> Tuple[ServerConfig, ...]:
    """
    A pool's servers: those listed (C{config.servers}), then those its DNS
    entries found (the last good answer for each, from C{answers}, by
    source), in the order of the entries.  A discovered server whose name
    or address is already taken (by a listed server or an earlier entry) is
    left out.
    """
    servers = list(config.servers)
    if not config.discovery:
        return tuple(servers)
    names = {s.name for s in servers}
    addresses = {(s.scheme, s.host, s.port) for s in servers}
    weighted = config.algorithm != "round_robin"
    for entry in config.discovery:
        for server in servers_from(entry, answers.get(entry.source, ()), weighted):
            address = (server.scheme, server.host, server.port)
            if server.name in names or address in addresses:
                continue
            names.add(server.name)
            addresses.add(address)
            servers.append(server)
    return tuple(servers)


def describe_change(
    entry: DnsEntry, before: Optional[Sequence[Found]], after: Sequence[Found]
) -> str:
    """
    What changed between two answers, for a log line: the names added and
    removed, e.g. C{added b1.test:8001; removed 10.0.0.7:80}.
    """
    old: Dict[str, Found] = {found_name(entry, f): f for f in before or ()}
    new: Dict[str, Found] = {found_name(entry, f): f for f in after}
    parts = []
    added = [n for n in new if n not in old]
    removed = [n for n in old if n not in new]
    changed = [n for n in new if n in old and new[n] != old[n]]
    if added:
        parts.append("added " + ", ".join(sorted(added)))
    if removed:
        parts.append("removed " + ", ".join(sorted(removed)))
    if changed:
        parts.append("changed " + ", ".join(sorted(changed)))
    return "; ".join(parts) or "no change"
