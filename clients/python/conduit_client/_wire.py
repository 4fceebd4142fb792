"""What the client reads out of and writes into the service's messages:
the generated stubs, errors as the exceptions asyncio raises, and
addresses as asyncio's tuples."""
from __future__ import annotations

from typing import Optional, Tuple, Union

from ._proto.conduit.v1 import conduit_pb2 as pb  # noqa: F401  (re-exported)
from ._proto.conduit.v1 import conduit_pb2_grpc as pb_grpc  # noqa: F401

#: The most data one command carries: bigger writes are split, so that every
#: message stays well under the service's --max-message-size (256 KiB at least).
MAX_COMMAND_DATA = 64 * 1024

Address = Union[Tuple[str, int], Tuple[str, int, int, int], str]


class ServiceUnreachableError(ConnectionError):
    """The service itself could not be reached (nothing listening at its
    address, a name that does not resolve, a network in between): not a
    refusal by a target, which is ConnectionRefusedError as in asyncio."""


def call_error(error) -> Exception:
    """A failed unary call (grpc.aio.AioRpcError) as an exception of the
    caller's terms."""
    import grpc
    code, details = error.code(), error.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return ServiceUnreachableError(f"cannot reach the service: {details}")
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return PermissionError(f"the service refused the call ({code.name}): {details}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ValueError(f"the service refused the call ({code.name}): {details}")
    return ConnectionError(f"the call failed ({code.name}): {details}")


def exception_of(error: "pb.Error") -> Exception:
    """An Error as asyncio would raise it: an OSError whose errno picks the
    subclass (ConnectionRefusedError, ConnectionResetError, ...), else a
    ConnectionError with the service's text."""
    if error.errno_value:
        message = error.message
        # The service's text ends with strerror already; OSError adds it too.
        suffix = ": " + _strerror(error.errno_value)
        if message.endswith(suffix):
            message = message[: -len(suffix)]
        return OSError(error.errno_value, f"{_strerror(error.errno_value)} ({message})")
    return ConnectionError(error.message)


def exception_or_none(error: "pb.Error") -> Optional[Exception]:
    """exception_of for an Error that may be unset (a clean end: None)."""
    return exception_of(error) if error.message or error.errno_value else None


def broken_session(code, details: str) -> Optional[Exception]:
    """How a call's end reads to a transport that was open: nothing after a
    clean end (OK), else the session broke off."""
    import grpc
    if code == grpc.StatusCode.OK:
        return None
    return ConnectionResetError(f"the session with the service broke off ({code.name}): {details}")


def _strerror(code: int) -> str:
    import os
    return os.strerror(code)


def parse_address(text: str) -> Optional[Address]:
    """"127.0.0.1:80" -> ('127.0.0.1', 80); "[::1]:80" -> ('::1', 80, 0, 0)
    (asyncio's shapes); a Unix path as it is; None when empty."""
    if not text:
        return None
    if text.startswith("["):
        host, _, port = text[1:].rpartition("]:")
        if port.isdigit():
            return (host, int(port), 0, 0)
        return text
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and host and ":" not in host and not host.startswith("/"):
        return (host, int(port))
    return text


def host_port(address) -> "pb.HostPort":
    """(host, port[, ...]) as the proto's HostPort."""
    if not isinstance(address, (tuple, list)) or len(address) < 2:
        raise TypeError(f"an address is (host, port), not {address!r}")
    return pb.HostPort(host=str(address[0]), port=int(address[1]))
