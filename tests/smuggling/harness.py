"""
Running payloads through the proxy and judging what reached the backend.

Each payload goes on a raw client connection of its own, from a loopback
source address of its own (127.x.y.z): the proxy appends that address to
C{X-Forwarded-For}, so every request a backend receives is attributed to
the payload that caused it, even with many payloads in flight at once.

The recording backend keeps the exact bytes of every request it receives,
split leniently (the proxy's client always frames with Content-Length or
chunked), and answers each with an empty 200 that names the target it
received (C{X-Target-Hex}), so that the client can tell which request each
response answers.  The strict judgement happens afterwards, in L{judge}.
"""

from __future__ import annotations

import binascii
import difflib
import re
from typing import Dict, List, Optional, Tuple

import attr
from twisted.internet import defer, protocol, reactor
from twisted.internet.interfaces import IDelayedCall, IListeningPort

from tests.smuggling import reference
from tests.smuggling.payloads import Payload

HOST = "127.0.0.1"
#: Sent after a payload that the reference reads as complete and leaving
#: the connection open: if the proxy read the payload differently, this
#: request is swallowed, altered or answered out of turn.
PROBE = b"GET /__probe__ HTTP/1.1\r\nHost: probe.test\r\n\r\n"
#: How long a client waits for the proxy to answer everything or close;
#: only a proxy that reads a payload differently from the reference waits.
PAYLOAD_TIMEOUT = 5.0
#: Statuses a proxy may use to refuse a client's bytes.
REFUSAL_STATUSES = frozenset(range(400, 500)) | {501, 505}
_XFF = re.compile(rb"\r\nx-forwarded-for:([^\r\n]*)", re.IGNORECASE)


def source_address(index: int) -> str:
    """The loopback address payload C{index} connects from."""
    return f"127.{10 + index // 62500}.{(index // 250) % 250 + 1}.{index % 250 + 1}"


# -- The recording backend ---------------------------------------------------------


@attr.s(auto_attribs=True)
class Forwarded:
    """Bytes a backend received: one request, or bytes it could not frame."""

    connection: int
    source: Optional[str]
    raw: bytes
    framed: bool = True
    #: The backend connection closed with these bytes not yet a whole
    #: request: the proxy gave up on a request it had begun to stream.
    cut: bool = False


class RecordingBackend(protocol.Factory):
    noisy = False

    def __init__(self) -> None:
        self.received: List[Forwarded] = []
        self.open: List[_Recorder] = []
        self.connections = 0
        self.port: IListeningPort = reactor.listenTCP(0, self, interface=HOST)
        self.url = f"http://{HOST}:{self.port.getHost().port}"

    def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
        self.connections += 1
        return _Recorder(self, self.connections)

    def pending(self) -> bool:
        """Whether a connection holds bytes that are not yet a whole request."""
        return any(p.buffer for p in self.open)

    def by_source(self) -> Dict[Optional[str], List[Forwarded]]:
        out: Dict[Optional[str], List[Forwarded]] = {}
        for f in self.received:
            out.setdefault(f.source, []).append(f)
        return out

    def stop(self) -> defer.Deferred:
        closing = [p.closed for p in self.open]
        for p in list(self.open):
            p.transport.abortConnection()
        return defer.gatherResults(closing + [defer.maybeDeferred(self.port.stopListening)])


class _Unframed(Exception):
    pass


def _source(head: bytes) -> Optional[str]:
    found = _XFF.findall(head)
    if not found:
        return None
    return found[-1].split(b",")[-1].strip().decode("ascii", "replace")


def _lenient_end(buf: bytes) -> Optional[int]:
    """Where the first request in C{buf} ends, L{None} if it is not whole."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > 1 << 20:
            raise _Unframed()
        return None
    pos = end + 4
    length, chunked = 0, False
    for line in buf[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            if not value.strip().isdigit():
                raise _Unframed()
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    if not chunked:
        return pos + length if len(buf) >= pos + length else None
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(buf[pos:eol].split(b";")[0].strip() or b"x", 16)
        except ValueError:
            raise _Unframed() from None
        pos = eol + 2
        if size == 0:
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                pos, blank = eol + 2, eol == pos
                if blank:
                    return pos
        if len(buf) < pos + size + 2:
            return None
        pos += size + 2


class _Recorder(protocol.Protocol):
    def __init__(self, factory: RecordingBackend, number: int) -> None:
        self.factory = factory
        self.number = number
        self.buffer = b""
        self.last_source: Optional[str] = None
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.factory.open.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while self.buffer:
            try:
                end = _lenient_end(self.buffer)
            except _Unframed:
                self._unframed()
                return
            if end is None:
                return
            raw, self.buffer = self.buffer[:end], self.buffer[end:]
            source = _source(raw[: raw.find(b"\r\n\r\n") + 2]) or self.last_source
            self.last_source = source
            self.factory.received.append(Forwarded(self.number, source, raw))
            target = raw.split(b"\r\n", 1)[0].split(b" ")[1:2] or [b""]
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Target-Hex: %s\r\n\r\n"
                % binascii.hexlify(target[0])
            )

    def _unframed(self, cut: bool = False) -> None:
        head = self.buffer[: self.buffer.find(b"\r\n\r\n") + 2]
        source = _source(head) or self.last_source
        self.factory.received.append(Forwarded(self.number, source, self.buffer, False, cut))
        self.buffer = b""
        self.transport.loseConnection()

    def connectionLost(self, reason: object = None) -> None:
        if self.buffer:
            self._unframed(cut=True)
        if self in self.factory.open:
            self.factory.open.remove(self)
        if not self.closed.called:
            self.closed.callback(None)


# -- The client ----------------------------------------------------------------------


@attr.s(auto_attribs=True)
class Answer:
    """What a client got back: final responses, and how the exchange ended."""

    responses: List[Tuple[int, Dict[bytes, bytes]]] = attr.Factory(list)
    ended: str = "closed by the proxy"  # or "all answered", "timed out", "refused"
    junk: bytes = b""


def _responses(buf: bytes) -> Tuple[List[Tuple[int, Dict[bytes, bytes]]], bytes]:
    """The whole final responses at the start of C{buf}, and the rest."""
    out = []
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return out, buf
        lines = buf[:end].split(b"\r\n")
        try:
            status = int(lines[0].split(b" ")[1])
        except (IndexError, ValueError):
            return out, buf
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"0") or b"0")
        if len(buf) < end + 4 + length:
            return out, buf
        buf = buf[end + 4 + length :]
        if status >= 200:
            out.append((status, headers))


class _Client(protocol.Protocol):
    def __init__(self, data: bytes, expected: int, done: defer.Deferred) -> None:
        self.data = data
        self.expected = expected
        self.done = done
        self.answer = Answer()
        self.buffer = b""
        self.timer: Optional[IDelayedCall] = None

    def connectionMade(self) -> None:
        self.timer = reactor.callLater(PAYLOAD_TIMEOUT, self._time_out)
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        got, self.buffer = _responses(self.buffer + data)
        self.answer.responses.extend(got)
        if len(self.answer.responses) >= self.expected:
            self.answer.ended = "all answered"
            self.transport.loseConnection()

    def _time_out(self) -> None:
        self.timer = None
        self.answer.ended = "timed out"
        self.transport.abortConnection()

    def connectionLost(self, reason: object = None) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.answer.junk = self.buffer
        if not self.done.called:
            self.done.callback(self.answer)


class _ClientFactory(protocol.ClientFactory):
    noisy = False

    def __init__(self, data: bytes, expected: int) -> None:
        self.done: defer.Deferred[Answer] = defer.Deferred()
        self.data = data
        self.expected = expected

    def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
        return _Client(self.data, self.expected, self.done)

    def clientConnectionFailed(self, connector, reason):  # type: ignore[no-untyped-def]
        self.done.callback(Answer(ended=f"connection failed: {reason.getErrorMessage()}"))


# -- Running and judging ----------------------------------------------------------------


@attr.s(auto_attribs=True)
class Case:
    """One payload on the wire, what it means, and what happened to it."""

    payload: Payload
    source: str
    wire: bytes
    expected: reference.Reading
    answer: Optional[Answer] = None


def prepare(payloads: List[Payload], first_index: int = 0) -> List[Case]:
    cases = []
    for i, payload in enumerate(payloads):
        reading = reference.parse(payload.data)
        wire = payload.data
        if reading.persistent:
            wire += PROBE
            reading = reference.parse(wire)
        cases.append(Case(payload, source_address(first_index + i), wire, reading))
    return cases


def expected_answers(reading: reference.Reading) -> int:
    return len(reading.messages) + (1 if reading.refusal is not None else 0)


def send(port: int, case: Case) -> defer.Deferred:
    factory = _ClientFactory(case.wire, expected_answers(case.expected))
    reactor.connectTCP(HOST, port, factory, timeout=PAYLOAD_TIMEOUT, bindAddress=(case.source, 0))

    def keep(answer: Answer) -> None:
        case.answer = answer

    return factory.done.addCallback(keep)


def run(port: int, cases: List[Case], parallel: int = 16) -> defer.Deferred:
    """Send every case, at most C{parallel} at a time; fires when all ended."""
    limit = defer.DeferredSemaphore(parallel)
    return defer.gatherResults([limit.run(send, port, case) for case in cases])


def _target_path(target: bytes) -> bytes:
    try:
        return reference._target(b"GET", target)[1]
    except reference.Refused:
        return target


def judge(case: Case, forwarded: List[Forwarded]) -> List[str]:
    """
    Why the proxy's handling of a case is wrong, or an empty list.

    (a) When the reference refuses the stream, nothing from the refused
    request on may reach the backend; (b) every request that reaches the
    backend is itself strictly valid, with exactly one framing and one host,
    and the backend's requests are the reference's, in order (method,
    origin-form target, authority, body); (c) the client is answered: a
    refusal with a 4xx (or 501/505), never a 5xx of a failed forward, each
    answer for the request it belongs to, and no waiting on bytes that the
    reference says are complete.
    """
    problems: List[str] = []
    expected = case.expected
    got: List[reference.Message] = []
    for f in forwarded:
        if f.cut and f is forwarded[-1]:
            # A request the proxy had begun to stream and then gave up on
            # (its body turned out to be invalid, or its client left): the
            # backend saw the connection close before the request was
            # whole, so it cannot take it for one.  Its head must be valid.
            reading = reference.parse(f.raw, as_backend=True)
            if not reading.incomplete or reading.messages:
                why = reading.refusal or "more than one request"
                problems.append(f"a cut-off forwarded request is not valid ({why}): {_clip(f.raw)}")
            continue
        if not f.framed:
            problems.append(f"the backend received bytes it cannot frame: {_clip(f.raw)}")
            continue
        reading = reference.parse(f.raw, as_backend=True)
        if reading.refusal is not None or reading.incomplete or len(reading.messages) != 1:
            why = reading.refusal or "not exactly one whole request"
            problems.append(f"a forwarded request is not strictly valid ({why}): {_clip(f.raw)}")
            continue
        got.append(reading.messages[0])
    problems += reference.same_requests(expected.messages + expected.after_close, got)
    answer = case.answer
    if answer is None:
        return problems + ["the client never finished"]
    statuses = [status for status, _ in answer.responses]
    if answer.ended == "timed out" and expected.refusal is None:
        # (Waiting on an invalid stream is no harm while nothing of it is
        # forwarded: twisted.web takes a header line only once the next one
        # has come, so a head spoiled at its very end waits for more.)
        problems.append(
            f"the proxy neither answered everything nor closed in {PAYLOAD_TIMEOUT:g}s: it waits for bytes"
            " that the reference says are not coming"
        )
    elif answer.ended.startswith("connection failed"):
        problems.append(answer.ended)
    for status in statuses:
        if status >= 500 and status not in REFUSAL_STATUSES:
            problems.append(f"the proxy answered {status}: the client's bytes failed a forward")
    refusals = [s for s in statuses if s in REFUSAL_STATUSES]
    if len(got) < len(expected.messages) and not refusals and answer.ended != "closed by the proxy":
        problems.append(
            f"{len(expected.messages) - len(got)} requests never reached the backend"
            " and nothing refused them"
        )
    for i, (status, headers) in enumerate(answer.responses):
        if status != 200 or i >= len(expected.messages):
            continue
        echoed = binascii.unhexlify(headers.get(b"x-target-hex", b""))
        if _target_path(echoed) != expected.messages[i].path:
            problems.append(f"response {i + 1} answers {echoed!r}, not request {i + 1}")
    if problems:
        problems.append(_diff(expected, got))
    return problems


def _clip(data: bytes, limit: int = 300) -> str:
    text = repr(data[:limit])[2:-1]
    return text + ("..." if len(data) > limit else "")


def _diff(expected: reference.Reading, got: List[reference.Message]) -> str:
    want = expected.describe().splitlines()
    have = [m.describe() for m in got]
    lines = difflib.unified_diff(want, have, "reference", "backend", lineterm="", n=5)
    return "\n".join("      " + line for line in lines)


def report(case: Case, problems: List[str]) -> str:
    statuses = [s for s, _ in case.answer.responses] if case.answer else []
    out = [
        f"[{case.payload.family}] {case.payload.name}",
        f"    payload: {_clip(case.wire, 400)}",
        f"    client saw: {statuses} ({case.answer.ended if case.answer else '?'})",
    ]
    out += ["    " + p for p in problems[:-1]]
    out.append(problems[-1])
    return "\n".join(out)


def cause(case: Case, problems: List[str]) -> str:
    """A short name for why a case failed, to count failures by class."""
    reason = case.expected.refusal
    if reason is None:
        for p in problems:
            if p.startswith("a forwarded request is not strictly valid ("):
                reason = p[len("a forwarded request is not strictly valid (") :]
                break
        else:
            reason = re.sub(r"\d+", "N", problems[0])
    return re.split(r": |\)", reason)[0]
