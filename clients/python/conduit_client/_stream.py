"""asyncio.Transport over a connection session, or over one connection of a
server session: a protocol written for loop.create_connection runs on it
unchanged, and sees what it would see locally (SPEC RS1-RS7).

The session opens with keep_open_after_eof and start_paused, so that
eof_received's answer and a pause_reading() inside connection_made are the
protocol's own; what asyncio answers at the call is answered here, from
local state: write() after write_eof() raises, writes after close() or the
loss are dropped, is_closing() is true from close() on, abort() drops what
waits and goes ahead of it. Data that arrives while the protocol has
reading paused waits here until it resumes.

    opening --connection_made--> open --close()/abort()--> closing
       |                           |                          |
       |                           +--connection_lost-----> closed <--+
       +--open_failed / refused--> the opener raises
"""
from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, Optional

from ._flow import WriteFlow
from ._wire import broken_session, exception_or_none, MAX_COMMAND_DATA, exception_of, parse_address, pb

logger = logging.getLogger("conduit_client")

_OPENING, _OPEN, _CLOSING, _CLOSED = "opening", "open", "closing", "closed"


def feed(protocol, data: bytes) -> None:
    """data_received, or a BufferedProtocol's get_buffer/buffer_updated."""
    if not isinstance(protocol, asyncio.BufferedProtocol):
        protocol.data_received(data)
        return
    view = memoryview(data)
    while view:
        buffer = memoryview(protocol.get_buffer(len(view)))
        if not len(buffer):
            raise RuntimeError("get_buffer() returned an empty buffer")
        n = min(len(buffer), len(view))
        buffer[:n] = view[:n]
        protocol.buffer_updated(n)
        view = view[n:]


class RemoteTransport(asyncio.Transport):
    """A stream transport whose socket is on the service's host."""

    def __init__(self, loop, call, connection_id: int = 0, tls: bool = False):
        super().__init__()
        self._loop, self._call, self._connection_id, self._tls = loop, call, connection_id, tls
        self._protocol = None
        self._state = _OPENING
        # After abort() the protocol hears nothing of the buffer again, as
        # asyncio's _force_close drops it without a resume_writing.
        self._flow = WriteFlow(loop, self,
                               lambda: self._protocol if self._state != _CLOSED and not self._aborted else None)
        self._paused_reading = False  # as the protocol sees it
        self._remote_paused = True    # as the service does: opened paused
        self._in_connection_made = False
        self._held = collections.deque()  # data / eof events that came while paused
        self._eof_written = False
        self._aborted = False
        self._forced_error: Optional[BaseException] = None
        self._extra: dict = {}
        self._conn_lost_writes = 0
        self._close_held = False  # close() came while writes still waited here

    # ---- asyncio.BaseTransport ----
    def get_extra_info(self, name, default=None):
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        return self._state != _OPEN

    def close(self) -> None:
        if self._state != _OPEN:
            return
        self._state = _CLOSING
        # While writes wait here, they are the transport's buffer: asyncio
        # lets later writes join it until it drains, so the close goes once
        # they are all handed over (on_sent), after any that join them.
        if self.get_write_buffer_size() > 0:
            self._close_held = True
        else:
            self._send(close=pb.Close())

    def set_protocol(self, protocol) -> None:
        self._protocol = protocol

    def get_protocol(self):
        return self._protocol

    # ---- asyncio.ReadTransport ----
    def is_reading(self) -> bool:
        return self._state == _OPEN and not self._paused_reading

    def pause_reading(self) -> None:
        if not self.is_reading():
            return
        self._paused_reading = True
        self._sync_remote_reading()

    def resume_reading(self) -> None:
        if self._state != _OPEN or not self._paused_reading:
            return
        self._paused_reading = False
        self._sync_remote_reading()
        self._deliver_held()

    # ---- asyncio.WriteTransport ----
    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self._flow.set_limits(high, low)
        self._flow.maybe_pause(self.get_write_buffer_size())

    def get_write_buffer_limits(self):
        return self._flow.limits()

    def get_write_buffer_size(self) -> int:
        """What this connection has waiting to go to the service."""
        return self._call.queued(self._connection_id)

    def write(self, data) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data:
            return
        # After close() a write joins what is still buffered, as asyncio's
        # does (SPEC RS4): here while the close is held, else the service's
        # transport decides (it drops it once nothing was buffered).
        if self._state != _OPEN and (self._state != _CLOSING or self._aborted):
            self._conn_lost_writes += 1
            if self._conn_lost_writes >= 5:
                logger.warning("socket.send() raised exception.")
            return
        view = memoryview(data).cast("B")
        for at in range(0, len(view), MAX_COMMAND_DATA):
            self._send(write=bytes(view[at:at + MAX_COMMAND_DATA]))
        self._flow.maybe_pause(self.get_write_buffer_size())

    def writelines(self, list_of_data) -> None:
        """One write of everything."""
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        if self._tls:
            raise NotImplementedError("SSL/TLS transports cannot write EOF (no half-close)")
        if self._state != _OPEN or self._eof_written:
            return
        self._eof_written = True
        self._send(write_eof=pb.WriteEof())

    def can_write_eof(self) -> bool:
        return not self._tls

    def abort(self) -> None:
        if self._state == _CLOSED or self._aborted:
            return
        self._state = _CLOSING
        self._aborted = True
        self._held.clear()
        self._call.abort(self._connection_id)

    # ---- from the session ----
    def made(self, protocol, made: "pb.ConnectionMade") -> None:
        """connection_made (or connection_accepted) arrived: start `protocol`."""
        self._protocol = protocol
        self._state = _OPEN
        for key, text in (("peername", made.peername), ("sockname", made.sockname)):
            address = parse_address(text)
            if address is not None:
                self._extra[key] = address
        if made.tls_cipher:
            self._extra["cipher"] = (made.tls_cipher, made.tls_version, None)
            self._extra["peercert"] = None
        self._in_connection_made = True
        self._call_protocol("Exception in callback protocol.connection_made()", protocol.connection_made, self)
        self._in_connection_made = False
        self._sync_remote_reading()  # opened paused: resume unless the protocol paused

    def on_sent(self) -> None:
        size = self.get_write_buffer_size()
        if self._close_held and size == 0 and not self._aborted and self._state == _CLOSING:
            self._close_held = False
            self._send(close=pb.Close())
        self._flow.maybe_resume(size)

    def on_event(self, event: "pb.Event") -> None:
        kind = event.WhichOneof("kind")
        if kind in ("data_received", "eof_received"):
            # After close() nothing more is received, as asyncio stops reading.
            if self._state != _OPEN:
                return
            if self._paused_reading or self._held:
                self._held.append(event)
            else:
                self._deliver(event)
        elif kind == "pause_writing":
            self._flow.remote(True)
        elif kind == "resume_writing":
            self._flow.remote(False)
        elif kind == "connection_lost":
            error = event.connection_lost.error
            self.lost(exception_or_none(error))
        elif kind == "command_failed":
            logger.warning("the service could not carry out %s: %s", event.command_failed.command,
                           event.command_failed.message)

    def lost(self, exc: Optional[BaseException]) -> None:
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self._held.clear()
        if self._forced_error is not None:
            exc = self._forced_error
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            self._call_protocol("Exception in callback protocol.connection_lost()", protocol.connection_lost, exc)

    # ----
    def _deliver(self, event: "pb.Event") -> None:
        if event.HasField("data_received"):
            self._call_protocol("Fatal error: protocol.data_received() call failed.", feed, self._protocol,
                                event.data_received.data, fatal=True)
            return
        keep_open = self._call_protocol("Fatal error: protocol.eof_received() call failed.",
                                        self._protocol.eof_received, fatal=True)
        if keep_open is _FAILED:
            return
        if keep_open and self._tls:
            logger.warning("returning true from eof_received() has no effect when using ssl")
        if not keep_open:
            self.close()

    def _deliver_held(self) -> None:
        while self._held and not self._paused_reading and self._state == _OPEN:
            self._deliver(self._held.popleft())

    def _sync_remote_reading(self) -> None:
        if self._in_connection_made or self._state != _OPEN:
            return
        if self._paused_reading == self._remote_paused:
            return
        self._remote_paused = self._paused_reading
        if self._paused_reading:
            self._send(pause_reading=pb.PauseReading())
        else:
            self._send(resume_reading=pb.ResumeReading())

    def _send(self, **kind) -> None:
        self._call.command(connection_id=self._connection_id, **kind)

    def _call_protocol(self, failure: str, fn, *args, fatal: bool = False):
        """A protocol callback under asyncio's contract: an exception goes to
        the loop's exception handler; a fatal one aborts the transport, its
        connection_lost carrying the exception."""
        try:
            return fn(*args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler({
                "message": failure, "exception": exc, "transport": self, "protocol": self._protocol})
            if fatal:
                if self._forced_error is None:
                    self._forced_error = exc
                self.abort()
            return _FAILED


_FAILED = object()


def _call_status_error(code, details: str) -> BaseException:
    """What an opener raises when the call ends before the session opened."""
    import grpc
    name = code.name if hasattr(code, "name") else str(code)
    text = f"the service refused the session ({name}): {details}"
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return PermissionError(text)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ValueError(text)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return ConnectionRefusedError(f"cannot reach the service ({name}): {details}")
    return ConnectionError(text)


class ConnectionSession:
    """A connection session's events, for its one RemoteTransport; resolves
    `opened` with (transport, protocol) once connection_made came."""

    def __init__(self, loop, protocol_factory, opened: asyncio.Future, tls: bool):
        self._loop, self._factory, self._opened, self._tls = loop, protocol_factory, opened, tls
        self.transport: Optional[RemoteTransport] = None
        self._open_error: Optional[BaseException] = None
        self._lost_error: Any = False  # False: no connection_lost event yet

    def attach(self, call) -> None:
        self.transport = RemoteTransport(self._loop, call, 0, self._tls)

    def on_event(self, event: "pb.Event") -> None:
        kind = event.WhichOneof("kind")
        if kind == "connection_made":
            try:
                protocol = self._factory()
            except BaseException as exc:  # noqa: BLE001  (the opener raises it)
                self.transport.abort()
                if not self._opened.done():
                    self._opened.set_exception(exc)
                return
            self.transport.made(protocol, event.connection_made)
            if not self._opened.done():
                self._opened.set_result((self.transport, protocol))
        elif kind == "open_failed":
            self._open_error = exception_of(event.open_failed.error)
        elif self.transport is not None:
            self.transport.on_event(event)

    def on_sent(self, connection_id: int) -> None:
        if self.transport is not None:
            self.transport.on_sent()

    def on_end(self, code, details: str) -> None:
        if not self._opened.done():
            self._opened.set_exception(self._open_error or _call_status_error(code, details))
            return
        if self.transport is not None:
            self.transport.lost(broken_session(code, details))


class _ServerSocket:
    """What RemoteServer.sockets lists: where the service listens, with the
    surface of asyncio's TransportSocket that callers use."""

    def __init__(self, address):
        import socket
        self._address = address
        if isinstance(address, str):
            self.family = socket.AF_UNIX
        else:
            self.family = socket.AF_INET6 if len(address) == 4 else socket.AF_INET
        self.type = socket.SOCK_STREAM

    def getsockname(self):
        return self._address

    def __repr__(self):
        return f"<conduit remote socket {self._address!r}>"


class RemoteServer(asyncio.AbstractServer):
    """asyncio.Server's surface for a server session: each connection the
    service accepts gets a protocol from `protocol_factory` and a
    RemoteTransport. close() stops listening (the connections stay, as in
    asyncio); wait_closed() returns once they are all gone."""

    def __init__(self, loop, protocol_factory, started: asyncio.Future, tls: bool):
        self._loop, self._factory, self._started, self._tls = loop, protocol_factory, started, tls
        self._call = None
        self._sockets = []
        self._connections = {}
        self._serving = False
        self._closing = False
        self._ended = loop.create_future()
        self._open_error = None

    def attach(self, call) -> None:
        self._call = call

    # ---- asyncio.AbstractServer ----
    @property
    def sockets(self):
        return tuple(self._sockets)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._serving = False
        self._call.command(close=pb.Close())

    async def wait_closed(self) -> None:
        await asyncio.shield(self._ended)

    def is_serving(self) -> bool:
        return self._serving

    def get_loop(self):
        return self._loop

    async def start_serving(self) -> None:
        pass  # it serves from the start

    async def serve_forever(self) -> None:
        try:
            await asyncio.shield(self._ended)
        except asyncio.CancelledError:
            self.close()
            await self.wait_closed()
            raise

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.close()
        await self.wait_closed()

    # ---- from the session ----
    def on_event(self, event: "pb.Event") -> None:
        kind = event.WhichOneof("kind")
        cid = event.connection_id
        if kind == "server_started":
            self._sockets = [_ServerSocket(parse_address(text)) for text in event.server_started.sockets]
            self._serving = True
            if not self._started.done():
                self._started.set_result(self)
        elif kind == "connection_accepted":
            transport = RemoteTransport(self._loop, self._call, cid, self._tls)
            try:
                protocol = self._factory()
            except BaseException as exc:  # noqa: BLE001
                self._loop.call_exception_handler({"message": "protocol_factory() failed", "exception": exc})
                self._call.abort(cid)
                return
            self._connections[cid] = transport
            transport.made(protocol, event.connection_accepted)
        elif kind == "open_failed":
            self._open_error = exception_of(event.open_failed.error)
        elif cid == 0 and kind == "connection_lost":
            self._serving = False
        elif cid in self._connections:
            transport = self._connections[cid]
            if kind == "connection_lost":
                del self._connections[cid]
            transport.on_event(event)

    def on_sent(self, connection_id: int) -> None:
        transport = self._connections.get(connection_id)
        if transport is not None:
            transport.on_sent()

    def on_end(self, code, details: str) -> None:
        self._serving = False
        if not self._started.done():
            self._started.set_exception(self._open_error or _call_status_error(code, details))
        broken = broken_session(code, details)
        for transport in list(self._connections.values()):
            transport.lost(broken)
        self._connections.clear()
        if not self._ended.done():
            self._ended.set_result(None)
