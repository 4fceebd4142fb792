"""asyncio.SubprocessTransport over a subprocess session: a
SubprocessProtocol written for loop.subprocess_exec runs on it unchanged,
and asyncio's own Process (create_subprocess_exec) is built on it.

The child always has three pipes on the service's host; stdin, stdout and
stderr choose what the protocol sees of them: PIPE (a pipe transport here),
DEVNULL or None (stdin closed at once; output dropped), STDOUT for stderr
(its output delivered as stdout's)."""
from __future__ import annotations

import asyncio
import collections
import subprocess
from typing import Optional

from ._flow import WriteFlow
from ._protocol_guard import call_protocol
from ._wire import broken_session, exception_or_none, MAX_COMMAND_DATA, exception_of, pb
from ._stream import _call_status_error


class _StdinPipe(asyncio.WriteTransport):
    """The child's stdin: writes go to the session; close() is EOF."""

    def __init__(self, owner):
        super().__init__()
        self._owner = owner
        self._closing = False
        self._flow = WriteFlow(owner._loop, self, lambda: owner._protocol)

    def write(self, data) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._closing or not data:
            return
        view = memoryview(data).cast("B")
        for at in range(0, len(view), MAX_COMMAND_DATA):
            self._owner._call.command(write=bytes(view[at:at + MAX_COMMAND_DATA]))
        self._flow.maybe_pause(self.get_write_buffer_size())

    def writelines(self, list_of_data) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        self.close()

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        # Closing the whole transport closes stdin there too, at once with
        # the kill: an EOF sent ahead could let the child exit first.
        if not self._owner._closed:
            self._owner._call.command(write_eof=pb.WriteEof())

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closing

    def get_write_buffer_size(self) -> int:
        return self._owner._call.queued(0)

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self._flow.set_limits(high, low)
        self._flow.maybe_pause(self.get_write_buffer_size())

    def get_write_buffer_limits(self):
        return self._flow.limits()

    def get_extra_info(self, name, default=None):
        return default


class _OutputPipe(asyncio.ReadTransport):
    """The child's stdout or stderr. Pausing either pauses both on the
    service's host (one command covers the session); what arrives for a
    paused pipe meanwhile waits here."""

    def __init__(self, owner, fd: int):
        super().__init__()
        self._owner, self._fd = owner, fd
        self._paused = False
        self._closing = False
        self.held = collections.deque()

    def is_reading(self) -> bool:
        return not self._paused and not self._closing

    def pause_reading(self) -> None:
        if self._paused or self._closing:
            return
        self._paused = True
        self._owner._sync_reading()

    def resume_reading(self) -> None:
        if not self._paused:
            return
        self._paused = False
        self._owner._sync_reading()
        while self.held and not self._paused:
            self._owner._deliver_output(self._fd, self.held.popleft())

    def close(self) -> None:
        # The pipe closes on the service's host: the child sees EPIPE, and
        # pipe_connection_lost comes back for it.
        if self._closing:
            return
        self._closing = True
        self.held.clear()
        self._owner._close_pipe(self._fd)

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name, default=None):
        return default


class RemoteSubprocessTransport(asyncio.SubprocessTransport):
    def __init__(self, loop, protocol_factory, opened: asyncio.Future, stdin, stdout, stderr):
        super().__init__()
        self._loop, self._factory, self._opened = loop, protocol_factory, opened
        self._call = None
        self._protocol = None
        self._pid = None
        self._returncode: Optional[int] = None
        self._exit_waiters = []
        self._closed = False
        self._finished = False
        self._remote_paused = False
        self._open_error = None
        self._stdin = _StdinPipe(self) if stdin == subprocess.PIPE else None
        self._close_stdin_at_once = stdin != subprocess.PIPE
        self._out = {1: _OutputPipe(self, 1) if stdout == subprocess.PIPE else None,
                     2: _OutputPipe(self, 2) if stderr == subprocess.PIPE else None}
        self._stderr_to_stdout = stderr == subprocess.STDOUT

    def attach(self, call) -> None:
        self._call = call

    # ---- asyncio.SubprocessTransport ----
    def get_pid(self):
        return self._pid

    def get_returncode(self):
        return self._returncode

    def get_pipe_transport(self, fd):
        if fd == 0:
            return self._stdin
        return self._out.get(fd)

    def send_signal(self, signal) -> None:
        self._check_proc()
        if self._returncode is None:
            self._call.command(send_signal=pb.Signal(signal=int(signal)))

    def terminate(self) -> None:
        self._check_proc()
        if self._returncode is None:
            self._call.command(terminate=pb.Terminate())

    def kill(self) -> None:
        self._check_proc()
        if self._returncode is None:
            self._call.command(kill=pb.Kill())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for pipe in (self._stdin, self._out[1], self._out[2]):
            if pipe is not None:
                pipe.close()
        if not self._finished:
            self._call.command(close=pb.Close())

    def is_closing(self) -> bool:
        return self._closed

    def get_extra_info(self, name, default=None):
        if name == "subprocess":
            return None
        return default

    def set_protocol(self, protocol) -> None:
        self._protocol = protocol

    def get_protocol(self):
        return self._protocol

    async def _wait(self):
        """The return code once the child exits (asyncio's Process.wait()
        awaits its transport's _wait())."""
        if self._returncode is not None:
            return self._returncode
        waiter = self._loop.create_future()
        self._exit_waiters.append(waiter)
        return await waiter

    def _check_proc(self):
        if self._closed:
            raise ProcessLookupError()

    # ---- from the session ----
    def on_event(self, event: "pb.Event") -> None:
        kind = event.WhichOneof("kind")
        if kind == "connection_made":
            self._pid = event.connection_made.pid
            try:
                self._protocol = self._factory()
            except BaseException as exc:  # noqa: BLE001
                self._call.command(close=pb.Close())
                self._opened.set_exception(exc)
                return
            self._call_protocol("Exception in callback protocol.connection_made()", self._protocol.connection_made,
                                self)
            if self._close_stdin_at_once:
                self._call.command(write_eof=pb.WriteEof())
            self._opened.set_result((self, self._protocol))
        elif kind == "pipe_data_received":
            fd = event.pipe_data_received.fd
            if fd == 2 and self._stderr_to_stdout:
                fd = 1
            pipe = self._out.get(fd)
            if pipe is None or pipe.is_closing():
                return
            if pipe._paused or pipe.held:
                pipe.held.append(event.pipe_data_received.data)
            else:
                self._deliver_output(fd, event.pipe_data_received.data)
        elif kind == "pipe_connection_lost":
            fd = event.pipe_connection_lost.fd
            error = event.pipe_connection_lost.error
            exc = exception_or_none(error)
            if fd == 0 and self._stdin is None:
                return
            if fd == 2 and self._stderr_to_stdout:
                return
            if fd in (1, 2) and self._out[fd] is None:
                return
            if fd in (1, 2):
                pipe = self._out[fd]
                while pipe.held:  # what waited comes before the end
                    self._deliver_output(fd, pipe.held.popleft())
            self._call_protocol("Exception in callback protocol.pipe_connection_lost()",
                                self._protocol.pipe_connection_lost, fd, exc)
        elif kind == "process_exited":
            self._returncode = event.process_exited.returncode
            self._call_protocol("Exception in callback protocol.process_exited()", self._protocol.process_exited)
            for waiter in self._exit_waiters:
                if not waiter.done():
                    waiter.set_result(self._returncode)
            self._exit_waiters.clear()
        elif kind == "pause_writing" and self._stdin is not None:
            self._stdin._flow.remote(True)
        elif kind == "resume_writing" and self._stdin is not None:
            self._stdin._flow.remote(False)
        elif kind == "open_failed":
            self._open_error = exception_of(event.open_failed.error)
        elif kind == "connection_lost":
            error = event.connection_lost.error
            self._lost(exception_or_none(error))

    def on_sent(self, connection_id: int) -> None:
        if self._stdin is not None:
            self._stdin._flow.maybe_resume(self._stdin.get_write_buffer_size())

    def on_end(self, code, details: str) -> None:
        if not self._opened.done():
            self._opened.set_exception(self._open_error or _call_status_error(code, details))
            return
        self._lost(broken_session(code, details))

    def _deliver_output(self, fd: int, data: bytes) -> None:
        self._call_protocol("Exception in callback protocol.pipe_data_received()",
                            self._protocol.pipe_data_received, fd, data)

    def _close_pipe(self, fd: int) -> None:
        if not self._finished and not self._closed:
            self._call.command(close_pipe=pb.ClosePipe(fd=fd))

    def _sync_reading(self) -> None:
        paused = any(p is not None and p._paused for p in self._out.values())
        if paused == self._remote_paused or self._finished:
            return
        self._remote_paused = paused
        if paused:
            self._call.command(pause_reading=pb.PauseReading())
        else:
            self._call.command(resume_reading=pb.ResumeReading())

    def _lost(self, exc) -> None:
        if self._finished:
            return
        self._finished = True
        for waiter in self._exit_waiters:
            if not waiter.done():
                waiter.set_exception(exc or ProcessLookupError("the session ended before the child's exit"))
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            self._call_protocol("Exception in callback protocol.connection_lost()", protocol.connection_lost, exc,
                                protocol=protocol)

    def _call_protocol(self, failure, fn, *args, protocol=None):
        """A protocol callback (_protocol_guard): reported, never fatal."""
        return call_protocol(self._loop, self, protocol or self._protocol, failure, fn, *args)
