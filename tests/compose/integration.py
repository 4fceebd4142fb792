#!/usr/bin/python3
"""Every session kind through `conduit serve`, from the Python client: the
compose file's `tests` container runs it after the CLI steps.

usage: integration.py SERVICE_ADDRESS TOKEN_FILE

Hosts are the compose service names: echo-tcp, echo-tls, echo-unix's socket
on the service's host, udp-echo, and peer, a third host that keeps
connecting to port 7101 on the service's host. Each step is bounded in time;
the first failure exits non-zero with what went wrong.
"""
import asyncio
import os
import socket
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "python"))
from conduit_client import Client  # noqa: E402

ADDRESS, TOKEN_FILE = sys.argv[1], sys.argv[2]
STEP_TIMEOUT = 30


async def echo_through(session, payload):
    """Write, half-close, and collect the echo until connection_lost (closing
    at the peer's EOF, as a protocol whose eof_received returns False)."""
    await session.write(payload)
    await session.write_eof()
    got = b""
    async for event in session.events():
        if event.WhichOneof("kind") == "data_received":
            got += event.data_received.data
        elif event.WhichOneof("kind") == "eof_received":
            await session.close()
    return got


async def connection_sessions(client):
    payload = os.urandom(256 * 1024)
    async with client.create_connection("echo-tcp", 7007) as s:
        assert await echo_through(s, payload) == payload, "tcp echo differs"
    async with client.create_connection("echo-tls", 7443, ssl=True, insecure=True) as s:
        assert s.connection_made.tls_version.startswith("TLS"), s.connection_made
        await s.write(b"over tls")
        got = b""
        async for event in s.events():
            if event.WhichOneof("kind") == "data_received":
                got += event.data_received.data
                if got == b"over tls":
                    await s.close()
        assert got == b"over tls", got
    async with client.create_unix_connection("/run/conduit-sockets/echo.sock") as s:
        assert await echo_through(s, b"over a unix path") == b"over a unix path"


async def server_session(client):
    """Listen on the service's host; the peer host connects and is echoed."""
    peer_address = socket.gethostbyname("peer")
    async with client.create_server("0.0.0.0", 7101) as server:
        async for event in server.events():
            kind = event.WhichOneof("kind")
            if kind == "connection_accepted":
                host = event.connection_accepted.peername.rsplit(":", 1)[0]
                assert host == peer_address, f"accepted {host}, expected the peer host {peer_address}"
            elif kind == "data_received":
                await server.connection(event.connection_id).write(event.data_received.data)
            elif kind == "eof_received":
                await server.connection(event.connection_id).close()
            elif kind == "connection_lost" and event.connection_id != 0:
                await server.close()  # one served connection is the proof
    return peer_address


async def datagram_session(client):
    async with client.create_datagram_endpoint(remote_addr=("udp-echo", 7009)) as s:
        events = s.events()
        for i in range(20):
            await s.sendto(b"datagram %d" % i)
            event = await anext(events)
            while event.WhichOneof("kind") != "datagram_received":
                event = await anext(events)
            assert event.datagram_received.data == b"datagram %d" % i, event
        await s.close()
        async for _ in events:  # until connection_lost
            pass


async def subprocess_session(client):
    async with client.subprocess_exec("/bin/cat") as s:
        result = await s.communicate(b"through cat on the service's host")
        assert result == (b"through cat on the service's host", b"", 0), result


async def main():
    with open(TOKEN_FILE) as f:
        token = f.read().strip()
    async with Client(ADDRESS, token=token) as client:
        for step in (connection_sessions, server_session, datagram_session, subprocess_session):
            result = await asyncio.wait_for(step(client), STEP_TIMEOUT)
            print(f"python: {step.__name__} ok" + (f" ({result})" if result else ""), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
