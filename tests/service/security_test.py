#!/usr/bin/python3
"""What `conduit serve` lets a caller do, and what it logs: the port it
never shares, the --allow-* policy, the token, reflection behind it, the
audit log, and its start-up checks. Each service here is a child process of
its own, stopped by PID.

usage: security_test.py CONDUIT_BIN PROTO_DIR
"""
import errno
import json
import os
import re
import socket
import sys
import tempfile
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import TIMEOUT, Session, load_stubs, log_of, run, self_signed, start, stop  # noqa: E402

CONDUIT, PROTO_DIR = sys.argv[1], sys.argv[2]
reflection_pb2 = load_stubs(PROTO_DIR)
from conduit.v1 import conduit_pb2 as pb, conduit_pb2_grpc as pb_grpc  # noqa: E402

TOKEN = "0123456789abcdef-test-token"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class Service:
    """`conduit serve` with `flags`, and a channel to it."""

    def __init__(self, *flags, token=None, wrapper=()):
        argv = [*wrapper, CONDUIT, "serve", "--listen", "127.0.0.1:0", *flags]
        if token:
            self.token_file = os.path.join(tempfile.mkdtemp(prefix="conduit-"), "token")
            with open(self.token_file, "w") as f:
                f.write(token + "\n")
            argv += ["--token-file", self.token_file]
        self.process, self.address = start(argv)
        self.port = int(self.address.rsplit(":", 1)[1])
        self.channel = grpc.insecure_channel(self.address)
        grpc.channel_ready_future(self.channel).result(timeout=TIMEOUT)
        self.stub = pb_grpc.ConduitStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def session(self, metadata=None):
        return Session(self.stub, metadata=self.metadata if metadata is None else metadata)

    def close(self):
        self.channel.close()
        return stop(self.process)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def refusal(session, message):
    """The status a session's call ends with after `message` opens it."""
    session.outgoing.put(message)
    try:
        events = list(session.responses)
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, events


def echo_server():
    return start([CONDUIT, "echo-server", "--listen", "tcp://127.0.0.1:0", "--quiet"])


class PortSharing(unittest.TestCase):
    def test_a_second_service_on_a_served_port_exits_3(self):
        with Service() as first:
            code, _, err = run([CONDUIT, "serve", "--listen", first.address])
            self.assertEqual(code, 3, err)
            self.assertIn("address is in use", err)
            self.assertEqual(len(err.strip().splitlines()), 1, f"one line, not gRPC's log dump: {err}")

    def test_a_server_session_can_never_bind_the_services_port(self):
        with Service("--allow-listen", "*:*") as service:
            for host in ("127.0.0.1", "", "0.0.0.0"):
                for reuse_port in (False, True):
                    with self.subTest(host=host, reuse_port=reuse_port):
                        code, details = refusal(service.session(), pb.ClientMessage(open_server=pb.OpenServer(
                            tcp=pb.HostPort(host=host, port=service.port), reuse_port=reuse_port)))
                        self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED, details)
                        self.assertIn("the service's own listening port", details)


class ListenPolicy(unittest.TestCase):
    def open_server(self, service, host, port=0):
        return refusal(service.session(), pb.ClientMessage(open_server=pb.OpenServer(
            tcp=pb.HostPort(host=host, port=port))))

    def first_event(self, service, host, port=0):
        s = service.session()
        s.send(open_server=pb.OpenServer(tcp=pb.HostPort(host=host, port=port)))
        event = s.next()
        s.command(close=pb.Close())
        s.until("connection_lost")
        return event

    def test_loopback_only_by_default(self):
        with Service() as service:
            for host in ("", "*", "0.0.0.0", "::"):
                with self.subTest(host=host):
                    code, details = self.open_server(service, host)
                    self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED, details)
                    self.assertIn("--allow-listen", details)
                    self.assertIn("127.0.0.1:*", details)
            self.assertEqual(self.first_event(service, "127.0.0.1").WhichOneof("kind"), "server_started")
            self.assertEqual(self.first_event(service, "localhost").WhichOneof("kind"), "server_started")

    def test_a_port_range_allows_those_ports_and_not_port_0(self):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with Service("--allow-listen", f"127.0.0.1:{port}-{port + 1}") as service:
            self.assertEqual(self.first_event(service, "127.0.0.1", port).WhichOneof("kind"), "server_started")
            for host, p in (("127.0.0.1", 0), ("127.0.0.1", port + 2), ("::1", port)):
                with self.subTest(host=host, port=p):
                    code, details = self.open_server(service, host, p)
                    self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED, details)
                    self.assertIn(f"not allowed by the service's --allow-listen (it allows: 127.0.0.1:{port}-{port + 1})",
                                  details)

    def test_bad_rules_are_refused_at_start(self):
        for rule, text in (("127.0.0.1", "expected HOST:PORTS"), ("127.0.0.1:0", "port 0"),
                           ("::1:80", "brackets"), ("10.0.0.0/33:*", "not an address prefix"),
                           ("127.0.0.1:90-80", "backwards"), ("127.0.0.1:99999", "not a port")):
            with self.subTest(rule=rule):
                code, _, err = run([CONDUIT, "serve", "--listen", "127.0.0.1:0", "--allow-listen", rule])
                self.assertEqual(code, 2, err)
                self.assertIn(text, err)


class ConnectPolicy(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.echo, url = echo_server()
        cls.echo_port = int(url.rsplit(":", 1)[1])

    @classmethod
    def tearDownClass(cls):
        stop(cls.echo)

    def connect(self, service, host, port):
        s = service.session()
        s.send(open_connection=pb.OpenConnection(tcp=pb.HostPort(host=host, port=port)))
        try:
            event = s.next()
        except grpc.RpcError as error:
            return error.code(), error.details()
        s.command(close=pb.Close())
        s.until("connection_lost")
        return grpc.StatusCode.OK, event.WhichOneof("kind")

    def test_only_the_allowed_hosts_and_ports(self):
        with Service("--allow-connect", f"127.0.0.1:{self.echo_port}") as service:
            self.assertEqual(self.connect(service, "127.0.0.1", self.echo_port), (grpc.StatusCode.OK, "connection_made"))
            code, details = self.connect(service, "127.0.0.1", self.echo_port + 1)
            self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED)
            self.assertIn("--allow-connect", details)
            code, details = self.connect(service, "127.0.0.2", self.echo_port)
            self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED)

    def test_every_resolved_address_is_checked_not_the_name(self):
        if os.geteuid() != 0:
            self.skipTest("a name with two addresses needs a private /etc/hosts (root)")
        # conduit-dual.test gives ::1 and 127.0.0.1 there: the rule allows
        # only the second, so the name is refused whatever the order.
        hosts = os.path.join(tempfile.mkdtemp(prefix="conduit-"), "hosts")
        with open("/etc/hosts") as system, open(hosts, "w") as f:
            f.write(system.read() + "::1 conduit-dual.test\n127.0.0.1 conduit-dual.test\n")
        # unshare and sh exec: the PID we stop is the service's own.
        dual = ("unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', hosts)
        with Service("--allow-connect", "127.0.0.1:*", wrapper=dual) as service:
            code, details = self.connect(service, "conduit-dual.test", self.echo_port)
            self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED, details)
            self.assertIn("[::1] port", details)
            self.assertEqual(self.connect(service, "127.0.0.1", self.echo_port), (grpc.StatusCode.OK, "connection_made"))
        # A rule naming a host allows what that name resolves to.
        with Service("--allow-connect", f"conduit-dual.test:{self.echo_port}", wrapper=dual) as service:
            self.assertEqual(self.connect(service, "127.0.0.1", self.echo_port), (grpc.StatusCode.OK, "connection_made"))
            code, details = self.connect(service, "127.0.0.2", self.echo_port)
            self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED, details)

    def test_none_allows_no_connects_and_datagrams_follow_the_policy(self):
        with Service("--allow-connect", "none") as service:
            code, details = self.connect(service, "127.0.0.1", self.echo_port)
            self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED)
            self.assertIn("(it allows: none)", details)
            code, details = refusal(service.session(), pb.ClientMessage(open_datagram_endpoint=pb.OpenDatagramEndpoint(
                remote_addr=pb.HostPort(host="127.0.0.1", port=9))))
            self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED, details)
            # Bound on loopback (allowed), but each sendto is a connect.
            s = service.session()
            s.send(open_datagram_endpoint=pb.OpenDatagramEndpoint(local_addr=pb.HostPort(host="127.0.0.1", port=0)))
            self.assertEqual(s.next().WhichOneof("kind"), "connection_made")
            s.command(sendto=pb.Sendto(data=b"x", addr=pb.HostPort(host="127.0.0.1", port=9)))
            failed = s.until("command_failed")[-1].command_failed
            self.assertIn("PERMISSION_DENIED", failed.message)
            self.assertIn("--allow-connect", failed.message)
            s.command(close=pb.Close())
            s.until("connection_lost")
            code, details = refusal(service.session(), pb.ClientMessage(open_datagram_endpoint=pb.OpenDatagramEndpoint(
                local_addr=pb.HostPort(host="0.0.0.0", port=0))))
            self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED, details)
            self.assertIn("--allow-listen", details)


class UnixPolicy(unittest.TestCase):
    def setUp(self):
        self.allowed = tempfile.mkdtemp(prefix="conduit-allowed-")
        self.other = tempfile.mkdtemp(prefix="conduit-other-")

    def listen(self, service, path):
        return refusal(service.session(), pb.ClientMessage(open_server=pb.OpenServer(unix_path=path)))

    def test_no_unix_paths_by_default(self):
        with Service() as service:
            code, details = self.listen(service, os.path.join(self.allowed, "s.sock"))
            self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED)
            self.assertIn("--allow-unix", details)
            code, details = refusal(service.session(), pb.ClientMessage(open_connection=pb.OpenConnection(
                unix_path="/var/run/docker.sock")))
            self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED)
            self.assertIn("--allow-unix", details)

    def test_only_under_the_allowed_folders(self):
        link = os.path.join(self.allowed, "escape")
        os.symlink(self.other, link)
        os.symlink(os.path.join(self.other, "target.sock"), os.path.join(self.allowed, "link.sock"))
        with Service("--allow-unix", self.allowed) as service:
            s = service.session()
            s.send(open_server=pb.OpenServer(unix_path=os.path.join(self.allowed, "ok.sock")))
            self.assertEqual(s.next().WhichOneof("kind"), "server_started")
            s.command(close=pb.Close())
            s.until("connection_lost")
            for path, text in ((os.path.join(self.other, "s.sock"), "not under a folder"),
                               (os.path.join(self.allowed, "..", os.path.basename(self.other), "s.sock"),
                                "not under a folder"),
                               (os.path.join(link, "s.sock"), "not under a folder"),
                               (os.path.join(self.allowed, "link.sock"), "is a symbolic link"),
                               ("relative.sock", "must be absolute")):
                with self.subTest(path=path):
                    code, details = self.listen(service, path)
                    self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED, details)
                    self.assertIn(text, details)


class UnixListeners(unittest.TestCase):
    """Every session kind that listens on a Unix path goes through one check:
    the canonical path, never the service's own socket, never a live socket,
    never a file that is not a stale socket."""

    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="conduit-unix-")
        self.own = os.path.join(self.folder, "svc.sock")
        self.process, address = start([CONDUIT, "serve", "--listen", f"unix:{self.own}", "--allow-unix", self.folder,
                                       "--allow-connect", "127.0.0.1:*"])
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.ConduitStub(self.channel)

    def tearDown(self):
        self.channel.close()
        stop(self.process)

    def opens(self, path):
        """An open_server and an open_proxy listening on `path`."""
        upstream = pb.ProxyEndpoint(tcp=pb.HostPort(host="127.0.0.1", port=9))
        return (pb.ClientMessage(open_server=pb.OpenServer(unix_path=path)),
                pb.ClientMessage(open_proxy=pb.OpenProxy(listen=pb.ProxyEndpoint(unix_path=path), upstream=upstream)))

    def assert_service_answers(self):
        code, out, err = run([CONDUIT, "health", "--via", f"unix:{self.own}"])
        self.assertEqual((code, out), (0, "status: SERVING\n"), err)

    def test_the_services_own_socket_under_any_spelling(self):
        for spelling in (self.own, self.folder + "//svc.sock", self.folder + "/./svc.sock",
                         os.path.join(self.folder, "..", os.path.basename(self.folder), "svc.sock")):
            for message in self.opens(spelling):
                with self.subTest(path=spelling, kind=message.WhichOneof("kind")):
                    code, details = refusal(Session(self.stub), message)
                    self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED, details)
                    self.assertIn("the service's own listening socket", details)
        self.assert_service_answers()

    def test_a_live_socket_is_in_use_and_other_files_are_left_alone(self):
        live_path = os.path.join(self.folder, "live.sock")
        live = socket.socket(socket.AF_UNIX)
        live.bind(live_path)
        live.listen()
        plain = os.path.join(self.folder, "notes.txt")
        with open(plain, "w") as f:
            f.write("keep me")
        try:
            for path, text in ((live_path, "a server already listens on"),
                               (self.folder + "//live.sock", "a server already listens on"),
                               (plain, "exists and is not a socket")):
                for message in self.opens(path):
                    with self.subTest(path=path, kind=message.WhichOneof("kind")):
                        code, events = refusal(Session(self.stub), message)
                        self.assertEqual(code, grpc.StatusCode.OK, events)
                        self.assertEqual(events[0].WhichOneof("kind"), "open_failed", events)
                        self.assertIn(text, events[0].open_failed.error.message)
                        self.assertEqual(events[0].open_failed.error.errno_value, errno.EADDRINUSE, events[0])
            with socket.socket(socket.AF_UNIX) as client:  # still the live server's
                client.connect(live_path)
            with open(plain) as f:
                self.assertEqual(f.read(), "keep me")
        finally:
            live.close()
        self.assert_service_answers()

    def test_a_stale_socket_is_replaced(self):
        stale = os.path.join(self.folder, "stale.sock")
        for message in self.opens(stale):
            with self.subTest(kind=message.WhichOneof("kind")):
                with socket.socket(socket.AF_UNIX) as old:
                    old.bind(stale)  # bound, never listening, then closed: stale
                s = Session(self.stub)
                s.outgoing.put(message)
                self.assertIn(s.next().WhichOneof("kind"), ("server_started", "proxy_started"))
                with socket.socket(socket.AF_UNIX) as client:
                    client.connect(stale)
                s.command(abort=pb.Abort())
                # The session's own end (id 0): the accepted connection's
                # (id 1) may come first, while the server still listens.
                while s.until("connection_lost")[-1].connection_id != 0:
                    pass


class SubprocessEnvironment(unittest.TestCase):
    def test_caller_set_variables_need_allow_env(self):
        with Service("--allow-exec", "/usr/bin/env", "--allow-env", "LC_*", "--allow-env", "CONDUIT_TEST") as service:
            for name in ("LD_PRELOAD", "LD_LIBRARY_PATH", "PATH"):
                with self.subTest(name=name):
                    code, details = refusal(service.session(), pb.ClientMessage(open_subprocess=pb.OpenSubprocess(
                        argv=["/usr/bin/env"], env={name: "/tmp/x.so"})))
                    self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED)
                    self.assertIn(f"the variable {name} is not allowed by the service's --allow-env", details)
            s = service.session()
            s.send(open_subprocess=pb.OpenSubprocess(argv=["/usr/bin/env"], env={"LC_ALL": "C", "CONDUIT_TEST": "1"}))
            events = s.until("connection_lost")
            out = b"".join(e.pipe_data_received.data for e in events if e.pipe_data_received.fd == 1)
            self.assertEqual(sorted(out.decode().split()), ["CONDUIT_TEST=1", "LC_ALL=C"])

    def test_invalid_names_and_nul_bytes(self):
        with Service("--allow-exec-any", "--allow-env", "*") as service:
            for open_subprocess, text in ((pb.OpenSubprocess(argv=["/bin/true"], env={"A=B": "x"}), "not a variable name"),
                                          (pb.OpenSubprocess(argv=["/bin/true", "a\0b"]), "argv[1] holds a NUL"),
                                          (pb.OpenSubprocess(shell="true\0"), "NUL")):
                with self.subTest(text=text):
                    code, details = refusal(service.session(), pb.ClientMessage(open_subprocess=open_subprocess))
                    self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
                    self.assertIn(text, details)


def exits_within(pid, seconds):
    """Whether process `pid` (not our child) ends within `seconds`: a pidfd
    turns readable when it does."""
    import select
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], seconds)[0])
    finally:
        os.close(fd)


class ProcessGroups(unittest.TestCase):
    """What a child leaves in its process group ends with its session, even
    after the child itself has exited."""

    def start_leaver(self, service):
        s = service.session()
        s.send(open_subprocess=pb.OpenSubprocess(argv=["/bin/sh", "-c", "sleep 300 & echo $!; exit 0"]))
        made = s.next()
        self.assertEqual(made.WhichOneof("kind"), "connection_made", made)
        out = b""
        while b"\n" not in out:
            out += s.next().pipe_data_received.data
        return s, made.connection_made.session_id, int(out)

    def test_close_session_and_a_vanished_client_end_the_group(self):
        with Service("--allow-exec", "/bin/sh") as service:
            s, session_id, sleeper = self.start_leaver(service)
            service.stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), timeout=TIMEOUT)
            self.assertTrue(exits_within(sleeper, TIMEOUT), "CloseSession left the background sleep running")
            lost = s.until("connection_lost")[-1].connection_lost
            self.assertIn("closed by CloseSession", lost.error.message)

            s, _, sleeper = self.start_leaver(service)
            s.responses.cancel()  # the client goes away
            self.assertTrue(exits_within(sleeper, TIMEOUT), "a vanished client left the background sleep running")

            s, _, sleeper = self.start_leaver(service)
            s.command(close=pb.Close())
            self.assertTrue(exits_within(sleeper, TIMEOUT), "close left the background sleep running")
            s.until("connection_lost")


class TokenAndProbes(unittest.TestCase):
    def test_scheme_is_case_insensitive_and_health_stays_open(self):
        with Service(token=TOKEN) as service:
            for scheme in ("Bearer", "bearer", "BEARER"):
                with self.subTest(scheme=scheme):
                    response = service.stub.ListSessions(pb.ListSessionsRequest(),
                                                         metadata=(("authorization", f"{scheme} {TOKEN}"),),
                                                         timeout=TIMEOUT)
                    self.assertEqual(len(response.sessions), 0)
            with self.assertRaises(grpc.RpcError) as caught:
                service.stub.ListSessions(pb.ListSessionsRequest(), metadata=(("authorization", f"Basic {TOKEN}"),),
                                          timeout=TIMEOUT)
            self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
            code, out, err = run([CONDUIT, "health", "--via", service.address])
            self.assertEqual((code, out), (0, "status: SERVING\n"), err)

    def test_name_lookups_need_the_token_and_are_logged(self):
        service = Service(token=TOKEN)
        try:
            request = pb.GetAddrInfoRequest(host="localhost", port="80", type=1)
            for call, message in ((service.stub.GetAddrInfo, request),
                                  (service.stub.GetNameInfo, pb.GetNameInfoRequest(host="127.0.0.1", port=80))):
                with self.assertRaises(grpc.RpcError) as caught:
                    call(message, timeout=TIMEOUT)
                self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
            reply = service.stub.GetAddrInfo(request, metadata=service.metadata, timeout=TIMEOUT)
            self.assertIn("127.0.0.1", [a.host for a in reply.addresses])
            reply = service.stub.GetAddrInfo(pb.GetAddrInfoRequest(host="bad\nname.invalid"),
                                             metadata=service.metadata, timeout=TIMEOUT)
            self.assertNotEqual(reply.gai_error, 0)
        finally:
            log = service.close()
        self.assertIn("refused /conduit.v1.Conduit/GetAddrInfo", log)
        self.assertIn("getaddrinfo localhost 80 by ipv4:127.0.0.1", log)
        self.assertIn("getaddrinfo bad\\nname.invalid", log)  # escaped: no forged line
        self.assertNotIn("\nname.invalid", log)

    @staticmethod
    def reflection_info(service):
        return service.channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)

    def list_services(self, service, metadata):
        replies = self.reflection_info(service)(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                metadata=metadata, timeout=TIMEOUT)
        return [s.name for reply in replies for s in reply.list_services_response.service]

    def test_reflection_needs_the_token(self):
        with Service(token=TOKEN) as service:
            with self.assertRaises(grpc.RpcError) as caught:
                self.list_services(service, ())
            self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
            self.assertIn("conduit.v1.Conduit", self.list_services(service, service.metadata))
            # Describing a service: its file, with what it imports.
            replies = list(self.reflection_info(service)(
                iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol="conduit.v1.Conduit"),
                      reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Symbol")]),
                metadata=service.metadata, timeout=TIMEOUT))
            self.assertEqual(len(replies), 2)
            self.assertTrue(replies[0].file_descriptor_response.file_descriptor_proto)
            self.assertEqual(replies[1].error_response.error_code, grpc.StatusCode.NOT_FOUND.value[0])
        with Service() as open_service:  # no token: reflection is as open as the rest
            self.assertIn("grpc.health.v1.Health", self.list_services(open_service, ()))

    def test_short_and_missing_tokens_are_refused_at_start(self):
        path = os.path.join(tempfile.mkdtemp(prefix="conduit-"), "token")
        with open(path, "w") as f:
            f.write("short-token\n")
        code, _, err = run([CONDUIT, "serve", "--listen", "127.0.0.1:0", "--token-file", path])
        self.assertEqual(code, 2, err)
        self.assertIn("at least 16", err)


class AuditLog(unittest.TestCase):
    def test_refusals_and_sessions_as_json_lines(self):
        service = Service("--log-format", "json", "--allow-exec", "/bin/echo", token=TOKEN)
        try:
            code, _ = refusal(service.session(metadata=()), pb.ClientMessage(open_subprocess=pb.OpenSubprocess(
                argv=["/bin/echo"])))
            self.assertEqual(code, grpc.StatusCode.UNAUTHENTICATED)
            code, _ = refusal(service.session(), pb.ClientMessage(open_subprocess=pb.OpenSubprocess(argv=["/bin/sh"])))
            self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED)
            code, _ = refusal(service.session(), pb.ClientMessage(open_connection=pb.OpenConnection()))
            self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
            s = service.session()
            s.send(open_subprocess=pb.OpenSubprocess(argv=["/bin/echo", "two words", "x"]))
            s.until("connection_lost")
        finally:
            log = service.close()
        lines = [json.loads(line) for line in log.splitlines()]  # every line is JSON
        for line in lines:
            self.assertRegex(line["time"], RFC3339)
        refused = [line for line in lines if line["event"] == "refused"]
        self.assertEqual([r["code"] for r in refused], ["UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT"])
        for r in refused:
            self.assertEqual(r["method"], "/conduit.v1.Conduit/Session")
            self.assertTrue(r["peer"].startswith("ipv4:127.0.0.1:"), r)
            self.assertTrue(r["reason"], r)
        self.assertIn("--allow-exec", refused[1]["reason"])
        opened = [line for line in lines if line["event"] == "session_opened"]
        self.assertEqual(len(opened), 1)
        self.assertEqual(opened[0]["argv"], ["/bin/echo", "two words", "x"])
        closed = [line for line in lines if line["event"] == "session_closed"]
        self.assertEqual(len(closed), 1)
        self.assertEqual(closed[0]["session"], opened[0]["session"])
        self.assertEqual(closed[0]["bytes_in"], len(b"two words x\n"))

    def test_text_lines_carry_the_time_and_argv(self):
        service = Service("--allow-exec", "/bin/echo")
        try:
            s = service.session()
            s.send(open_subprocess=pb.OpenSubprocess(argv=["/bin/echo", "two words"]))
            s.until("connection_lost")
            code, _ = refusal(service.session(), pb.ClientMessage(open_subprocess=pb.OpenSubprocess(argv=["/bin/ls"])))
            self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED)
        finally:
            log = service.close()
        opened = next(line for line in log.splitlines() if " opened by " in line)
        self.assertRegex(opened.split()[0], RFC3339)
        self.assertIn('argv=[/bin/echo "two words"]', opened)
        refused = next(line for line in log.splitlines() if "refused" in line)
        self.assertIn("PERMISSION_DENIED", refused)
        self.assertIn("'/bin/ls' is not in the service's --allow-exec list", refused)


    FORGED = "x\n2026-01-01T00:00:00.000Z conduit serve: refused everything\r\x1b[31mred\x7f\x85"

    def forge(self, service):
        s = service.session()
        s.send(open_connection=pb.OpenConnection(tcp=pb.HostPort(host=self.FORGED, port=80)))
        self.assertEqual(s.next().WhichOneof("kind"), "open_failed")

    def test_no_value_can_forge_a_text_line(self):
        service = Service()
        try:
            self.forge(service)
        finally:
            log = service.close()
        for line in log.splitlines():
            self.assertRegex(line, r"^\d{4}-\d\d-\d\dT[\d:.]+Z conduit serve: ", line)
            self.assertNotRegex(line, "[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]", line)
        opened = next(line for line in log.splitlines() if " opened by " in line)
        self.assertIn("tcp://x\\n2026-01-01T00:00:00.000Z conduit serve: refused everything\\r\\x1b[31mred\\x7f"
                      "\\u0085:80", opened)
        self.assertFalse(any(line.startswith("2026-01-01T") for line in log.splitlines()))

    def test_json_lines_escape_every_control_character(self):
        service = Service("--log-format", "json")
        try:
            self.forge(service)
        finally:
            log = service.close()
        self.assertNotRegex(log, "[\x00-\x09\x0b-\x1f\x7f\x80-\x9f]")
        lines = [json.loads(line) for line in log.splitlines()]
        opened = next(line for line in lines if line["event"] == "session_opened")
        self.assertEqual(opened["target"], f"tcp://{self.FORGED}:80")

    def test_a_proxys_refused_upstream_is_logged(self):
        echo, url = echo_server()
        port = int(url.rsplit(":", 1)[1])
        service = Service("--log-format", "json", "--allow-connect", "127.0.0.1:1")
        try:
            s = service.session()
            s.send(open_proxy=pb.OpenProxy(listen=pb.ProxyEndpoint(tcp=pb.HostPort(host="127.0.0.1")),
                                           upstream=pb.ProxyEndpoint(tcp=pb.HostPort(host="127.0.0.1", port=port))))
            started = s.next()
            proxy_port = int(started.proxy_started.sockets[0].rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", proxy_port), timeout=TIMEOUT) as client:
                self.assertEqual(client.recv(1), b"")  # closed: the upstream is not allowed
            closed = s.until("proxy_closed")[-1]
            self.assertIn("--allow-connect", closed.proxy_closed.error.message)
            s.command(close=pb.Close())
            s.until("connection_lost")
        finally:
            log = service.close()
            stop(echo)
        refused = [json.loads(line) for line in log.splitlines() if '"refused"' in line]
        self.assertEqual(len(refused), 1, log)
        self.assertEqual(refused[0]["code"], "PERMISSION_DENIED")
        self.assertEqual(refused[0]["method"], "/conduit.v1.Conduit/Session")
        self.assertTrue(refused[0]["peer"].startswith("ipv4:127.0.0.1:"), refused[0])
        self.assertIn(f"127.0.0.1 port {port} is not allowed by the service's --allow-connect", refused[0]["reason"])

    def test_a_message_over_the_size_limit_is_logged(self):
        service = Service("--log-format", "json", "--max-message-size", "256")
        try:
            s = service.session()
            s.send(open_server=pb.OpenServer(tcp=pb.HostPort(host="127.0.0.1")))
            self.assertEqual(s.next().WhichOneof("kind"), "server_started")
            s.command(write=b"x" * (300 * 1024))
            with self.assertRaises(grpc.RpcError) as caught:
                list(s.responses)
            self.assertEqual(caught.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        finally:
            log = service.close()
        # gRPC 1.51 refuses the message before the service sees it, and tells
        # the server only that the call was cancelled: the line names both.
        refused = [json.loads(line) for line in log.splitlines() if '"refused"' in line]
        self.assertEqual([r["code"] for r in refused], ["CANCELLED"], log)
        self.assertTrue(refused[0]["peer"].startswith("ipv4:127.0.0.1:"), refused[0])
        self.assertIn("a message over --max-message-size (256 KiB; gRPC answered RESOURCE_EXHAUSTED)",
                      refused[0]["reason"])

    def test_callers_on_a_unix_socket_are_named_by_their_credentials(self):
        path = os.path.join(tempfile.mkdtemp(prefix="conduit-"), "service.sock")
        process, address = start([CONDUIT, "serve", "--listen", f"unix:{path}", "--log-format", "json"])
        try:
            channel = grpc.insecure_channel(address)
            code, _ = refusal(Session(pb_grpc.ConduitStub(channel)), pb.ClientMessage(open_connection=pb.OpenConnection()))
            self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
            channel.close()
        finally:
            log = stop(process)
        refused = [json.loads(line) for line in log.splitlines() if '"refused"' in line]
        self.assertEqual(len(refused), 1, log)
        self.assertEqual(refused[0]["peer"], f"unix:pid={os.getpid()},uid={os.getuid()},gid={os.getgid()}")


class StartUp(unittest.TestCase):
    def test_bad_listen_addresses_are_usage_errors(self):
        for listen, text in (("127.0.0.1:99999", "the port must be a number from 0 to 65535"),
                             ("127.0.0.1", "missing :PORT"), (":50051", "the host is empty"),
                             ("unix:relative.sock", "must be absolute")):
            with self.subTest(listen=listen):
                code, out, err = run([CONDUIT, "serve", "--listen", listen])
                self.assertEqual(code, 2, err)
                self.assertEqual(out, "")
                self.assertIn(text, err)

    def test_sigterm_as_soon_as_it_listens_is_a_clean_stop(self):
        # SIGINT/SIGTERM are blocked before any thread starts: one that came
        # right after "listening", or went to a gRPC thread, killed it once.
        for attempt in range(20):
            with self.subTest(attempt=attempt):
                process, _ = start([CONDUIT, "serve", "--listen", "127.0.0.1:0"])
                stop(process)  # asserts exit status 0

    def test_unix_listen_serves(self):
        path = os.path.join(tempfile.mkdtemp(prefix="conduit-"), "service.sock")
        process, address = start([CONDUIT, "serve", "--listen", f"unix:{path}"])
        try:
            self.assertEqual(address, f"unix:{path}")
            code, out, err = run([CONDUIT, "health", "--via", f"unix:{path}"])
            self.assertEqual((code, out), (0, "status: SERVING\n"), err)
            # Nor may a server session take the service's own socket.
            channel = grpc.insecure_channel(f"unix:{path}")
            code, details = refusal(Session(pb_grpc.ConduitStub(channel)),
                                    pb.ClientMessage(open_server=pb.OpenServer(unix_path=path)))
            self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED)
            channel.close()
        finally:
            stop(process)

    def test_unusable_tls_files_are_usage_errors_in_one_line(self):
        work = tempfile.mkdtemp(prefix="conduit-")
        garbage = os.path.join(work, "garbage.pem")
        with open(garbage, "w") as f:
            f.write("not a certificate\n")
        cert, key = self_signed("localhost")
        _, other_key = self_signed("other")
        paths = {}
        for name, text in (("cert", cert), ("key", key), ("other-key", other_key)):
            paths[name] = os.path.join(work, f"{name}.pem")
            with open(paths[name], "w") as f:
                f.write(text)
        for cert_file, key_file in ((garbage, paths["key"]), (paths["cert"], garbage),
                                    (paths["cert"], paths["other-key"])):
            with self.subTest(cert=cert_file, key=key_file):
                code, _, err = run([CONDUIT, "serve", "--listen", "127.0.0.1:0", "--tls-cert", cert_file,
                                    "--tls-key", key_file])
                self.assertEqual(code, 2, err)
                self.assertIn("cannot use them", err)
                self.assertEqual(len(err.strip().splitlines()), 1, err)


class PipelinedCommands(unittest.TestCase):
    """A client may send its open, writes and write_eof at once: none is lost."""

    def test_commands_behind_the_open_are_carried_out_in_order(self):
        echo, url = echo_server()
        cert, key = self_signed("localhost")
        work = tempfile.mkdtemp(prefix="conduit-")
        with open(f"{work}/cert.pem", "w") as f:
            f.write(cert)
        with open(f"{work}/key.pem", "w") as f:
            f.write(key)
        tls_echo, tls_url = start([CONDUIT, "echo-server", "--listen", "tls://127.0.0.1:0", "--cert",
                                   f"{work}/cert.pem", "--key", f"{work}/key.pem", "--quiet"])
        try:
            with Service() as service:
                targets = ((pb.HostPort(host="127.0.0.1", port=int(url.rsplit(":", 1)[1])), None),
                           (pb.HostPort(host="localhost", port=int(tls_url.rsplit(":", 1)[1])),
                            pb.TlsClient(enabled=True, insecure=True)))
                for tcp, tls in targets:
                    for attempt in range(20):
                        expected = b"pipelined %d and more" % attempt
                        s = service.session()
                        s.send(open_connection=pb.OpenConnection(tcp=tcp, tls=tls))
                        s.command(write=b"pipelined %d" % attempt)
                        s.command(write=b" and more")
                        if tls is None:
                            s.done_writing()  # write_eof, also right behind the open
                        events, echoed = [], b""
                        while len(echoed) < len(expected):
                            events.append(s.next())
                            self.assertNotIn(events[-1].WhichOneof("kind"), ("command_failed", "connection_lost"),
                                             events)
                            echoed += events[-1].data_received.data
                        self.assertEqual(echoed, expected)
                        if tls is not None:
                            s.done_writing()
                        s.until("connection_lost")
                # An open that fails answers each command queued behind it.
                s = service.session()
                s.send(open_connection=pb.OpenConnection(unix_path="/nonexistent/conduit.sock"))
                code, details = refusal(s, pb.ClientMessage(command=pb.Command(write=b"x")))
                self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED, "no --allow-unix")
        finally:
            stop(echo)
            stop(tls_echo)

    def test_commands_behind_a_failed_open_are_answered(self):
        # A TLS handshake with a peer that accepts, waits, then closes: the
        # open fails well after the commands arrived.
        import threading
        listener = socket.create_server(("127.0.0.1", 0))
        stop_peer = threading.Event()

        def peer():
            conn, _ = listener.accept()
            stop_peer.wait(0.3)
            conn.close()

        thread = threading.Thread(target=peer)
        thread.start()
        try:
            with Service() as service:
                s = service.session()
                s.send(open_connection=pb.OpenConnection(
                    tcp=pb.HostPort(host="127.0.0.1", port=listener.getsockname()[1]),
                    tls=pb.TlsClient(enabled=True, insecure=True)))
                s.command(write=b"never sent")
                s.command(pause_reading=pb.PauseReading())
                events = list(s.responses)
        finally:
            stop_peer.set()
            thread.join(TIMEOUT)
            listener.close()
        kinds = [e.WhichOneof("kind") for e in events]
        self.assertEqual(kinds, ["open_failed", "command_failed", "command_failed"])
        self.assertEqual([e.command_failed.command for e in events[1:]], ["write", "pause_reading"])
        self.assertIn("not carried out: the session did not open", events[1].command_failed.message)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
