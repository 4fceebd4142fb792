"""What the toxiproxy API tests share: the service started and stopped by
its PID, raw HTTP calls, and checks that report each failure and go on."""
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request


def start(conduit, *flags):
    """`conduit serve` on free loopback ports; (process, toxiproxy API address)."""
    proc = subprocess.Popen([conduit, "serve", "--listen", "127.0.0.1:0", "--quiet", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("toxiproxy-api "):
            return proc, line.split()[1]
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit("the service did not print its toxiproxy-api address: " + proc.stderr.read())


def call(api, method, path, body=None, headers=None):
    """(status, body text) of one request."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request("http://" + api + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


failures = []


def expect(ok, what):
    if not ok:
        failures.append(what)
        print("FAIL:", what, file=sys.stderr)


def finish(what):
    if failures:
        raise SystemExit(f"{len(failures)} checks failed")
    print(f"{what}: every check passed")
