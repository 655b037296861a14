"""
The schema: for each section kind, its keys, their parsers and defaults.
A key's parser takes the text and raises C{ValueError} with the end of the
error line; L{reader} adds the file, section and key.
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

from lbproxy.balancing import CLIENT_ADDRESS, parse_hash_key, parse_token_name
from lbproxy.config.dns import parse_resolver
from lbproxy.config.model import DEFAULT_LIMITS
from lbproxy.config.servers import parse_servers
from lbproxy.config.tls import parse_names, parse_path
from lbproxy.config.values import (
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
    parse_upgrade,
    parse_via,
    parse_workers,
)
from lbproxy.routing import parse_request_rules, parse_response_rules

#: A section kind's keys: each with its parser and its default.
Schema = Dict[str, Tuple[Callable[[str], object], object]]

#: The default of a key that must be set.
REQUIRED = object()

#: The [proxy] keys that make L{FrontLimits}.
LIMIT_KEYS = (
    "max_header_size",
    "max_headers",
    "max_body_size",
    "client_header_timeout",
    "client_body_timeout",
    "upgrade",
    "tunnel_timeout",
)

PROXY_KEYS: Schema = {
    "listen": (parse_listen, REQUIRED),
    "pool": (str.strip, None),
    "via": (parse_via, "lbproxy"),
    "backend_keepalive": (parse_int(0, 100000), 100),
    "backend_keepalive_timeout": (parse_duration, 1.0),
    "max_header_size": (parse_size(1024, 1 << 20), DEFAULT_LIMITS.max_header_size),
    "max_headers": (parse_int(1, 10000), DEFAULT_LIMITS.max_headers),
    "max_body_size": (parse_size(0, 1 << 50), DEFAULT_LIMITS.max_body_size),
    "client_header_timeout": (parse_positive_duration, DEFAULT_LIMITS.client_header_timeout),
    "client_body_timeout": (parse_positive_duration, DEFAULT_LIMITS.client_body_timeout),
    "keepalive_timeout": (parse_positive_duration, 75.0),
    "max_connections": (parse_int(1, 1_000_000), 10000),
    "access_log": (parse_access_log, None),
    "access_log_format": (parse_log_format, "combined"),
    "shutdown_timeout": (parse_duration, 30.0),
    "upgrade": (parse_upgrade, DEFAULT_LIMITS.upgrade),
    "tunnel_timeout": (parse_positive_duration, DEFAULT_LIMITS.tunnel_timeout),
    "http2": (parse_bool, True),
    "http2_max_streams": (parse_int(1, 10000), 100),
    "workers": (parse_workers, 1),
    "request_headers": (parse_request_rules, ()),
    "response_headers": (parse_response_rules, ()),
    "resolver": (parse_resolver, None),
}

ADMIN_KEYS: Schema = {
    "listen": (parse_single_endpoint, REQUIRED),
    "token": (parse_token, None),
}

TLS_KEYS: Schema = {
    "cert": (parse_path, REQUIRED),
    "key": (parse_path, None),
    "names": (parse_names, None),
    "default": (parse_bool, False),
}

POOL_KEYS: Schema = {
    "algorithm": (parse_algorithm, "weighted_round_robin"),
    "servers": (parse_servers, REQUIRED),
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
    "dns_min_ttl": (parse_positive_duration, 1.0),
    "dns_max_ttl": (parse_positive_duration, 60.0),
}
