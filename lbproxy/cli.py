"""
The C{lbproxy} command: C{lbproxy check FILE}.
"""

from __future__ import annotations

import sys
from typing import List, Optional

from lbproxy import __version__
from lbproxy.config import ConfigError, load

USAGE = """\
usage: lbproxy check FILE     validate a configuration file (like nginx -t)
       lbproxy version        print the version
Run the proxy with: twistd -n lbproxy --config FILE
"""


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "check":
        try:
            config = load(args[1])
        except ConfigError as e:
            print(e, file=sys.stderr)
            return 1
        print(config.summary())
        return 0
    if args == ["version"]:
        print(f"lbproxy {__version__}")
        return 0
    print(USAGE, end="", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
