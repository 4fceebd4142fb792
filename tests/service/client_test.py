#!/usr/bin/python3
"""clients/python (conduit_client) against a real `conduit serve`.

usage: client_test.py CONDUIT_BIN REPO_ROOT
"""
import asyncio
import os
import subprocess
import sys
import tempfile
import unittest

CONDUIT, ROOT = sys.argv[1], sys.argv[2]
os.environ["CONDUIT_PROTO_DIR"] = os.path.join(ROOT, "proto")
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
from conduit_client import Client, SessionError  # noqa: E402

TIMEOUT = 20


def start(argv):
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    if not line.startswith("listening "):
        process.kill()
        raise RuntimeError(f"{argv} did not start: {line!r}")
    return process, line.split()[1]


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.serve, cls.address = start([CONDUIT, "serve", "--listen", "127.0.0.1:0", "--allow-exec", "/bin/cat",
                                         "--allow-unix", tempfile.gettempdir()])
        cls.echo, url = start([CONDUIT, "echo-server", "--listen", "tcp://127.0.0.1:0", "--quiet"])
        cls.echo_port = int(url.rsplit(":", 1)[1])

    @classmethod
    def tearDownClass(cls):
        for process in (cls.echo, cls.serve):
            process.terminate()
            process.wait(TIMEOUT)

    def run_async(self, coroutine):
        return asyncio.run(asyncio.wait_for(coroutine, TIMEOUT))

    def test_echo_session(self):
        async def scenario():
            async with Client(self.address) as client:
                async with client.create_connection("127.0.0.1", self.echo_port) as s:
                    self.assertEqual(s.connection_made.peername, f"127.0.0.1:{self.echo_port}")
                    await s.write(b"ping from python")
                    got, kinds = b"", []
                    async for event in s.events():
                        kinds.append(event.WhichOneof("kind"))
                        if event.WhichOneof("kind") == "data_received":
                            got += event.data_received.data
                            if got == b"ping from python":
                                await s.close()
                    self.assertEqual(kinds[-1], "connection_lost")
                    return got
        self.assertEqual(self.run_async(scenario()), b"ping from python")

    def test_a_write_larger_than_one_message_goes_through(self):
        # 6 MiB in one write(): more than the service's 4 MiB message limit.
        payload = os.urandom(6 << 20)

        async def scenario():
            async with Client(self.address) as client:
                async with client.subprocess_exec("/bin/cat") as s:
                    out, err, returncode = await s.communicate(payload)
                    return out, returncode
        out, returncode = self.run_async(scenario())
        self.assertEqual(returncode, 0)
        self.assertEqual(len(out), len(payload))
        self.assertEqual(out, payload)

    def test_refused_connection_raises_with_errno(self):
        async def scenario():
            async with Client(self.address) as client:
                with self.assertRaises(SessionError) as caught:
                    async with client.create_connection("127.0.0.1", 1):
                        pass
                return caught.exception
        error = self.run_async(scenario())
        self.assertEqual(error.errno, 111)
        self.assertIn("Connection refused", error.strerror)

    def test_subprocess_and_listing(self):
        async def scenario():
            async with Client(self.address) as client:
                async with client.subprocess_exec("/bin/cat") as s:
                    self.assertGreater(s.connection_made.pid, 0)
                    sessions = await client.list_sessions()
                    self.assertIn(s.connection_made.session_id, [x.session_id for x in sessions])
                    return await s.communicate(b"through cat")
        self.assertEqual(self.run_async(scenario()), (b"through cat", b"", 0))


    def test_server_session_echoes_a_local_client(self):
        async def scenario():
            async with Client(self.address) as client:
                async with client.create_server("127.0.0.1", 0) as server:
                    port = int(server.sockets[0].rsplit(":", 1)[1])
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(b"echo me, server session")
                    writer.write_eof()
                    async for event in server.events():
                        kind = event.WhichOneof("kind")
                        if kind == "data_received":
                            await server.connection(event.connection_id).write(event.data_received.data)
                        elif kind == "eof_received":
                            await server.connection(event.connection_id).close()
                        elif kind == "connection_lost" and event.connection_id != 0:
                            await server.close()
                    echoed = await reader.read()
                    writer.close()
                    return echoed
        self.assertEqual(self.run_async(scenario()), b"echo me, server session")

    def test_datagram_session(self):
        async def scenario():
            async with Client(self.address) as client:
                async with client.create_datagram_endpoint(local_addr=("127.0.0.1", 0)) as a:
                    async with client.create_datagram_endpoint(remote_addr=("127.0.0.1", int(
                            a.connection_made.sockname.rsplit(":", 1)[1]))) as b:
                        await b.sendto(b"datagram one")
                        async for event in a.events():
                            if event.WhichOneof("kind") == "datagram_received":
                                return event.datagram_received.data, event.datagram_received.addr == \
                                    b.connection_made.sockname
        self.assertEqual(self.run_async(scenario()), (b"datagram one", True))

if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
