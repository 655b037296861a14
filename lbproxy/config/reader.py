"""
INI text to a L{ProxyConfig}: sections read against the schema (L{schema}),
the rules across keys and sections, and the one-line errors (L{ConfigError}).
"""

from __future__ import annotations

import ast
import configparser
import difflib
import re
from typing import Dict, List, Mapping, Optional, Tuple, Union

from lbproxy.balancing import ALGORITHM_KEYS, lookup, readers
from lbproxy.config.dns import DnsEntry
from lbproxy.config.errors import ConfigError, unknown
from lbproxy.config.model import AdminConfig, FrontLimits, PoolConfig, ProxyConfig, ServerConfig
from lbproxy.config.schema import (
    ADMIN_KEYS,
    LIMIT_KEYS,
    POOL_KEYS,
    PROXY_KEYS,
    REQUIRED,
    TLS_KEYS,
    Schema,
)
from lbproxy.config.tls import TLSConfig, TLSProblem, build, is_tls_listen
from lbproxy.config.values import is_local_endpoint
from lbproxy.routing import ROUTE_KEYS, RouteConfig, RouteError, build_route

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _section_values(
    parser: configparser.ConfigParser,
    section: str,
    schema: Schema,
) -> Dict[str, object]:
    values: Dict[str, object] = {}
    present = parser[section] if parser.has_section(section) else {}
    for key in present:
        if key not in schema:
            raise ConfigError(unknown("key", key, list(schema)), section=section, key=key)
    for key, (parse, default) in schema.items():
        if key in present:
            try:
                values[key] = parse(present[key])
            except ValueError as e:
                raise ConfigError(str(e), section=section, key=key) from None
        elif default is REQUIRED:
            raise ConfigError("is required", section=section, key=key)
        else:
            values[key] = default
    return values


def _read(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        interpolation=None,
        inline_comment_prefixes=(";", "#"),
        empty_lines_in_values=False,
        # [DEFAULT] would silently apply to every section: make it an
        # ordinary (and so unknown) section instead.
        default_section="\x00no default section",
    )
    try:
        parser.read_string(text)
    except configparser.DuplicateSectionError as e:
        raise ConfigError(f"line {e.lineno}: section is defined twice", section=e.section) from None
    except configparser.DuplicateOptionError as e:
        raise ConfigError(
            f"line {e.lineno}: key is set twice", section=e.section, key=e.option
        ) from None
    except configparser.MissingSectionHeaderError as e:
        raise ConfigError(
            f"line {e.lineno}: text before the first [section]: {e.line.strip()!r}"
        ) from None
    except configparser.ParsingError as e:
        lineno, line = e.errors[0]
        if isinstance(line, str) and line[:1] in ("'", '"'):
            # Some Python versions store the line as its repr().
            try:
                line = ast.literal_eval(line)
            except (ValueError, SyntaxError):
                pass
        raise ConfigError(f"line {lineno}: not a 'key = value' line: {line.strip()!r}") from None
    return parser


def _check_algorithm(
    pool: PoolConfig,
    lines: Tuple[Union[ServerConfig, DnsEntry], ...],
    section: str,
    present: Mapping[str, str],
) -> None:
    """
    Refuse what the pool's algorithm would silently ignore: weights (on any
    line of C{servers}, listed or found in DNS), and the keys that only other
    algorithms read.
    """
    algorithm = lookup(pool.algorithm)
    if not algorithm.uses_weights:
        for number, server in enumerate(lines, 1):
            if server.weight not in (1, None):
                raise ConfigError(
                    f"line {number}: weight={server.weight} has no effect with "
                    f"algorithm = {pool.algorithm} (use weighted_round_robin)",
                    section=section,
                    key="servers",
                )
    for key in ALGORITHM_KEYS:
        if key in present and key not in algorithm.options:
            raise ConfigError(
                f"has no effect with algorithm = {pool.algorithm} "
                f"(it is read by {', '.join(readers(key))})",
                section=section,
                key=key,
            )


def parse(text: str, path: str = "<config>") -> ProxyConfig:
    """
    Parse and validate configuration text.

    @param text: The INI text.
    @param path: The file name to show in error messages.
    @raises ConfigError: When anything is wrong; its text is one line.
    """
    try:
        return _parse(text, path)
    except ConfigError as e:
        raise e.located(path) from None


def _parse(text: str, path: str) -> ProxyConfig:
    parser = _read(text)
    for section in parser.sections():
        if section in ("proxy", "admin"):
            continue
        kind, sep, name = section.partition(":")
        if kind in ("pool", "tls", "route") and sep:
            if not _NAME.match(name):
                raise ConfigError(
                    f"a {kind} name is made of letters, digits and -._", section=section
                )
            continue
        choices = ["proxy", "admin"]
        if sep:
            for close_kind in difflib.get_close_matches(kind, ["pool", "tls", "route"], cutoff=0.6):
                choices.append(f"{close_kind}:{name}")
        close = difflib.get_close_matches(section, choices, n=1, cutoff=0.6)
        hint = f"did you mean [{close[0]}]? " if close else ""
        raise ConfigError(
            f"unknown section ({hint}known: "
            "[proxy], [admin], [pool:NAME], [tls:NAME], [route:NAME])",
            section=section,
        )
    if not parser.has_section("proxy"):
        raise ConfigError("the [proxy] section is missing")
    proxy = _section_values(parser, "proxy", PROXY_KEYS)
    pools: Dict[str, PoolConfig] = {}
    for section in parser.sections():
        if section.startswith("pool:"):
            values = _section_values(parser, section, POOL_KEYS)
            if values["health_timeout"] is None:
                # A short interval brings the default timeout down with it; a
                # longer timeout written out is fine (checks never overlap).
                values["health_timeout"] = min(1.0, float(values["health_interval"]))  # type: ignore[arg-type]
            name = section[len("pool:") :]
            lines: Tuple[Union[ServerConfig, DnsEntry], ...] = values.pop("servers")  # type: ignore[assignment]
            values["servers"] = tuple(s for s in lines if isinstance(s, ServerConfig))
            values["discovery"] = tuple(s for s in lines if isinstance(s, DnsEntry))
            pool = PoolConfig(name=name, **values)  # type: ignore[arg-type]
            _check_algorithm(pool, lines, section, parser[section])
            if pool.dns_min_ttl > pool.dns_max_ttl:
                raise ConfigError(
                    f"must not be longer than dns_max_ttl ({pool.dns_max_ttl:g}s)",
                    section=section,
                    key="dns_min_ttl",
                )
            if all(server.backup for server in lines):
                raise ConfigError(
                    "every server is a backup: at least one must not be",
                    section=section,
                    key="servers",
                )
            pools[name] = pool
    if not pools:
        raise ConfigError("no [pool:NAME] section: there is nowhere to send requests")
    routes = _routes(parser, pools)
    chosen = proxy["pool"]
    if chosen is None and not routes:
        if len(pools) > 1:
            raise ConfigError(
                f"is required when there is more than one pool "
                f"(defined: {', '.join(sorted(pools))})",
                section="proxy",
                key="pool",
            )
        chosen = next(iter(pools))
    elif chosen is not None and chosen not in pools:
        raise ConfigError(
            f"no [pool:{chosen}] section (defined: {', '.join(sorted(pools))})",
            section="proxy",
            key="pool",
        )
    proxy["pool"] = chosen
    used = {route.pool for route in routes} | {chosen}
    for name in pools:
        if name not in used:
            raise ConfigError(
                "no route and not [proxy] pool sends requests to this pool: "
                "route to it or remove it",
                section=f"pool:{name}",
            )
    if parser.has_section("admin"):
        admin = AdminConfig(**_section_values(parser, "admin", ADMIN_KEYS))  # type: ignore[arg-type]
        if admin.token is None and not is_local_endpoint(admin.listen):
            raise ConfigError(
                f"{admin.listen!r} is reachable from other machines: set a token, "
                f"or listen on a loopback address (interface=127.0.0.1)",
                section="admin",
                key="token",
            )
        if is_tls_listen(admin.listen):
            raise ConfigError(
                "the admin listener cannot be tls: (use an ssl: endpoint)",
                section="admin",
                key="listen",
            )
        proxy["admin"] = admin
    proxy["tls"] = _parse_tls(parser, proxy["listen"])  # type: ignore[arg-type]
    limits = FrontLimits(**{key: proxy.pop(key) for key in LIMIT_KEYS})  # type: ignore[arg-type]
    return ProxyConfig(path=path, pools=pools, limits=limits, routes=routes, **proxy)  # type: ignore[arg-type]


def _routes(
    parser: configparser.ConfigParser, pools: Mapping[str, PoolConfig]
) -> Tuple[RouteConfig, ...]:
    """The [route:NAME] sections, in file order, each checked alone and
    against the pools and the routes before it."""
    routes: List[RouteConfig] = []
    for section in parser.sections():
        if not section.startswith("route:"):
            continue
        values = _section_values(parser, section, ROUTE_KEYS)
        try:
            route = build_route(section[len("route:") :], values, frozenset(parser[section]))
        except RouteError as e:
            raise ConfigError(str(e), section=section, key=e.key) from None
        if route.pool is not None and route.pool not in pools:
            raise ConfigError(
                f"no [pool:{route.pool}] section (defined: {', '.join(sorted(pools))})",
                section=section,
                key="pool",
            )
        if routes and routes[-1].matches_everything():
            raise ConfigError(
                f"can never match: [route:{routes[-1].name}] before it matches every request",
                section=section,
            )
        routes.append(route)
    return tuple(routes)


def _parse_tls(parser: configparser.ConfigParser, listen: Tuple[str, ...]) -> Optional[TLSConfig]:
    """The [tls:NAME] sections, read with their files; none without a tls: listener."""
    sections = [s for s in parser.sections() if s.startswith("tls:")]
    tls_listen = [d for d in listen if is_tls_listen(d)]
    if not sections:
        if tls_listen:
            raise ConfigError(
                f"{tls_listen[0]} needs a [tls:NAME] section with its certificate",
                section="proxy",
                key="listen",
            )
        return None
    if not tls_listen:
        raise ConfigError(
            "no tls: listener in [proxy] listen serves this certificate", section=sections[0]
        )
    values = [(s[len("tls:") :], _section_values(parser, s, TLS_KEYS)) for s in sections]
    try:
        return build(values)
    except TLSProblem as e:
        raise ConfigError(str(e), section=e.section, key=e.key) from None


def load(path: str) -> ProxyConfig:
    """
    Read, parse and validate the configuration file at C{path}.

    @raises ConfigError: When the file cannot be read or is not valid.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read the file: {e.strerror}", path) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"the file is not UTF-8 text: {e.reason}", path) from None
    return parse(text, path)
