"""
What a failed attempt's C{Failure} means: classified once into a
L{lbproxy.upstream.retry.Kind}, and described for a log line.
"""

from __future__ import annotations

from typing import cast

from OpenSSL.SSL import Error as SSLError
from service_identity.exceptions import VerificationError as CertificateVerificationError
from twisted.internet import error
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure

from lbproxy._twisted import RequestGenerationFailed, RequestNotSent, WrapperException
from lbproxy.upstream.backend import UnsendableRequest
from lbproxy.upstream.retry import Kind

#: Failures of the TLS handshake with a backend: nothing was sent yet.
_TLS_FAILURES = (SSLError, CertificateVerificationError)


def was_not_sent(failure: Failure) -> bool:
    """
    Whether a failed attempt is known not to have delivered the request to
    the server (it could not connect, or the TLS handshake failed), so that
    trying another server cannot make it act twice.
    """
    if failure.check(error.ConnectError, error.TimeoutError, RequestNotSent):
        return True
    if isinstance(failure.value, WrapperException):
        return any(reason.check(*_TLS_FAILURES) for reason in failure.value.reasons)
    return False


def is_client_error(failure: Failure) -> bool:
    """
    Whether a failed attempt failed because of the request itself: Twisted's
    client would not send it (L{UnsendableRequest}), or could not generate
    it (C{RequestGenerationFailed}: its headers, or the body that the client
    was sending).  An attempt cancelled while its body was being sent also
    ends as C{RequestGenerationFailed}: that one is not the request's fault.
    """
    if failure.check(UnsendableRequest):
        return True
    if failure.check(RequestGenerationFailed):
        reasons = cast(RequestGenerationFailed, failure.value).reasons
        return not any(reason.check(CancelledError) for reason in reasons)
    return False


def classify(failure: Failure, timed_out: bool, upload_stalled: bool) -> Kind:
    """
    How an attempt failed.

    @param timed_out: The proxy cancelled it: no response within
        response_timeout.
    @param upload_stalled: The proxy cancelled it: the client's body
        stalled.
    """
    if upload_stalled:
        return Kind.UPLOAD_STALLED
    if timed_out:
        return Kind.TIMED_OUT
    if is_client_error(failure):
        return Kind.UNSENDABLE
    if failure.check(CancelledError):
        return Kind.CANCELLED
    if was_not_sent(failure):
        return Kind.NOT_SENT
    return Kind.FAILED


def describe(failure: Failure) -> str:
    """
    A short description of why an attempt failed, for a log line.
    """
    value = failure.value
    if isinstance(value, WrapperException):
        inner = [describe(reason) for reason in value.reasons]
        return f"{type(value).__name__}: {'; '.join(inner)}"
    text = str(value).strip()
    return f"{type(value).__name__}: {text}" if text else type(value).__name__


__all__ = ["classify", "describe", "is_client_error", "was_not_sent"]
