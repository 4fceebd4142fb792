"""Write flow control as asyncio's transports do it (FlowControlMixin and
_SelectorTransport's rules), for a remote transport whose write buffer is
split in two: what waits here to go to the service (local), and the
transport's own buffer on the service's host, which the service reports
with pause_writing / resume_writing events (remote). The protocol is
paused while either is over its high watermark, and hears of each change
of the two together once.

One pause, one resume, as asyncio gives for one large write: when the local
part drains, the service's part may be about to pass its own mark (the
writes just handed over are still on their way). So where the transport can
ask (`probe`), the local part counts as drained only once the service has
answered a question sent after those writes: by then any pause_writing they
caused has arrived, and the protocol stays paused through it."""
from __future__ import annotations

from typing import Callable, Optional


class WriteFlow:
    def __init__(self, loop, transport, protocol_of: Callable[[], Optional[object]],
                 probe: Optional[Callable[[], None]] = None):
        self._loop, self._transport, self._protocol_of = loop, transport, protocol_of
        self._probe = probe
        self._high, self._low = 64 * 1024, 16 * 1024
        self._local = False
        self._remote = False
        self._probing = False
        self._paused_protocol = None  # the protocol told pause_writing

    @property
    def paused(self) -> bool:
        """Whether the protocol is paused (asyncio's _protocol_paused)."""
        return self._local or self._remote

    # ---- asyncio's rules ----
    def set_limits(self, high: Optional[int] = None, low: Optional[int] = None) -> None:
        """asyncio's _set_write_buffer_limits: high defaults to 64 KiB (or
        4 * low), low to high // 4; ValueError unless high >= low >= 0."""
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low

    def limits(self):
        """(low, high), as get_write_buffer_limits() returns them."""
        return (self._low, self._high)

    def maybe_pause(self, size: int) -> None:
        if size > self._high and not self._local:
            self._set(local=True)

    def maybe_resume(self, size: int) -> None:
        if not self._local or size > self._low:
            return
        if self._probe is None:
            self._set(local=False)
        elif not self._probing:
            self._probing = True
            self._probe()

    def probe_answered(self, size: int) -> None:
        """The service answered the probe; `size` is what waits locally now
        (more may have been written since it was sent)."""
        if not self._probing:
            return
        self._probing = False
        if self._local and size <= self._low:
            self._set(local=False)
        # Else more was written since: the next drain asks again.

    def remote(self, paused: bool) -> None:
        self._set(remote=paused)

    # ----
    def _set(self, local: Optional[bool] = None, remote: Optional[bool] = None) -> None:
        was = self._local or self._remote
        if local is not None:
            self._local = local
        if remote is not None:
            self._remote = remote
        now = self._local or self._remote
        protocol = self._protocol_of()
        if was == now or protocol is None:
            return
        if now:
            self._paused_protocol = protocol
        else:
            # A protocol hears resume_writing only after its own
            # pause_writing: start_tls swaps the protocol (to asyncio's
            # SSLProtocol, which asserts this) while the transport may be
            # paused for the one before.
            paused, self._paused_protocol = self._paused_protocol, None
            if paused is not protocol:
                return
        name = "pause_writing" if now else "resume_writing"
        try:
            getattr(protocol, name)()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler({
                "message": f"protocol.{name}() failed",
                "exception": exc,
                "transport": self._transport,
                "protocol": protocol,
            })
