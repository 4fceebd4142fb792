"""Script `conduit serve` from Python in asyncio's own terms.

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
"""
from ._wire import pb
from .client import Client
from .events import ServerSession, Session, SessionError

__all__ = ["Client", "Session", "ServerSession", "SessionError", "pb"]
__version__ = "0.1.0"
