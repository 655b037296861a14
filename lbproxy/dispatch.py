"""
The epoll reactor's dispatch of ready descriptors, with one logging context
per poll instead of one per event.

Twisted's epoll reactor calls each ready descriptor's C{doRead}/C{doWrite}
through C{twisted.python.log.callWithLogger}: per event it asks the
descriptor's C{logPrefix()}, copies the current legacy log context, sets
C{system} in the copy and pushes it for the call; an exception that
escapes is logged with that C{system}.  On CPython that costs about
1.4 µs per event (a direct call: under 0.1 µs), and a proxied request
has at least four events (client read, backend write, backend read,
client write).

The context is read by one thing only: the legacy
C{twisted.python.log.msg} (and C{log.err}, which calls it), which copies
it into the event, so that C{twistd}'s log line shows the descriptor's
prefix (C{[ProxyChannel,3,127.0.0.1]}).  Events of
C{twisted.logger.Logger}, which is all lbproxy logs, never read it.

L{install_quick_dispatch} replaces the reactor's poll with one that makes
the same calls in the same order, asks C{logPrefix()} at the same moment,
and logs an escaping exception or a failing C{logPrefix()} the same way;
only the context is made once per poll (a copy of the current one, pushed
around the whole batch) and its C{system} set for each event.  What a
legacy C{log.msg}/C{log.err} made during an event sees is the same
mapping as before, and every reader copies it (C{log.msg},
C{log.callWithContext}).

The poll also ends with the sends its events asked for (L{HELD}): a
transport of L{lbproxy.transports} that is asked to write while the poll's
events are dispatched is not registered for writability (two
C{epoll_ctl} calls, and the write waits for the next poll); it is put in
L{HELD} and, once every ready descriptor has been handled, given the
reactor's own handling of a writability event (C{_doReadOrWrite} with
C{EPOLLOUT}: C{doWrite}, and a failure or a finished close handled as the
reactor handles it), all of the poll's sends together.  What a C{send}
does not take is left to Twisted's path.  A pause asked for while an event
is handled (C{pauseProducing}) is applied when that event is done, unless
resumed before (Twisted's HTTP client pauses a response's connection from
the end of its head until its body is taken, which the proxy does within
the same read).
"""

from __future__ import annotations

import errno
from typing import Any, Callable, Dict, List, Tuple

from twisted.internet.epollreactor import EPollReactor
from twisted.python import context, log
from twisted.python.log import ILogContext

from lbproxy._twisted import epoll_parts

#: What C{callWithLogger} logs as C{system} when C{logPrefix()} raises.
BUGGY_PREFIX = "(buggy logPrefix method)"


class Held:
    """
    What the events of the poll being dispatched asked for and is held
    until they are handled (see the module's description).

    One serves the process: a reactor dispatches one poll at a time, and
    it is empty whenever no poll is being dispatched.

    @ivar active: The reactor whose poll's events are being dispatched
        (C{None} when none is): only its own connections are held.
    @ivar writes: The transports to send for when the poll's events are
        handled.
    @ivar pauses: The transports to pause when the event being handled is.
    """

    def __init__(self) -> None:
        self.active: Any = None
        self.writes: List[Any] = []
        self.pauses: List[Any] = []

    def apply_pauses(self) -> None:
        """Pause what was paused, and not resumed, during the event handled."""
        pauses, self.pauses = self.pauses, []
        for transport in pauses:
            transport.apply_pause()

    def send(
        self, do_read_or_write: Callable[[Any, int, int], object], logged: Dict[str, Any]
    ) -> None:
        """
        Give every held transport the reactor's handling of a writability
        event, as L{dispatch} gives an event (C{system} naming it).
        """
        writes, self.writes = self.writes, []
        err = log.err
        for transport in writes:
            if not transport.write_held:
                continue  # stopped writing, aborted or lost meanwhile
            try:
                prefix = transport.logPrefix()
            except KeyboardInterrupt:
                raise
            except BaseException:
                prefix = BUGGY_PREFIX
                err(system=prefix)
            logged["system"] = prefix
            try:
                transport.send_held(do_read_or_write)
            except KeyboardInterrupt:
                raise
            except BaseException:
                err(system=prefix)


#: The process's L{Held}.
HELD = Held()


def install_quick_dispatch(reactor: Any) -> bool:
    """
    Make C{reactor} dispatch its ready descriptors with one logging context
    per poll; C{True} when it does (already did), C{False} when it is not
    Twisted's epoll reactor with Twisted's own poll (then it is unchanged).
    """
    if isinstance(vars(reactor).get("doIteration"), QuickPoll):
        return True
    kind = type(reactor)
    if not (
        isinstance(reactor, EPollReactor)
        and kind.doPoll is EPollReactor.doPoll
        and kind.doIteration is EPollReactor.doPoll
    ):
        return False
    reactor.doIteration = reactor.doPoll = QuickPoll(reactor)  # type: ignore[method-assign]
    return True


class QuickPoll:
    """The reactor's C{doPoll(timeout)}, as Twisted's epoll reactor does it but for the context."""

    def __init__(self, reactor: EPollReactor) -> None:
        self.reactor = reactor

    def __call__(self, timeout: Any) -> None:
        poller, selectables, do_read_or_write = epoll_parts(self.reactor)
        if timeout is None:
            timeout = -1  # wait until something is ready
        try:
            ready = poller.poll(timeout, len(selectables))
        except OSError as e:
            if e.errno == errno.EINTR:
                return
            raise
        if ready:
            logged = context.get(ILogContext).copy()
            context.call(
                {ILogContext: logged},
                dispatch_all,
                self.reactor,
                ready,
                selectables,
                do_read_or_write,
                logged,
            )


def dispatch_all(
    reactor: Any,
    ready: List[Tuple[int, int]],
    selectables: Dict[int, Any],
    do_read_or_write: Callable[[Any, int, int], object],
    logged: Dict[str, Any],
) -> None:
    """L{dispatch}, then the sends the events asked for (L{HELD})."""
    held = HELD
    held.active = reactor
    try:
        dispatch(ready, selectables, do_read_or_write, logged)
    finally:
        held.active = None
        if held.pauses:
            held.apply_pauses()
        if held.writes:
            held.send(do_read_or_write, logged)


def dispatch(
    ready: List[Tuple[int, int]],
    selectables: Dict[int, Any],
    do_read_or_write: Callable[[Any, int, int], object],
    logged: Dict[str, Any],
) -> None:
    """
    Hand each C{(fd, event)} of C{ready} to C{do_read_or_write} as
    C{callWithLogger} would, with C{logged} (the pushed log context) naming
    the descriptor as C{system} for the call.
    """
    err = log.err
    held = HELD
    for fd, event in ready:
        try:
            selectable = selectables[fd]
        except KeyError:
            continue
        try:
            prefix = selectable.logPrefix()
        except KeyboardInterrupt:
            raise
        except BaseException:
            prefix = BUGGY_PREFIX
            err(system=prefix)
        logged["system"] = prefix
        try:
            do_read_or_write(selectable, fd, event)
        except KeyboardInterrupt:
            raise
        except BaseException:
            err(system=prefix)
        if held.pauses:
            held.apply_pauses()
