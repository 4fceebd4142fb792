"""RemoteEventLoop: asyncio's own event loop, whose network and process
methods act on the service's host.

Timers, callbacks, executors, local pipes and the gRPC channel stay local;
create_connection, create_server, create_unix_connection,
create_unix_server, create_datagram_endpoint, subprocess_exec,
subprocess_shell, getaddrinfo and getnameinfo go to `conduit serve`, with
asyncio's signatures and semantics, so that unmodified asyncio code and
libraries (asyncio.open_connection, aiohttp, asyncpg, redis-py) run with
their network on the service's host:

    import asyncio, conduit_client

    with asyncio.Runner(loop_factory=lambda: conduit_client.RemoteEventLoop("svc:50051")) as runner:
        runner.run(main())

or `with conduit_client.remote_loop("svc:50051"): asyncio.run(main())`, or
`python3 -m conduit_client --via svc:50051 script.py ARGS...`.

TLS (`ssl=` an SSLContext, or True) runs here, in asyncio's own TLS
protocol over the remote byte stream: verification, peercert, client
certificates and TLS shutdown are asyncio's. start_tls() and sendfile()
(asyncio's fallback: read here, written there) work on remote transports.

A socket object handed in (`sock=`) is a local thing: it is served locally,
as asyncio's own loop would. Names are resolved on the service's host
(GetAddrInfo), so a name means what it means where the connection is made.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl as _ssl
from asyncio import sslproto
from typing import Optional

import grpc

from ._wire import call_error, pb
from .client import Client

__all__ = ["RemoteEventLoop", "RemoteEventLoopPolicy", "remote_loop"]


class RemoteEventLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop whose connections, servers, datagram
    endpoints, subprocesses and name lookups are on the host of the
    `conduit serve` at `address` ("HOST:PORT", or "unix:/PATH"). `token`
    (or `token_file`'s first line) is its bearer token, `tls` a
    grpc.ChannelCredentials for a TLS service."""

    def __init__(self, address: str = "127.0.0.1:50051", *, token: Optional[str] = None,
                 token_file: Optional[str] = None, tls=None):
        super().__init__()
        self._conduit = Client(address, token=token, token_file=token_file, tls=tls)
        self._conduit_entered = False

    async def _remote(self) -> Client:
        # The gRPC channel belongs to the loop that runs when it is made:
        # made at the first remote call, on this loop.
        if not self._conduit_entered:
            self._conduit_entered = True
            await self._conduit.__aenter__()
        return self._conduit

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self._conduit_entered and not self.is_closed():
            self._conduit_entered = False
            ending = self.create_task(self._conduit.__aexit__(None, None, None))
            # A loop.stop() some callback left behind can end a run early:
            # run again (the ending is bounded: each call's is).
            for _ in range(10):
                try:
                    self.run_until_complete(ending)
                    break
                except RuntimeError:
                    if ending.done():
                        break
        super().close()

    def call_soon_threadsafe(self, callback, *args, context=None):
        # gRPC's poller completes the operations of calls that were
        # cancelled as the loop closed onto the loop that made them; nothing
        # waits for them any more, so they go, rather than raise in the next
        # loop's handler ("Event loop is closed").
        if self.is_closed() and getattr(callback, "__module__", "").startswith("grpc."):
            return None
        handle = super().call_soon_threadsafe(callback, *args, context=context)
        if handle._source_traceback:
            del handle._source_traceback[-1]  # this frame: the caller's is what debug mode shows
        return handle

    # ---- names ----
    async def getaddrinfo(self, host, port, *, family=0, type=0, proto=0, flags=0):
        request = pb.GetAddrInfoRequest(family=int(family), type=int(type), protocol=int(proto), flags=int(flags))
        if host is not None:
            # As socket.getaddrinfo: str hosts go through IDNA, bytes as they are.
            request.host = host.decode("ascii") if isinstance(host, (bytes, bytearray)) else \
                host.encode("idna").decode("ascii")
        if port is not None:
            if isinstance(port, (bytes, bytearray)):
                port = port.decode("ascii")
            elif not isinstance(port, (int, str)):
                raise OSError("Int or String expected")
            request.port = str(port)
        reply = await self._resolve("GetAddrInfo", request)
        return [(_enum(socket.AddressFamily, a.family), _enum(socket.SocketKind, a.type), a.protocol, a.canonname,
                 (a.host, a.port, a.flowinfo, a.scope_id) if a.family == socket.AF_INET6 else (a.host, a.port))
                for a in reply.addresses]

    async def getnameinfo(self, sockaddr, flags=0):
        if not isinstance(sockaddr, tuple) or not 2 <= len(sockaddr) <= 4:
            raise TypeError("getnameinfo() argument 1 must be a tuple")
        host, port = sockaddr[0], int(sockaddr[1])
        request = pb.GetNameInfoRequest(host=str(host), port=port, flags=int(flags))
        if len(sockaddr) > 2:
            request.flowinfo = int(sockaddr[2])
        if len(sockaddr) > 3:
            request.scope_id = int(sockaddr[3])
        reply = await self._resolve("GetNameInfo", request)
        return reply.host, reply.service

    async def _resolve(self, method: str, request):
        """One of the service's resolver calls; its failure as
        socket.gaierror, as the local resolver's would be."""
        client = await self._remote()
        try:
            reply = await getattr(client._stub, method)(request, metadata=client._metadata)
        except grpc.aio.AioRpcError as error:
            raise call_error(error) from None
        if reply.gai_error:
            raise socket.gaierror(reply.gai_error, reply.message)
        return reply

    # ---- connections ----
    async def create_connection(self, protocol_factory, host=None, port=None, *, ssl=None, family=0, proto=0, flags=0,
                                sock=None, local_addr=None, server_hostname=None, ssl_handshake_timeout=None,
                                ssl_shutdown_timeout=None, happy_eyeballs_delay=None, interleave=None, **more):
        if sock is not None:
            return await super().create_connection(
                protocol_factory, host, port, ssl=ssl, family=family, proto=proto, flags=flags, sock=sock,
                local_addr=local_addr, server_hostname=server_hostname, ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout, happy_eyeballs_delay=happy_eyeballs_delay,
                interleave=interleave, **more)
        _check_keywords(more, ("all_errors",))
        server_hostname = _check_tls_arguments(ssl, host, server_hostname, ssl_handshake_timeout,
                                               ssl_shutdown_timeout)
        if host is None and port is None:
            raise ValueError("host and port was not specified and no sock specified")
        client = await self._remote()
        # Without a family, protocol, flags or local address, the service
        # resolves the host and tries each address, as asyncio does (its
        # --allow-connect rules by name then apply). With them, the names
        # are resolved there first (getaddrinfo) and each address tried in
        # turn from here, as asyncio's own loop does.
        attempts = [((host, port), None)]
        errors = []
        if local_addr is not None or family or proto or flags:
            infos = await self.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM, proto=proto,
                                           flags=flags)
            if not infos:
                raise OSError("getaddrinfo() returned empty list")
            local_infos = None
            if local_addr is not None:
                local_infos = await self.getaddrinfo(*local_addr[:2], family=family, type=socket.SOCK_STREAM,
                                                     proto=proto, flags=flags)
                if not local_infos:
                    raise OSError("getaddrinfo() returned empty list")
            attempts = []
            for info in infos:
                if local_infos is None:
                    attempts.append((info[4][:2], None))
                    continue
                same_family = [local[4][:2] for local in local_infos if local[0] == info[0]]
                if not same_family:
                    errors.append(OSError(f"no matching local address with family={info[0]!r} found"))
                attempts += [(info[4][:2], local) for local in same_family]
        for (target_host, target_port), local in attempts:
            target = pb.OpenConnection(tcp=pb.HostPort(host=str(target_host or ""), port=int(target_port or 0)),
                                       start_paused=True)
            if local is not None:
                target.local_addr.CopyFrom(pb.HostPort(host=str(local[0]), port=int(local[1])))
            try:
                return await self._open_stream(client, protocol_factory, target, ssl, server_hostname,
                                               ssl_handshake_timeout, ssl_shutdown_timeout)
            except OSError as exc:
                if local is not None and "attempting to bind" in str(exc) and exc.errno:
                    exc = OSError(exc.errno, f"error while attempting to bind on address {local!r}: "
                                             f"{os.strerror(exc.errno).lower()}")
                errors.append(exc)
        if not errors:
            raise OSError("getaddrinfo() returned empty list")
        if len(errors) == 1 or all(str(e) == str(errors[0]) for e in errors):
            raise errors[0]
        if more.get("all_errors"):
            raise ExceptionGroup("create_connection failed", errors)  # noqa: F821 (3.11+)
        raise OSError("Multiple exceptions: {}".format(", ".join(str(e) for e in errors)))

    async def create_unix_connection(self, protocol_factory, path=None, *, ssl=None, sock=None, server_hostname=None,
                                     ssl_handshake_timeout=None, ssl_shutdown_timeout=None):
        if sock is not None:
            return await super().create_unix_connection(
                protocol_factory, path, ssl=ssl, sock=sock, server_hostname=server_hostname,
                ssl_handshake_timeout=ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout)
        if ssl:
            if server_hostname is None:
                raise ValueError("you have to pass server_hostname when using ssl")
        else:
            _check_tls_arguments(ssl, None, server_hostname, ssl_handshake_timeout, ssl_shutdown_timeout)
        if path is None:
            raise ValueError("no path and sock were specified")
        client = await self._remote()
        target = pb.OpenConnection(unix_path=os.fspath(path), start_paused=True)
        return await self._open_stream(client, protocol_factory, target, ssl, server_hostname,
                                       ssl_handshake_timeout, ssl_shutdown_timeout)

    async def _open_stream(self, client, protocol_factory, target, ssl, server_hostname, handshake_timeout,
                           shutdown_timeout):
        first = pb.ClientMessage(open_connection=target)
        if not ssl:
            return await client._open_stream(protocol_factory, first, False)
        waiter = self.create_future()
        made = []

        def tls_protocol():
            app_protocol = protocol_factory()
            made.append(app_protocol)
            return sslproto.SSLProtocol(self, app_protocol, None if ssl is True else ssl, waiter, False,
                                        server_hostname, ssl_handshake_timeout=handshake_timeout,
                                        ssl_shutdown_timeout=shutdown_timeout)

        transport, tls = await client._open_stream(tls_protocol, first, False)
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        return tls._app_transport, made[0]

    # ---- servers ----
    async def create_server(self, protocol_factory, host=None, port=None, *, family=socket.AF_UNSPEC,
                            flags=socket.AI_PASSIVE, sock=None, backlog=100, ssl=None, reuse_address=None,
                            reuse_port=None, ssl_handshake_timeout=None, ssl_shutdown_timeout=None,
                            start_serving=True, **more):
        if sock is not None:
            return await super().create_server(
                protocol_factory, host, port, family=family, flags=flags, sock=sock, backlog=backlog, ssl=ssl,
                reuse_address=reuse_address, reuse_port=reuse_port, ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout, start_serving=start_serving, **more)
        _check_keywords(more, ("keep_alive",))
        _check_server_tls(ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        if host == "":
            host = None
        hosts = [host] if host is None or isinstance(host, str) else list(host)
        port = int(port or 0)
        if family not in (socket.AF_UNSPEC, 0) or flags != socket.AI_PASSIVE:
            # A family (or flags) picks the addresses: resolved there.
            resolved = []
            for name in hosts:
                infos = await self.getaddrinfo(name, port, family=family, type=socket.SOCK_STREAM, flags=flags)
                resolved += [info[4][0] for info in infos if info[4][0] not in resolved]
            hosts = resolved
        client = await self._remote()
        from ._stream import RemoteServer
        server = RemoteServer(self, serving=start_serving)
        factory = self._server_protocol_factory(protocol_factory, ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        try:
            for name in hosts:
                request = pb.OpenServer(tcp=pb.HostPort(host=name or "", port=port), backlog=int(backlog),
                                        reuse_port=bool(reuse_port), start_paused=True)
                try:
                    await client._listen(server, factory, pb.ClientMessage(open_server=request), False)
                except OSError as exc:
                    if "attempting to bind" in str(exc) and exc.errno:
                        raise OSError(exc.errno, f"error while attempting to bind on address {(name, port)!r}: "
                                                 f"{os.strerror(exc.errno).lower()}") from None
                    raise
        except BaseException:
            server.close()
            raise
        return server

    async def create_unix_server(self, protocol_factory, path=None, *, sock=None, backlog=100, ssl=None,
                                 ssl_handshake_timeout=None, ssl_shutdown_timeout=None, start_serving=True, **more):
        if sock is not None:
            return await super().create_unix_server(
                protocol_factory, path, sock=sock, backlog=backlog, ssl=ssl,
                ssl_handshake_timeout=ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout,
                start_serving=start_serving, **more)
        _check_keywords(more, ("cleanup_socket",))
        _check_server_tls(ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        if path is None:
            raise ValueError("path was not specified, and no sock specified")
        client = await self._remote()
        from ._stream import RemoteServer
        server = RemoteServer(self, serving=start_serving)
        factory = self._server_protocol_factory(protocol_factory, ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        request = pb.OpenServer(unix_path=os.fspath(path), backlog=int(backlog),
                                start_paused=True)
        await client._listen(server, factory, pb.ClientMessage(open_server=request), False)
        return server

    def _server_protocol_factory(self, protocol_factory, ssl, handshake_timeout, shutdown_timeout):
        """Each accepted connection's protocol: the caller's, or asyncio's TLS
        protocol (server side) over it."""
        if not ssl:
            return protocol_factory

        def tls_protocol():
            waiter = self.create_future()
            # A failed handshake closes the connection; asyncio tells only
            # in debug mode.
            waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
            return sslproto.SSLProtocol(self, protocol_factory(), ssl, waiter, True, None,
                                        ssl_handshake_timeout=handshake_timeout,
                                        ssl_shutdown_timeout=shutdown_timeout)
        return tls_protocol

    # ---- datagrams ----
    async def create_datagram_endpoint(self, protocol_factory, local_addr=None, remote_addr=None, *, family=0,
                                       proto=0, flags=0, reuse_address=None, reuse_port=None, allow_broadcast=None,
                                       sock=None):
        if sock is not None:
            return await super().create_datagram_endpoint(protocol_factory, sock=sock)
        if reuse_address:
            raise ValueError("Passing `reuse_address=True` is no longer supported, as the usage of "
                             "SO_REUSEPORT in UDP poses a significant security concern.")
        if family == socket.AF_UNIX or isinstance(local_addr, str) or isinstance(remote_addr, str):
            raise ValueError("the remote loop's datagram endpoints are UDP: a Unix datagram socket is not "
                             "available through the service")
        if local_addr is None and remote_addr is None:
            if family == 0:
                raise ValueError("unexpected address family")
            local_addr = ("0.0.0.0" if family == socket.AF_INET else "::", 0)
        if (family or proto or flags) and remote_addr is not None:
            infos = await self.getaddrinfo(*remote_addr[:2], family=family, type=socket.SOCK_DGRAM, proto=proto,
                                           flags=flags)
            if not infos:
                raise OSError("getaddrinfo() returned empty list")
            remote_addr = infos[0][4][:2]
        client = await self._remote()
        return await client.create_datagram_endpoint(protocol_factory, local_addr, remote_addr,
                                                     reuse_port=bool(reuse_port),
                                                     allow_broadcast=bool(allow_broadcast))

    # ---- subprocesses ----
    async def _make_subprocess_transport(self, protocol, args, shell, stdin, stdout, stderr, bufsize, extra=None,
                                         **kwargs):
        # asyncio's subprocess_exec / subprocess_shell checked the arguments
        # and made the protocol; the child is made on the service's host.
        cwd = kwargs.pop("cwd", None)
        env = kwargs.pop("env", None)
        # Popen's keywords that hold for every remote child already: it has
        # no descriptors of the caller's (close_fds), is never in the
        # caller's session (start_new_session), has default signal
        # dispositions (restore_signals); creationflags is Windows' (0).
        for name, holds in (("close_fds", None), ("start_new_session", None), ("restore_signals", True),
                            ("creationflags", 0)):
            if name in kwargs and (holds is None or kwargs[name] == holds):
                del kwargs[name]
        if kwargs:
            raise ValueError(f"a remote child takes cwd and env (and close_fds, start_new_session), not "
                             f"{', '.join(f'{k}={v!r}' for k, v in sorted(kwargs.items()))}: the child runs on "
                             "the service's host")
        client = await self._remote()
        if shell:
            request = pb.OpenSubprocess(shell=args, cwd=os.fspath(cwd) if cwd else "", env=env or {})
        else:
            request = pb.OpenSubprocess(argv=[os.fsdecode(a) for a in args], cwd=os.fspath(cwd) if cwd else "",
                                        env=env or {})
        transport, _ = await client._open_subprocess(lambda: protocol, request, stdin, stdout, stderr)
        return transport


def _enum(kind, value):
    try:
        return kind(value)
    except ValueError:
        return value


def _check_keywords(more: dict, known) -> None:
    unknown = [name for name in more if name not in known]
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}")


def _check_tls_arguments(ssl, host, server_hostname, handshake_timeout, shutdown_timeout):
    """asyncio's checks of create_connection's TLS arguments; returns the
    name to verify."""
    if server_hostname is not None and not ssl:
        raise ValueError("server_hostname is only meaningful with ssl")
    if server_hostname is None and ssl:
        if not host:
            raise ValueError("You must set server_hostname when using ssl without a host")
        server_hostname = host
    if handshake_timeout is not None and not ssl:
        raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
    if shutdown_timeout is not None and not ssl:
        raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
    if ssl is not None and not isinstance(ssl, (bool, _ssl.SSLContext)):
        raise TypeError("ssl argument must be an SSLContext or None")
    return server_hostname


def _check_server_tls(ssl, handshake_timeout, shutdown_timeout):
    if isinstance(ssl, bool):
        raise TypeError("ssl argument must be an SSLContext or None")
    if handshake_timeout is not None and ssl is None:
        raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
    if shutdown_timeout is not None and ssl is None:
        raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")


class RemoteEventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """A policy whose new loops are RemoteEventLoops (asyncio.run makes its
    loop through the policy)."""

    def __init__(self, address: str, **options):
        super().__init__()
        self._address, self._options = address, options

    def new_event_loop(self):
        return RemoteEventLoop(self._address, **self._options)


@contextlib.contextmanager
def remote_loop(address: str = "127.0.0.1:50051", **options):
    """Within it, asyncio.run() (and every new event loop) is a
    RemoteEventLoop on `address`; the previous policy comes back after."""
    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(RemoteEventLoopPolicy(address, **options))
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(previous)
