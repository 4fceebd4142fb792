"""The raw event stream underneath the asyncio transports, for those who
want it: one Session() call as conduit.v1.Event messages (one per protocol
callback, in order) and awaitable commands.

    async with Client("127.0.0.1:50051") as client:
        async with client.raw.create_connection("example.org", 80) as s:
            await s.write(b"GET / HTTP/1.0\\r\\n\\r\\n")
            async for event in s.events():
                if event.WhichOneof("kind") == "data_received":
                    print(event.data_received.data)
                elif event.WhichOneof("kind") == "eof_received":
                    await s.close()

After eof_received a connection stays open: closing is the script's to do
(as a protocol whose eof_received returned False would), once its replies
are written; close_at_peer_eof=True has the service close it at once.
"""
import asyncio

import grpc

from ._wire import MAX_COMMAND_DATA, pb

__all__ = ["SessionError", "Session", "ServerSession", "RawSessions"]


class SessionError(OSError):
    """The session could not open: the remote connect or spawn failed
    (errno and text from the service), or the service refused the call."""


class _TransportCommands:
    """The commands a connection takes, sent through self._command."""

    async def write(self, data: bytes):
        view = memoryview(data)
        for at in range(0, len(view), MAX_COMMAND_DATA):
            await self._command(write=bytes(view[at:at + MAX_COMMAND_DATA]))

    async def writelines(self, chunks):
        chunks = [bytes(c) for c in chunks]
        if sum(len(c) for c in chunks) <= MAX_COMMAND_DATA:
            await self._command(writelines=pb.Writelines(data=chunks))
        else:
            for chunk in chunks:
                await self.write(chunk)

    async def close(self):
        await self._command(close=pb.Close())

    async def abort(self):
        await self._command(abort=pb.Abort())

    async def pause_reading(self):
        await self._command(pause_reading=pb.PauseReading())

    async def resume_reading(self):
        await self._command(resume_reading=pb.ResumeReading())


class Session(_TransportCommands):
    """One transport session. Use as `async with`; leaving it aborts the
    transport if it is still open."""

    def __init__(self, stub, metadata, open_message):
        self._stub, self._metadata, self._open = stub, metadata, open_message
        self._call = None
        self._ended = False  # connection_lost was seen
        self.connection_made = None  # the first event (connection_made or server_started), once open

    async def __aenter__(self):
        self._call = self._stub.Session(metadata=self._metadata)
        await self._call.write(self._open)
        try:
            first = await self._call.read()
        except grpc.aio.AioRpcError as e:
            raise SessionError(0, f"{e.code().name}: {e.details()}") from None
        if first is grpc.aio.EOF:
            raise SessionError(0, "the session ended before it opened")
        if first.WhichOneof("kind") == "open_failed":
            error = first.open_failed.error
            raise SessionError(error.errno_value, error.message)
        self.connection_made = getattr(first, first.WhichOneof("kind"))
        return self

    async def __aexit__(self, *exc):
        if self._call is not None and not self._call.done():
            if not self._ended:
                try:  # best effort, bounded: the stream may be ending already
                    await asyncio.wait_for(self.abort(), 2)
                except Exception:  # noqa: BLE001
                    pass
            self._call.cancel()

    async def events(self):
        """The events after connection_made, until the session ends."""
        while True:
            event = await self._call.read()
            if event is grpc.aio.EOF:
                return
            if event.WhichOneof("kind") == "connection_lost" and event.connection_id == 0:
                self._ended = True
            yield event

    async def _command(self, connection_id=0, **kind):
        # A command after the session ended is dropped, as asyncio drops
        # writes after connection_lost.
        if self._ended or self._call.done():
            return
        try:
            await self._call.write(pb.ClientMessage(command=pb.Command(connection_id=connection_id, **kind)))
        except (asyncio.InvalidStateError, asyncio.CancelledError, grpc.aio.AioRpcError):
            if not self._call.done():
                raise

    async def write_eof(self):
        """Half-close: for a connection, write_eof; for a child, close its
        stdin. A command, so that close() and the rest can still follow."""
        await self._command(write_eof=pb.WriteEof())

    async def communicate(self, data=b""):
        """Subprocess sessions, as asyncio's Process.communicate(): write
        `data` to the child's stdin, close it, and read to the session's end.
        Returns (stdout, stderr, returncode)."""
        async def feed():
            # Beside the reading: a child that exits at once ends the call,
            # and a write to it waits for a status that needs the events read.
            if data:
                await self.write(data)
            await self.write_eof()
        feeding = asyncio.ensure_future(feed())
        output, returncode = {1: [], 2: []}, None
        try:
            async for event in self.events():
                kind = event.WhichOneof("kind")
                if kind == "pipe_data_received":
                    output[event.pipe_data_received.fd].append(event.pipe_data_received.data)
                elif kind == "process_exited":
                    returncode = event.process_exited.returncode
        finally:
            if not feeding.done():
                feeding.cancel()
            try:
                await feeding
            except (asyncio.CancelledError, asyncio.InvalidStateError, grpc.aio.AioRpcError):
                pass
        return b"".join(output[1]), b"".join(output[2]), returncode

    async def set_write_buffer_limits(self, high, low=0):
        await self._command(set_write_buffer_limits=pb.WriteBufferLimits(high=high, low=low))

    async def get_extra_info(self, name):
        """Ask; the answer arrives as an extra_info event."""
        await self._command(get_extra_info=pb.GetExtraInfo(name=name))

    async def send_signal(self, signal):
        await self._command(send_signal=pb.Signal(signal=signal))

    async def terminate(self):
        await self._command(terminate=pb.Terminate())

    async def kill(self):
        await self._command(kill=pb.Kill())

    async def sendto(self, data: bytes, addr=None):
        """Datagram sessions: send to (host, port), or to the connected peer."""
        to = pb.HostPort(host=addr[0], port=addr[1]) if addr else None
        await self._command(sendto=pb.Sendto(data=data, addr=to))


class ServerSession(Session):
    """A server listening on the service's host. events() yields every
    connection's events, each with its connection_id (connection_accepted
    starts one); connection(id) drives one connection. close() stops
    listening and closes every connection (flushing each); the session ends
    with connection_lost for connection_id 0."""

    @property
    def sockets(self):
        """Where it listens: "127.0.0.1:8080", "[::1]:8080" or a path."""
        return list(self.connection_made.sockets)

    def connection(self, connection_id):
        return _Connection(self, connection_id)


class _Connection(_TransportCommands):
    """One connection of a ServerSession: the commands of a connection session."""

    def __init__(self, server, connection_id):
        self._server, self.connection_id = server, connection_id

    async def _command(self, **kind):
        await self._server._command(connection_id=self.connection_id, **kind)

    async def write_eof(self):
        await self._command(write_eof=pb.WriteEof())



class RawSessions:
    """The event-stream openers, as client.raw."""

    def __init__(self, client):
        self._client = client

    def create_connection(self, host, port, *, ssl=False, server_hostname="", ca_pem="", insecure=False,
                          write_buffer_high=0, write_buffer_low=0, close_at_peer_eof=False):
        tls = pb.TlsClient(enabled=ssl, server_hostname=server_hostname, ca_pem=ca_pem, insecure=insecure)
        open_message = pb.OpenConnection(tcp=pb.HostPort(host=host, port=port), tls=tls,
                                         write_buffer_high=write_buffer_high, write_buffer_low=write_buffer_low,
                                         close_at_peer_eof=close_at_peer_eof)
        return Session(self._client._stub, self._client._metadata, pb.ClientMessage(open_connection=open_message))

    def create_unix_connection(self, path, *, close_at_peer_eof=False):
        return Session(self._client._stub, self._client._metadata, pb.ClientMessage(open_connection=pb.OpenConnection(
            unix_path=path, close_at_peer_eof=close_at_peer_eof)))

    def create_server(self, host="127.0.0.1", port=0, *, cert_pem="", key_pem="", client_ca_pem="", backlog=0,
                      max_connections=0, close_at_peer_eof=False):
        tls = pb.TlsServer(enabled=bool(cert_pem), cert_pem=cert_pem, key_pem=key_pem, client_ca_pem=client_ca_pem)
        open_message = pb.OpenServer(tcp=pb.HostPort(host=host, port=port), tls=tls, backlog=backlog,
                                     max_connections=max_connections, close_at_peer_eof=close_at_peer_eof)
        return ServerSession(self._client._stub, self._client._metadata, pb.ClientMessage(open_server=open_message))

    def create_unix_server(self, path, *, backlog=0, max_connections=0, close_at_peer_eof=False):
        open_message = pb.OpenServer(unix_path=path, backlog=backlog, max_connections=max_connections,
                                     close_at_peer_eof=close_at_peer_eof)
        return ServerSession(self._client._stub, self._client._metadata, pb.ClientMessage(open_server=open_message))

    def create_datagram_endpoint(self, local_addr=None, remote_addr=None, *, reuse_port=False, allow_broadcast=False):
        open_message = pb.OpenDatagramEndpoint(reuse_port=reuse_port, allow_broadcast=allow_broadcast)
        if local_addr:
            open_message.local_addr.CopyFrom(pb.HostPort(host=local_addr[0], port=local_addr[1]))
        if remote_addr:
            open_message.remote_addr.CopyFrom(pb.HostPort(host=remote_addr[0], port=remote_addr[1]))
        return Session(self._client._stub, self._client._metadata,
                       pb.ClientMessage(open_datagram_endpoint=open_message))

    def subprocess_exec(self, *argv, cwd="", env=None):
        return Session(self._client._stub, self._client._metadata, pb.ClientMessage(
            open_subprocess=pb.OpenSubprocess(argv=list(argv), cwd=cwd, env=env or {})))

    def subprocess_shell(self, command, *, cwd="", env=None):
        return Session(self._client._stub, self._client._metadata, pb.ClientMessage(
            open_subprocess=pb.OpenSubprocess(shell=command, cwd=cwd, env=env or {})))
