#!/usr/bin/python3
"""Proxy sessions from clients/python (Client.create_proxy) against a real
`conduit serve`: local asyncio clients and upstreams on loopback, the proxy
on the service's host, each fault seen from the client's side.

usage: proxy_client_test.py CONDUIT_BIN PACKAGE_PATH
"""
import asyncio
import socket
import sys
import time
import unittest

CONDUIT = sys.argv[1]
sys.path.insert(0, sys.argv[2])
from conduit_client import Client, ProxyError, SessionError, faults  # noqa: E402
from conduit_client._wire import pb  # noqa: E402
from harness import TIMEOUT, start, stop  # noqa: E402


async def echo_upstream():
    """A local echo server; returns (server, port)."""
    async def echo(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
        except ConnectionError:
            pass
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def round_trip(port, payload=b"ping"):
    """Seconds for `payload` to go through the proxy to the echo and back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    begin = time.monotonic()
    writer.write(payload)
    got = await asyncio.wait_for(reader.readexactly(len(payload)), TIMEOUT)
    elapsed = time.monotonic() - begin
    writer.close()
    assert got == payload
    return elapsed


async def udp_socket_drained(port):
    """Waits (bounded) until the UDP socket bound to 127.0.0.1:`port` on this
    host has nothing queued: whatever was sent to it has been read, and so
    had its faults applied. The order of a datagram and a later command is
    not otherwise defined: they reach the service by different sockets."""
    local = f"0100007F:{port:04X}"
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        with open("/proc/net/udp") as table:
            rows = [line.split() for line in table.readlines()[1:]]
        queued = [int(row[4].split(":")[1], 16) for row in rows if row[1] == local]
        if queued and queued[0] == 0:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"the proxy's socket {local} still holds data after {TIMEOUT} s")


class ProxyClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.serve, cls.address = start([CONDUIT, "serve", "--listen", "127.0.0.1:0"])

    @classmethod
    def tearDownClass(cls):
        stop(cls.serve)

    def run_async(self, coroutine):
        asyncio.run(asyncio.wait_for(coroutine, 60))

    def test_relays_and_reports_each_connection(self):
        async def scenario():
            server, port = await echo_upstream()
            async with Client(self.address) as client:
                async with await client.create_proxy("tcp://127.0.0.1:0", f"tcp://127.0.0.1:{port}",
                                                     stats_interval=0.05) as proxy:
                    host, proxy_port = proxy.sockets[0]
                    self.assertEqual(host, "127.0.0.1")
                    await round_trip(proxy_port, b"x" * 5000)
                    seen = []
                    async for event in proxy.events():
                        seen.append(event)
                        if event.kind == "closed":
                            break
                    self.assertEqual(seen[0].kind, "accepted")
                    self.assertTrue(seen[0].connection.client.startswith("127.0.0.1:"))
                    self.assertEqual(seen[-1].connection.bytes_upstream, 5000)
                    self.assertEqual(seen[-1].connection.bytes_downstream, 5000)
                    self.assertIsNone(seen[-1].connection.error)
                    self.assertEqual(proxy.connections, {})
            server.close()
        self.run_async(scenario())

    def test_latency_is_added_and_removed_while_running(self):
        async def scenario():
            server, port = await echo_upstream()
            async with Client(self.address) as client:
                async with await client.create_proxy("tcp://127.0.0.1:0", f"tcp://127.0.0.1:{port}") as proxy:
                    proxy_port = proxy.sockets[0][1]
                    base = await round_trip(proxy_port)
                    await proxy.add_fault(faults.latency(0.1, direction="upstream"))
                    slow = await round_trip(proxy_port)
                    self.assertGreaterEqual(slow, 0.1)
                    self.assertLess(slow, 0.1 + base + 0.1)
                    await proxy.change_fault(faults.latency(0.05))  # same name: both ways now
                    self.assertGreaterEqual(await round_trip(proxy_port), 0.1)
                    await proxy.remove_fault("latency")
                    self.assertLess(await round_trip(proxy_port), 0.05)
            server.close()
        self.run_async(scenario())

    def test_a_scoped_fault_crosses_the_service_and_acts_as_scoped(self):
        async def scenario():
            server, port = await echo_upstream()
            async with Client(self.address) as client:
                elsewhere = faults.scoped(faults.latency(0.3, name="elsewhere"), clients=["192.0.2.0/24"])
                later = faults.scoped(faults.blackhole(direction="upstream", name="later"), start_after_bytes=4)
                async with await client.create_proxy("tcp://127.0.0.1:0", f"tcp://127.0.0.1:{port}",
                                                     [elsewhere, later]) as proxy:
                    proxy_port = proxy.sockets[0][1]
                    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
                    writer.write(b"four")
                    self.assertEqual(await asyncio.wait_for(reader.readexactly(4), TIMEOUT), b"four")
                    writer.write(b"dropped")
                    with self.assertRaises(asyncio.TimeoutError):
                        await asyncio.wait_for(reader.read(1), 0.3)
                    writer.close()
                    state = await proxy.change_fault(faults.scoped(faults.latency(0.3, name="elsewhere"),
                                                                   toxicity=0.25, clients=["192.0.2.0/24"]))
                    kept = {f.name: f for f in state.faults}
                    self.assertEqual(list(kept["elsewhere"].scope.clients), ["192.0.2.0/24"])
                    self.assertAlmostEqual(kept["elsewhere"].toxicity.value, 0.25)
                    self.assertEqual(kept["later"].scope.start_after_bytes, 4)
                with self.assertRaises(SessionError) as refused:
                    await client.create_proxy("tcp://127.0.0.1:0", f"tcp://127.0.0.1:{port}",
                                              [faults.scoped(faults.latency(0.1), clients=["10.0.0.0/33"])])
                self.assertIn("scope.clients: '10.0.0.0/33': the prefix must be 0 to 32", str(refused.exception))
            server.close()
        self.run_async(scenario())

    def test_reset_and_blackhole_as_the_client_sees_them(self):
        async def scenario():
            server, port = await echo_upstream()
            async with Client(self.address) as client:
                proxy = await client.create_proxy("tcp://127.0.0.1:0", f"tcp://127.0.0.1:{port}",
                                                  [faults.reset(after_bytes=100, direction="upstream")])
                proxy_port = proxy.sockets[0][1]
                reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
                writer.write(b"r" * 1000)
                with self.assertRaises(ConnectionResetError):
                    while await asyncio.wait_for(reader.read(65536), TIMEOUT):
                        pass
                writer.close()
                await proxy.remove_fault("reset")
                await proxy.add_fault(faults.blackhole(close_after=0.2))
                reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
                begin = time.monotonic()
                writer.write(b"into the void")
                self.assertEqual(await asyncio.wait_for(reader.read(), TIMEOUT), b"")  # closed, nothing came back
                self.assertGreaterEqual(time.monotonic() - begin, 0.15)
                writer.close()
                await proxy.close()
            server.close()
        self.run_async(scenario())

    def test_down_refuses_and_up_serves_again(self):
        async def scenario():
            server, port = await echo_upstream()
            async with Client(self.address) as client:
                async with await client.create_proxy("tcp://127.0.0.1:0", f"tcp://127.0.0.1:{port}") as proxy:
                    proxy_port = proxy.sockets[0][1]
                    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
                    writer.write(b"hi")
                    await reader.readexactly(2)
                    await proxy.down()
                    self.assertFalse(proxy.is_up)
                    self.assertEqual(proxy.sockets, [])
                    with self.assertRaises(ConnectionResetError):
                        while await asyncio.wait_for(reader.read(65536), TIMEOUT):
                            pass
                    with self.assertRaises(ConnectionRefusedError):
                        await asyncio.open_connection("127.0.0.1", proxy_port)
                    await proxy.up()
                    self.assertEqual(proxy.sockets[0][1], proxy_port)
                    await round_trip(proxy_port)
            server.close()
        self.run_async(scenario())

    def test_refusals_say_why(self):
        async def scenario():
            async with Client(self.address) as client:
                # The service's --allow-listen (loopback by default).
                with self.assertRaisesRegex(SessionError, "allow-listen"):
                    await client.create_proxy("tcp://0.0.0.0:0", "tcp://127.0.0.1:9")
                with self.assertRaisesRegex(SessionError, "INVALID_ARGUMENT.*loss is for datagram"):
                    await client.create_proxy("tcp://127.0.0.1:0", "tcp://127.0.0.1:9", [faults.loss(0.5)])
                with self.assertRaisesRegex(ValueError, "is not an endpoint: expected .tcp://.HOST:PORT"):
                    await client.create_proxy("http://127.0.0.1:0", "tcp://127.0.0.1:9")
                with self.assertRaisesRegex(ValueError, "is not an endpoint"):
                    await client.create_proxy("127.0.0.1", "tcp://127.0.0.1:9")
                # The tools' one syntax: HOST:PORT is tcp://.
                async with await client.create_proxy("127.0.0.1:0", "127.0.0.1:9") as short:
                    self.assertEqual(short.sockets[0][0], "127.0.0.1")
                async with await client.create_proxy("tcp://127.0.0.1:0", "tcp://127.0.0.1:9") as proxy:
                    with self.assertRaisesRegex(ProxyError, "no fault is named 'nope'"):
                        await proxy.remove_fault("nope")
                    with self.assertRaisesRegex(ProxyError, "between 0 and 1|is for datagram"):
                        await proxy.add_fault(faults.loss(2))
                    with self.assertRaisesRegex(ProxyError, "rate must be above 0"):
                        await proxy.add_fault(faults.bandwidth(0))
        self.run_async(scenario())

    def test_another_caller_changes_a_named_proxy(self):
        async def scenario():
            server, port = await echo_upstream()
            async with Client(self.address) as owner, Client(self.address) as other:
                async with await owner.create_proxy("tcp://127.0.0.1:0", f"tcp://127.0.0.1:{port}",
                                                    name="db-proxy") as proxy:
                    proxy_port = proxy.sockets[0][1]
                    listed = [s for s in await other.list_sessions() if s.name == "db-proxy"]
                    self.assertEqual(len(listed), 1)
                    self.assertEqual(listed[0].kind, "proxy")
                    # By name: a fault added from outside acts at once.
                    state = await other.control_proxy(
                        "db-proxy", pb.Command(set_fault=faults.latency(0.1, direction="upstream")))
                    self.assertEqual([f.name for f in state.faults], ["latency"])
                    self.assertGreaterEqual(await round_trip(proxy_port), 0.1)
                    # The owner hears of it.
                    events = proxy.events()
                    changed = await asyncio.wait_for(events.__anext__(), TIMEOUT)
                    while changed.kind != "changed":
                        changed = await asyncio.wait_for(events.__anext__(), TIMEOUT)
                    self.assertEqual(changed.command, "set_fault")
                    self.assertTrue(changed.by.startswith("ipv4:127.0.0.1:"), changed.by)
                    self.assertEqual([f.name for f in changed.state.faults], ["latency"])
                    # By id, with no command: the state.
                    state = await other.control_proxy(listed[0].session_id)
                    self.assertTrue(state.up)
                    self.assertEqual(state.faults[0].latency.delay_us, 100000)
                    state = await other.control_proxy("db-proxy", pb.Command(remove_fault=pb.RemoveFault(name="latency")))
                    self.assertEqual(list(state.faults), [])
                    self.assertLess(await round_trip(proxy_port), 0.1)
                    state = await other.control_proxy("db-proxy", pb.Command(proxy_down=pb.ProxyDown()))
                    self.assertFalse(state.up)
                    with self.assertRaises(ConnectionRefusedError):
                        await asyncio.open_connection("127.0.0.1", proxy_port)
                    state = await other.control_proxy("db-proxy", pb.Command(proxy_up=pb.ProxyUp()))
                    self.assertTrue(state.up)
                    await round_trip(proxy_port)
                    # What it refuses, and why.
                    with self.assertRaisesRegex(ProxyError, "NOT_FOUND.*no session has the id or name 'nope'"):
                        await other.control_proxy("nope")
                    with self.assertRaisesRegex(ProxyError, "FAILED_PRECONDITION.*no fault is named 'x'"):
                        await other.control_proxy("db-proxy", pb.Command(remove_fault=pb.RemoveFault(name="x")))
                    with self.assertRaisesRegex(ValueError, "INVALID_ARGUMENT.*not write"):
                        await other.control_proxy("db-proxy", pb.Command(write=b"x"))
                    with self.assertRaisesRegex(ValueError, "INVALID_ARGUMENT.*set_fault"):
                        await other.control_proxy("db-proxy", pb.Command(set_fault=faults.bandwidth(0)))
                    # A name is one session's while it is open.
                    with self.assertRaisesRegex(SessionError, "ALREADY_EXISTS.*named 'db-proxy' already"):
                        await other.create_proxy("tcp://127.0.0.1:0", f"tcp://127.0.0.1:{port}", name="db-proxy")
                    with self.assertRaisesRegex(SessionError, "INVALID_ARGUMENT.*open_proxy.name"):
                        await other.create_proxy("tcp://127.0.0.1:0", f"tcp://127.0.0.1:{port}", name="a b")
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                # Closed: the name is free, and no longer found.
                with self.assertRaisesRegex(ProxyError, "NOT_FOUND"):
                    await other.control_proxy("db-proxy")
                async with await other.create_proxy("tcp://127.0.0.1:0", f"tcp://127.0.0.1:{port}", name="db-proxy"):
                    pass
            server.close()
        self.run_async(scenario())

    def test_control_proxy_refuses_other_kinds_of_session(self):
        async def scenario():
            server, port = await echo_upstream()
            async with Client(self.address) as client:
                reader, writer = await client.open_connection("127.0.0.1", port)
                [connection] = [s for s in await client.list_sessions() if s.kind == "connection"]
                with self.assertRaisesRegex(ProxyError, "FAILED_PRECONDITION.*connection session, not a proxy"):
                    await client.control_proxy(connection.session_id)
                writer.close()
            server.close()
        self.run_async(scenario())

    def test_udp_loss_and_duplication(self):
        async def scenario():
            loop = asyncio.get_running_loop()
            arrived = asyncio.Queue()

            class Upstream(asyncio.DatagramProtocol):
                def datagram_received(self, data, addr):
                    arrived.put_nowait(data)

            upstream, _ = await loop.create_datagram_endpoint(Upstream, local_addr=("127.0.0.1", 0))
            port = upstream.get_extra_info("sockname")[1]
            async with Client(self.address) as client:
                async with await client.create_proxy("udp://127.0.0.1:0", f"udp://127.0.0.1:{port}",
                                                     [faults.duplicate(1.0, direction="upstream")]) as proxy:
                    to_proxy = ("127.0.0.1", proxy.sockets[0][1])
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    sock.sendto(b"twice", to_proxy)
                    self.assertEqual(await asyncio.wait_for(arrived.get(), TIMEOUT), b"twice")
                    self.assertEqual(await asyncio.wait_for(arrived.get(), TIMEOUT), b"twice")
                    await proxy.change_fault(faults.loss(1.0, name="duplicate"))
                    sock.sendto(b"never", to_proxy)
                    await udp_socket_drained(to_proxy[1])
                    # A marker after the loss is removed: "never" was read
                    # (and dropped) before, so the marker is the next to come.
                    await proxy.remove_fault("duplicate")
                    sock.sendto(b"marker", to_proxy)
                    self.assertEqual(await asyncio.wait_for(arrived.get(), TIMEOUT), b"marker")
                    sock.close()
            upstream.close()
        self.run_async(scenario())


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
