"""What the service tests share: the generated stubs, `conduit` child
processes started and stopped by PID, one Session() call as a queue of
client messages and an iterator of events, and small fixtures.

Stubs are generated from the repository's proto (and Debian's grpc-proto
for reflection) into a temporary directory at import.
"""
import os
import queue
import subprocess
import sys
import tempfile

import grpc  # noqa: F401  (the tests use it through this module's users)
from grpc_tools import protoc

TIMEOUT = 20  # seconds any single wait may take
GRPC_PROTO_DIR = "/usr/share/grpc-proto"


def load_stubs(proto_dir):
    """Generate conduit.v1's stubs (then importable as conduit.v1) and
    grpc.reflection.v1alpha's; returns the reflection messages' module (the
    name `grpc` is grpcio's, so that one is loaded from its file)."""
    import importlib.util
    stubs = tempfile.mkdtemp(prefix="conduit-stubs-")
    for include, proto in ((proto_dir, "conduit/v1/conduit.proto"),
                           (GRPC_PROTO_DIR, "grpc/reflection/v1alpha/reflection.proto")):
        if protoc.main(["protoc", f"-I{include}", f"--python_out={stubs}", f"--grpc_python_out={stubs}",
                        os.path.join(include, proto)]) != 0:
            sys.exit(f"cannot generate the Python stubs of {proto}")
    sys.path.insert(0, stubs)
    spec = importlib.util.spec_from_file_location(
        "reflection_pb2", os.path.join(stubs, "grpc/reflection/v1alpha/reflection_pb2.py"))
    reflection = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reflection)
    return reflection


def start(argv, ready="listening ", preexec_fn=None):
    """A child whose first stdout line starts with `ready`; returns (process,
    the line's second word). Its stderr goes to a file (a pipe nobody reads
    would block it once full), readable with log_of(). `preexec_fn` runs in
    the child before it starts (to set its limits, say)."""
    log = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, preexec_fn=preexec_fn)
    line = process.stdout.readline()
    if not line.startswith(ready):
        process.kill()
        process.wait()
        log.seek(0)
        raise RuntimeError(f"{argv} did not start: {line!r} {log.read()}")
    process.log = log
    return process, line.split()[1]


def log_of(process):
    process.log.seek(0)
    return process.log.read()


def stop(process):
    """SIGTERM, then its exit status, which must be 0: a clean shutdown (and,
    under the sanitizers, no leak and no error at exit)."""
    process.terminate()
    try:
        status = process.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        status = "hung after SIGTERM"
    process.stdout.close()
    log = log_of(process)
    process.log.close()
    if status != 0:
        raise AssertionError(f"{process.args[:2]} exited with {status}:\n{log[-4000:]}")
    return log


def run(argv, timeout=TIMEOUT):
    """A command to its end: (exit status, stdout, stderr)."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout, done.stderr


class Session:
    """One Session() call: send() queues client messages; events() yields events.
    With `max_queued`, send() blocks while that many wait for gRPC to take
    them: the local half of write flow control."""

    def __init__(self, stub, metadata=(), max_queued=0):
        from conduit.v1 import conduit_pb2 as pb
        self.pb = pb
        self.outgoing = queue.Queue(maxsize=max_queued)
        self.responses = stub.Session(iter(self.outgoing.get, None), metadata=metadata, timeout=60)

    def send(self, **kind):
        self.outgoing.put(self.pb.ClientMessage(**kind))

    def command(self, **kind):
        self.send(command=self.pb.Command(**kind))

    def done_writing(self):
        self.outgoing.put(None)

    def next(self):
        return next(self.responses)

    def until(self, kind):
        """Events up to and including the first of `kind`."""
        seen = []
        for event in self.responses:
            seen.append(event)
            if event.WhichOneof("kind") == kind:
                return seen
        raise AssertionError(f"the stream ended before {kind}: {[e.WhichOneof('kind') for e in seen]}")


class socket_bound:
    """A port that is bound but not listening (connecting to it is refused)."""

    def __enter__(self):
        import socket
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc):
        self.sock.close()


def self_signed(name):
    """A throwaway P-256 certificate for CN `name` and its key, as PEM text."""
    work = tempfile.mkdtemp(prefix="conduit-")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "1", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
                    "-keyout", f"{work}/key.pem", "-out", f"{work}/cert.pem"],
                   check=True, capture_output=True, timeout=TIMEOUT)
    with open(f"{work}/cert.pem") as cert, open(f"{work}/key.pem") as key:
        return cert.read(), key.read()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
