"""
The C{lbproxy} command: check a configuration file, write a starter one,
print the version.  The proxy itself runs under twistd
(C{twistd -n lbproxy -c FILE}).
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from lbproxy import __version__
from lbproxy.config import ConfigError, load, parse

DESCRIPTION = """\
lbproxy, an HTTP load-balancing reverse proxy.

Run the proxy with:  twistd -n lbproxy -c FILE
"""

STARTER = """\
; lbproxy configuration, written by `lbproxy init`.  Check it with
; `lbproxy check FILE`, run it with `twistd -n lbproxy -c FILE`.
; Every key is described in etc/lbproxy.ini of the lbproxy sources.

[proxy]
; Where clients connect (Twisted endpoint descriptions, one per line).
listen = {listen}

[admin]
; Status, metrics and the dashboard: http://{admin_url}/
listen = {admin}

[pool:web]
algorithm = {algorithm}
servers =
{servers}
; Active health checks: uncomment and name a path your servers answer.
;health_check = GET /healthz
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lbproxy",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lbproxy {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="validate a configuration file (like nginx -t)",
        description="Read and validate FILE; print a one-line summary, or the one-line "
        "error (exit status 1).",
    )
    check.add_argument("file", metavar="FILE")
    init = commands.add_parser(
        "init",
        help="write a starter configuration for the given servers to standard output",
        description="Print a starter configuration that balances over the servers at URL "
        "(http:// or https://, optionally followed by options such as weight=2).",
    )
    init.add_argument("servers", metavar="URL", nargs="+")
    init.add_argument(
        "--listen",
        default="tcp:8080:interface=127.0.0.1",
        help="where clients connect (default: %(default)s)",
    )
    init.add_argument(
        "--admin",
        default="tcp:8081:interface=127.0.0.1",
        help="the admin listener, on loopback (default: %(default)s)",
    )
    commands.add_parser("version", help="print the version")
    return parser


def starter(servers: List[str], listen: str, admin: str) -> str:
    """
    A starter configuration for C{servers} (URLs with their options).

    @raises ConfigError: When it would not be valid (a bad URL or endpoint).
    """
    weighted = any("weight=" in server for server in servers)
    port = admin.split(":")[1] if admin.startswith("tcp:") else "PORT"
    text = STARTER.format(
        listen=listen,
        admin=admin,
        admin_url=f"127.0.0.1:{port}",
        algorithm="weighted_round_robin" if weighted else "round_robin",
        servers="\n".join(f"    {server}" for server in servers),
    )
    parse(text, "<lbproxy init>")
    return text


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "check":
        try:
            config = load(args.file)
        except ConfigError as e:
            print(e, file=sys.stderr)
            return 1
        print(config.summary())
        return 0
    if args.command == "init":
        try:
            text = starter(args.servers, args.listen, args.admin)
        except ConfigError as e:
            print(e, file=sys.stderr)
            return 1
        sys.stdout.write(text)
        return 0
    if args.command == "version":
        print(f"lbproxy {__version__}")
        return 0
    parser.print_usage(sys.stderr)
    print("lbproxy: a command is required (lbproxy --help lists them)", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
