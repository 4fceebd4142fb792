"""Proxies with fault injection on the service's host (proxy sessions).

    async with Client(address) as client:
        async with await client.create_proxy("tcp://127.0.0.1:0", "tcp://db:5432") as proxy:
            host, port = proxy.sockets[0]
            await proxy.add_fault(faults.latency(0.1, jitter=0.01))
            ...
            await proxy.add_fault(faults.reset(after_bytes=1024, direction="upstream"))
            await proxy.remove_fault("latency")
            async for event in proxy.events():   # accepted / stats / closed, per connection
                print(event)

Times are in seconds, as asyncio's are; rates in bytes a second.
"""
import asyncio
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

from ._wire import pb
from .events import Session

__all__ = ["faults", "ProxyError", "ProxyEvent", "ProxyConnection", "RemoteProxy"]

_DIRECTIONS = {"both": pb.BOTH, "upstream": pb.UPSTREAM, "downstream": pb.DOWNSTREAM}


def _us(seconds: float) -> int:
    if seconds < 0:
        raise ValueError(f"a duration must not be negative, not {seconds}")
    return int(round(seconds * 1e6))


def _spec(name: str, direction: str, **kind) -> "pb.FaultSpec":
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be one of {sorted(_DIRECTIONS)}, not {direction!r}")
    return pb.FaultSpec(name=name, direction=_DIRECTIONS[direction], **kind)


class faults:  # noqa: N801 (a namespace of builders)
    """Builders of the faults a proxy takes; each returns a pb.FaultSpec named
    after its kind unless `name` says otherwise, acting both ways unless
    `direction` is "upstream" (what clients send) or "downstream"."""

    @staticmethod
    def latency(delay: float, jitter: float = 0, *, name="latency", direction="both"):
        return _spec(name, direction, latency=pb.LatencyFault(delay_us=_us(delay), jitter_us=_us(jitter)))

    @staticmethod
    def bandwidth(bytes_per_second: int, *, name="bandwidth", direction="both"):
        return _spec(name, direction, bandwidth=pb.BandwidthFault(bytes_per_second=int(bytes_per_second)))

    @staticmethod
    def slicer(average_size: int, size_variation: int = 0, delay: float = 0, *, name="slicer", direction="both"):
        return _spec(name, direction, slicer=pb.SlicerFault(average_size=average_size, size_variation=size_variation,
                                                            delay_us=_us(delay)))

    @staticmethod
    def blackhole(close_after: Optional[float] = None, *, name="blackhole", direction="both"):
        return _spec(name, direction, blackhole=pb.BlackholeFault(close_after_us=_us(close_after or 0)))

    @staticmethod
    def reset(after_bytes: Optional[int] = None, after: Optional[float] = None, *, name="reset", direction="both"):
        return _spec(name, direction, reset=pb.ResetFault(after_bytes=after_bytes or 0, after_us=_us(after or 0)))

    @staticmethod
    def limit_data(nbytes: int, *, name="limit_data", direction="both"):
        return _spec(name, direction, limit_data=pb.LimitDataFault(bytes=nbytes))

    @staticmethod
    def slow_close(delay: float, *, name="slow_close", direction="both"):
        return _spec(name, direction, slow_close=pb.SlowCloseFault(delay_us=_us(delay)))

    @staticmethod
    def loss(probability: float, *, name="loss", direction="both"):
        return _spec(name, direction, loss=pb.LossFault(probability=probability))

    @staticmethod
    def duplicate(probability: float, *, name="duplicate", direction="both"):
        return _spec(name, direction, duplicate=pb.DuplicateFault(probability=probability))

    @staticmethod
    def reorder(probability: float, hold: float = 0.01, *, name="reorder", direction="both"):
        return _spec(name, direction, reorder=pb.ReorderFault(probability=probability, hold_us=_us(hold)))


    @staticmethod
    def scoped(spec, *, toxicity: Optional[float] = None, clients=(), start_after: Optional[float] = None,
               stop_after: Optional[float] = None, start_after_bytes: Optional[int] = None,
               stop_after_bytes: Optional[int] = None):
        """`spec` for some connections only: each with chance `toxicity`
        (drawn once per connection), from clients whose address is in
        `clients` (addresses or "ADDRESS/PREFIX"), and within each
        connection's life from `start_after` seconds and `start_after_bytes`
        bytes in the fault's direction until `stop_after` or
        `stop_after_bytes`, whichever comes first."""
        out = pb.FaultSpec()
        out.CopyFrom(spec)
        if toxicity is not None:
            out.toxicity.value = toxicity
        out.scope.clients.extend(clients)
        if start_after is not None:
            out.scope.start_after_us = _us(start_after)
        if stop_after is not None:
            out.scope.stop_after_us = _us(stop_after)
        if start_after_bytes is not None:
            out.scope.start_after_bytes = start_after_bytes
        if stop_after_bytes is not None:
            out.scope.stop_after_bytes = stop_after_bytes
        return out


class ProxyError(RuntimeError):
    """The service refused a proxy command (a bad fault, a name it has not)."""


@dataclass
class ProxyConnection:
    """One relayed connection (or UDP client), as the proxy reported it last."""
    connection_id: int
    client: str
    bytes_upstream: int = 0
    bytes_downstream: int = 0
    open: bool = True
    error: Optional[str] = None  # why it ended, if not cleanly


@dataclass
class ProxyEvent:
    """"accepted", "stats" or "closed", for one connection; or "changed":
    another caller changed the proxy (Client.control_proxy), `by` that
    caller, `command` what it did, `state` the proxy now."""
    kind: str
    connection: Optional[ProxyConnection] = None
    by: str = ""
    command: str = ""
    state: Optional["pb.ProxyState"] = None


@dataclass
class _State:
    up: bool = True
    sockets: List[str] = field(default_factory=list)


def _address(text: str) -> Union[Tuple[str, int], str]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return text  # a Unix path
    return host.strip("[]"), int(port)


class RemoteProxy:
    """A running proxy session. Use as `async with` (leaving closes it).
    Every command waits for the service's answer and raises ProxyError if it
    refused it."""

    def __init__(self, session: Session):
        self._session = session
        self._state = _State(sockets=list(session.connection_made.sockets))
        self.connections: Dict[int, ProxyConnection] = {}
        self._events: "asyncio.Queue[Optional[ProxyEvent]]" = asyncio.Queue()
        self._answers: "List[asyncio.Future]" = []
        self._closed = asyncio.get_running_loop().create_future()
        self._reader = asyncio.ensure_future(self._read())

    @property
    def sockets(self) -> List[Union[Tuple[str, int], str]]:
        """Where it listens, on the service's host: (host, port), or a path."""
        return [_address(s) for s in self._state.sockets]

    @property
    def is_up(self) -> bool:
        return self._state.up

    async def __aenter__(self) -> "RemoteProxy":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # ---- commands ----
    async def add_fault(self, fault: "pb.FaultSpec") -> "pb.ProxyState":
        """Add a fault, or change the one of the same name, for every
        connection, those running included. Returns the proxy's state after
        it (`.faults`: those in force, as the service holds them)."""
        return await self._ask(set_fault=fault)

    change_fault = add_fault

    async def remove_fault(self, name: str) -> None:
        await self._ask(remove_fault=pb.RemoveFault(name=name))

    async def down(self) -> None:
        """Stop listening (clients are refused) and reset every connection."""
        await self._ask(proxy_down=pb.ProxyDown())

    async def up(self) -> None:
        """Listen again where it did."""
        state = await self._ask(proxy_up=pb.ProxyUp())
        if state.HasField("error"):
            raise ProxyError(state.error.message)

    async def close(self) -> None:
        """Close it (connections closed, after what they hold) and wait for
        the session's end."""
        if not self._closed.done():
            await self._session.close()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    async def events(self):
        """ProxyEvents as they come, until the session ends."""
        while True:
            event = await self._events.get()
            if event is None:
                return
            yield event

    # ---- plumbing ----
    async def _ask(self, **command) -> "pb.ProxyState":
        if self._closed.done():
            raise ProxyError("the proxy is closed")
        answer = asyncio.get_running_loop().create_future()
        self._answers.append(answer)
        await self._session._command(**command)
        return await answer

    def _answer(self, result=None, error=None) -> None:
        if not self._answers:
            return
        answer = self._answers.pop(0)
        if not answer.done():
            if error is not None:
                answer.set_exception(error)
            else:
                answer.set_result(result)

    def _connection(self, event, message) -> ProxyConnection:
        c = self.connections.get(event.connection_id)
        if c is None:
            c = self.connections[event.connection_id] = ProxyConnection(event.connection_id, message.client)
        c.bytes_upstream = message.bytes_upstream
        c.bytes_downstream = message.bytes_downstream
        return c

    async def _read(self) -> None:
        try:
            async for event in self._session.events():
                kind = event.WhichOneof("kind")
                if kind in ("proxy_accepted", "proxy_stats", "proxy_closed"):
                    c = self._connection(event, getattr(event, kind))
                    if kind == "proxy_closed":
                        c.open = False
                        c.error = event.proxy_closed.error.message if event.proxy_closed.HasField("error") else None
                        self.connections.pop(event.connection_id, None)
                    self._events.put_nowait(ProxyEvent(kind[len("proxy_"):], ProxyConnection(**vars(c))))
                elif kind == "proxy_state":
                    self._state = _State(event.proxy_state.up, list(event.proxy_state.sockets))
                    self._answer(event.proxy_state)
                elif kind == "proxy_changed":
                    changed = event.proxy_changed
                    self._state = _State(changed.state.up, list(changed.state.sockets))
                    self._events.put_nowait(ProxyEvent("changed", by=changed.by, command=changed.command,
                                                       state=changed.state))
                elif kind == "command_failed":
                    self._answer(error=ProxyError(event.command_failed.message))
                # connection_lost is last; the call's end (read to EOF) follows.
        finally:
            for answer in self._answers:
                if not answer.done():
                    answer.set_exception(ProxyError("the proxy session ended"))
            self._answers.clear()
            self._events.put_nowait(None)
            if not self._closed.done():
                self._closed.set_result(None)


def open_request(listen: str, upstream: str, fault_list, *, cert_pem="", key_pem="", ca_pem="", insecure=False,
                 stats_interval=1.0, idle_timeout=60.0, name="") -> "pb.ClientMessage":
    """The OpenProxy message for two endpoints in the tools' syntax
    ([tcp://]HOST:PORT, tls://, udp://, unix:/PATH or unix:///PATH); raises
    ValueError naming a bad one."""
    forms = "[tcp://]HOST:PORT, tls://HOST:PORT, udp://HOST:PORT or unix:/PATH"

    def endpoint(url: str, listening: bool) -> "pb.ProxyEndpoint":
        if url.startswith("unix:"):
            path = url[len("unix:"):]
            path = path[2:] if path.startswith("//") else path
            if not path:
                raise ValueError(f"{url!r}: the unix socket path is empty")
            return pb.ProxyEndpoint(unix_path=path)
        scheme, sep, rest = url.partition("://")
        if not sep:
            scheme, rest = "tcp", url
        host, colon, port = rest.rpartition(":")
        if scheme not in ("tcp", "tls", "udp") or not colon or not host or not port.isdigit():
            raise ValueError(f"{url!r} is not an endpoint: expected {forms}")
        hp = pb.HostPort(host=host.strip("[]"), port=int(port))
        if scheme == "udp":
            return pb.ProxyEndpoint(udp=hp)
        e = pb.ProxyEndpoint(tcp=hp)
        if scheme == "tls" and listening:
            if not cert_pem or not key_pem:
                raise ValueError(f"{url}: a TLS listener needs cert_pem and key_pem")
            e.tls_server.CopyFrom(pb.TlsServer(enabled=True, cert_pem=cert_pem, key_pem=key_pem))
        elif scheme == "tls":
            e.tls_client.CopyFrom(pb.TlsClient(enabled=True, ca_pem=ca_pem, insecure=insecure))
        return e

    return pb.ClientMessage(open_proxy=pb.OpenProxy(
        listen=endpoint(listen, True), upstream=endpoint(upstream, False), faults=list(fault_list),
        stats_interval_ms=int(stats_interval * 1000), idle_timeout_ms=int(idle_timeout * 1000), name=name))
