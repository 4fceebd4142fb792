"""asyncio.Transport over a connection session, or over one connection of a
server session: a protocol written for loop.create_connection runs on it
unchanged, and sees what it would see locally (SPEC RS1-RS7).

The session opens with start_paused (and the service keeps a connection
open at the peer's EOF), so that eof_received's answer and a
pause_reading() inside connection_made are the protocol's own; what
asyncio answers at the call is answered here, from local state: write()
after write_eof() raises, a write after close() joins what is still
buffered (and is dropped once nothing was, or after the loss),
is_closing() is true from close() on, abort() drops what waits and goes
ahead of it. Data that arrives while the protocol has
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
from asyncio import constants, transports
from typing import Any, Optional

from ._flow import WriteFlow
from ._protocol_guard import FAILED, call_protocol
from ._socket import RemoteSocket, ServerSocket
from ._wire import (MAX_COMMAND_DATA, ServiceUnreachableError, broken_session, exception_of, exception_or_none,
                    parse_address, pb)

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


_WRITE_BUFFER_PROBE = "conduit:write_buffer_size"


class RemoteTransport(transports._FlowControlMixin):
    """A stream transport whose socket is on the service's host.

    It is a _FlowControlMixin, as asyncio's socket transports are, so that
    the loop's sendfile() fallback and start_tls() take it; its flow control
    is WriteFlow's."""

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.FALLBACK

    def __init__(self, loop, call, connection_id: int = 0, tls: bool = False):
        asyncio.Transport.__init__(self)
        self._loop, self._call, self._connection_id, self._tls = loop, call, connection_id, tls
        self._protocol = None
        self._state = _OPENING
        # After abort() the protocol hears nothing of the buffer again, as
        # asyncio's _force_close drops it without a resume_writing.
        self._flow = WriteFlow(loop, self,
                               lambda: self._protocol if self._state != _CLOSED and not self._aborted else None,
                               probe=self._probe_write_buffer)
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

    @property
    def _protocol_paused(self) -> bool:
        return self._flow.paused

    def __repr__(self):
        where = self._extra.get("peername", "")
        return f"<{type(self).__name__} {self._state} {where}>"

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
        if type(data) is bytes and len(data) <= MAX_COMMAND_DATA:
            self._call.command(self._connection_id, write=data)  # the common case, without a copy
        else:
            view = memoryview(data).cast("B")
            for at in range(0, len(view), MAX_COMMAND_DATA):
                self._send(write=bytes(view[at:at + MAX_COMMAND_DATA]))
        self._flow.maybe_pause(self._call.queued(self._connection_id))

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

    def _force_close(self, exc) -> None:
        """asyncio's transports' internal abort-with-an-error, which its TLS
        protocol calls on a fatal error: connection_lost gets `exc`."""
        if self._forced_error is None and exc is not None:
            self._forced_error = exc
        self.abort()

    # ---- from the session ----
    def made(self, protocol, made: "pb.ConnectionMade") -> None:
        """connection_made (or connection_accepted) arrived: start `protocol`."""
        self._protocol = protocol
        self._state = _OPEN
        unix = made.peername.startswith("/") or made.sockname.startswith("/")
        for key, text in (("peername", made.peername), ("sockname", made.sockname)):
            # A Unix socket's names are paths; an unbound one's is '', as
            # asyncio reports it.
            address = text if unix else parse_address(text)
            if address is not None:
                self._extra[key] = address
        self._extra["socket"] = RemoteSocket(self._extra.get("sockname"), self._extra.get("peername"), self._send)
        if made.tls_cipher:
            self._extra["cipher"] = (made.tls_cipher, made.tls_version, None)
            self._extra["peercert"] = None
        self._in_connection_made = True
        self._call_protocol("Exception in callback protocol.connection_made()", protocol.connection_made, self)
        self._in_connection_made = False
        self._sync_remote_reading()  # opened paused: resume unless the protocol paused

    def _probe_write_buffer(self) -> None:
        if self._state == _OPEN:
            self._send(get_extra_info=pb.GetExtraInfo(name=_WRITE_BUFFER_PROBE))
        else:  # closing: what the service holds is no longer the protocol's concern
            self._flow.probe_answered(self.get_write_buffer_size())

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
        elif kind == "extra_info" and event.extra_info.name == _WRITE_BUFFER_PROBE:
            self._flow.probe_answered(self.get_write_buffer_size())
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
        if keep_open is FAILED:
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
        """A protocol callback (_protocol_guard); a fatal failure aborts the
        transport, its connection_lost carrying the exception."""
        return call_protocol(self._loop, self, self._protocol, failure, fn, *args,
                             on_fatal=self._force_close if fatal else None)


def _call_status_error(code, details: str) -> BaseException:
    """What an opener raises when the call ends before the session opened."""
    import grpc
    name = code.name if hasattr(code, "name") else str(code)
    text = f"the service refused the session ({name}): {details}"
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return PermissionError(text)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ValueError(text)
    if code == grpc.StatusCode.UNAVAILABLE:
        return ServiceUnreachableError(f"cannot reach the service: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TimeoutError(f"the service did not answer in time: {details}")
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
        if kind == "data_received" and self.transport is not None:
            self.transport.on_event(event)
        elif kind == "connection_made":
            try:
                protocol = self._factory()
            except BaseException as exc:  # noqa: BLE001  (the opener raises it)
                self.transport.abort()
                if not self._opened.done():
                    self._opened.set_exception(exc)
                return
            self._factory = None  # used once; what it holds goes with it
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


class _Listener:
    """One server session: where the service listens for a RemoteServer, and
    the connections it accepted there (each a RemoteTransport with its own
    protocol from `protocol_factory`)."""

    def __init__(self, server: "RemoteServer", protocol_factory, started: asyncio.Future, tls: bool):
        self._server, self._factory, self._started, self._tls = server, protocol_factory, started, tls
        self._loop = server.get_loop()
        self._call = None
        self.sockets = []
        self.connections = {}
        self.ended = self._loop.create_future()
        self._listening = False
        self._open_error = None
        self._held = []  # events of connections accepted before start_serving()
        self.reuse_port = False  # as it was opened with, for its sockets' getsockopt

    def attach(self, call) -> None:
        self._call = call

    def stop_listening(self) -> None:
        if self._listening:
            self._listening = False
            self._call.command(stop_listening=pb.StopListening())

    def release_held(self) -> None:
        held, self._held = self._held, []
        for event in held:
            self.on_event(event)

    # ---- from the session ----
    def on_event(self, event: "pb.Event") -> None:
        kind = event.WhichOneof("kind")
        cid = event.connection_id
        if cid and not self._server.is_serving() and (kind == "connection_accepted" or self._held):
            # start_serving=False: what the service accepted waits, as it
            # would in the backlog, until the server starts serving (or is
            # closed: then it is dropped).
            if self._server._closed:
                if kind == "connection_accepted":
                    self._call.abort(cid)
                return
            self._held.append(event)
            return
        if kind == "server_started":
            self.sockets = [ServerSocket(parse_address(text), self.reuse_port)
                            for text in event.server_started.sockets]
            self._listening = True
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
            self.connections[cid] = transport
            transport.made(protocol, event.connection_accepted)
        elif kind == "open_failed":
            self._open_error = exception_of(event.open_failed.error)
        elif cid == 0 and kind == "connection_lost":
            self._listening = False
        elif cid in self.connections:
            transport = self.connections[cid]
            if kind == "connection_lost":
                del self.connections[cid]
            transport.on_event(event)

    def on_sent(self, connection_id: int) -> None:
        transport = self.connections.get(connection_id)
        if transport is not None:
            transport.on_sent()

    def on_end(self, code, details: str) -> None:
        self._listening = False
        if not self._started.done():
            self._started.set_exception(self._open_error or _call_status_error(code, details))
        broken = broken_session(code, details)
        for transport in list(self.connections.values()):
            transport.lost(broken)
        self.connections.clear()
        if not self.ended.done():
            self.ended.set_result(None)


class RemoteServer(asyncio.AbstractServer):
    """asyncio.Server over one server session per address listened on:
    close() stops listening and leaves the connections open;
    close_clients() / abort_clients() end them (3.13); wait_closed()
    returns once the server is closed and its last connection gone (3.12's
    rule: 3.11 returned at once after close())."""

    def __init__(self, loop, serving: bool = True):
        self._loop = loop
        self._listeners = []
        self._serving = serving
        self._closed = False
        self._serving_forever_fut = None
        self._close_waiters = []

    def _listener(self, protocol_factory, started: asyncio.Future, tls: bool) -> _Listener:
        listener = _Listener(self, protocol_factory, started, tls)
        self._listeners.append(listener)
        return listener

    def __repr__(self):
        return f"<{type(self).__name__} sockets={self.sockets!r}>"

    # ---- asyncio.AbstractServer ----
    @property
    def sockets(self):
        if self._closed:
            return ()
        return tuple(s for listener in self._listeners for s in listener.sockets)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._serving = False
        for listener in self._listeners:
            listener.stop_listening()
            listener.release_held()  # closed: held connections are dropped
        for waiter in self._close_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._close_waiters = []
        if self._serving_forever_fut is not None and not self._serving_forever_fut.done():
            self._serving_forever_fut.cancel()
            self._serving_forever_fut = None

    def close_clients(self) -> None:
        for listener in self._listeners:
            for transport in list(listener.connections.values()):
                transport.close()

    def abort_clients(self) -> None:
        for listener in self._listeners:
            for transport in list(listener.connections.values()):
                transport.abort()

    async def wait_closed(self) -> None:
        if not self._closed:
            waiter = self._loop.create_future()
            self._close_waiters.append(waiter)
            await waiter
        await asyncio.gather(*(asyncio.shield(listener.ended) for listener in self._listeners))

    def is_serving(self) -> bool:
        return self._serving

    def get_loop(self):
        return self._loop

    async def start_serving(self) -> None:
        self._start_serving()
        await asyncio.sleep(0)

    def _start_serving(self) -> None:
        if self._serving or self._closed:
            return
        self._serving = True
        for listener in self._listeners:
            listener.release_held()

    async def serve_forever(self) -> None:
        if self._serving_forever_fut is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._closed:
            raise RuntimeError(f"server {self!r} is closed")
        self._start_serving()
        self._serving_forever_fut = self._loop.create_future()
        try:
            await self._serving_forever_fut
        except asyncio.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever_fut = None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.close()
        await self.wait_closed()
