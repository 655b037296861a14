"""
Parsers of single configuration values: each takes the text of one value and
returns it parsed, or raises C{ValueError} with a message that completes
"[section] key: ...".  L{lbproxy.config} applies them by key.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Callable, FrozenSet, Optional, Tuple

from twisted.internet.endpoints import serverFromString

from lbproxy.balancing import lookup
from lbproxy.config.tls import is_tls_listen, parse_tls_listen

# Defined below the config package, so that routing (which config imports)
# can use it without an import circle.
from lbproxy.routing.routes import parse_bool as parse_bool

_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

# ---------------------------------------------------------------------------
# Value parsers: each takes the text and returns the value or raises
# ValueError with a message that completes "[section] key: ...".


def parse_duration(text: str) -> float:
    """
    Parse a duration such as C{500ms}, C{2s}, C{1.5m} or C{1h} into seconds.

    A unit is required: a bare number is ambiguous (nginx reads seconds,
    HAProxy milliseconds), so it is refused.
    """
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(
            f"expected a duration with a unit (ms, s, m, h), such as 500ms or 2s, got {text!r}"
        )
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_positive_duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"must be longer than 0, got {text.strip()!r}")
    return seconds


_SIZE = re.compile(r"^([0-9]+)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(low: int, high: int) -> Callable[[str], int]:
    """A size in bytes: C{512}, C{32KB}, C{10MB}, C{1GB} (units of 1024)."""

    def parse(text: str) -> int:
        match = _SIZE.match(text.strip())
        if match is None:
            raise ValueError(f"expected a size such as 32KB or 10MB, got {text.strip()!r}")
        unit = (match.group(2) or "b")[0].lower()
        size = int(match.group(1)) * _SIZE_UNITS[unit]
        if not low <= size <= high:
            raise ValueError(f"must be from {low} to {high} bytes, got {text.strip()!r}")
        return size

    return parse


def parse_health_check(text: str) -> Tuple[str, str]:
    parts = text.split()
    if len(parts) != 2 or not TOKEN.match(parts[0]) or not parts[1].startswith("/"):
        raise ValueError(f"must be a method and a path, such as GET /healthz, got {text.strip()!r}")
    if any(ord(c) < 33 or ord(c) > 126 for c in parts[1]):
        raise ValueError(f"the path must be printable ASCII without spaces, got {parts[1]!r}")
    return parts[0], parts[1]


def parse_host_header(text: str) -> str:
    value = text.strip()
    if not value or any(ord(c) < 33 or ord(c) > 126 for c in value):
        raise ValueError(f"must be a host name (and port), got {value!r}")
    return value


def parse_status_range(text: str) -> Tuple[int, int]:
    low, sep, high = text.strip().partition("-")
    try:
        first = int(low)
        last = int(high) if sep else first
    except ValueError:
        first = last = 0
    if not (100 <= first <= last <= 599):
        raise ValueError(f"must be a status or a range such as 200-399, got {text.strip()!r}")
    return first, last


def parse_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        text = text.strip()
        if not text.isdigit() or not (low <= int(text) <= high):
            raise ValueError(f"must be a whole number from {low} to {high}, got {text!r}")
        return int(text)

    return parse


#: The most worker processes C{workers} may ask for.
MAX_WORKERS = 256


def cpu_list_size(text: str) -> int:
    """The number of CPUs in a kernel CPU list (C{0-3,8}: 5); 0 if it is not one."""
    count = 0
    for part in text.strip().split(","):
        first, _, last = part.partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            return 0
        count += int(last) - int(first) + 1 if last else 1
    return max(0, count)


def cores(status: str = "/proc/self/status") -> int:
    """
    The cores this process may run on (its CPU affinity), at least 1.
    PyPy 3.9 has no C{os.sched_getaffinity}: there the affinity comes from
    C{Cpus_allowed_list} in C{/proc/self/status}, else the machine's count.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        pass
    try:
        with open(status) as f:
            for line in f:
                if line.startswith("Cpus_allowed_list:"):
                    allowed = cpu_list_size(line.split(":", 1)[1])
                    if allowed:
                        return allowed
    except OSError:
        pass
    return max(1, os.cpu_count() or 1)


def parse_workers(text: str) -> int:
    """C{auto} (one per core this process may use) or a number of processes."""
    text = text.strip()
    if text == "auto":
        return min(cores(), MAX_WORKERS)
    if not text.isdigit() or not (1 <= int(text) <= MAX_WORKERS):
        raise ValueError(f"must be auto or a whole number from 1 to {MAX_WORKERS}, got {text!r}")
    return int(text)


def parse_via(text: str) -> Optional[str]:
    text = text.strip()
    if text == "off":
        return None
    if not TOKEN.match(text):
        raise ValueError(f"must be a name made of letters, digits and -._, or off, got {text!r}")
    return text


def parse_upgrade(text: str) -> FrozenSet[bytes]:
    """
    The protocols a request may upgrade to, space or comma separated
    (C{websocket}); empty for none.  C{h2c} is refused: it is never tunnelled.
    """
    names = [name for name in re.split(r"[\s,]+", text.strip()) if name]
    for name in names:
        if not TOKEN.match(name):
            raise ValueError(f"expected protocol names such as websocket, got {name!r}")
        if name.lower() == "h2c":
            raise ValueError("h2c cannot be allowed: lbproxy never tunnels HTTP/2 cleartext")
    return frozenset(name.lower().encode("ascii") for name in names)


def parse_algorithm(text: str) -> str:
    """A built-in algorithm's name, or one that a plugin provides."""
    text = text.strip()
    lookup(text)
    return text


def parse_balance_factor(text: str) -> float:
    """A factor over the average load: more than 1, at most 100."""
    try:
        value = float(text.strip())
    except ValueError:
        value = 0.0
    if not 1.0 < value <= 100.0:
        raise ValueError(
            f"must be a number above 1 and at most 100, such as 1.25, got {text.strip()!r}"
        )
    return value


def parse_endpoint(description: str) -> str:
    """
    Check one server endpoint description without listening on it.

    A C{systemd:} endpoint names a socket that systemd passes at start; it
    does not exist when the configuration is checked elsewhere (C{lbproxy
    check}), so only its form is checked here.
    """
    if is_tls_listen(description):
        # TLS for many names (lbproxy.front.tls); its certificates are [tls:NAME].
        parse_tls_listen(description)
        return description
    if description.startswith("systemd:"):
        options = dict(part.partition("=")[::2] for part in description.split(":")[1:])
        unknown = set(options) - {"domain", "index", "name"}
        if (
            unknown
            or options.get("domain") not in ("INET", "INET6", "UNIX")
            or ("index" in options) == ("name" in options)
            or ("index" in options and not options["index"].isdigit())
        ):
            raise ValueError(
                f"{description!r} is not a valid endpoint: write "
                f"systemd:domain=INET:name=NAME (or index=N)"
            )
        return description
    try:
        # Parsing only: the endpoint is not listened on, so no reactor.
        serverFromString(None, description)
    except Exception as e:  # Twisted raises several types for bad text.
        raise ValueError(f"{description!r} is not a valid endpoint: {e}") from None
    return description


def parse_listen(text: str) -> Tuple[str, ...]:
    descriptions = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not descriptions:
        raise ValueError("needs at least one endpoint, such as tcp:8080:interface=127.0.0.1")
    for description in descriptions:
        parse_endpoint(description)
    return descriptions


def parse_single_endpoint(text: str) -> str:
    descriptions = parse_listen(text)
    if len(descriptions) != 1:
        raise ValueError("takes one endpoint")
    return descriptions[0]


def is_local_endpoint(description: str) -> bool:
    """
    Whether an endpoint can only be reached from this machine: a UNIX
    socket, or TCP bound to a loopback address (127.0.0.0/8, ::1).  A TCP
    endpoint without C{interface=} listens on every address: not local.
    """
    kind = description.split(":", 1)[0].lower()
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6"):
        return False
    interface = None
    for part in re.split(r"(?<!\\):", description)[1:]:
        key, sep, value = part.partition("=")
        if sep and key == "interface":
            interface = value.replace("\\:", ":")
    if interface is None:
        return False
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return interface == "localhost"


def parse_access_log(text: str) -> Optional[str]:
    """C{off}, C{-} (standard output) or a file path."""
    value = text.strip()
    if value == "off":
        return None
    if not value:
        raise ValueError("must be a file path, - (standard output) or off")
    return value


def parse_log_format(text: str) -> str:
    value = text.strip()
    if value not in ("combined", "json"):
        raise ValueError(f"must be combined or json, got {value!r}")
    return value


def parse_token(text: str) -> str:
    value = text.strip()
    if len(value) < 16 or not TOKEN.match(value):
        raise ValueError(
            "must be at least 16 characters of letters, digits and !#$%&'*+-.^_`|~ "
            "(try: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return value


def parse_file_path(text: str) -> str:
    path = text.strip()
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ValueError(f"cannot read {path!r}: {e.strerror}") from None
    return path


# ---------------------------------------------------------------------------
# Addresses as logs show them.


def describe_address(address: object) -> str:
    """
    A Twisted address as a log line shows it, in URL form:
    C{127.0.0.1:8080}, C{[::1]:8080}, or a UNIX socket's path.
    """
    host = getattr(address, "host", None)
    if host is not None:
        shown = f"[{host}]" if ":" in host else host
        return f"{shown}:{getattr(address, 'port', '?')}"
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return str(name) if name else "a UNIX socket"
