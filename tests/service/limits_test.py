#!/usr/bin/python3
"""The service's limits under attack from one caller: streams that never
open, and sessions that take every descriptor. After each, a new caller must
still be served at once. Each service here is a child process of its own,
stopped by PID.

usage: limits_test.py CONDUIT_BIN PROTO_DIR
"""
import json
import os
import resource
import socket
import sys
import time
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import TIMEOUT, Session, load_stubs, start, stop  # noqa: E402

CONDUIT, PROTO_DIR = sys.argv[1], sys.argv[2]
load_stubs(PROTO_DIR)
from conduit.v1 import conduit_pb2 as pb, conduit_pb2_grpc as pb_grpc  # noqa: E402


def nofile(soft, hard):
    """A preexec_fn setting the child's RLIMIT_NOFILE."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def serve(*flags, limit=None):
    """`conduit serve` with `flags` (and `limit` run in the child first):
    (process, address)."""
    return start([CONDUIT, "serve", "--listen", "127.0.0.1:0", "--log-format", "json", *flags], preexec_fn=limit)


def refusals(log):
    return [line for line in map(json.loads, log.splitlines()) if line["event"] == "refused"]


def new_caller_is_served(test, address, within=1.0):
    """A caller with a channel of its own gets an answer within `within` s;
    returns how long it took, in seconds."""
    started = time.monotonic()
    with grpc.insecure_channel(address) as channel:
        pb_grpc.ConduitStub(channel).ListSessions(pb.ListSessionsRequest(), timeout=within)
    took = time.monotonic() - started
    test.assertLess(took, within)
    return took


class UnopenedStreams(unittest.TestCase):
    def test_count_against_max_sessions_and_end_at_the_open_deadline(self):
        process, address = serve("--max-sessions", "5", "--open-timeout", "1")
        channel = grpc.insecure_channel(address)
        stub = pb_grpc.ConduitStub(channel)
        try:
            silent = [Session(stub) for _ in range(5)]  # streams that send nothing
            deadline = time.monotonic() + TIMEOUT
            while stub.ListSessions(pb.ListSessionsRequest(), timeout=TIMEOUT).unopened_streams < 5:
                self.assertLess(time.monotonic(), deadline, "the silent streams were never counted")
            # With the five in, a sixth stream is refused, however it opens.
            s = Session(stub)
            s.send(open_server=pb.OpenServer(tcp=pb.HostPort(host="127.0.0.1")))
            with self.assertRaises(grpc.RpcError) as caught:
                s.next()
            self.assertEqual(caught.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
            self.assertIn("streams not yet opened count too", caught.exception.details())
            # Each silent stream ends at its open deadline, not later.
            for s in silent:
                with self.assertRaises(grpc.RpcError) as caught:
                    s.next()
                self.assertEqual(caught.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
                self.assertIn("no open message within 1 s", caught.exception.details())
            # Their places are free again.
            s = Session(stub)
            s.send(open_server=pb.OpenServer(tcp=pb.HostPort(host="127.0.0.1")))
            self.assertEqual(s.next().WhichOneof("kind"), "server_started")
            s.done_writing()
            s.until("connection_lost")
        finally:
            channel.close()
            log = stop(process)
        codes = [r["code"] for r in refusals(log)]
        self.assertEqual(codes.count("DEADLINE_EXCEEDED"), 5, log)
        self.assertIn("RESOURCE_EXHAUSTED", codes)


class Descriptors(unittest.TestCase):
    NOFILE = 256

    def test_sessions_cannot_take_the_descriptors_new_callers_need(self):
        process, address = serve("--max-sessions", "1000", limit=nofile(self.NOFILE, self.NOFILE))
        channel = grpc.insecure_channel(address)
        stub = pb_grpc.ConduitStub(channel)
        # A peer that never accepts: each connection session to it holds one
        # descriptor of the service's for as long as the session lives.
        peer = socket.create_server(("127.0.0.1", 0), backlog=self.NOFILE * 2)
        held = []
        try:
            server = Session(stub)
            server.send(open_server=pb.OpenServer(tcp=pb.HostPort(host="127.0.0.1"), max_connections=5000))
            server_port = int(server.next().server_started.sockets[0].rsplit(":", 1)[1])
            refused = None
            for _ in range(self.NOFILE):
                s = Session(stub)
                s.send(open_connection=pb.OpenConnection(tcp=pb.HostPort(host="127.0.0.1",
                                                                         port=peer.getsockname()[1])))
                try:
                    event = s.next()
                except grpc.RpcError as error:
                    refused = error
                    break
                self.assertEqual(event.WhichOneof("kind"), "connection_made", event)
                held.append(s)
            self.assertIsNotNone(refused, f"{len(held)} sessions and no refusal")
            self.assertEqual(refused.code(), grpc.StatusCode.RESOURCE_EXHAUSTED, refused.details())
            self.assertIn("descriptor budget", refused.details())
            self.assertGreater(len(held), 100)
            # At the budget: a new caller is served at once, and a connection
            # to the server session is accepted and closed, not left to take
            # the last descriptors.
            took = new_caller_is_served(self, address)
            print(f"\n  {len(held)} sessions held at the budget ({len(os.listdir(f'/proc/{process.pid}/fd'))} "
                  f"descriptors open of {self.NOFILE}); a new caller answered in {took * 1000:.1f} ms",
                  file=sys.stderr)
            with socket.create_connection(("127.0.0.1", server_port), timeout=TIMEOUT) as client:
                try:
                    self.assertEqual(client.recv(1), b"")
                except ConnectionResetError:
                    pass
            self.assertLess(len(os.listdir(f"/proc/{process.pid}/fd")), self.NOFILE - 32)
            # Let go; the descriptors come back and sessions open again.
            for s in held:
                s.command(abort=pb.Abort())
                s.done_writing()
            for s in held:
                list(s.responses)
            held = []
            s = Session(stub)
            s.send(open_connection=pb.OpenConnection(tcp=pb.HostPort(host="127.0.0.1", port=server_port)))
            self.assertEqual(s.next().WhichOneof("kind"), "connection_made")
            s.command(abort=pb.Abort())
            s.until("connection_lost")
            server.command(abort=pb.Abort())
            server.until("connection_lost")
            new_caller_is_served(self, address)
        finally:
            for s in held:
                s.done_writing()
            peer.close()
            channel.close()
            log = stop(process)
        budget = [r for r in refusals(log) if "descriptor budget" in r["reason"]]
        self.assertTrue(budget, log[-2000:])
        self.assertEqual({r["code"] for r in budget}, {"RESOURCE_EXHAUSTED"})
        self.assertIn("RLIMIT_NOFILE 256", budget[0]["reason"])
        self.assertTrue(any("closed an accepted connection" in r["reason"] for r in budget), log[-2000:])

    def test_the_soft_limit_is_raised_to_the_hard_one(self):
        hard = min(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        process, _ = serve(limit=nofile(128, hard))
        try:
            with open(f"/proc/{process.pid}/limits") as f:
                line = next(line for line in f if line.startswith("Max open files"))
            self.assertEqual(line.split()[3:5], [str(hard), str(hard)], line)
        finally:
            stop(process)  # asserts a clean exit


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
