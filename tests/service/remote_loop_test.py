#!/usr/bin/python3
"""conduit_client.RemoteEventLoop against a real `conduit serve`: unmodified
asyncio code run twice, on asyncio's own loop and on the remote loop, with
the results compared; and `python3 -m conduit_client --via` running a
script.

usage: remote_loop_test.py CONDUIT_BIN PACKAGE_PATH
"""
import asyncio
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import unittest

CONDUIT = sys.argv[1]
PACKAGE = sys.argv[2]
sys.path.insert(0, PACKAGE)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from conduit_client import RemoteEventLoop, remote_loop  # noqa: E402

TIMEOUT = 60  # any single scenario; generous for a loaded machine


def make_certificates(folder):
    """A CA and a certificate for "localhost" it signed, made with openssl."""
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Conduit test CA",
            "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
            "-out", "server.csr")
    with open(os.path.join(folder, "ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem")
    return (os.path.join(folder, name) for name in ("ca.pem", "server.pem", "server.key"))


class Counting(asyncio.Protocol):
    """Counts the flow-control callbacks and bytes of one connection."""

    def __init__(self):
        self.pauses = self.resumes = 0
        self.data = b""
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.data += data

    def pause_writing(self):
        self.pauses += 1

    def resume_writing(self):
        self.resumes += 1

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


async def echo(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


class RemoteLoopTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="conduit-loop-")
        cls.ca, cls.cert, cls.key = make_certificates(cls.tmp)
        cls.serve, cls.address = harness.start([
            CONDUIT, "serve", "--listen", "127.0.0.1:0", "--allow-exec", "/bin/sh", "--allow-exec", "/bin/echo",
            "--allow-unix", cls.tmp])

    @classmethod
    def tearDownClass(cls):
        harness.stop(cls.serve)

    def both_ways(self, scenario):
        """scenario() run on asyncio's loop, then on the remote loop."""
        results = []
        for factory in (asyncio.new_event_loop, lambda: RemoteEventLoop(self.address)):
            with asyncio.Runner(loop_factory=factory) as runner:
                results.append(runner.run(asyncio.wait_for(scenario(), TIMEOUT)))
        return results

    def on_remote(self, scenario):
        with asyncio.Runner(loop_factory=lambda: RemoteEventLoop(self.address)) as runner:
            return runner.run(asyncio.wait_for(scenario(), TIMEOUT))

    # ---- streams with asyncio's keywords ------------------------------------------

    def test_open_connection_with_the_keywords_libraries_pass(self):
        async def scenario():
            server = await asyncio.start_server(echo, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, family=socket.AF_INET, proto=socket.IPPROTO_TCP, flags=0,
                local_addr=("127.0.0.1", 0), happy_eyeballs_delay=0.25)
            writer.write(b"ping")
            await writer.drain()
            answer = await reader.readexactly(4)
            sockname = writer.get_extra_info("sockname")
            writer.close()
            await writer.wait_closed()
            server.close()
            await server.wait_closed()
            return answer, sockname[0], writer.get_extra_info("peername")[1] == port
        local, remote = self.both_ways(scenario)
        self.assertEqual(local, (b"ping", "127.0.0.1", True))
        self.assertEqual(remote, local)

    def test_the_argument_checks_are_asyncios(self):
        async def scenario():
            loop = asyncio.get_running_loop()
            errors = []
            for kwargs in ({"server_hostname": "x"}, {"ssl_handshake_timeout": 1},
                           {"ssl": True}):
                try:
                    await loop.create_connection(asyncio.Protocol, None if "ssl" in kwargs else "127.0.0.1",
                                                 None if "ssl" in kwargs else 9, **kwargs)
                except ValueError as exc:
                    errors.append(str(exc))
            try:
                await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, ssl=True)
            except TypeError as exc:
                errors.append(str(exc))
            return errors
        local, remote = self.both_ways(scenario)
        self.assertEqual(len(local), 4)
        self.assertEqual(remote, local)

    def test_a_refused_connection_is_connection_refused_error(self):
        async def scenario():
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            probe.close()
            try:
                await asyncio.open_connection("127.0.0.1", port)
            except ConnectionRefusedError as exc:
                return exc.errno
        local, remote = self.both_ways(scenario)
        self.assertEqual(remote, local)

    def test_the_transports_socket_takes_the_options_libraries_set(self):
        async def scenario():
            server = await asyncio.start_server(echo, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            answers = (sock.family, sock.type, sock.getsockname()[0], sock.getpeername()[1] == port,
                       sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0,
                       server.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0)
            writer.write(b"still works")
            answer = await reader.readexactly(11)
            writer.close()
            await writer.wait_closed()
            server.close()
            await server.wait_closed()
            return answers, answer
        local, remote = self.both_ways(scenario)
        self.assertEqual(local, ((socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1", True, True, True), b"still works"))
        self.assertEqual(remote, local)

    def test_a_socket_option_that_would_reach_beyond_the_connection_is_refused(self):
        async def scenario():
            server = await asyncio.start_server(echo, "127.0.0.1", 0)
            reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
            try:
                writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
            except OSError as exc:
                return exc.errno
            finally:
                writer.close()
                server.close()
        self.assertEqual(self.on_remote(scenario), __import__("errno").ENOPROTOOPT)

    # ---- names ----------------------------------------------------------------------

    def test_getaddrinfo_and_getnameinfo_answer_as_the_hosts_resolver(self):
        async def scenario():
            loop = asyncio.get_running_loop()
            infos = await loop.getaddrinfo("localhost", 80, family=socket.AF_INET, type=socket.SOCK_STREAM)
            numeric = await loop.getaddrinfo("127.0.0.1", "80", flags=socket.AI_NUMERICHOST,
                                             type=socket.SOCK_STREAM)
            name = await loop.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
            try:
                await loop.getaddrinfo("no-such-host.invalid", 80)
                failure = None
            except socket.gaierror as exc:
                failure = exc.errno
            return infos, numeric, name, failure
        local, remote = self.both_ways(scenario)
        self.assertEqual(local[2], ("127.0.0.1", "80"))
        self.assertIsNotNone(local[3])
        self.assertEqual(remote, local)
        self.assertIsInstance(remote[0][0][0], socket.AddressFamily)

    # ---- TLS in the client ------------------------------------------------------------

    def tls_server_context(self):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context

    def test_tls_verification_peercert_and_errors_are_asyncios(self):
        async def scenario():
            server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=self.tls_server_context())
            port = server.sockets[0].getsockname()[1]
            trusting = ssl.create_default_context(cafile=self.ca)
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trusting,
                                                           server_hostname="localhost")
            writer.write(b"over tls")
            answer = await reader.readexactly(8)
            peercert = writer.get_extra_info("peercert")
            version = writer.get_extra_info("ssl_object").version()
            writer.close()
            await writer.wait_closed()
            errors = []
            for context, name in ((trusting, "wrong.example"), (ssl.create_default_context(), "localhost")):
                try:
                    await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=name)
                except ssl.SSLCertVerificationError as exc:
                    errors.append(exc.verify_message)
            server.close()
            await server.wait_closed()
            return answer, peercert["subject"], version, errors
        local, remote = self.both_ways(scenario)
        self.assertEqual(local[0], b"over tls")
        self.assertEqual(len(local[3]), 2)
        self.assertEqual(remote, local)

    def test_a_tls_server_and_start_tls(self):
        async def scenario():
            loop = asyncio.get_running_loop()
            server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=self.tls_server_context())
            port = server.sockets[0].getsockname()[1]
            # start_tls on a plain connection to the TLS server.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await writer.start_tls(ssl.create_default_context(cafile=self.ca), server_hostname="localhost")
            writer.write(b"upgraded")
            answer = await reader.readexactly(8)
            writer.close()
            await writer.wait_closed()
            server.close()
            await server.wait_closed()
            # And a TLS server of the loop's, reached by a local client.
            tls_server = await loop.create_server(lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()),
                                                  "127.0.0.1", 0, ssl=self.tls_server_context())
            tls_server.close()
            await tls_server.wait_closed()
            return answer
        local, remote = self.both_ways(scenario)
        self.assertEqual(local, b"upgraded")
        self.assertEqual(remote, local)

    def test_start_tls_on_a_transport_paused_for_its_writes(self):
        # 100 KiB written, then start_tls at once (CPython's
        # test_start_tls_client_buf_proto_1 does this): the remote transport
        # is paused for its queue then, and the SSLProtocol that replaces the
        # protocol must not hear a resume_writing it had no pause for (it
        # asserts), so no error reaches the loop's handler.
        async def scenario():
            loop = asyncio.get_running_loop()
            errors = []
            loop.set_exception_handler(lambda _, context: errors.append(context["message"]))

            # A blocking server in a thread reads exactly the plaintext (a
            # stream server's reader would take the ClientHello with it).
            listener = socket.create_server(("127.0.0.1", 0))
            listener.settimeout(TIMEOUT)
            port = listener.getsockname()[1]
            server_context = self.tls_server_context()

            def serve():
                connection, _ = listener.accept()
                with connection:
                    connection.settimeout(TIMEOUT)
                    got = 0
                    while got < 100_000:
                        got += len(connection.recv(100_000 - got))
                    with server_context.wrap_socket(connection, server_side=True) as tls:
                        tls.sendall(tls.recv(5))

            server = threading.Thread(target=serve)
            server.start()
            reader = asyncio.StreamReader()
            transport, protocol = await loop.create_connection(
                lambda: asyncio.StreamReaderProtocol(reader), "127.0.0.1", port)
            transport.write(b"x" * 100_000)
            tls = await loop.start_tls(transport, protocol, ssl.create_default_context(cafile=self.ca),
                                       server_hostname="localhost")
            tls.write(b"hello")
            answer = await reader.readexactly(5)
            tls.close()
            await loop.run_in_executor(None, server.join)
            listener.close()
            return answer, errors
        local, remote = self.both_ways(scenario)
        self.assertEqual(local, (b"hello", []))
        self.assertEqual(remote, local)

    # ---- servers --------------------------------------------------------------------

    def test_server_close_leaves_connections_open_until_close_clients(self):
        async def scenario():
            replies = []

            async def handler(reader, writer):
                data = await reader.read(100)
                writer.write(b"late " + data)
                await writer.drain()
                writer.close()

            server = await asyncio.start_server(handler, ["127.0.0.1"], 0, start_serving=True)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await self.local_connection(port)
            # Wait until the server has the connection, then stop listening.
            for _ in range(200):
                if self.count_connections(server):
                    break
                await asyncio.sleep(0.01)
            server.close()
            serving = server.is_serving()
            writer.write(b"hello")
            replies.append(await reader.read())
            writer.close()
            await server.wait_closed()
            try:
                await asyncio.open_connection("127.0.0.1", port)
                refused = False
            except ConnectionRefusedError:
                refused = True
            return serving, replies, refused
        local, remote = self.both_ways(scenario)
        self.assertEqual(local, (False, [b"late hello"], True))
        self.assertEqual(remote, local)

    @staticmethod
    def count_connections(server):
        if hasattr(server, "_listeners"):
            return sum(len(listener.connections) for listener in server._listeners)
        return server._active_count

    async def local_connection(self, port):
        """A connection from this host's own stack (the service runs here)."""
        sock = socket.create_connection(("127.0.0.1", port))
        return await asyncio.open_connection(sock=sock)

    def test_start_serving_false_holds_connections_until_it_serves(self):
        async def scenario():
            got = asyncio.get_running_loop().create_future()

            async def handler(reader, writer):
                got.set_result(await reader.read(5))
                writer.close()
            server = await asyncio.start_server(handler, "127.0.0.1", 0, start_serving=False)
            port = server.sockets[0].getsockname()[1]
            serving_before = server.is_serving()
            await server.start_serving()
            reader, writer = await self.local_connection(port)
            writer.write(b"hello")
            data = await got
            writer.close()
            server.close()
            await server.wait_closed()
            return serving_before, data
        local, remote = self.both_ways(scenario)
        self.assertEqual(local, (False, b"hello"))
        self.assertEqual(remote, local)

    def test_a_unix_server_and_connection(self):
        path = os.path.join(self.tmp, "loop.sock")

        async def scenario():
            server = await asyncio.start_unix_server(echo, path)
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"unix")
            answer = await reader.readexactly(4)
            writer.close()
            server.close()
            await server.wait_closed()
            return answer
        local, remote = self.both_ways(scenario)
        self.assertEqual(remote, local)

    # ---- flow control ---------------------------------------------------------------

    def test_one_large_write_pauses_once_and_resumes_once(self):
        # A peer that reads from the start, slowly (a small receive buffer,
        # 4 KiB reads): the client's own queue drains while the service's
        # buffer fills, which without the flow's probe paused and resumed
        # the protocol twice for one write (2 of 3 runs here).
        async def scenario():
            loop = asyncio.get_running_loop()

            async def peer(reader, writer):
                while await reader.read(4096):
                    pass
                writer.close()
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            listener.bind(("127.0.0.1", 0))
            server = await asyncio.start_server(peer, sock=listener)
            port = server.sockets[0].getsockname()[1]
            counts = []
            for _ in range(3):
                transport, protocol = await loop.create_connection(Counting, "127.0.0.1", port)
                transport.write(b"x" * (8 << 20))
                # The peer closes once it has read it all: every pause and
                # resume has come by then.
                transport.write_eof()
                await protocol.lost
                counts.append((protocol.pauses, protocol.resumes))
            server.close()
            await server.wait_closed()
            return counts
        local, remote = self.both_ways(scenario)
        self.assertEqual(local, [(1, 1)] * 3)
        self.assertEqual(remote, local)

    # ---- sendfile, subprocesses, datagrams ----------------------------------------

    def test_sendfile_through_asyncios_fallback(self):
        path = os.path.join(self.tmp, "payload")
        payload = os.urandom(300_000)
        with open(path, "wb") as f:
            f.write(payload)

        async def scenario():
            got = asyncio.get_running_loop().create_future()

            async def sink(reader, writer):
                got.set_result(await reader.read())
                writer.close()
            server = await asyncio.start_server(sink, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            with open(path, "rb") as f:
                sent = await asyncio.get_running_loop().sendfile(writer.transport, f, offset=1000, count=200_000)
            writer.write_eof()
            data = await got
            writer.close()
            server.close()
            await server.wait_closed()
            return sent, data == payload[1000:201000]
        local, remote = self.both_ways(scenario)
        self.assertEqual(local, (200_000, True))
        self.assertEqual(remote, local)

    def test_create_subprocess_exec_and_shell(self):
        async def scenario():
            proc = await asyncio.create_subprocess_exec("/bin/echo", "hi", stdout=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
            shell = await asyncio.create_subprocess_exec("/bin/sh", "-c", "read x; echo got $x; exit 3",
                                                         stdin=asyncio.subprocess.PIPE,
                                                         stdout=asyncio.subprocess.PIPE)
            shell_out, _ = await shell.communicate(b"it\n")
            return out, shell_out, shell.returncode
        local, remote = self.both_ways(scenario)
        self.assertEqual(local, (b"hi\n", b"got it\n", 3))
        self.assertEqual(remote, local)

    def test_a_datagram_endpoint(self):
        async def scenario():
            loop = asyncio.get_running_loop()
            received = loop.create_future()

            class Echo(asyncio.DatagramProtocol):
                def connection_made(self, transport):
                    self.transport = transport

                def datagram_received(self, data, addr):
                    self.transport.sendto(data.upper(), addr)

            class Client(asyncio.DatagramProtocol):
                def datagram_received(self, data, addr):
                    received.set_result(data)
            server, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
            port = server.get_extra_info("sockname")[1]
            client, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port),
                                                            family=socket.AF_INET)
            client.sendto(b"quiet")
            data = await received
            client.close()
            server.close()
            return data
        local, remote = self.both_ways(scenario)
        self.assertEqual(local, b"QUIET")
        self.assertEqual(remote, local)

    # ---- local things stay local ------------------------------------------------------

    def test_a_socket_handed_in_is_served_locally(self):
        async def scenario():
            ours, theirs = socket.socketpair()
            reader, writer = await asyncio.open_connection(sock=ours)
            theirs.sendall(b"local")
            data = await reader.readexactly(5)
            writer.close()
            theirs.close()
            return data
        local, remote = self.both_ways(scenario)
        self.assertEqual(remote, local)

    def test_an_unreachable_service_is_an_error_of_its_own(self):
        from conduit_client import Client, ServiceUnreachableError
        with socket.socket() as probe:  # a port nothing listens on
            probe.bind(("127.0.0.1", 0))
            nowhere = f"127.0.0.1:{probe.getsockname()[1]}"

        async def scenario():
            try:
                await asyncio.open_connection("127.0.0.1", 80)
            except ServiceUnreachableError as exc:
                return isinstance(exc, ConnectionRefusedError), "cannot reach the service" in str(exc)
        with asyncio.Runner(loop_factory=lambda: RemoteEventLoop(nowhere)) as runner:
            self.assertEqual(runner.run(asyncio.wait_for(scenario(), TIMEOUT)), (False, True))

        async def outside():
            client = Client(self.address)
            with self.assertRaisesRegex(RuntimeError, "async with"):
                await client.create_connection(asyncio.Protocol, "127.0.0.1", 80)
        asyncio.run(outside())

    # ---- entry points ---------------------------------------------------------------

    def test_remote_loop_makes_asyncio_run_remote(self):
        async def main():
            return type(asyncio.get_running_loop()).__name__
        with remote_loop(self.address):
            inside = asyncio.run(main())
        self.assertEqual(inside, "RemoteEventLoop")
        self.assertNotEqual(asyncio.run(main()), "RemoteEventLoop")

    def test_python_m_conduit_client_runs_an_unmodified_script(self):
        script = os.path.join(self.tmp, "script.py")
        with open(script, "w") as f:
            f.write("import asyncio, sys\n"
                    "async def main():\n"
                    "    loop = asyncio.get_running_loop()\n"
                    "    proc = await asyncio.create_subprocess_exec('/bin/echo', *sys.argv[1:],\n"
                    "                                                stdout=asyncio.subprocess.PIPE)\n"
                    "    out, _ = await proc.communicate()\n"
                    "    print(type(loop).__name__, out.decode().strip())\n"
                    "asyncio.run(main())\n")
        env = dict(os.environ, PYTHONPATH=PACKAGE)
        result = subprocess.run([sys.executable, "-m", "conduit_client", "--via", self.address, script, "a", "b"],
                                capture_output=True, text=True, timeout=TIMEOUT, env=env)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, "RemoteEventLoop a b\n")
        # Bad use is a clear error with exit status 2.
        result = subprocess.run([sys.executable, "-m", "conduit_client", script], capture_output=True, text=True,
                                timeout=TIMEOUT, env=env)
        self.assertEqual(result.returncode, 2)
        self.assertIn("--via", result.stderr)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
