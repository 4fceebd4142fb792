"""Client: a remote event loop's connection methods. Each opens a session on
`conduit serve` and returns what asyncio's loop method of the same name
returns, with transports whose bytes move on the service's host."""
from __future__ import annotations

import asyncio
import os
import ssl as _ssl
import subprocess
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import grpc
from grpc import aio

from ._call import SessionCall

#: How long a closing client waits for its sessions' queued commands (and
#: the ends of the sessions already closed) before it cancels what is left.
FLUSH_SECONDS = 5.0
from ._datagram import RemoteDatagramTransport
from ._proxy import ProxyError, RemoteProxy, open_request
from ._stream import ConnectionSession, RemoteServer, RemoteTransport
from ._subprocess import RemoteSubprocessTransport
from ._wire import call_error, host_port, pb, pb_grpc
from .events import RawSessions, Session

__all__ = ["Client"]


def _tls_client(ssl, server_hostname, host) -> Optional["pb.TlsClient"]:
    """asyncio's ssl= as the service's TlsClient: True (verify against the
    service host's CAs), an SSLContext (its verify_mode; a CA can be given
    as ca_pem=), or falsy (no TLS)."""
    if not ssl:
        if server_hostname:
            raise ValueError("server_hostname is only meaningful with ssl")
        return None
    insecure = isinstance(ssl, _ssl.SSLContext) and ssl.verify_mode == _ssl.CERT_NONE
    return pb.TlsClient(enabled=True, server_hostname=server_hostname or "", insecure=insecure)


class Client:
    """A channel to `conduit serve`, as an async context manager.

    `token` (or the first line of `token_file`) is its bearer token; `tls`
    a grpc.ChannelCredentials for a TLS service (grpc.ssl_channel_credentials).
    """

    def __init__(self, address: str = "127.0.0.1:50051", *, token: Optional[str] = None,
                 token_file: Optional[str] = None, tls=None):
        if token_file is not None:
            with open(token_file) as f:
                token = f.readline().strip()
        self._address = address
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._tls = tls
        self._channel = None
        self._stub = None
        self._calls = []
        self._proxies = []
        #: The raw event-stream API (events.py), for those who want events.
        self.raw = RawSessions(self)

    async def __aenter__(self) -> "Client":
        self._channel = (aio.secure_channel(self._address, self._tls) if self._tls is not None
                         else aio.insecure_channel(self._address))
        self._stub = pb_grpc.ConduitStub(self._channel)
        return self

    async def __aexit__(self, *exc) -> None:
        # Sessions still open end with the client, as a loop's transports
        # do when it closes; what their protocols wrote first goes to the
        # service (for a while), as a local socket's kernel sends what it
        # took: a TLS close_notify written just before the loop stops, say.
        if self._calls:
            try:
                await asyncio.wait_for(asyncio.gather(*(call.flush() for call in self._calls)), FLUSH_SECONDS)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
            except Exception:  # noqa: BLE001  (a call that ended with an error: close() below reports none)
                pass
        for call in list(self._calls):
            await call.close()
        for proxy in self._proxies:
            try:
                await asyncio.wait_for(proxy.close(), 5)
            except Exception:  # noqa: BLE001 (best effort, bounded)
                pass
        await self._channel.close()

    # ---- plumbing ----
    @property
    def _open_stub(self):
        if self._stub is None:
            raise RuntimeError("the Client is not open: use it as `async with Client(...) as client:`")
        return self._stub

    def _start(self, first: "pb.ClientMessage", session) -> SessionCall:
        self._open_stub  # noqa: B018  (raises if not open)
        call = SessionCall(self._stub, self._metadata, first, session.on_event, session.on_sent, session.on_end)
        session.attach(call)
        self._calls.append(call)
        # An ended call is let go at once: it holds its session, and so the
        # protocol and whatever that holds (an SSLContext, say).
        call.when_done(lambda: self._calls.remove(call) if call in self._calls else None)
        return call

    # ---- streams ----
    async def create_connection(self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: str,
                                port: int, *, ssl=None, server_hostname: Optional[str] = None,
                                ca_pem: str = "") -> Tuple[asyncio.Transport, asyncio.BaseProtocol]:
        """loop.create_connection, the connection made on the service's host.
        `ssl`: True or an SSLContext (CERT_NONE: no verification); `ca_pem`:
        trust only this CA (PEM text)."""
        tls = _tls_client(ssl, server_hostname, host)
        if tls is not None and ca_pem:
            tls.ca_pem = ca_pem
        request = pb.OpenConnection(tcp=pb.HostPort(host=host, port=port), tls=tls,
                                    start_paused=True)
        return await self._open_stream(protocol_factory, pb.ClientMessage(open_connection=request), tls is not None)

    async def create_unix_connection(self, protocol_factory, path: str):
        """loop.create_unix_connection, on the service's host."""
        request = pb.OpenConnection(unix_path=os.fspath(path), start_paused=True)
        return await self._open_stream(protocol_factory, pb.ClientMessage(open_connection=request), False)

    async def _open_stream(self, protocol_factory, first, tls: bool):
        loop = asyncio.get_running_loop()
        opened = loop.create_future()
        session = ConnectionSession(loop, protocol_factory, opened, tls)
        call = self._start(first, session)
        try:
            return await opened
        except asyncio.CancelledError:
            call.cancel()
            raise

    async def create_server(self, protocol_factory, host: Optional[str] = None, port: int = 0, *,
                            ssl: Optional[Tuple[str, str]] = None, backlog: int = 100, reuse_port: bool = False,
                            client_ca_pem: str = "", max_connections: int = 0) -> RemoteServer:
        """loop.create_server, listening on the service's host (host None or
        "" for every interface, as asyncio). `ssl`: (cert_pem, key_pem), PEM
        text: the service has no access to an SSLContext's files."""
        request = pb.OpenServer(tcp=pb.HostPort(host=host or "", port=port), backlog=backlog, reuse_port=reuse_port,
                                max_connections=max_connections, start_paused=True)
        if ssl:
            cert_pem, key_pem = ssl
            request.tls.CopyFrom(pb.TlsServer(enabled=True, cert_pem=cert_pem, key_pem=key_pem,
                                              client_ca_pem=client_ca_pem))
        return await self._open_server(protocol_factory, pb.ClientMessage(open_server=request), bool(ssl))

    async def create_unix_server(self, protocol_factory, path: str, *, backlog: int = 100,
                                 max_connections: int = 0) -> RemoteServer:
        """loop.create_unix_server, on the service's host."""
        request = pb.OpenServer(unix_path=os.fspath(path), backlog=backlog, max_connections=max_connections,
                                start_paused=True)
        return await self._open_server(protocol_factory, pb.ClientMessage(open_server=request), False)

    async def _open_server(self, protocol_factory, first, tls: bool) -> RemoteServer:
        server = RemoteServer(asyncio.get_running_loop())
        await self._listen(server, protocol_factory, first, tls)
        return server

    async def _listen(self, server: RemoteServer, protocol_factory, first, tls: bool) -> None:
        """One more server session for `server`, listening as `first` says."""
        started = server.get_loop().create_future()
        listener = server._listener(protocol_factory, started, tls)
        listener.reuse_port = first.open_server.reuse_port
        self._start(first, listener)
        await started

    # ---- datagrams ----
    async def create_datagram_endpoint(self, protocol_factory, local_addr=None, remote_addr=None, *,
                                       reuse_port: bool = False, allow_broadcast: bool = False):
        """loop.create_datagram_endpoint, the socket on the service's host;
        addresses are (host, port)."""
        if local_addr is None and remote_addr is None:
            raise ValueError("unexpected address family: give local_addr, remote_addr or both")
        request = pb.OpenDatagramEndpoint(reuse_port=reuse_port, allow_broadcast=allow_broadcast)
        if local_addr is not None:
            request.local_addr.CopyFrom(host_port(local_addr))
        if remote_addr is not None:
            request.remote_addr.CopyFrom(host_port(remote_addr))
        loop = asyncio.get_running_loop()
        opened = loop.create_future()
        transport = RemoteDatagramTransport(loop, protocol_factory, opened)
        self._start(pb.ClientMessage(open_datagram_endpoint=request), transport)
        return await opened

    # ---- subprocesses ----
    async def subprocess_exec(self, protocol_factory, program, *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=None, env: Optional[Dict[str, str]] = None):
        """loop.subprocess_exec, the child on the service's host (which must
        allow the program: --allow-exec, and `env`'s names: --allow-env)."""
        request = pb.OpenSubprocess(argv=[os.fspath(program), *map(str, args)], cwd=os.fspath(cwd) if cwd else "",
                                    env=env or {})
        return await self._open_subprocess(protocol_factory, request, stdin, stdout, stderr)

    async def subprocess_shell(self, protocol_factory, cmd: str, *, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=None, env: Optional[Dict[str, str]] = None):
        """loop.subprocess_shell (the service needs --allow-exec-any)."""
        request = pb.OpenSubprocess(shell=cmd, cwd=os.fspath(cwd) if cwd else "", env=env or {})
        return await self._open_subprocess(protocol_factory, request, stdin, stdout, stderr)

    async def _open_subprocess(self, protocol_factory, request, stdin, stdout, stderr):
        for name, value in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
            allowed = (subprocess.PIPE, subprocess.DEVNULL, None) + ((subprocess.STDOUT,) if name == "stderr" else ())
            if value not in allowed:
                raise ValueError(f"{name}={value!r}: a remote child's {name} is PIPE, DEVNULL or None"
                                 + (" (or STDOUT)" if name == "stderr" else ""))
        loop = asyncio.get_running_loop()
        opened = loop.create_future()
        transport = RemoteSubprocessTransport(loop, protocol_factory, opened, stdin, stdout, stderr)
        self._start(pb.ClientMessage(open_subprocess=request), transport)
        return await opened

    # ---- asyncio's streams on top ----
    async def open_connection(self, host: str, port: int, *, limit: int = 2 ** 16, **kwargs):
        """asyncio.open_connection: (StreamReader, StreamWriter)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await self.create_connection(lambda: protocol, host, port, **kwargs)
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def open_unix_connection(self, path: str, *, limit: int = 2 ** 16):
        """asyncio.open_unix_connection."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await self.create_unix_connection(lambda: protocol, path)
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def create_subprocess_exec(self, program, *args, stdin=None, stdout=None, stderr=None,
                                     limit: int = 2 ** 16, **kwargs) -> asyncio.subprocess.Process:
        """asyncio.create_subprocess_exec: asyncio's own Process."""
        loop = asyncio.get_running_loop()
        transport, protocol = await self.subprocess_exec(
            lambda: asyncio.subprocess.SubprocessStreamProtocol(limit=limit, loop=loop), program, *args,
            stdin=stdin, stdout=stdout, stderr=stderr, **kwargs)
        return asyncio.subprocess.Process(transport, protocol, loop)

    async def create_subprocess_shell(self, cmd: str, *, stdin=None, stdout=None, stderr=None, limit: int = 2 ** 16,
                                      **kwargs) -> asyncio.subprocess.Process:
        """asyncio.create_subprocess_shell."""
        loop = asyncio.get_running_loop()
        transport, protocol = await self.subprocess_shell(
            lambda: asyncio.subprocess.SubprocessStreamProtocol(limit=limit, loop=loop), cmd,
            stdin=stdin, stdout=stdout, stderr=stderr, **kwargs)
        return asyncio.subprocess.Process(transport, protocol, loop)

    # ---- the service itself ----
    # ---- proxies ----
    async def create_proxy(self, listen: str, upstream: str, faults=(), *, cert_pem: str = "", key_pem: str = "",
                           ca_pem: str = "", insecure: bool = False, stats_interval: float = 1.0,
                           idle_timeout: float = 60.0, name: str = "") -> RemoteProxy:
        """A proxy with fault injection on the service's host, listening at
        `listen` and relaying to `upstream` (URLs: tcp://HOST:PORT,
        tls://HOST:PORT, unix:///PATH, udp://HOST:PORT; port 0 listens on a
        free one), with `faults` (conduit_client.faults builders) from the
        start. A tls:// listener serves TLS with cert_pem and key_pem; a
        tls:// upstream is verified against ca_pem (the service host's CAs
        by default) unless `insecure`. `name` (unique on the service) lets
        other callers find it (list_sessions) and change it (control_proxy).
        Raises SessionError if the service refuses (its --allow-listen and
        --allow-connect decide where) or cannot listen, ValueError for a bad
        URL."""
        first = open_request(listen, upstream, faults, cert_pem=cert_pem, key_pem=key_pem, ca_pem=ca_pem,
                             insecure=insecure, stats_interval=stats_interval, idle_timeout=idle_timeout, name=name)
        session = Session(self._open_stub, self._metadata, first)
        await session.__aenter__()
        proxy = RemoteProxy(session)
        self._proxies = [p for p in self._proxies if not p._closed.done()] + [proxy]
        return proxy

    async def list_sessions(self) -> Sequence[Any]:
        try:
            reply = await self._open_stub.ListSessions(pb.ListSessionsRequest(), metadata=self._metadata)
        except aio.AioRpcError as error:
            raise call_error(error) from None
        return list(reply.sessions)

    async def control_proxy(self, session: str, command: Optional["pb.Command"] = None) -> "pb.ProxyState":
        """Another caller's running proxy session (its id or name): with no
        `command`, its state; with a set_fault, remove_fault, proxy_down or
        proxy_up command (faults builders make the specs), that change, as
        its own session would make it. Its owner's events() hear a
        "changed" event. Raises ProxyError for no such proxy or a command
        that failed (the status and why), ValueError for a command it does
        not take or a bad fault."""
        request = pb.ControlProxyRequest(session=session, command=command)
        try:
            return await self._open_stub.ControlProxy(request, metadata=self._metadata)
        except aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                raise ProxyError(f"{error.code().name}: {error.details()}") from None
            raise call_error(error) from None

    async def close_session(self, session_id: str) -> None:
        try:
            await self._open_stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), metadata=self._metadata)
        except aio.AioRpcError as error:
            raise call_error(error) from None
