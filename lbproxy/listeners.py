"""
Listening: an endpoint description (C{tcp:}, C{tls:}, C{systemd:}, ...) to
a listening port, with a failure told in one line.

The service listens itself rather than through C{strports.service}, so that
it knows its ports (tests listen on port 0 and read the port back; a log
line names each address) and a port that cannot be bound is one line of
error, not a traceback.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbproxy.config.tls import is_tls_listen
from lbproxy.config.values import describe_address
from lbproxy.front.tls import SNIConnectionCreator, server_endpoint
from lbproxy.transports import reuse_read_buffer

log = Logger()


class StartError(Exception):
    """
    A configuration that parsed but cannot be applied (a port that cannot be
    listened on, a log file that cannot be opened); the text is one line.
    """


def listen(
    reactor: Any,
    description: str,
    factory: IProtocolFactory,
    where: str,
    tls: SNIConnectionCreator,
) -> IListeningPort:
    """
    Listen on C{description} with C{factory}, at once (the endpoints used
    here answer synchronously).

    @param where: Where the description comes from, for the error line
        (C{"t.ini: [proxy] listen"}).
    @param tls: What C{tls:} listeners make their connections with.
    @raises StartError: When it cannot listen, naming C{where} and why.
    """
    outcome: List[Any] = []
    try:
        if is_tls_listen(description):
            endpoint = server_endpoint(reactor, description, tls)
        else:
            endpoint = serverFromString(reactor, description)
        endpoint.listen(factory).addBoth(outcome.append)
    except (KeyError, IndexError) as e:
        # Twisted's systemd endpoint looks the socket up as it parses.
        missing = f"named {e}" if isinstance(e, KeyError) else "at that index"
        outcome.append(Failure(ValueError(f"systemd passed no socket {missing}")))
    except ValueError as e:
        # A description Twisted cannot parse (the configuration refuses
        # those first; this keeps the one-line promise for other callers).
        outcome.append(Failure(e))
    if not outcome or isinstance(outcome[0], Failure):
        reason = outcome[0].getErrorMessage() if outcome else "no answer"
        raise StartError(f"{where}: cannot listen on {description}: {reason}")
    port: IListeningPort = outcome[0]
    reuse_read_buffer(port)
    return port


def announce(port: IListeningPort, what: str = "lbproxy") -> None:
    """Log the address C{port} listens on (C{"lbproxy listening on ..."})."""
    log.info("{what} listening on {address}", what=what, address=describe_address(port.getHost()))


__all__ = ["StartError", "announce", "listen"]
