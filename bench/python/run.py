#!/usr/bin/python3
"""The Python remote event loop's cost, against asyncio's own loop and
against the floor Python's gRPC sets, in one run.

usage: bench/python/run.py [CONDUIT_BIN]   (default build/ci-normal/src/cli/conduit)

Three clients, each in a fresh interpreter, each timed by its own CPU
(time.process_time) and wall clock:
  asyncio  one asyncio.Protocol on asyncio's loop, connecting itself;
  remote   the same protocol on conduit_client.RemoteEventLoop, through
           `conduit serve` (whose CPU over the run is measured too);
  grpc     a bare grpc.aio Session() stream doing the same writes and reads
           with no library on top: the floor for any Python client.
Two loads: ROUNDS ping-pong rounds of 1 KiB against `conduit echo-server`,
and BULK_MIB MiB written in 64 KiB pieces to a sink that discards. The
repetitions (REPS) are interleaved (asyncio, remote, grpc, then again) and
medians reported, since a shared machine's speed drifts within a run.
Targets (issue 19): the remote client's CPU per round at most 1.1x the bare
stream's; its bulk rate at least half the bare stream's.
Environment: BENCH_ROUNDS [5000], BENCH_BULK_MIB [64], BENCH_REPS [5].
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 5000))
BULK_MIB = int(os.environ.get("BENCH_BULK_MIB", 64))
REPS = int(os.environ.get("BENCH_REPS", 5))
MESSAGE = 1024
PIECE = 64 * 1024

CHILD = r'''
import asyncio, json, os, sys, time
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
import grpc  # imported before the clock starts, for every mode alike
from conduit_client import RemoteEventLoop, pb
from conduit_client._wire import pb_grpc
mode, load, service, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ROUNDS, BULK_MIB, MESSAGE, PIECE = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])

class PingPong(asyncio.Protocol):
    def __init__(self, done):
        self.done, self.left, self.got = done, ROUNDS, 0
    def connection_made(self, transport):
        self.transport = transport
        transport.write(b"x" * MESSAGE)
    def data_received(self, data):
        self.got += len(data)
        if self.got < MESSAGE:
            return
        self.got -= MESSAGE
        self.left -= 1
        if self.left == 0:
            self.done.set_result(None)
        else:
            self.transport.write(b"x" * MESSAGE)

class Bulk(asyncio.Protocol):
    def __init__(self, done):
        self.done, self.left = done, BULK_MIB * 1024 * 1024 // PIECE
        self.resumed = None
    def connection_made(self, transport):
        self.transport = transport
        asyncio.ensure_future(self.pump())
    async def pump(self):
        piece = b"y" * PIECE
        while self.left:
            if self.resumed is not None:
                await self.resumed
            self.transport.write(piece)
            self.left -= 1
        self.transport.write_eof()
    def pause_writing(self):
        self.resumed = asyncio.get_running_loop().create_future()
    def resume_writing(self):
        self.resumed.set_result(None)
        self.resumed = None
    def eof_received(self):
        return False
    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(exc)

async def protocol_run():
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    factory = (lambda: PingPong(done)) if load == "pingpong" else (lambda: Bulk(done))
    transport, _ = await loop.create_connection(factory, "127.0.0.1", port)
    await done
    transport.close()

async def grpc_run():
    async with grpc.aio.insecure_channel(service) as channel:
        call = pb_grpc.ConduitStub(channel).Session()
        await call.write(pb.ClientMessage(open_connection=pb.OpenConnection(tcp=pb.HostPort(host="127.0.0.1", port=port))))
        made = await call.read()
        assert made.WhichOneof("kind") == "connection_made", made
        if load == "pingpong":
            for _ in range(ROUNDS):
                await call.write(pb.ClientMessage(command=pb.Command(write=b"x" * MESSAGE)))
                got = 0
                while got < MESSAGE:
                    event = await call.read()
                    got += len(event.data_received.data)
        else:
            # The service's pause_writing / resume_writing are obeyed (it
            # aborts a client that writes on regardless): a reader beside
            # the writer, as little as that takes.
            piece = b"y" * PIECE
            writable = asyncio.Event()
            writable.set()

            async def read_events():
                while True:
                    event = await call.read()
                    kind = event.WhichOneof("kind") if event is not grpc.aio.EOF else "connection_lost"
                    if kind == "pause_writing":
                        writable.clear()
                    elif kind == "resume_writing":
                        writable.set()
                    elif kind == "eof_received":
                        await call.write(pb.ClientMessage(command=pb.Command(close=pb.Close())))
                    elif kind == "connection_lost":
                        return
            reader = asyncio.ensure_future(read_events())
            for _ in range(BULK_MIB * 1024 * 1024 // PIECE):
                if not writable.is_set():
                    await writable.wait()
                await call.write(pb.ClientMessage(command=pb.Command(write=piece)))
            await call.write(pb.ClientMessage(command=pb.Command(write_eof=pb.WriteEof())))
            await reader
        call.cancel()

if mode == "asyncio":
    run = lambda: asyncio.run(protocol_run())
elif mode == "remote":
    run = lambda: asyncio.Runner(loop_factory=lambda: RemoteEventLoop(service)).run(protocol_run())
else:
    run = lambda: asyncio.run(grpc_run())
wall, cpu = time.monotonic(), time.process_time()
run()
print(json.dumps({"cpu": time.process_time() - cpu, "wall": time.monotonic() - wall}))
'''


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(argv):
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    if not line.startswith("listening "):
        process.kill()
        sys.exit(f"{argv[:2]} did not start: {line!r}")
    return process, line.split()[1]


SINK = r"""
import socket
listener = socket.create_server(("127.0.0.1", 0))
print("listening 127.0.0.1:%d" % listener.getsockname()[1], flush=True)
while True:
    connection, _ = listener.accept()
    while connection.recv(1 << 20):
        pass
    connection.close()
"""


def main():
    conduit = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "ci-normal", "src", "cli", "conduit")
    # A sink that reads and discards, one connection after another.
    processes = []
    try:
        for argv in ([conduit, "echo-server", "--listen", "tcp://127.0.0.1:0", "--quiet"],
                     [conduit, "serve", "--listen", "127.0.0.1:0", "--quiet"], [sys.executable, "-c", SINK]):
            processes.append(start(argv))
        measure(*processes)
    finally:
        for process, _ in processes:
            process.terminate()
            process.wait()


def measure(echo, serve, sink):
    (echo, echo_url), (serve, service), (_, sink_url) = echo, serve, sink
    echo_port, sink_port = int(echo_url.rsplit(":", 1)[1]), int(sink_url.rsplit(":", 1)[1])
    script = os.path.join(tempfile.mkdtemp(prefix="conduit-bench-"), "child.py")
    with open(script, "w") as f:
        f.write(f"ROOT = {ROOT!r}\n" + CHILD)
    results = {}
    for rep in range(REPS):
        for load, port, units in (("pingpong", echo_port, ROUNDS), ("bulk", sink_port, BULK_MIB)):
            for mode in ("asyncio", "remote", "grpc"):
                service_cpu = cpu_seconds(serve.pid)
                out = subprocess.run([sys.executable, script, mode, load, service, str(port), str(ROUNDS),
                                      str(BULK_MIB), str(MESSAGE), str(PIECE)],
                                     capture_output=True, text=True, timeout=600)
                if out.returncode != 0:
                    sys.exit(f"{mode} {load} failed: {out.stderr[-2000:]}")
                measured = json.loads(out.stdout.strip().splitlines()[-1])
                measured["service"] = cpu_seconds(serve.pid) - service_cpu
                for key, value in measured.items():
                    results.setdefault((load, mode, key), []).append(value / units)

    def median(load, mode, key):
        return statistics.median(results[(load, mode, key)])

    print(f"{REPS} interleaved repetitions, medians; {ROUNDS} rounds of {MESSAGE} B, {BULK_MIB} MiB in "
          f"{PIECE // 1024} KiB pieces\n")
    print(f"{'ping-pong, per round':<24} {'client CPU':>11} {'service CPU':>12} {'wall':>9}")
    for mode in ("asyncio", "remote", "grpc"):
        service_cpu = f"{median('pingpong', mode, 'service') * 1e6:8.0f} µs" if mode != "asyncio" else f"{'-':>11}"
        print(f"  {mode:<22} {median('pingpong', mode, 'cpu') * 1e6:8.0f} µs {service_cpu} "
              f"{median('pingpong', mode, 'wall') * 1e6:6.0f} µs")
    print(f"\n{'bulk, per MiB':<24} {'client CPU':>11} {'service CPU':>12} {'rate':>12}")
    for mode in ("asyncio", "remote", "grpc"):
        service_cpu = f"{median('bulk', mode, 'service') * 1e3:8.2f} ms" if mode != "asyncio" else f"{'-':>11}"
        print(f"  {mode:<22} {median('bulk', mode, 'cpu') * 1e3:8.2f} ms {service_cpu} "
              f"{1 / median('bulk', mode, 'wall'):7.0f} MiB/s")
    ratios = [r / g for r, g in zip(results[("pingpong", "remote", "cpu")], results[("pingpong", "grpc", "cpu")])]
    rates = [g / r for r, g in zip(results[("bulk", "remote", "wall")], results[("bulk", "grpc", "wall")])]
    print(f"\nremote / grpc client CPU per round: median {statistics.median(ratios):.2f}x "
          f"(each repetition: {', '.join(f'{r:.2f}' for r in ratios)}; target at most 1.1)")
    print(f"remote / grpc bulk rate: median {statistics.median(rates):.2f} "
          f"(each repetition: {', '.join(f'{r:.2f}' for r in rates)}; target at least 0.5)")


if __name__ == "__main__":
    main()
