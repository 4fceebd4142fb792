#!/usr/bin/python3
"""Every session kind through `conduit serve`, from the Python client: the
compose file's `tests` container runs it after the CLI steps.

usage: integration.py SERVICE_ADDRESS TOKEN_FILE

Hosts are the compose service names: echo-tcp, echo-tls, echo-unix's socket
on the service's host, udp-echo, and peer, a third host that keeps
connecting to port 7101 on the service's host. The last step puts a proxy
on the service's host (port 7102) between this container and echo-tcp and
injects faults while connections run: latency (measured), a reset and a
blackhole, each checked as the client sees it. Each step is bounded in
time; the first failure exits non-zero with what went wrong.
"""
import asyncio
import os
import socket
import ssl
import sys
import time

# The tests image installs the package (pip); in a checkout, use the tree's.
try:
    from conduit_client import Client, faults
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "python"))
    from conduit_client import Client, faults  # noqa: E402

ADDRESS, TOKEN_FILE = sys.argv[1], sys.argv[2]
STEP_TIMEOUT = 30


async def echo_through(reader, writer, payload):
    """Write, half-close, and read the echo to its end (asyncio's streams
    over the client's transports)."""
    writer.write(payload)
    await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()
        got = await reader.read()
    else:  # TLS: no half-close; read what was sent, then close
        got = await reader.readexactly(len(payload))
    writer.close()
    await writer.wait_closed()
    return got


async def connection_sessions(client):
    payload = os.urandom(256 * 1024)
    reader, writer = await client.open_connection("echo-tcp", 7007)
    assert await echo_through(reader, writer, payload) == payload, "tcp echo differs"
    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
    reader, writer = await client.open_connection("echo-tls", 7443, ssl=insecure)
    cipher = writer.get_extra_info("cipher")
    assert cipher and cipher[1].startswith("TLS"), cipher
    assert await echo_through(reader, writer, b"over tls") == b"over tls"
    reader, writer = await client.open_unix_connection("/run/conduit-sockets/echo.sock")
    assert await echo_through(reader, writer, b"over a unix path") == b"over a unix path"


async def server_session(client):
    """Listen on the service's host; the peer host connects and is echoed."""
    peer_address = socket.gethostbyname("peer")
    served = asyncio.get_running_loop().create_future()

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            host = transport.get_extra_info("peername")[0]
            assert host == peer_address, f"accepted {host}, expected the peer host {peer_address}"

        def data_received(self, data):
            self.transport.write(data)

        def connection_lost(self, exc):
            if not served.done():
                served.set_result(exc)

    async with await client.create_server(Echo, "0.0.0.0", 7101):
        error = await served  # one served connection is the proof
        assert error is None, error
    return peer_address


async def datagram_session(client):
    received = asyncio.Queue()

    class Datagrams(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            received.put_nowait(data)

    transport, _ = await client.create_datagram_endpoint(Datagrams, remote_addr=("udp-echo", 7009))
    for i in range(20):
        transport.sendto(b"datagram %d" % i)
        assert await received.get() == b"datagram %d" % i
    transport.close()


async def subprocess_session(client):
    proc = await client.create_subprocess_exec("/bin/cat", stdin=asyncio.subprocess.PIPE,
                                               stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate(b"through cat on the service's host")
    assert (out, proc.returncode) == (b"through cat on the service's host", 0), (out, proc.returncode)


async def proxy_session(client):
    """A proxy on the service's host between here and echo-tcp; faults added
    and removed while it runs, measured from this side."""
    service_host = ADDRESS.rsplit(":", 1)[0]

    async def round_trip(payload=b"ping"):
        reader, writer = await asyncio.open_connection(service_host, 7102)
        begin = time.monotonic()
        writer.write(payload)
        got = await reader.readexactly(len(payload))
        elapsed = time.monotonic() - begin
        writer.close()
        assert got == payload, "the echo through the proxy differs"
        return elapsed

    async def ended_by(payload):
        """Send, and read until the proxy ends the connection: what came back
        and how it ended ("eof" or "reset")."""
        reader, writer = await asyncio.open_connection(service_host, 7102)
        writer.write(payload)
        got = b""
        try:
            while data := await reader.read(65536):
                got += data
            how = "eof"
        except ConnectionResetError:
            how = "reset"
        writer.close()
        return got, how

    async with await client.create_proxy("tcp://0.0.0.0:7102", "tcp://echo-tcp:7007") as proxy:
        base = await round_trip()
        await proxy.add_fault(faults.latency(0.1, direction="upstream"))
        slow = await round_trip()
        assert 0.1 <= slow < 0.1 + base + 0.05, f"latency 100 ms: a round trip took {slow * 1000:.1f} ms"
        await proxy.remove_fault("latency")
        await proxy.add_fault(faults.reset(after_bytes=1000, direction="upstream"))
        got, how = await ended_by(b"r" * 100000)
        assert how == "reset" and len(got) <= 1000, (how, len(got))
        await proxy.remove_fault("reset")
        await proxy.add_fault(faults.blackhole(close_after=0.3))
        begin = time.monotonic()
        got, how = await ended_by(b"into the void")
        held = time.monotonic() - begin
        assert (got, how) == (b"", "eof") and held >= 0.25, (got, how, held)
        await proxy.remove_fault("blackhole")
        await round_trip()
    return f"latency {slow * 1000:.1f} ms over a {base * 1000:.1f} ms base, reset, blackhole {held:.2f} s"


async def toxiproxy_api(_client):
    """The proxy the service's start-up file made (tests/compose/toxiproxy.json:
    echo-tcp behind port 7103, 50 ms of latency back), then its toxic removed
    through the toxiproxy API, as toxiproxy's clients would, with the token."""
    import json
    import urllib.request

    service_host = ADDRESS.rsplit(":", 1)[0]
    with open(TOKEN_FILE) as f:
        token = f.read().strip()

    def call(method, path):
        request = urllib.request.Request(f"http://{service_host}:8474{path}", method=method,
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()

    async def round_trip(payload=b"ping"):
        reader, writer = await asyncio.open_connection(service_host, 7103)
        begin = time.monotonic()
        writer.write(payload)
        got = await reader.readexactly(len(payload))
        elapsed = time.monotonic() - begin
        writer.close()
        assert got == payload, "the echo through the start-up proxy differs"
        return elapsed

    status, body = await asyncio.to_thread(call, "GET", "/proxies")
    proxies = json.loads(body)
    assert status == 200 and "echo" in proxies, (status, body)
    assert [t["name"] for t in proxies["echo"]["toxics"]] == ["latency_downstream"], body
    slow = await round_trip()
    assert slow >= 0.05, f"the start-up latency toxic: a round trip took {slow * 1000:.1f} ms"
    status, _ = await asyncio.to_thread(call, "DELETE", "/proxies/echo/toxics/latency_downstream")
    assert status == 204, status
    fast = await round_trip()
    assert fast < slow, (fast, slow)
    return f"start-up proxy: {slow * 1000:.1f} ms with its toxic, {fast * 1000:.1f} ms without"


async def main():
    with open(TOKEN_FILE) as f:
        token = f.read().strip()
    async with Client(ADDRESS, token=token) as client:
        for step in (connection_sessions, server_session, datagram_session, subprocess_session, proxy_session,
                     toxiproxy_api):
            result = await asyncio.wait_for(step(client), STEP_TIMEOUT)
            print(f"python: {step.__name__} ok" + (f" ({result})" if result else ""), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
