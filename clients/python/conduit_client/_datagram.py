"""asyncio.DatagramTransport over a datagram session: a protocol written for
loop.create_datagram_endpoint runs on it unchanged."""
from __future__ import annotations

import asyncio
from asyncio import transports
from typing import Optional

from ._flow import WriteFlow
from ._protocol_guard import call_protocol
from ._wire import broken_session, exception_or_none, exception_of, host_port, parse_address, pb
from ._stream import _call_status_error


class RemoteDatagramTransport(transports._FlowControlMixin, asyncio.DatagramTransport):
    """A datagram transport whose socket is on the service's host. Like
    asyncio's own, it is also an asyncio.Transport (a _FlowControlMixin);
    its flow control is WriteFlow's."""

    def __init__(self, loop, protocol_factory, opened: asyncio.Future):
        asyncio.BaseTransport.__init__(self)
        self._loop, self._factory, self._opened = loop, protocol_factory, opened
        self._call = None
        self._protocol = None
        self._closing = False
        self._closed = False
        self._extra: dict = {}
        self._flow = WriteFlow(loop, self, lambda: None if self._closed else self._protocol)
        self._open_error = None
        self._forced_error: Optional[BaseException] = None

    def attach(self, call) -> None:
        self._call = call

    # ---- asyncio.DatagramTransport ----
    def sendto(self, data, addr=None) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._closing:
            return
        peer = self._extra.get("peername")
        if addr is not None and peer is not None and tuple(addr)[:2] != tuple(peer)[:2]:
            raise ValueError(f"Invalid address: must be None or {peer}")
        sendto = pb.Sendto(data=bytes(data))
        if addr is not None:
            sendto.addr.CopyFrom(host_port(addr))
        self._call.command(sendto=sendto)
        self._flow.maybe_pause(self.get_write_buffer_size())

    def abort(self) -> None:
        if self._closed:
            return
        self._closing = True
        self._call.abort()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._call.command(close=pb.Close())

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name, default=None):
        return self._extra.get(name, default)

    def set_protocol(self, protocol) -> None:
        self._protocol = protocol

    def get_protocol(self):
        return self._protocol

    def get_write_buffer_size(self) -> int:
        return self._call.queued(0)

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self._flow.set_limits(high, low)
        self._flow.maybe_pause(self.get_write_buffer_size())

    def get_write_buffer_limits(self):
        return self._flow.limits()

    # ---- from the session ----
    def on_event(self, event: "pb.Event") -> None:
        kind = event.WhichOneof("kind")
        if kind == "connection_made":
            for key, text in (("peername", event.connection_made.peername),
                              ("sockname", event.connection_made.sockname)):
                address = parse_address(text)
                if address is not None:
                    self._extra[key] = address
            try:
                self._protocol = self._factory()
            except BaseException as exc:  # noqa: BLE001
                self.abort()
                self._opened.set_exception(exc)
                return
            self._call_protocol("Exception in callback protocol.connection_made()", self._protocol.connection_made,
                                self)
            self._opened.set_result((self, self._protocol))
        elif kind == "datagram_received":
            self._call_protocol("Fatal error: protocol.datagram_received() call failed.",
                                self._protocol.datagram_received, event.datagram_received.data,
                                parse_address(event.datagram_received.addr), fatal=True)
        elif kind == "error_received":
            self._call_protocol("Fatal error: protocol.error_received() call failed.", self._protocol.error_received,
                                exception_of(event.error_received.error), fatal=True)
        elif kind == "pause_writing":
            self._flow.remote(True)
        elif kind == "resume_writing":
            self._flow.remote(False)
        elif kind == "open_failed":
            self._open_error = exception_of(event.open_failed.error)
        elif kind == "connection_lost":
            error = event.connection_lost.error
            self._lost(exception_or_none(error))

    def on_sent(self, connection_id: int) -> None:
        self._flow.maybe_resume(self.get_write_buffer_size())

    def on_end(self, code, details: str) -> None:
        if not self._opened.done():
            self._opened.set_exception(self._open_error or _call_status_error(code, details))
            return
        self._lost(broken_session(code, details))

    def _lost(self, exc) -> None:
        if self._closed:
            return
        self._closed = self._closing = True
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            self._call_protocol("Exception in callback protocol.connection_lost()", protocol.connection_lost,
                                self._forced_error or exc, protocol=protocol)

    def _call_protocol(self, failure, fn, *args, fatal=False, protocol=None):
        """A protocol callback (_protocol_guard); a fatal failure aborts the
        endpoint, its connection_lost carrying the exception."""
        return call_protocol(self._loop, self, protocol or self._protocol, failure, fn, *args,
                             on_fatal=self._fatal if fatal else None)

    def _fatal(self, exc: BaseException) -> None:
        self._forced_error = self._forced_error or exc
        self.abort()
