"""
INI text to frozen configuration values.

Every validation rule and every error message of the configuration lives
in this package.  A problem is reported as one L{ConfigError} whose text
names the file, the section, the key and what is wrong, e.g.::

    lbproxy.ini: [pool:web] servers: line 2: weight must be a whole number from 1 to 1000, got 'x'

It knows nothing of the reactor or of twisted.web: it turns text into
L{ProxyConfig}, L{PoolConfig} and L{ServerConfig} values, which the service
module wires into running objects.  The rooms:

  - L{model}: the frozen values;
  - L{schema}: each section kind's keys, parsers and defaults;
  - L{reader}: INI text to values, the rules across keys, L{parse}, L{load};
  - L{servers}: the lines of a pool's C{servers} key;
  - L{values}: parsers of single values; L{tls}: the C{[tls:NAME]} sections;
  - L{errors}: L{ConfigError}, the one-line error.
"""

from __future__ import annotations

from lbproxy.config.errors import ConfigError, unknown
from lbproxy.config.model import (
    DEFAULT_LIMITS,
    AdminConfig,
    FrontLimits,
    PoolConfig,
    ProxyConfig,
    ServerConfig,
)
from lbproxy.config.reader import load, parse
from lbproxy.config.schema import ADMIN_KEYS, LIMIT_KEYS, POOL_KEYS, PROXY_KEYS, TLS_KEYS
from lbproxy.config.servers import MAX_WEIGHT, parse_server, parse_servers
from lbproxy.config.values import parse_duration

# The names the schema tables had when they lived in this module.
_PROXY_KEYS = PROXY_KEYS
_ADMIN_KEYS = ADMIN_KEYS
_TLS_KEYS = TLS_KEYS
_POOL_KEYS = POOL_KEYS
_LIMIT_KEYS = LIMIT_KEYS
_LIMITS = DEFAULT_LIMITS

__all__ = [
    "MAX_WEIGHT",
    "AdminConfig",
    "ConfigError",
    "FrontLimits",
    "PoolConfig",
    "ProxyConfig",
    "ServerConfig",
    "load",
    "parse",
    "parse_duration",
    "parse_server",
    "parse_servers",
    "unknown",
]
