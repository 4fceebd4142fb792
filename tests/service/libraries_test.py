#!/usr/bin/python3
"""Real asyncio libraries, unmodified, on conduit_client.RemoteEventLoop
against real servers this test starts: an aiohttp server and client
(python3-aiohttp), asyncpg against PostgreSQL, redis-py's asyncio client
against redis-server. Each checks its traffic went through the service (its
log names each session) and that the results are the library's usual ones.

usage: libraries_test.py CONDUIT_BIN PACKAGE_PATH
"""
import asyncio
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

CONDUIT = sys.argv[1]
sys.path.insert(0, sys.argv[2])
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from conduit_client import RemoteEventLoop  # noqa: E402

TIMEOUT = 30


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, process, what):
    """Until something accepts on 127.0.0.1:port (bounded), or `process` died."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {TIMEOUT} s")


def stop_process(process):
    process.terminate()
    try:
        process.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Libraries(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.serve, cls.address = harness.start([CONDUIT, "serve", "--listen", "127.0.0.1:0"])

    @classmethod
    def tearDownClass(cls):
        harness.stop(cls.serve)

    def run_remote(self, coroutine):
        with asyncio.Runner(loop_factory=lambda: RemoteEventLoop(self.address)) as runner:
            return runner.run(asyncio.wait_for(coroutine, TIMEOUT))

    def assert_through_the_service(self, text):
        log = harness.log_of(self.serve)
        self.assertIn(text, log, "the service's log has no such session: the traffic did not go through it")

    def test_aiohttp_server_and_client(self):
        import aiohttp
        from aiohttp import web

        async def scenario():
            async def hello(request):
                body = await request.read()
                return web.json_response({"path": request.path, "length": len(body),
                                          "peer": request.transport.get_extra_info("peername")[0]})
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", hello)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]
            try:
                # By name: aiohttp resolves "localhost" with loop.getaddrinfo.
                async with aiohttp.ClientSession() as session:
                    async with session.post(f"http://localhost:{port}/echo", data=b"x" * 100_000) as response:
                        answer = await response.json()
                    async with session.get(f"http://localhost:{port}/again") as response:
                        again = await response.json()
                # And a plain client of this host reaches the server there.
                local = await asyncio.to_thread(
                    lambda: __import__("urllib.request").request.urlopen(f"http://127.0.0.1:{port}/local",
                                                                         timeout=TIMEOUT).read())
            finally:
                await runner.cleanup()
            return port, answer, again, local
        port, answer, again, local = self.run_remote(scenario())
        self.assertEqual(answer, {"path": "/echo", "length": 100_000, "peer": "127.0.0.1"})
        self.assertEqual(again["path"], "/again")
        self.assertIn(b'"/local"', local)
        self.assert_through_the_service(f"getaddrinfo localhost {port}")
        self.assert_through_the_service(f"connection tcp://127.0.0.1:{port}")

    def test_asyncpg_against_postgresql(self):
        import asyncpg
        postgres = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
        if not postgres:
            self.fail("PostgreSQL is not installed (apt-get install postgresql)")
        bindir = os.path.dirname(postgres[-1])
        data = tempfile.mkdtemp(prefix="conduit-pg-")
        self.addCleanup(shutil.rmtree, data, True)
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if as_postgres:
            shutil.chown(data, "postgres", "postgres")
        subprocess.run(as_postgres + [os.path.join(bindir, "initdb"), "-D", os.path.join(data, "db"), "-A", "trust",
                                      "-U", "conduit", "--no-sync"], check=True, capture_output=True)
        port = free_port()
        server = subprocess.Popen(as_postgres + [postgres[-1], "-D", os.path.join(data, "db"), "-p", str(port),
                                                 "-h", "127.0.0.1", "-k", data, "-F"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(stop_process, server)
        wait_for_port(port, server, "postgres")
        deadline = time.monotonic() + TIMEOUT  # listening is not ready: it may still be starting up
        while subprocess.run([os.path.join(bindir, "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]).returncode:
            self.assertLess(time.monotonic(), deadline, "postgres did not become ready")
            time.sleep(0.05)

        async def scenario():
            connection = await asyncpg.connect(host="127.0.0.1", port=port, user="conduit", database="postgres")
            try:
                await connection.execute("CREATE TABLE t (id int PRIMARY KEY, name text)")
                await connection.executemany("INSERT INTO t VALUES ($1, $2)", [(i, f"n{i}") for i in range(500)])
                count = await connection.fetchval("SELECT count(*) FROM t")
                row = await connection.fetchrow("SELECT name FROM t WHERE id = $1", 42)
                async with connection.transaction():
                    await connection.execute("DELETE FROM t WHERE id < 100")
                rows = [r["id"] async for r in _cursor(connection)]
                big = await connection.fetchval("SELECT repeat('x', 1000000)")
                return count, row["name"], len(rows), len(big)
            finally:
                await connection.close()
        self.assertEqual(self.run_remote(scenario()), (500, "n42", 400, 1_000_000))
        self.assert_through_the_service(f"connection tcp://127.0.0.1:{port}")

    def test_redis_asyncio_against_redis_server(self):
        import redis.asyncio as redis
        port = free_port()
        server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(stop_process, server)
        wait_for_port(port, server, "redis-server")

        async def scenario():
            client = redis.Redis(host="localhost", port=port)
            try:
                await client.set("key", "value")
                value = await client.get("key")
                async with client.pipeline(transaction=True) as pipe:
                    results = await pipe.incr("n").incr("n").get("n").execute()
                pubsub = client.pubsub()
                await pubsub.subscribe("channel")
                await pubsub.get_message(timeout=TIMEOUT)  # the subscription's confirmation
                await client.publish("channel", "hello")
                message = None
                for _ in range(100):
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=TIMEOUT)
                    if message is not None:
                        break
                await pubsub.close()
                big = await client.set("big", b"y" * 2_000_000) and len(await client.get("big"))
                return value, results, message["data"], big
            finally:
                await client.close()
        self.assertEqual(self.run_remote(scenario()), (b"value", [1, 2, b"2"], b"hello", 2_000_000))
        self.assert_through_the_service(f"connection tcp://localhost:{port}")


async def _cursor(connection):
    async with connection.transaction():
        async for record in connection.cursor("SELECT id FROM t ORDER BY id", prefetch=50):
            yield record


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
