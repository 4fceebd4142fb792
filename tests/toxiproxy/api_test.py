#!/usr/bin/env python3
"""What toxiproxy's clients do not show: the API under the service's token
and policy, and its refusals, as raw HTTP against `conduit serve
--toxiproxy-api` (the service started here, stopped by its PID).

usage: api_test.py CONDUIT_BINARY
"""
import json
import os
import subprocess
import sys
import tempfile
import time

from api_helpers import call, expect, finish, start


def metrics_through_a_proxy(api, auth):
    """GET /metrics: toxiproxy's byte counters per proxy and direction, once
    100 bytes went up and came back through a proxy (and 60 of them were cut
    by a limit_data toxic on the way down), and Conduit's connection counts."""
    import socket
    import threading

    upstream = socket.create_server(("127.0.0.1", 0))

    def echo():
        conn, _ = upstream.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    port = upstream.getsockname()[1]
    status, body = call(api, "POST", "/proxies", {"name": "m", "upstream": f"127.0.0.1:{port}"}, auth)
    expect(status == 201, f"metrics proxy: {status} {body}")
    listen = json.loads(body)["listen"]
    call(api, "POST", "/proxies/m/toxics", {"type": "limit_data", "attributes": {"bytes": 40}}, auth)
    host, lport = listen.rsplit(":", 1)
    with socket.create_connection((host, int(lport)), timeout=5) as client:
        client.sendall(b"x" * 100)
        got = b""
        while data := client.recv(65536):
            got += data
    expect(len(got) == 40, f"limit_data 40: {len(got)} bytes came back")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        status, text = call(api, "GET", "/metrics", None, auth)
        labels = f'proxy="m",listener="{listen}",upstream="127.0.0.1:{port}"'
        want = [f'toxiproxy_proxy_received_bytes_total{{direction="upstream",{labels}}} 100',
                f'toxiproxy_proxy_sent_bytes_total{{direction="upstream",{labels}}} 100',
                f'toxiproxy_proxy_sent_bytes_total{{direction="downstream",{labels}}} 40',
                f'conduit_proxy_connections_total{{{labels}}} 1']
        # Downstream, the proxy read 40 to 100 bytes before the toxic closed it.
        down = [line for line in text.splitlines()
                if line.startswith(f'toxiproxy_proxy_received_bytes_total{{direction="downstream",{labels}}} ')]
        if status == 200 and all(w in text.splitlines() for w in want) and down and \
                40 <= int(down[0].rsplit(" ", 1)[1]) <= 100:
            break
        time.sleep(0.05)
    expect(status == 200 and all(w in text.splitlines() for w in want) and down, f"metrics: {status} {text}")
    call(api, "DELETE", "/proxies/m", None, auth)
    upstream.close()


def main():
    conduit = sys.argv[1]
    with tempfile.TemporaryDirectory() as folder:
        token_file = os.path.join(folder, "token")
        with open(token_file, "w") as f:
            f.write("0123456789abcdef0123456789abcdef\n")
        proc, api = start(conduit, "--toxiproxy-api", "127.0.0.1:0", "--token-file", token_file)
        try:
            status, body = call(api, "GET", "/proxies")
            expect(status == 401 and "Bearer" in body, f"no token: 401 saying how, got {status} {body}")
            auth = {"Authorization": "Bearer 0123456789abcdef0123456789abcdef"}
            status, body = call(api, "GET", "/proxies", headers=auth)
            expect(status == 200 and json.loads(body) == {}, f"with the token: 200 and no proxies, got {status} {body}")
            status, body = call(api, "GET", "/version", headers=auth)
            expect(status == 200 and body == "2.5.0", f"version: {status} {body}")
            status, body = call(api, "GET", "/proxies", headers={**auth, "User-Agent": "Mozilla/5.0"})
            expect(status == 403, f"a browser is refused as toxiproxy refuses it: {status}")
            # The policy (by default: listen on loopback only).
            status, body = call(api, "POST", "/proxies", {"name": "db", "listen": "0.0.0.0:0",
                                                          "upstream": "127.0.0.1:5432"}, auth)
            expect(status == 403 and "--allow-listen" in body and json.loads(body)["status"] == 403,
                   f"a listen address the policy refuses: 403 naming it, got {status} {body}")
            status, body = call(api, "POST", "/proxies", {"name": "db", "upstream": "127.0.0.1:5432"}, auth)
            expect(status == 201 and json.loads(body)["listen"].startswith("127.0.0.1:"),
                   f"created on a free loopback port: {status} {body}")
            # toxiproxy's refusals, in its words.
            for method, path, payload, code, words in [
                ("POST", "/proxies", {"name": "db", "upstream": "127.0.0.1:1"}, 409, "proxy already exists"),
                ("POST", "/proxies", {"upstream": "127.0.0.1:1"}, 400, "missing required field: name"),
                ("POST", "/proxies", b"{not json", 400, "bad request body"),
                ("GET", "/proxies/nope", None, 404, "proxy not found"),
                ("POST", "/proxies/db/toxics", {"type": "nonsense"}, 400, "invalid toxic type"),
                ("POST", "/proxies/db/toxics", {"type": "latency", "stream": "sideways"}, 400, "stream was invalid"),
                ("POST", "/proxies/db/toxics", {"type": "latency", "toxicity": 2}, 400, "toxicity"),
                ("GET", "/proxies/db/toxics/nope", None, 404, "toxic not found"),
            ]:
                status, body = call(api, method, path, payload, auth)
                expect(status == code and words in body, f"{method} {path} {payload}: {code} '{words}', got {status} {body}")
            status, body = call(api, "POST", "/proxies/db/toxics", {"type": "latency", "attributes": {"latency": 5}}, auth)
            expect(status == 200 and json.loads(body)["name"] == "latency_downstream", f"toxic added: {status} {body}")
            status, body = call(api, "POST", "/proxies/db/toxics", {"type": "latency"}, auth)
            expect(status == 409 and "toxic already exists" in body, f"the same toxic again: {status} {body}")
            status, _ = call(api, "DELETE", "/proxies/db", None, auth)
            expect(status == 204, f"delete: {status}")
            metrics_through_a_proxy(api, auth)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        # A start-up file in populate's form, toxics included: there before the
        # API answers; a bad one stops the service, naming the problem.
        config = os.path.join(folder, "proxies.json")
        with open(config, "w") as f:
            json.dump([{"name": "db", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:5432",
                        "toxics": [{"type": "latency", "attributes": {"latency": 20}},
                                   {"name": "cut", "type": "limit_data", "stream": "upstream",
                                    "attributes": {"bytes": 1000}}]},
                       {"name": "off", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:6379", "enabled": False}], f)
        proc, api = start(conduit, "--toxiproxy-api", "127.0.0.1:0", "--toxiproxy-config", config)
        try:
            status, body = call(api, "GET", "/proxies")
            proxies = json.loads(body)
            expect(status == 200 and sorted(proxies) == ["db", "off"], f"the start-up proxies: {status} {body}")
            expect([t["name"] for t in proxies["db"]["toxics"]] == ["latency_downstream", "cut"]
                   and proxies["db"]["toxics"][1]["stream"] == "upstream", f"their toxics: {body}")
            expect(proxies["off"]["enabled"] is False, f"a disabled one stays disabled: {body}")
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        with open(config, "w") as f:
            json.dump([{"name": "x", "upstream": "127.0.0.1:1", "toxics": [{"type": "bogus"}]}], f)
        result = subprocess.run([conduit, "serve", "--listen", "127.0.0.1:0", "--toxiproxy-api", "127.0.0.1:0",
                                 "--toxiproxy-config", config], capture_output=True, text=True, timeout=10)
        expect(result.returncode == 2 and "invalid toxic type" in result.stderr,
               f"a bad start-up file: exit 2 naming it, got {result.returncode} {result.stderr}")

        # Off loopback without a token: refused at start-up, naming the way out.
        result = subprocess.run([conduit, "serve", "--listen", "127.0.0.1:0", "--toxiproxy-api", "0.0.0.0:0"],
                                capture_output=True, text=True, timeout=10)
        expect(result.returncode == 2 and "--toxiproxy-api-no-auth" in result.stderr,
               f"0.0.0.0 without a token: exit 2 naming the flag, got {result.returncode} {result.stderr}")
    finish("toxiproxy API")


main()
