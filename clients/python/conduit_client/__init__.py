"""Script `conduit serve` from Python in asyncio's own terms.

RemoteEventLoop is asyncio's event loop with its network and processes on
the service's host: unmodified asyncio code and libraries run on it.

    with asyncio.Runner(loop_factory=lambda: RemoteEventLoop("svc:50051")) as runner:
        runner.run(main())

Client is a remote event loop's connection methods: any asyncio.Protocol
(and asyncio's streams on top of it) runs against transports whose bytes
move on the service's host, and sees the callbacks it would see locally.

    import asyncio
    from conduit_client import Client

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            transport.write(b"hello")
        def data_received(self, data):
            print(data)

    async def main():
        async with Client("127.0.0.1:50051") as client:
            transport, protocol = await client.create_connection(Echo, "127.0.0.1", 7)
            reader, writer = await client.open_connection("example.org", 80)
            proc = await client.create_subprocess_exec("/bin/date", stdout=asyncio.subprocess.PIPE)
            print(await proc.communicate())

    asyncio.run(main())

client.raw has the event-stream sessions underneath, for raw events.

    from conduit_client import faults
    proxy = await client.create_proxy("tcp://127.0.0.1:0", "tcp://db:5432",
                                      [faults.latency(0.1, jitter=0.01)])
    await proxy.add_fault(faults.reset(after_bytes=4096, direction="upstream"))
"""
from ._proxy import ProxyConnection, ProxyError, ProxyEvent, RemoteProxy, faults
from ._wire import ServiceUnreachableError, pb
from .client import Client
from .events import ServerSession, Session, SessionError
from .loop import RemoteEventLoop, RemoteEventLoopPolicy, remote_loop

__all__ = ["Client", "RemoteEventLoop", "RemoteEventLoopPolicy", "remote_loop", "Session", "ServerSession",
           "SessionError", "ServiceUnreachableError", "pb", "faults", "RemoteProxy", "ProxyEvent", "ProxyConnection", "ProxyError"]
__version__ = "0.1.0"
