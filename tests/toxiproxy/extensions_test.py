#!/usr/bin/env python3
"""What Conduit's toxiproxy API adds to toxiproxy's, through the same API,
with each effect measured on real sockets: udp:// and tls:// proxies, the
datagram toxics, toxics on both streams, toxics for some clients only, and
toxics that start later in a connection's life.

usage: extensions_test.py CONDUIT_BINARY
"""
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

from api_helpers import call, expect, finish, start


def tcp_echo():
    """A TCP echo server on loopback (a thread per connection); its port."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve(conn):
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def accept():
        while True:
            conn, _ = server.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server.getsockname()[1]


def udp_echo():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))

    def serve():
        while True:
            data, peer = sock.recvfrom(65536)
            sock.sendto(data, peer)

    threading.Thread(target=serve, daemon=True).start()
    return sock.getsockname()[1]


def host_port(listen):
    host, port = listen.split("://")[-1].rsplit(":", 1)
    return host, int(port)


def round_trip(address, text=b"ping", source=None, wrap=None):
    """Seconds for `text` to come back through a TCP proxy, or None if the
    connection ended first (or nothing came within 3 s)."""
    with socket.create_connection(address, timeout=3, source_address=(source, 0) if source else None) as raw:
        conn = wrap(raw) if wrap else raw
        began = time.monotonic()
        conn.sendall(text)
        got = b""
        try:
            while len(got) < len(text):
                data = conn.recv(65536)
                if not data:
                    return None
                got += data
        except (OSError, ssl.SSLError):
            return None
        return time.monotonic() - began if got == text else None


def datagram_replies(address, sends, wait=0.3, timing=None):
    """Send each of `sends` through a UDP proxy (one client socket); what
    came back within `wait` seconds of the last. With a `timing` list, the
    seconds from the first send to the first reply are appended to it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(wait)
        began = time.monotonic()
        for data in sends:
            sock.sendto(data, address)
        got = []
        try:
            while True:
                got.append(sock.recvfrom(65536)[0])
                if timing is not None and len(got) == 1:
                    timing.append(time.monotonic() - began)
        except socket.timeout:
            return got


def udp(api, auth):
    port = udp_echo()
    status, body = call(api, "POST", "/proxies", {"name": "dns", "listen": "udp://127.0.0.1:0",
                                                  "upstream": f"udp://127.0.0.1:{port}"}, auth)
    expect(status == 201 and json.loads(body)["listen"].startswith("udp://127.0.0.1:"),
           f"a udp:// proxy, reported with its scheme: {status} {body}")
    address = host_port(json.loads(body)["listen"])
    expect(datagram_replies(address, [b"one"]) == [b"one"], "a datagram through it and back")
    status, body = call(api, "POST", "/proxies/dns/toxics",
                        {"type": "loss", "stream": "upstream", "attributes": {"probability": 1}}, auth)
    expect(status == 200 and json.loads(body)["attributes"] == {"probability": 1}, f"loss added: {status} {body}")
    expect(datagram_replies(address, [b"a", b"b", b"c"]) == [], "loss 1: none comes back")
    call(api, "DELETE", "/proxies/dns/toxics/loss_upstream", None, auth)
    status, body = call(api, "POST", "/proxies/dns/toxics",
                        {"type": "duplicate", "attributes": {"probability": 1}}, auth)
    expect(status == 200, f"duplicate added: {status} {body}")
    expect(datagram_replies(address, [b"twice"]) == [b"twice", b"twice"], "duplicate 1 downstream: two copies")
    call(api, "DELETE", "/proxies/dns/toxics/duplicate_downstream", None, auth)
    status, body = call(api, "POST", "/proxies/dns/toxics", {"type": "reorder", "stream": "upstream",
                                                             "attributes": {"probability": 0.5, "hold": 20}}, auth)
    expect(status == 200 and json.loads(body)["attributes"] == {"probability": 0.5, "hold": 20},
           f"reorder added: {status} {body}")
    sent = [str(i).encode() for i in range(40)]
    got = datagram_replies(address, sent, wait=0.5)
    expect(sorted(got) == sorted(sent) and got != sent, f"reorder 0.5: all 40 back, not in order: {got}")
    call(api, "DELETE", "/proxies/dns/toxics/reorder_upstream", None, auth)
    status, body = call(api, "POST", "/proxies/dns/toxics", {"type": "latency", "stream": "both",
                                                             "attributes": {"latency": 100}}, auth)
    expect(status == 200 and json.loads(body)["name"] == "latency_both", f"latency both ways: {status} {body}")
    took = []
    got = datagram_replies(address, [b"slow"], wait=1, timing=took)
    expect(got == [b"slow"] and 0.2 <= took[0] < 0.6, f"latency 100 ms both ways on UDP: {took} s there and back")
    for payload, words in [({"type": "slicer"}, "slicer is for stream proxies"),
                           ({"type": "reset_peer"}, "reset is for stream proxies")]:
        status, body = call(api, "POST", "/proxies/dns/toxics", payload, auth)
        expect(status == 400 and words in body, f"{payload} on UDP: 400 '{words}', got {status} {body}")
    status, body = call(api, "POST", "/proxies", {"name": "mixed", "listen": "udp://127.0.0.1:0",
                                                  "upstream": "127.0.0.1:53"}, auth)
    expect(status == 400 and "UDP at both ends" in body, f"udp:// to TCP: 400, got {status} {body}")
    status, body = call(api, "POST", "/proxies", {"name": "odd", "upstream": "sctp://127.0.0.1:1"}, auth)
    expect(status == 400 and "tcp://, udp:// or tls://" in body, f"an unknown scheme: 400, got {status} {body}")


def make_certificate(folder):
    key, cert = os.path.join(folder, "key.pem"), os.path.join(folder, "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    with open(cert) as c, open(key) as k:
        return cert, c.read(), k.read()


def tls(api, auth, folder):
    cert_file, cert, key = make_certificate(folder)
    port = tcp_echo()
    # Terminate: TLS clients in front of a plain upstream.
    status, body = call(api, "POST", "/proxies", {"name": "front", "listen": "tls://127.0.0.1:0",
                                                  "upstream": f"127.0.0.1:{port}",
                                                  "listen_tls": {"cert": cert, "key": key}}, auth)
    expect(status == 201 and "key" not in body and json.loads(body)["listen"].startswith("tls://"),
           f"a tls:// listener (its key never shown): {status} {body}")
    front = host_port(json.loads(body)["listen"])
    context = ssl.create_default_context(cafile=cert_file)
    expect(round_trip(front, b"secret", wrap=lambda s: context.wrap_socket(s, server_hostname="localhost"))
           is not None, "a TLS client through the tls:// listener to a plain echo")
    # Originate: a plain client, TLS to the upstream (the first proxy).
    status, body = call(api, "POST", "/proxies", {"name": "back", "upstream": f"tls://127.0.0.1:{front[1]}",
                                                  "upstream_tls": {"ca": cert, "server_name": "localhost"}}, auth)
    expect(status == 201, f"a tls:// upstream: {status} {body}")
    expect(round_trip(host_port(json.loads(body)["listen"]), b"plain in, TLS out") is not None,
           "a plain client through a tls:// upstream and back")
    # The system's store does not trust this certificate: the relay ends.
    status, body = call(api, "POST", "/proxies", {"name": "untrusted", "upstream": f"tls://127.0.0.1:{front[1]}"},
                        auth)
    expect(status == 201 and round_trip(host_port(json.loads(body)["listen"])) is None,
           f"an upstream certificate nobody trusts: the client's connection ends ({status} {body})")
    for payload, words in [
        ({"name": "nocert", "listen": "tls://127.0.0.1:0", "upstream": "127.0.0.1:1"}, "needs listen_tls.cert"),
        ({"name": "badpem", "listen": "tls://127.0.0.1:0", "upstream": "127.0.0.1:1",
          "listen_tls": {"cert": "not PEM", "key": "nor this"}}, "OpenSSL cannot use it"),
        ({"name": "stray", "upstream": "127.0.0.1:1", "upstream_tls": {"ca": cert}}, "upstream_tls is for a tls://"),
    ]:
        status, body = call(api, "POST", "/proxies", payload, auth)
        expect(status == 400 and words in body, f"{payload['name']}: 400 '{words}', got {status} {body}")


def scopes(api, auth):
    port = tcp_echo()
    status, body = call(api, "POST", "/proxies", {"name": "app", "upstream": f"127.0.0.1:{port}"}, auth)
    address = host_port(json.loads(body)["listen"])
    # One toxic for both directions.
    status, body = call(api, "POST", "/proxies/app/toxics", {"type": "latency", "stream": "both",
                                                             "attributes": {"latency": 100}}, auth)
    expect(status == 200 and json.loads(body)["stream"] == "both", f"stream both: {status} {body}")
    took = round_trip(address)
    expect(took is not None and took >= 0.2, f"latency 100 ms both ways: {took} s there and back")
    call(api, "DELETE", "/proxies/app/toxics/latency_both", None, auth)
    # For some clients only.
    status, body = call(api, "POST", "/proxies/app/toxics",
                        {"name": "far", "type": "latency", "stream": "upstream",
                         "attributes": {"latency": 200, "clients": "127.0.0.2, 10.0.0.0/8"}}, auth)
    expect(status == 200 and json.loads(body)["attributes"]["clients"] == "127.0.0.2, 10.0.0.0/8",
           f"a toxic for two networks: {status} {body}")
    near, far = round_trip(address), round_trip(address, source="127.0.0.2")
    expect(near is not None and near < 0.15, f"a client from 127.0.0.1 is not delayed: {near}")
    expect(far is not None and far >= 0.2, f"a client from 127.0.0.2 is: {far}")
    status, body = call(api, "POST", "/proxies/app/toxics/far", {"attributes": {"clients": ["127.0.0.0/24"]}}, auth)
    took = round_trip(address)
    expect(status == 200 and took is not None and took >= 0.2, f"widened to 127.0.0.0/24: {status} {took}")
    call(api, "DELETE", "/proxies/app/toxics/far", None, auth)
    # After some bytes: the first 5 bytes pass, then the connection hangs.
    status, body = call(api, "POST", "/proxies/app/toxics", {"type": "timeout", "stream": "upstream",
                                                             "attributes": {"start_after_bytes": 5}}, auth)
    expect(status == 200, f"a timeout from the 6th byte: {status} {body}")
    with socket.create_connection(address, timeout=3) as conn:
        conn.sendall(b"hello")
        expect(conn.recv(100) == b"hello", "the first 5 bytes pass")
        conn.sendall(b"world")
        conn.settimeout(0.3)
        try:
            late = conn.recv(100)
        except socket.timeout:
            late = None
        expect(late is None, f"after them nothing passes: got {late}")
    call(api, "DELETE", "/proxies/app/toxics/timeout_upstream", None, auth)
    # After a time: from 300 ms into each connection's life, a reset_peer
    # whose timeout is 100 ms: reset at 400 ms.
    status, body = call(api, "POST", "/proxies/app/toxics", {"type": "reset_peer", "stream": "both",
                                                             "attributes": {"timeout": 100, "start_after": 300}}, auth)
    expect(status == 200, f"reset_peer from 300 ms: {status} {body}")
    with socket.create_connection(address, timeout=3) as conn:
        began = time.monotonic()
        conn.sendall(b"early")
        expect(conn.recv(100) == b"early", "before 300 ms the connection works")
        try:
            end = conn.recv(100)
        except ConnectionResetError:
            end = "reset"
        took = time.monotonic() - began
        expect(end == "reset" and 0.35 <= took < 2, f"reset at 400 ms: {end!r} after {took:.3f} s")
    call(api, "DELETE", "/proxies/app/toxics/reset_peer_both", None, auth)
    for attributes, words in [({"clients": "not-an-address"}, "'not-an-address' is not an address"),
                              ({"clients": "10.0.0.0/40"}, "the prefix must be 0 to 32"),
                              ({"clients": 7}, "attributes.clients is an address list"),
                              ({"start_after_bytes": 10, "stop_after_bytes": 5}, "stop_after_bytes must be more"),
                              ({"start_after": -1}, "must not be negative")]:
        status, body = call(api, "POST", "/proxies/app/toxics", {"type": "latency", "attributes": attributes}, auth)
        expect(status == 400 and words in body, f"{attributes}: 400 '{words}', got {status} {body}")


def main():
    conduit = sys.argv[1]
    with tempfile.TemporaryDirectory() as folder:
        proc, api = start(conduit, "--toxiproxy-api", "127.0.0.1:0")
        try:
            auth = {}
            udp(api, auth)
            tls(api, auth, folder)
            scopes(api, auth)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    finish("toxiproxy API extensions")


main()
