"""One Session() call as the transports use it: commands queue here and go to
gRPC one at a time (so that a transport's write() never blocks and its write
buffer is what waits here), events are read by a task and handed to a
callback, in order, on the event loop."""
from __future__ import annotations

import asyncio
import collections
from typing import Callable, Deque, Dict, Optional, Tuple

import grpc

from ._wire import pb


class SessionCall:
    """The client end of one session's stream.

    `on_event(event)` gets every event; `on_sent(connection_id)` is told
    when a command of that connection went to gRPC; `on_end(status_code,
    details)` once, when the stream is over (the call's status).
    """

    def __init__(self, stub, metadata, first: "pb.ClientMessage", on_event: Callable, on_sent: Callable,
                 on_end: Callable):
        self._loop = asyncio.get_running_loop()
        self._on_event, self._on_sent, self._on_end = on_event, on_sent, on_end
        self._queue: Deque[Tuple[Optional["pb.ClientMessage"], int, int]] = collections.deque()
        self._queued: Dict[int, int] = collections.defaultdict(int)
        self._writing: Optional[Tuple[int, int]] = None  # (connection id, size) of the write with gRPC
        self._done_writing = False
        self._drained: list = []  # flush()'s waiters
        self._ending = False  # a close or abort of the session itself was queued
        self._call = stub.Session(metadata=metadata)
        self.enqueue(first)
        self._reader = self._loop.create_task(self._read_loop())

    # ---- commands ----
    def enqueue(self, message: "pb.ClientMessage", connection_id: int = 0) -> None:
        if self._done_writing:
            return
        size = message.ByteSize()
        self._queue.append((message, connection_id, size))
        self._queued[connection_id] += size
        if self._writing is None:
            self._write_next()

    def command(self, connection_id: int = 0, **kind) -> None:
        if connection_id == 0 and ("close" in kind or "abort" in kind):
            self._ending = True
        self.enqueue(pb.ClientMessage(command=pb.Command(connection_id=connection_id, **kind)), connection_id)

    def abort(self, connection_id: int = 0) -> None:
        """An abort ahead of everything queued for the connection (all of
        it for id 0), which it drops: abort acts at once."""
        kept = collections.deque()
        for item in self._queue:
            message, cid, size = item
            if message is not None and message.HasField("command") and (connection_id == 0 or cid == connection_id):
                self._queued[cid] -= size
            else:
                kept.append(item)
        self._queue = kept
        message = pb.ClientMessage(command=pb.Command(connection_id=connection_id, abort=pb.Abort()))
        self._ending = self._ending or connection_id == 0
        # After the open (it must go first), before every command.
        at = 0
        while at < len(self._queue) and not self._queue[at][0].HasField("command"):
            at += 1
        self._queue.insert(at, (message, connection_id, message.ByteSize()))
        self._queued[connection_id] += message.ByteSize()
        if self._writing is None:
            self._write_next()

    def queued(self, connection_id: int = 0) -> int:
        """Bytes of that connection's commands not yet handed to gRPC."""
        return self._queued.get(connection_id, 0)

    def cancel(self) -> None:
        self._call.cancel()

    async def flush(self) -> None:
        """Return once every command queued so far went to gRPC, or the call
        ended; if a close or abort of the whole session is among them, once
        the call ended. Unbounded: the caller bounds it."""
        while (self._queue or self._writing is not None) and not self._done_writing and not self.done():
            drained = self._loop.create_future()
            self._drained.append(drained)
            await drained
        if self._ending and not self.done():
            await asyncio.shield(self._reader)

    async def close(self) -> None:
        """Cancel the call (if still going) and wait for its tasks to end,
        and for gRPC's own end of the call: an operation of it still under
        way when the loop closes would be completed onto a closed loop."""
        self._call.cancel()
        try:
            await asyncio.wait_for(self._call.code(), 2)
        except (asyncio.TimeoutError, asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        if not self._reader.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._reader), 2)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._reader.cancel()
            except Exception:  # noqa: BLE001  (ended with an error: reported already)
                pass

    def done(self) -> bool:
        return self._reader.done()

    def when_done(self, callback: Callable[[], None]) -> None:
        """callback() once the call has ended and on_end was told."""
        self._reader.add_done_callback(lambda _: callback())

    # ---- writing ----
    # A command is handed to gRPC at once when none is under way: the
    # write's coroutine is stepped here, by the future it waits on, rather
    # than by a writer task, which a protocol replying inside data_received
    # would have to wake for every reply (an event loop pass and a task
    # step each): bench/python measured 1.19x a bare stream's CPU per 1 KiB
    # round with a writer task, 1.03x so.
    # Tried before: the reader task writing what a callback queued before
    # reading on; a write so issued right after a session's first event
    # did not complete in 3 of 40 runs under load, and the reader, blocked
    # on it, stopped. Here nothing reads on a write's behalf.
    def _write_next(self) -> None:
        if not self._queue or self._done_writing:
            return
        message, connection_id, size = self._queue.popleft()
        self._writing = (connection_id, size)
        self._step(self._call.write(message))

    def _step(self, coroutine) -> None:
        """Run the write's coroutine to its next wait, as a Task would."""
        try:
            waiting = coroutine.send(None)
        except StopIteration:
            self._written(True)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, asyncio.CancelledError, grpc.aio.UsageError):
            self._written(False)  # the call ended: the reader reports how
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001  (gRPC's own failure: report it, stop writing)
            self._loop.call_exception_handler({"message": "writing to the service failed", "exception": exc})
            self._written(False)
        else:
            if waiting is None:  # a bare yield: step again on the next pass
                self._loop.call_soon(self._step, coroutine)
            else:
                waiting._asyncio_future_blocking = False
                waiting.add_done_callback(lambda _: self._step(coroutine))

    def _written(self, ok: bool) -> None:
        connection_id, size = self._writing
        self._writing = None
        self._queued[connection_id] -= size
        if not ok:
            self._done_writing = True  # what is queued stays, unsent, as the buffer of a lost transport
            self._wake_drained()
            return
        self._on_sent(connection_id)
        if self._writing is None:
            self._write_next()
        if self._writing is None and self._drained:
            self._wake_drained()

    def _wake_drained(self) -> None:
        drained, self._drained = self._drained, []
        for waiter in drained:
            if not waiter.done():
                waiter.set_result(None)

    # ---- reading ----
    async def _read_loop(self):
        code, details = grpc.StatusCode.OK, ""
        try:
            while True:
                event = await self._call.read()
                if event is grpc.aio.EOF:
                    break
                self._on_event(event)
        except grpc.aio.AioRpcError as error:
            code, details = error.code(), error.details() or ""
        except (asyncio.CancelledError, UnboundLocalError):
            # grpcio 1.51's read() swallows a cancellation that comes once
            # the call has ended OK and then fails on its own local
            # (aio/_call.py, _read): either way this task was cancelled.
            code, details = grpc.StatusCode.CANCELLED, "cancelled"
        else:
            code = await self._call.code()
            details = await self._call.details() or ""
        finally:
            self._done_writing = True
            self._wake_drained()
        self._on_end(code, details)
