"""
lbproxy.dispatch: the epoll reactor's poll with one legacy log context per
poll logs what Twisted's own poll logs, with the same C{system}; each case
runs on a fresh epoll reactor with Twisted's poll and on one with lbproxy's,
over real sockets, and compares what reached the log.
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet import protocol
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.pollreactor import PollReactor
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, formatEventAsClassicLogText, globalLogPublisher
from twisted.python import log
from twisted.trial import unittest

from lbproxy.dispatch import BUGGY_PREFIX, QuickPoll, install_quick_dispatch

#: How many polls a case may take before it counts as stuck.
MOST_POLLS = 200


def fresh_reactor(case: unittest.TestCase, quick: bool) -> EPollReactor:
    """A new epoll reactor (not the one the tests run on), closed with C{case}."""
    reactor = EPollReactor()
    if quick:
        case.assertTrue(install_quick_dispatch(reactor))

    def close() -> None:
        reactor.disconnectAll()
        waker = getattr(reactor, "waker", None)
        if waker is not None:
            waker.connectionLost(None)
        reactor._poller.close()  # type: ignore[attr-defined]

    case.addCleanup(close)
    return reactor


def poll_until(reactor: EPollReactor, done: Callable[[], bool]) -> None:
    for _ in range(MOST_POLLS):
        if done():
            return
        reactor.iterate(0.05)
    raise AssertionError("the reactor never got there")


def line(event: Dict[str, Any]) -> str:
    """The line twistd's log would show for C{event} (its first line), without the time."""
    text = formatEventAsClassicLogText(event, formatTime=lambda when: "-") or ""
    return text.splitlines()[0]


def failure_kind(event: Dict[str, Any]) -> Optional[str]:
    failure = event.get("log_failure", event.get("failure"))
    return None if failure is None else failure.type.__name__


class Descriptor:
    """One end of a socket pair as a reactor's reader: C{doRead} runs C{action}."""

    def __init__(
        self,
        case: unittest.TestCase,
        prefix: str,
        action: Callable[[], object],
        lost: Callable[[], object] = lambda: None,
    ) -> None:
        self.sock, self.peer = socket.socketpair()
        case.addCleanup(self.sock.close)
        case.addCleanup(self.peer.close)
        self.prefix = prefix
        self.action = action
        self.lost = lost
        self.reads = 0
        self.lost_with: List[Any] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        if self.prefix is BUGGY_PREFIX:
            raise RuntimeError("no prefix")
        return self.prefix

    def doRead(self) -> object:
        self.sock.recv(100)
        self.reads += 1
        return self.action()

    def connectionLost(self, reason: Any) -> None:
        self.lost_with.append(reason)
        self.lost()


def watch(case: unittest.TestCase, reactor: EPollReactor, descriptor: Descriptor) -> None:
    """C{reactor} reads C{descriptor} until C{case} ends (before its sockets close)."""
    reactor.addReader(descriptor)  # type: ignore[arg-type]
    case.addCleanup(reactor.removeReader, descriptor)  # type: ignore[arg-type]


def raise_zero() -> None:
    raise ZeroDivisionError("read")


class DispatchCases(unittest.TestCase):
    def logged(self, case: Callable[[EPollReactor], None], quick: bool) -> List[Dict[str, Any]]:
        """The log events of C{case} run on a fresh reactor; its errors flushed."""
        reactor = fresh_reactor(self, quick)
        events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        try:
            case(reactor)
        finally:
            globalLogPublisher.removeObserver(events.append)
        self.flushLoggedErrors(ZeroDivisionError, RuntimeError, KeyError)
        return events

    def compare(self, case: Callable[[EPollReactor], None]) -> List[Tuple[str, Any, Any]]:
        """
        What C{case} logs as C{(line, system, failure kind)}: the same with
        Twisted's poll and with lbproxy's (the traceback's frames above
        C{_doReadOrWrite} are the poll's own and may differ).
        """
        seen = []
        for quick in (False, True):
            events = self.logged(case, quick)
            seen.append([(line(e), e.get("log_system"), failure_kind(e)) for e in events])
        self.assertEqual(seen[1], seen[0])
        return seen[1]

    def one_read(self, reactor: EPollReactor, *descriptors: Descriptor) -> None:
        for descriptor in descriptors:
            watch(self, reactor, descriptor)
            descriptor.peer.send(b"x")
        poll_until(reactor, lambda: all(d.reads for d in descriptors))

    def test_a_legacy_message_names_the_descriptor(self) -> None:
        def case(reactor: EPollReactor) -> None:
            self.one_read(reactor, Descriptor(self, "Client,7,127.0.0.1", lambda: log.msg("hi")))
            log.msg("after")

        self.assertEqual(
            self.compare(case),
            [("- [Client,7,127.0.0.1] hi", "Client,7,127.0.0.1", None), ("- [-] after", "-", None)],
        )

    def test_each_descriptor_of_one_poll_has_its_own_system(self) -> None:
        def case(reactor: EPollReactor) -> None:
            first = Descriptor(self, "First,1,127.0.0.1", lambda: log.msg("one"))
            second = Descriptor(self, "Second,2,127.0.0.1", lambda: log.msg("two"))
            for descriptor in (first, second):
                watch(self, reactor, descriptor)
                descriptor.peer.send(b"x")
            reactor.doIteration(0.5)  # both are ready: one poll
            poll_until(reactor, lambda: bool(first.reads and second.reads))

        self.assertEqual(
            sorted(self.compare(case)),
            [
                ("- [First,1,127.0.0.1] one", "First,1,127.0.0.1", None),
                ("- [Second,2,127.0.0.1] two", "Second,2,127.0.0.1", None),
            ],
        )

    def test_a_nested_context_adds_to_the_descriptors(self) -> None:
        def nested() -> None:
            log.callWithContext({"extra": 1}, lambda: log.msg(format="%(extra)s"))

        def case(reactor: EPollReactor) -> None:
            self.one_read(reactor, Descriptor(self, "Nested,3,127.0.0.1", nested))

        self.assertEqual(
            self.compare(case), [("- [Nested,3,127.0.0.1] 1", "Nested,3,127.0.0.1", None)]
        )

    def test_new_style_events_are_unchanged(self) -> None:
        logger = Logger(namespace="lbproxy.test")

        def case(reactor: EPollReactor) -> None:
            self.one_read(reactor, Descriptor(self, "New,4,127.0.0.1", lambda: logger.info("new")))

        self.assertEqual(self.compare(case), [("- [lbproxy.test#info] new", None, None)])

    def test_an_error_in_a_read_is_logged_with_the_descriptors_system(self) -> None:
        lost: List[Descriptor] = []

        def case(reactor: EPollReactor) -> None:
            descriptor = Descriptor(self, "Read,5,127.0.0.1", raise_zero)
            lost.append(descriptor)
            self.one_read(reactor, descriptor)

        self.assertEqual(
            self.compare(case),
            [("- [Read,5,127.0.0.1] Unhandled Error", "Read,5,127.0.0.1", "ZeroDivisionError")],
        )
        self.assertEqual([len(d.lost_with) for d in lost], [1, 1])

    def test_an_error_escaping_the_event_is_logged_with_the_descriptors_system(self) -> None:
        def case(reactor: EPollReactor) -> None:
            descriptor = Descriptor(self, "Lost,6,127.0.0.1", raise_zero, lost=lambda: {}[1])
            self.one_read(reactor, descriptor)
            log.msg("after")

        self.assertEqual(
            self.compare(case),
            [
                ("- [Lost,6,127.0.0.1] Unhandled Error", "Lost,6,127.0.0.1", "ZeroDivisionError"),
                ("- [Lost,6,127.0.0.1] Unhandled Error", "Lost,6,127.0.0.1", "KeyError"),
                ("- [-] after", "-", None),
            ],
        )

    def test_a_failing_log_prefix_is_logged_and_named(self) -> None:
        def case(reactor: EPollReactor) -> None:
            self.one_read(reactor, Descriptor(self, BUGGY_PREFIX, lambda: log.msg("still")))

        self.assertEqual(
            self.compare(case),
            [
                (f"- [{BUGGY_PREFIX}] Unhandled Error", BUGGY_PREFIX, "RuntimeError"),
                (f"- [{BUGGY_PREFIX}] still", BUGGY_PREFIX, None),
            ],
        )


class _Exploding(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        log.msg("read", len(data))
        raise ZeroDivisionError("bad bytes")


class OverTCPTests(unittest.TestCase):
    def test_an_error_in_a_protocol_carries_the_connections_prefix(self) -> None:
        """
        A server connection's protocol raising in C{dataReceived}: twistd's
        log line reads C{[_Exploding,0,127.0.0.1] Unhandled Error} with
        either poll.
        """
        seen = []
        for quick in (False, True):
            reactor = fresh_reactor(self, quick)
            factory = protocol.Factory.forProtocol(_Exploding)
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")
            client = socket.create_connection(("127.0.0.1", port.getHost().port))
            self.addCleanup(client.close)
            events: List[Dict[str, Any]] = []
            globalLogPublisher.addObserver(events.append)
            try:
                client.sendall(b"GET / HTTP/1.1\r\n\r\n")
                poll_until(reactor, lambda: any(e.get("isError") for e in events))  # noqa: B023
            finally:
                globalLogPublisher.removeObserver(events.append)
            self.flushLoggedErrors(ZeroDivisionError)
            seen.append([line(e) for e in events if "log_system" in e])
        self.assertEqual(seen[1], seen[0])
        self.assertEqual(
            seen[1],
            ["- [_Exploding,0,127.0.0.1] read 18", "- [_Exploding,0,127.0.0.1] Unhandled Error"],
        )


class InstallTests(unittest.TestCase):
    def test_the_epoll_reactor_takes_it_once(self) -> None:
        reactor = fresh_reactor(self, quick=False)
        self.assertTrue(install_quick_dispatch(reactor))
        poll = reactor.doIteration
        self.assertIsInstance(poll, QuickPoll)
        self.assertIs(reactor.doPoll, poll)
        self.assertTrue(install_quick_dispatch(reactor))
        self.assertIs(reactor.doIteration, poll)

    def test_other_reactors_are_left_alone(self) -> None:
        class OwnPoll(EPollReactor):
            def doPoll(self, timeout: Any) -> None:
                pass

            doIteration = doPoll

        memory = MemoryReactorClock()
        self.assertFalse(install_quick_dispatch(memory))
        polling = PollReactor()
        self.addCleanup(polling.disconnectAll)
        self.addCleanup(lambda: polling.waker.connectionLost(None))  # type: ignore[attr-defined]
        self.assertFalse(install_quick_dispatch(polling))
        own = OwnPoll()
        self.addCleanup(own._poller.close)  # type: ignore[attr-defined]
        self.addCleanup(lambda: own.waker.connectionLost(None))  # type: ignore[attr-defined]
        self.assertFalse(install_quick_dispatch(own))
        self.assertNotIsInstance(vars(own).get("doIteration"), QuickPoll)
