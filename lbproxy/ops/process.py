"""
The proxy as a process under a service manager: signals and systemd's
readiness protocol.

 - SIGHUP: read the configuration file again and apply it (L{ProxyService.reload});
   a configuration that cannot be used is refused with one log line and the
   running one stays.
 - SIGUSR1: reopen the access log (after logrotate moved it).
 - SIGTERM: stop the reactor, which stops the service: the graceful stop of
   L{ProxyService.stopService}; then the process exits with status 0.
   (Twisted's own handler would make twistd end by the signal, status 143.)
 - C{$NOTIFY_SOCKET}: C{READY=1} once listening, C{RELOADING=1} and C{READY=1}
   around a reload, C{STOPPING=1} when stopping: systemd's C{Type=notify},
   spoken directly (one datagram each), without libsystemd.

Only the twistd plugin adds this service: tests that run the proxy inside
their own process leave their signal handlers alone.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any, Dict, Mapping, Optional

from twisted.application.service import Service
from twisted.logger import Logger

from lbproxy.config import ConfigError, load
from lbproxy.service import ProxyService, StartError

log = Logger()


def notify(state: str, environ: Optional[Mapping[str, str]] = None) -> bool:
    """
    Send C{state} (lines such as C{READY=1}) to the service manager's
    notification socket, if C{$NOTIFY_SOCKET} names one.  Never blocks;
    returns whether it was sent.
    """
    path = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(state.encode("utf-8"), path)
    except OSError as e:
        log.warn("cannot notify the service manager at {path}: {error}", path=path, error=e)
        return False
    return True


def _monotonic_usec() -> int:
    return int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1_000_000)


class ProcessControl(Service):
    """
    Signal handlers and readiness notifications for a L{ProxyService}
    configured from the file at C{path}.
    """

    def __init__(self, proxy: ProxyService, path: str, reactor: Any) -> None:
        self.proxy = proxy
        self.path = path
        self.reactor = reactor
        self._previous: Dict[int, Any] = {}

    def privilegedStartService(self) -> None:
        # The parent logs "lbproxy listening on" right after this (its
        # children start first): from that line on, a signal must find our
        # handlers, not the default action (which ends the process).  An
        # action asked for before the reactor runs waits for it.
        super().privilegedStartService()
        self._install()

    def startService(self) -> None:
        super().startService()
        # The reactor installs its own SIGTERM handler as it starts: ours
        # goes in again after that, then the service manager hears READY=1.
        self.reactor.callWhenRunning(self._running)

    def _install(self) -> None:
        handlers = {
            signal.SIGHUP: self.reload,
            signal.SIGUSR1: self.reopen_logs,
            signal.SIGTERM: self.stop,
        }
        for number, action in handlers.items():
            previous = signal.signal(number, self._deferred(action))
            self._previous.setdefault(number, previous)
        usr1 = self._previous[signal.SIGUSR1]
        if callable(usr1):
            # twistd --logfile rotates its own log on SIGUSR1: keep that too.
            signal.signal(signal.SIGUSR1, self._deferred(self.reopen_logs, usr1))

    def _running(self) -> None:
        if not self.running:
            return
        signal.signal(signal.SIGTERM, self._deferred(self.stop))
        notify(f"READY=1\nSTATUS={self.proxy.config.summary()}\nMAINPID={os.getpid()}")

    def stopService(self) -> None:
        super().stopService()
        notify("STOPPING=1")
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()

    def _deferred(self, action: Any, also: Any = None) -> Any:
        # A signal handler runs between two bytecodes of whatever the reactor
        # was doing: it only asks the reactor to run the action next.
        def handler(number: int, frame: Any) -> None:
            self.reactor.callFromThread(action)
            if also is not None:
                also(number, frame)

        return handler

    def reload(self) -> None:
        """Read the configuration file again and apply it, or keep the running one."""
        notify(f"RELOADING=1\nMONOTONIC_USEC={_monotonic_usec()}")
        try:
            config = load(self.path)
            self.proxy.reload(config)
        except (ConfigError, StartError) as e:
            self.proxy.reloads["refused"] += 1
            log.error("reload refused, the running configuration stays: {error}", error=str(e))
            notify("READY=1\nSTATUS=reload refused: " + str(e).replace("\n", " "))
            return
        log.info("reloaded {summary}", summary=config.summary())
        notify(f"READY=1\nSTATUS={config.summary()}")

    def stop(self) -> None:
        log.info("SIGTERM: stopping")
        if self.reactor.running:
            self.reactor.stop()

    def reopen_logs(self) -> None:
        access_log = self.proxy.access_log
        if access_log is not None:
            access_log.reopen()
            log.info("access log reopened: {path}", path=access_log.path)
