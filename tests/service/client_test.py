#!/usr/bin/python3
"""clients/python (conduit_client) against a real `conduit serve`: each
scenario is one asyncio protocol class run twice, on asyncio's own loop
against a local peer and through the client, with the callback sequences
compared.

usage: client_test.py CONDUIT_BIN [PACKAGE_PATH]

With PACKAGE_PATH the package is imported from there (the repository's
clients/python); without, from wherever it is installed (tests/CMakeLists
runs it both ways: from the tree, and from a venv that pip installed it in).
"""
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import unittest

CONDUIT = sys.argv[1]
if len(sys.argv) > 2:
    sys.path.insert(0, sys.argv[2])
from conduit_client import Client  # noqa: E402

TIMEOUT = 20


def start(argv):
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    if not line.startswith("listening "):
        process.kill()
        raise RuntimeError(f"{argv} did not start: {line!r}")
    return process, line.split()[1]


class Recorder(asyncio.Protocol):
    """Records each callback; `keep_open` is eof_received's answer; hooks run
    inside callbacks, as a real protocol's code would."""

    def __init__(self, keep_open=False, on_made=None, on_data=None, on_eof=None):
        self.events = []
        self.data = b""
        self.keep_open = keep_open
        self.on_made, self.on_data, self.on_eof = on_made, on_data, on_eof
        self.transport = None
        self.lost = asyncio.get_running_loop().create_future()
        self.paused = False

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport
        if self.on_made:
            self.on_made(transport)

    def data_received(self, data):
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.data += data
        if self.on_data:
            self.on_data(self.transport, data)

    def eof_received(self):
        self.events.append("eof")
        if self.on_eof:
            self.on_eof(self.transport)
        return self.keep_open

    def pause_writing(self):
        self.events.append("pause")
        self.paused = True

    def resume_writing(self):
        self.events.append("resume")
        self.paused = False

    def connection_lost(self, exc):
        self.events.append(("lost", type(exc).__name__ if exc else None))
        if not self.lost.done():
            self.lost.set_result(exc)

    def callbacks(self):
        """Without pause/resume_writing, whose number depends on timing."""
        return [e for e in self.events if e not in ("pause", "resume")]


class Peer:
    """A local asyncio server for the client side's connections to reach:
    `handler(reader, writer)` runs for each."""

    def __init__(self, handler, rcvbuf=None):
        self.handler = handler
        self.rcvbuf = rcvbuf  # SO_RCVBUF of the connections it accepts
        self.done = None

    async def __aenter__(self):
        self.done = asyncio.get_running_loop().create_future()

        async def serve(reader, writer):
            try:
                await self.handler(reader, writer)
            finally:
                if not self.done.done():
                    self.done.set_result(None)
        if self.rcvbuf is None:
            self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        else:
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)  # before listen: inherited
            listener.bind(("127.0.0.1", 0))
            self.server = await asyncio.start_server(serve, sock=listener)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()


def counting_peer(start, received):
    """A Peer handler that reads nothing until `start` is set, then counts
    what it reads into received[0] until EOF."""
    async def peer(reader, writer):
        await start.wait()
        while data := await reader.read(1 << 16):
            received[0] += len(data)
    return peer


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="conduit-client-")
        cls.serve, cls.address = start([CONDUIT, "serve", "--listen", "127.0.0.1:0", "--allow-exec", "/bin/sh",
                                        "--allow-exec", "/bin/cat", "--allow-unix", cls.tmp])

    @classmethod
    def tearDownClass(cls):
        cls.serve.terminate()
        cls.serve.wait(TIMEOUT)

    def run_async(self, coroutine):
        return asyncio.run(asyncio.wait_for(coroutine, TIMEOUT))

    def both_ways(self, scenario):
        """scenario(connect) -> result; connect(factory, host, port) is the
        local loop's create_connection, then the client's. Both results."""
        async def local():
            loop = asyncio.get_running_loop()
            return await scenario(loop.create_connection)

        async def remote():
            async with Client(self.address) as client:
                return await scenario(client.create_connection)
        return self.run_async(local()), self.run_async(remote())

    # ---- scenarios ----------------------------------------------------------------

    def test_connect_and_close(self):
        async def scenario(connect):
            async def peer(reader, writer):
                await reader.read()
                writer.close()
            async with Peer(peer) as p:
                transport, protocol = await connect(lambda: Recorder(on_made=lambda t: t.close()), "127.0.0.1", p.port)
                self.assertTrue(transport.is_closing())
                await protocol.lost
                self.assertEqual(transport.get_extra_info("peername"), ("127.0.0.1", p.port))
                return protocol.callbacks()
        local, remote = self.both_ways(scenario)
        self.assertEqual(local, ["made", ("lost", None)])
        self.assertEqual(remote, local)

    def test_peer_eof_false_closes_true_keeps_open(self):
        for keep_open in (False, True):
            with self.subTest(keep_open=keep_open):
                async def scenario(connect):
                    got = asyncio.get_running_loop().create_future()

                    async def peer(reader, writer):
                        writer.write(b"x")
                        writer.write_eof()
                        got.set_result(await reader.read())
                        writer.close()

                    def answer(transport):
                        if keep_open:  # still open after our True: reply, then close
                            transport.write(b"reply after eof")
                            transport.close()
                    async with Peer(peer) as p:
                        _, protocol = await connect(lambda: Recorder(keep_open=keep_open, on_eof=answer), "127.0.0.1",
                                                    p.port)
                        await protocol.lost
                        return protocol.callbacks(), await got
                local, remote = self.both_ways(scenario)
                self.assertEqual(local[0], ["made", "data", "eof", ("lost", None)])
                self.assertEqual(local[1], b"reply after eof" if keep_open else b"")
                self.assertEqual(remote, local)

    def test_half_close_then_reply(self):
        async def scenario(connect):
            async def peer(reader, writer):
                question = await reader.read()  # to our EOF
                writer.write(b"answer to " + question)
                writer.close()

            def ask(transport):
                transport.write(b"question")
                transport.write_eof()
            async with Peer(peer) as p:
                _, protocol = await connect(lambda: Recorder(on_made=ask), "127.0.0.1", p.port)
                await protocol.lost
                return protocol.callbacks(), protocol.data
        local, remote = self.both_ways(scenario)
        self.assertEqual(local, (["made", "data", "eof", ("lost", None)], b"answer to question"))
        self.assertEqual(remote, local)

    def test_flow_control_with_small_watermarks_against_a_slow_peer(self):
        total = 8 << 20

        async def scenario(connect):
            reading = asyncio.Event()

            async def peer(reader, writer):
                await reading.wait()
                got = 0
                while got < total:
                    got += len(await reader.read(1 << 16))
                writer.write(b"all")
                writer.close()
            async with Peer(peer) as p:
                transport, protocol = await connect(Recorder, "127.0.0.1", p.port)
                transport.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
                self.assertEqual(transport.get_write_buffer_limits(), (16 * 1024, 64 * 1024))
                with self.assertRaises(ValueError):
                    transport.set_write_buffer_limits(high=1, low=2)
                chunk, sent = b"w" * 65536, 0
                while sent < total:
                    while protocol.paused:
                        reading.set()
                        await asyncio.sleep(0)  # let the loop run until resume_writing
                    transport.write(chunk)
                    sent += len(chunk)
                reading.set()
                while protocol.data != b"all":
                    await asyncio.sleep(0)
                transport.close()
                await protocol.lost
                return protocol.callbacks(), protocol.events.count("pause") >= 1, \
                    protocol.events.count("pause") == protocol.events.count("resume")
        local, remote = self.both_ways(scenario)
        self.assertEqual(local, (["made", "data", ("lost", None)], True, True))
        self.assertEqual(remote, local)

    def test_peer_reset(self):
        async def scenario(connect):
            async def peer(reader, writer):
                await reader.readexactly(5)
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                writer.transport.abort()  # RST
            async with Peer(peer) as p:
                _, protocol = await connect(lambda: Recorder(on_made=lambda t: t.write(b"hello")), "127.0.0.1",
                                            p.port)
                await protocol.lost
                return protocol.callbacks()
        local, remote = self.both_ways(scenario)
        self.assertEqual(local, ["made", ("lost", "ConnectionResetError")])
        self.assertEqual(remote, local)

    def test_abort_with_data_buffered(self):
        total = 32 << 20

        async def scenario(connect):
            stop = asyncio.Event()
            received = [0]
            async with Peer(counting_peer(stop, received)) as p:
                transport, protocol = await connect(Recorder, "127.0.0.1", p.port)
                for _ in range(total // 65536):  # pause_writing ignored
                    transport.write(b"a" * 65536)
                transport.abort()
                self.assertTrue(transport.is_closing())
                await protocol.lost
                stop.set()
                await p.done
                return protocol.callbacks(), received[0] < total // 2
        local, remote = self.both_ways(scenario)
        self.assertEqual(local, (["made", ("lost", None)], True))
        self.assertEqual(remote, local)

    def test_abort_while_writing_is_paused_resumes_nothing(self):
        # asyncio's abort drops the buffer without a resume_writing: the
        # protocol hears connection_lost alone (issue 19).
        async def scenario(connect):
            async def peer(reader, writer):
                await reader.read()
            # A small receive buffer, and more than the kernel's largest send
            # buffer (4 MiB here): the write must wait in the transport, whatever
            # the receiver's autotuning (rmem up to 32 MiB on some kernels).
            async with Peer(peer, rcvbuf=64 << 10) as p:
                transport, protocol = await connect(Recorder, "127.0.0.1", p.port)
                transport.write(b"w" * (8 << 20))
                if not protocol.paused:
                    return "the write did not pause the protocol"
                transport.abort()
                await protocol.lost
                return protocol.events
        local, remote = self.both_ways(scenario)
        self.assertEqual(local, ["made", "pause", ("lost", None)])
        self.assertEqual(remote, local)

    def test_a_write_after_close_joins_what_is_still_buffered(self):
        # asyncio counts the connection lost only once its buffer drained:
        # a write after close() while data waits is sent (issue 19).
        size = 8 << 20  # more than the kernel takes for a peer that does not read (its buffer kept small)

        async def scenario(connect):
            reading = asyncio.Event()
            received = [0]
            async with Peer(counting_peer(reading, received), rcvbuf=64 << 10) as p:
                transport, protocol = await connect(Recorder, "127.0.0.1", p.port)
                transport.write(b"b" * size)
                transport.close()
                transport.write(b"tail")
                reading.set()
                await protocol.lost
                await p.done
                return received[0], protocol.callbacks()
        local, remote = self.both_ways(scenario)
        self.assertEqual(local, (size + 4, ["made", ("lost", None)]), "asyncio's own")
        self.assertEqual(remote, local)

    def test_pause_and_resume_reading(self):
        async def scenario(connect):
            async def peer(reader, writer):
                writer.write(b"early data")
                await writer.drain()
                await reader.read()
                writer.close()
            async with Peer(peer) as p:
                transport, protocol = await connect(lambda: Recorder(on_made=lambda t: t.pause_reading()),
                                                    "127.0.0.1", p.port)
                self.assertFalse(transport.is_reading())
                for _ in range(50):  # loop turns: nothing may arrive while paused
                    await asyncio.sleep(0.001)
                protocol.events.append("resume_reading")
                transport.resume_reading()
                self.assertTrue(transport.is_reading())
                while protocol.data != b"early data":
                    await asyncio.sleep(0.001)
                transport.close()
                await protocol.lost
                return protocol.callbacks()
        local, remote = self.both_ways(scenario)
        expected = ["made", "resume_reading", "data", ("lost", None)]
        # CPython 3.11 (Debian's, which has grpcio) starts reading after
        # connection_made even if it paused there (fixed in 3.12): 3.13's
        # behaviour, which the SPEC follows, is the reference.
        if sys.version_info >= (3, 12):
            self.assertEqual(local, expected)
        self.assertEqual(remote, expected)

    def test_answers_at_the_call(self):
        async def scenario(connect):
            async def peer(reader, writer):
                await reader.read()
                writer.close()
            async with Peer(peer) as p:
                transport, protocol = await connect(Recorder, "127.0.0.1", p.port)
                with self.assertRaises(TypeError):
                    transport.write("not bytes")
                transport.write(b"x")
                transport.write_eof()
                with self.assertRaises(RuntimeError):
                    transport.write(b"after eof")
                transport.close()
                self.assertTrue(transport.is_closing())
                transport.write_eof()  # dropped, as after close
                await protocol.lost
                return protocol.callbacks(), transport.can_write_eof()
        local, remote = self.both_ways(scenario)
        self.assertEqual(remote, local)

    def test_protocol_exception_goes_to_the_handler(self):
        def bad_data(transport, data):
            raise RuntimeError("protocol bug")

        async def scenario(connect):
            handled = []

            def handler(loop, context):
                # grpcio's aio delivers a completion for a call of an earlier,
                # closed loop (an earlier asyncio.run in this process) through
                # whichever loop polls now; it is not this scenario's.
                if "PollerCompletionQueue" in repr(context.get("handle")) and \
                        "Event loop is closed" in str(context.get("exception")):
                    return
                handled.append(context["message"])
            asyncio.get_running_loop().set_exception_handler(handler)

            async def peer(reader, writer):
                writer.write(b"trigger")
                await reader.read()
                writer.close()
            async with Peer(peer) as p:
                _, protocol = await connect(lambda: Recorder(on_data=bad_data), "127.0.0.1", p.port)
                await protocol.lost
                return protocol.callbacks(), handled
        local, remote = self.both_ways(scenario)
        self.assertEqual(local, (["made", "data", ("lost", "RuntimeError")],
                                 ["Fatal error: protocol.data_received() call failed."]))
        self.assertEqual(remote, local)

    def test_refused_connection_raises_connection_refused_error(self):
        async def scenario(connect):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
                with self.assertRaises(ConnectionRefusedError) as caught:
                    await connect(Recorder, "127.0.0.1", port)
                return caught.exception.errno
        local, remote = self.both_ways(scenario)
        self.assertEqual(remote, local)

    def test_connected_datagram_endpoint_with_a_refused_port(self):
        class Datagrams(asyncio.DatagramProtocol):
            def __init__(self):
                self.events = []
                self.error = asyncio.get_running_loop().create_future()

            def connection_made(self, transport):
                self.events.append("made")
                transport.sendto(b"anyone there?")

            def error_received(self, exc):
                self.events.append(("error", type(exc).__name__))
                if not self.error.done():
                    self.error.set_result(exc)

            def connection_lost(self, exc):
                self.events.append(("lost", exc))

        async def scenario(create):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            transport, protocol = await create(Datagrams, remote_addr=("127.0.0.1", port))
            await protocol.error
            self.assertEqual(transport.get_extra_info("peername"), ("127.0.0.1", port))
            transport.close()
            for _ in range(1000):
                if protocol.events[-1] == ("lost", None):
                    break
                await asyncio.sleep(0.005)
            return protocol.events

        async def local():
            return await scenario(asyncio.get_running_loop().create_datagram_endpoint)

        async def remote():
            async with Client(self.address) as client:
                return await scenario(client.create_datagram_endpoint)
        local_events, remote_events = self.run_async(local()), self.run_async(remote())
        self.assertEqual(local_events, ["made", ("error", "ConnectionRefusedError"), ("lost", None)])
        self.assertEqual(remote_events, local_events)

    def test_subprocess_writing_to_both_pipes_and_exiting_3(self):
        class Child(asyncio.SubprocessProtocol):
            def __init__(self):
                self.events, self.out = [], {1: b"", 2: b""}
                self.lost = asyncio.get_running_loop().create_future()

            def connection_made(self, transport):
                self.events.append("made")

            def pipe_data_received(self, fd, data):
                self.out[fd] += data

            def pipe_connection_lost(self, fd, exc):
                self.events.append(("pipe lost", fd))

            def process_exited(self):
                self.events.append("exited")

            def connection_lost(self, exc):
                self.events.append(("lost", exc))
                self.lost.set_result(None)

        async def scenario(exec_):
            transport, protocol = await exec_(Child, "/bin/sh", "-c", "echo out; echo err >&2; exit 3")
            transport.get_pipe_transport(0).close()
            await protocol.lost
            return (protocol.events[0], sorted(map(str, protocol.events[1:-1])), protocol.events[-1], protocol.out,
                    transport.get_returncode())

        async def local():
            return await scenario(asyncio.get_running_loop().subprocess_exec)

        async def remote():
            async with Client(self.address) as client:
                return await scenario(client.subprocess_exec)
        local_result, remote_result = self.run_async(local()), self.run_async(remote())
        self.assertEqual(local_result[3], {1: b"out\n", 2: b"err\n"})
        self.assertEqual(local_result[4], 3)
        self.assertEqual(remote_result, local_result)

    def test_a_server_whose_connections_echo(self):
        class Echo(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def data_received(self, data):
                self.transport.write(data)

        async def scenario(create_server):
            server = await create_server(Echo, "127.0.0.1", 0)
            async with server:
                self.assertTrue(server.is_serving())
                port = server.sockets[0].getsockname()[1]
                replies = []
                for message in (b"one", b"two"):
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(message)
                    writer.write_eof()
                    replies.append(await reader.read())
                    writer.close()
                    await writer.wait_closed()
            return replies, server.is_serving()

        async def local():
            return await scenario(asyncio.get_running_loop().create_server)

        async def remote():
            async with Client(self.address) as client:
                return await scenario(client.create_server)
        self.assertEqual(self.run_async(local()), ([b"one", b"two"], False))
        self.assertEqual(self.run_async(remote()), ([b"one", b"two"], False))

    def test_streams_and_communicate(self):
        async def scenario():
            async def peer(reader, writer):
                line = await reader.readline()
                writer.write(line.upper())
                await writer.drain()
                writer.close()
            async with Client(self.address) as client, Peer(peer) as p:
                reader, writer = await client.open_connection("127.0.0.1", p.port)
                writer.write(b"hello streams\n")
                await writer.drain()
                answer = await reader.read()
                writer.close()
                await writer.wait_closed()
                proc = await client.create_subprocess_exec("/bin/cat", stdin=asyncio.subprocess.PIPE,
                                                           stdout=asyncio.subprocess.PIPE)
                payload = os.urandom(3 << 20)  # bigger than a gRPC message
                out, err = await proc.communicate(payload)
                shell = await client.create_subprocess_exec("/bin/sh", "-c", "exit 7")
                return answer, out == payload, err, proc.returncode, await shell.wait()
        self.assertEqual(self.run_async(scenario()), (b"HELLO STREAMS\n", True, None, 0, 7))

    def test_refusals_are_exceptions(self):
        async def scenario():
            async with Client(self.address) as client:
                with self.assertRaises(PermissionError):
                    await client.subprocess_exec(asyncio.SubprocessProtocol, "/bin/ls")
                with self.assertRaises(PermissionError):
                    await client.create_server(asyncio.Protocol, "0.0.0.0", 0)
                with self.assertRaises(FileNotFoundError):
                    await client.create_unix_connection(asyncio.Protocol, os.path.join(self.tmp, "none.sock"))
        self.run_async(scenario())


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
