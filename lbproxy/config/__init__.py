"""
INI text to frozen configuration values.

Every validation rule and every error message of the configuration lives
here.  A problem is reported as one L{ConfigError} whose text names the file,
the section, the key and what is wrong, e.g.::

    lbproxy.ini: [pool:web] servers: line 2: weight must be a whole number from 1 to 1000, got 'x'

This module knows nothing of the reactor or of twisted.web: it turns text into
L{ProxyConfig}, L{PoolConfig} and L{ServerConfig} values, which the service
module wires into running objects.
"""

from __future__ import annotations

import ast
import configparser
import difflib
import ipaddress
import re
from typing import Callable, Dict, FrozenSet, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

import attr

from lbproxy.balancing import (
    ALGORITHM_KEYS,
    CLIENT_ADDRESS,
    HashKey,
    lookup,
    parse_hash_key,
    parse_token_name,
    readers,
)
from lbproxy.config.tls import TLSConfig, TLSProblem, build, is_tls_listen, parse_names, parse_path
from lbproxy.config.values import (
    is_local_endpoint,
    parse_access_log,
    parse_algorithm,
    parse_balance_factor,
    parse_bool,
    parse_duration,
    parse_file_path,
    parse_health_check,
    parse_host_header,
    parse_int,
    parse_listen,
    parse_log_format,
    parse_positive_duration,
    parse_single_endpoint,
    parse_size,
    parse_status_range,
    parse_token,
    parse_via,
    parse_workers,
)
from lbproxy.routing import (
    ROUTE_KEYS,
    HeaderRule,
    RouteConfig,
    RouteError,
    Router,
    build_route,
    parse_request_rules,
    parse_response_rules,
)

__all__ = [
    "AdminConfig",
    "ConfigError",
    "FrontLimits",
    "PoolConfig",
    "ProxyConfig",
    "ServerConfig",
    "load",
    "parse",
    "parse_duration",
]

MAX_WEIGHT = 1000

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_SERVER_NAME = re.compile(r"^[A-Za-z0-9_.:\[\]-]+$")


class ConfigError(Exception):
    """
    A configuration that cannot be used.

    C{str()} of it is the one line shown to the user.
    """

    def __init__(
        self,
        message: str,
        path: str = "",
        section: Optional[str] = None,
        key: Optional[str] = None,
    ) -> None:
        self.message = message
        self.path = path
        self.section = section
        self.key = key
        super().__init__(self.line())

    def line(self) -> str:
        where = []
        if self.path:
            where.append(f"{self.path}:")
        if self.section is not None:
            where.append(f"[{self.section}]")
        if self.key is not None:
            where.append(f"{self.key}:")
        return " ".join(where + [self.message])

    def located(self, path: str) -> ConfigError:
        """
        The same error, naming C{path} as the file it came from.
        """
        return ConfigError(self.message, path, self.section, self.key)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ServerConfig:
    """
    One backend server of a pool.

    @ivar url: The server's URL as written, e.g. C{http://10.0.0.5:8080}.
    @ivar name: How logs (and later the admin API) call it; C{host:port}
        unless a C{name=} option says otherwise.
    """

    url: str
    scheme: str
    host: str
    port: int
    weight: int = 1
    name: str = ""
    max_connections: Optional[int] = None
    backup: bool = False


@attr.s(frozen=True, slots=True, auto_attribs=True)
class PoolConfig:
    """
    A named group of servers and the algorithm that balances over them.
    """

    name: str
    algorithm: str
    servers: Tuple[ServerConfig, ...]
    tls_ca_file: Optional[str] = None
    connect_timeout: float = 3.0
    response_timeout: float = 30.0
    idle_timeout: float = 60.0
    retries: int = 2
    health_check: Optional[Tuple[str, str]] = None
    health_host: Optional[str] = None
    health_interval: float = 2.0
    health_timeout: float = 1.0
    health_rise: int = 2
    health_fall: int = 3
    health_expect: Tuple[int, int] = (200, 399)
    max_fails: int = 3
    fail_timeout: float = 10.0
    fail_on_5xx: bool = False
    slow_start: float = 0.0
    queue_timeout: float = 5.0
    hash_key: HashKey = CLIENT_ADDRESS
    hash_balance_factor: float = 1.25
    ewma_decay: float = 10.0
    sticky_cookie: Optional[str] = None


@attr.s(frozen=True, slots=True, auto_attribs=True)
class FrontLimits:
    """
    Limits on what a client may send: the [proxy] keys of the same names,
    and the request line's fixed 8 KB.
    """

    max_request_line: int = 8192
    max_header_size: int = 32 * 1024
    max_headers: int = 100
    max_body_size: int = 10 * 1024 * 1024
    client_header_timeout: float = 10.0
    client_body_timeout: float = 30.0


_LIMITS = FrontLimits()
_LIMIT_KEYS = (
    "max_header_size",
    "max_headers",
    "max_body_size",
    "client_header_timeout",
    "client_body_timeout",
)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class AdminConfig:
    """
    The admin listener: status, metrics, dashboard and write actions.

    @ivar token: The bearer token every write action must carry, or L{None}
        (allowed only on a loopback or UNIX-socket listener).
    """

    listen: str
    token: Optional[str] = None


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ProxyConfig:
    """
    The whole configuration of one lbproxy process.

    @ivar listen: Twisted server endpoint descriptions, one per listener.
    @ivar pool: The name of the default pool: it takes the requests no
        route matches.  L{None}: those get a 404.
    @ivar routes: The C{[route:NAME]} sections, in file order.
    @ivar request_headers: The global request header rules.
    @ivar response_headers: The global response header rules.
    @ivar via: The pseudonym sent in C{Via} headers, or L{None} to send none.
    @ivar backend_keepalive: How many idle connections are kept open to each
        backend server.
    @ivar backend_keepalive_timeout: Seconds an idle backend connection is
        kept before it is closed.
    """

    path: str
    listen: Tuple[str, ...]
    pool: Optional[str]
    pools: Mapping[str, PoolConfig]
    routes: Tuple[RouteConfig, ...] = ()
    request_headers: Tuple[HeaderRule, ...] = ()
    response_headers: Tuple[HeaderRule, ...] = ()
    via: Optional[str] = "lbproxy"
    backend_keepalive: int = 100
    backend_keepalive_timeout: float = 1.0
    limits: FrontLimits = _LIMITS
    keepalive_timeout: float = 75.0
    max_connections: int = 10000
    access_log: Optional[str] = None
    access_log_format: str = "combined"
    shutdown_timeout: float = 30.0
    #: Worker processes serving the listeners (1: the twistd process serves
    #: them itself, as before workers existed).
    workers: int = 1
    admin: Optional[AdminConfig] = None
    tls: Optional[TLSConfig] = None

    def active_pool(self) -> PoolConfig:
        assert self.pool is not None
        return self.pools[self.pool]

    def used_pools(self) -> FrozenSet[str]:
        """The pools that take requests: the default one and the routes'."""
        used = {route.pool for route in self.routes if route.pool is not None}
        if self.pool is not None:
            used.add(self.pool)
        return frozenset(used)

    def router(self) -> Router:
        """The routes and header rules compiled for matching."""
        return Router(self.routes, self.pool, self.request_headers, self.response_headers)

    def summary(self) -> str:
        """
        One line describing what this configuration sets up.
        """
        servers = sum(len(p.servers) for p in self.pools.values())

        def count(n: int, word: str) -> str:
            return f"{n} {word}" if n == 1 else f"{n} {word}s"

        if not self.routes:
            where = f"requests go to pool {self.pool!r}"
        elif self.pool is None:
            where = f"{count(len(self.routes), 'route')}, no default pool (404)"
        else:
            where = f"{count(len(self.routes), 'route')}, default pool {self.pool!r}"
        return (
            f"{self.path}: ok: {count(len(self.listen), 'listener')}, "
            f"{count(len(self.pools), 'pool')}, {count(servers, 'server')}; {where}"
        )


def unknown(what: str, word: str, known: List[str]) -> str:
    """
    The message for an unknown key or option C{word} (C{what} names it):
    the closest known one if a typo is likely, and the known ones.
    """
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"unknown {what} ({hint}known: {', '.join(known)})"


def parse_server(line: str) -> ServerConfig:
    """
    Parse one line of a C{servers} list: a URL, then C{key=value} options.
    """
    url, *options = line.split()
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
    values: Dict[str, str] = {"weight": "1", "name": f"{shown_host}:{port}"}
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
        if key not in _SERVER_OPTIONS:
            choices = ["backup", "max_connections", "name", "weight"]
            raise ValueError(f"{url!r}: {unknown(f'option {key!r}', key, choices)}")
        if key in seen:
            raise ValueError(f"{url!r}: option {key!r} given twice")
        seen.add(key)
        values[key] = value
    try:
        weight = parse_int(1, MAX_WEIGHT)(values["weight"])
    except ValueError as e:
        raise ValueError(f"{url!r}: weight {e}") from None
    max_connections = None
    if "max_connections" in values:
        try:
            max_connections = parse_int(1, 1_000_000)(values["max_connections"])
        except ValueError as e:
            raise ValueError(f"{url!r}: max_connections {e}") from None
    if not _SERVER_NAME.match(values["name"]):
        raise ValueError(
            f"{url!r}: name must be made of letters, digits and -._:[], got {values['name']!r}"
        )
    return ServerConfig(
        url=url,
        scheme=parts.scheme,
        host=host,
        port=port,
        weight=weight,
        name=values["name"],
        max_connections=max_connections,
        backup=backup,
    )


def parse_servers(text: str) -> Tuple[ServerConfig, ...]:
    servers = []
    names: Dict[str, int] = {}
    addresses: Dict[Tuple[str, str, int], int] = {}
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("needs at least one server, such as http://127.0.0.1:9001")
    for number, line in enumerate(lines, 1):
        try:
            server = parse_server(line)
        except ValueError as e:
            raise ValueError(f"line {number}: {e}") from None
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


# ---------------------------------------------------------------------------
# The schema: for each section kind, its keys, their parsers and defaults.

_SERVER_OPTIONS = ("weight", "name", "max_connections")

_REQUIRED = object()

_PROXY_KEYS: Dict[str, Tuple[Callable[[str], object], object]] = {
    "listen": (parse_listen, _REQUIRED),
    "pool": (str.strip, None),
    "via": (parse_via, "lbproxy"),
    "backend_keepalive": (parse_int(0, 100000), 100),
    "backend_keepalive_timeout": (parse_duration, 1.0),
    "max_header_size": (parse_size(1024, 1 << 20), _LIMITS.max_header_size),
    "max_headers": (parse_int(1, 10000), _LIMITS.max_headers),
    "max_body_size": (parse_size(0, 1 << 50), _LIMITS.max_body_size),
    "client_header_timeout": (parse_positive_duration, _LIMITS.client_header_timeout),
    "client_body_timeout": (parse_positive_duration, _LIMITS.client_body_timeout),
    "keepalive_timeout": (parse_positive_duration, 75.0),
    "max_connections": (parse_int(1, 1_000_000), 10000),
    "access_log": (parse_access_log, None),
    "access_log_format": (parse_log_format, "combined"),
    "shutdown_timeout": (parse_duration, 30.0),
    "workers": (parse_workers, 1),
    "request_headers": (parse_request_rules, ()),
    "response_headers": (parse_response_rules, ()),
}

_ADMIN_KEYS: Dict[str, Tuple[Callable[[str], object], object]] = {
    "listen": (parse_single_endpoint, _REQUIRED),
    "token": (parse_token, None),
}

_TLS_KEYS: Dict[str, Tuple[Callable[[str], object], object]] = {
    "cert": (parse_path, _REQUIRED),
    "key": (parse_path, None),
    "names": (parse_names, None),
    "default": (parse_bool, False),
}

_POOL_KEYS: Dict[str, Tuple[Callable[[str], object], object]] = {
    "algorithm": (parse_algorithm, "weighted_round_robin"),
    "servers": (parse_servers, _REQUIRED),
    "tls_ca_file": (parse_file_path, None),
    "connect_timeout": (parse_positive_duration, 3.0),
    "response_timeout": (parse_positive_duration, 30.0),
    "idle_timeout": (parse_positive_duration, 60.0),
    "retries": (parse_int(0, 10), 2),
    "health_check": (parse_health_check, None),
    "health_host": (parse_host_header, None),
    "health_interval": (parse_positive_duration, 2.0),
    # Default: the shorter of 1s and health_interval (see _parse).
    "health_timeout": (parse_positive_duration, None),
    "health_rise": (parse_int(1, 100), 2),
    "health_fall": (parse_int(1, 100), 3),
    "health_expect": (parse_status_range, (200, 399)),
    "max_fails": (parse_int(0, 1000), 3),
    "fail_timeout": (parse_positive_duration, 10.0),
    "fail_on_5xx": (parse_bool, False),
    "slow_start": (parse_duration, 0.0),
    "queue_timeout": (parse_positive_duration, 5.0),
    "hash_key": (parse_hash_key, CLIENT_ADDRESS),
    "hash_balance_factor": (parse_balance_factor, 1.25),
    "ewma_decay": (parse_positive_duration, 10.0),
    "sticky_cookie": (parse_token_name, None),
}


def _section_values(
    parser: configparser.ConfigParser,
    section: str,
    schema: Mapping[str, Tuple[Callable[[str], object], object]],
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
        elif default is _REQUIRED:
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


def _check_algorithm(pool: PoolConfig, section: str, present: Mapping[str, str]) -> None:
    """
    Refuse what the pool's algorithm would silently ignore: weights, and the
    keys that only other algorithms read.
    """
    algorithm = lookup(pool.algorithm)
    if not algorithm.uses_weights:
        for number, server in enumerate(pool.servers, 1):
            if server.weight != 1:
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
    proxy = _section_values(parser, "proxy", _PROXY_KEYS)
    pools: Dict[str, PoolConfig] = {}
    for section in parser.sections():
        if section.startswith("pool:"):
            values = _section_values(parser, section, _POOL_KEYS)
            if values["health_timeout"] is None:
                # A short interval brings the default timeout down with it; a
                # longer timeout written out is fine (checks never overlap).
                values["health_timeout"] = min(1.0, float(values["health_interval"]))  # type: ignore[arg-type]
            name = section[len("pool:") :]
            pool = PoolConfig(name=name, **values)  # type: ignore[arg-type]
            _check_algorithm(pool, section, parser[section])
            if all(server.backup for server in pool.servers):
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
        admin = AdminConfig(**_section_values(parser, "admin", _ADMIN_KEYS))  # type: ignore[arg-type]
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
    limits = FrontLimits(**{key: proxy.pop(key) for key in _LIMIT_KEYS})  # type: ignore[arg-type]
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
    values = [(s[len("tls:") :], _section_values(parser, s, _TLS_KEYS)) for s in sections]
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
