#!/usr/bin/python3
"""Write the fuzz targets' seed corpora (fuzz/corpus/TARGET/*): a few valid
inputs of each shape, for libFuzzer to start from. Rerun after changing the
proto; the files are checked in.

usage: make_corpus.py [REPO_ROOT]
"""
import os
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "service"))
from harness import load_stubs  # noqa: E402

load_stubs(os.path.join(ROOT, "proto"))
from conduit.v1 import conduit_pb2 as pb  # noqa: E402

CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def write(target, name, data):
    os.makedirs(os.path.join(CORPUS, target), exist_ok=True)
    with open(os.path.join(CORPUS, target, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def messages(*items):
    """The session fuzzer's input: each message as a 2-byte length and its bytes."""
    out = b""
    for item in items:
        body = item.SerializeToString()
        out += struct.pack(">H", len(body)) + body
    return out


def command(**kind):
    return pb.ClientMessage(command=pb.Command(**kind))


for i, text in enumerate(["tcp://127.0.0.1:80", "tls://[::1]:443", "unix:///tmp/echo.sock", "udp://*:0",
                          "127.0.0.1:50051", "unix:/run/conduit.sock", "*:7000-7100", "[fd00::/8]:*",
                          "10.0.0.0/8:22", "db:5432", "[::1]:*"]):
    write("address", f"seed-{i}", text)

work = tempfile.mkdtemp(prefix="conduit-corpus-")
subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-days", "1", "-subj", "/CN=fuzz", "-keyout", f"{work}/key.pem", "-out", f"{work}/cert.pem"],
               check=True, capture_output=True)
cert, key = open(f"{work}/cert.pem").read(), open(f"{work}/key.pem").read()
write("pem", "cert-key-ca", cert + "\n--8<--\n" + key + "\n--8<--\n" + cert)
write("pem", "cert-key", cert + "\n--8<--\n" + key)
write("pem", "ca-only", cert)

tcp = pb.HostPort(host="127.0.0.1", port=7)
write("session", "connection", messages(pb.ClientMessage(open_connection=pb.OpenConnection(tcp=tcp)),
                                        command(write=b"hello"), command(get_extra_info=pb.GetExtraInfo(name="peername")),
                                        command(pause_reading=pb.PauseReading()),
                                        command(resume_reading=pb.ResumeReading()),
                                        command(set_write_buffer_limits=pb.WriteBufferLimits(high=10, low=2)),
                                        command(write_eof=pb.WriteEof())))
write("session", "tls-connection", messages(pb.ClientMessage(open_connection=pb.OpenConnection(
    tcp=tcp, tls=pb.TlsClient(enabled=True, insecure=True))), command(write=b"x"), command(abort=pb.Abort())))
write("session", "unix", messages(pb.ClientMessage(open_connection=pb.OpenConnection(unix_path="/tmp/x.sock")),
                                  command(close=pb.Close())))
write("session", "server", messages(pb.ClientMessage(open_server=pb.OpenServer(tcp=pb.HostPort(host="127.0.0.1"),
                                                                               max_connections=2)),
                                    pb.ClientMessage(command=pb.Command(connection_id=1, write=b"x")),
                                    command(close=pb.Close())))
write("session", "unix-server", messages(pb.ClientMessage(open_server=pb.OpenServer(unix_path="/tmp/s.sock")),
                                         command(abort=pb.Abort())))
write("session", "datagram", messages(pb.ClientMessage(open_datagram_endpoint=pb.OpenDatagramEndpoint(
    local_addr=pb.HostPort(host="127.0.0.1", port=0))),
    command(sendto=pb.Sendto(data=b"ping", addr=pb.HostPort(host="127.0.0.1", port=9))), command(close=pb.Close())))
write("session", "subprocess", messages(pb.ClientMessage(open_subprocess=pb.OpenSubprocess(
    argv=["/bin/cat"], env={"LC_ALL": "C"})), command(write=b"to stdin"), command(send_signal=pb.Signal(signal=0)),
    command(write_eof=pb.WriteEof())))
write("session", "proxy", messages(pb.ClientMessage(open_proxy=pb.OpenProxy(
    listen=pb.ProxyEndpoint(tcp=pb.HostPort(host="127.0.0.1")), upstream=pb.ProxyEndpoint(tcp=tcp),
    faults=[pb.FaultSpec(name="slow", latency=pb.LatencyFault(delay_us=1000))])),
    command(set_fault=pb.FaultSpec(name="cut", direction=pb.UPSTREAM, blackhole=pb.BlackholeFault())),
    command(remove_fault=pb.RemoveFault(name="slow")), command(proxy_down=pb.ProxyDown()),
    command(proxy_up=pb.ProxyUp()), command(close=pb.Close())))
write("session", "udp-proxy", messages(pb.ClientMessage(open_proxy=pb.OpenProxy(
    listen=pb.ProxyEndpoint(udp=pb.HostPort(host="127.0.0.1")), upstream=pb.ProxyEndpoint(udp=tcp),
    faults=[pb.FaultSpec(name="drop", loss=pb.LossFault(probability=0.5))])), command(abort=pb.Abort())))
write("session", "command-first", messages(command(write=b"too early")))

write("subprocess", "argv", pb.OpenSubprocess(argv=["/bin/true", "a", "b c"]).SerializeToString())
write("subprocess", "env", pb.OpenSubprocess(argv=["/bin/true"], env={"LC_ALL": "C", "CONDUIT_X": "1",
                                                                      "PATH": "/bin"}).SerializeToString())
write("subprocess", "cwd", pb.OpenSubprocess(argv=["/bin/true"], cwd="/tmp").SerializeToString())
write("subprocess", "shell", pb.OpenSubprocess(shell="true").SerializeToString())
print(f"wrote the seed corpora under {CORPUS}")
