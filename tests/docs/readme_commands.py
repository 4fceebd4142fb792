#!/usr/bin/python3
"""The README's five commands, run as written (between its readme-commands
markers), with the conduit under test first on PATH, in a network namespace
of this test's own so that their fixed ports (50051, 7000, 7001) are free.

usage: readme_commands.py CONDUIT_BIN README

A line ending in '&' is a server: it must print its "listening" line within
the bound; every other line must exit 0 within it and print what its comment
says it prints ("# prints X", "an rtt_ms over N"). The servers are stopped by PID at the end.
"""
import json
import os
import re
import shlex
import subprocess
import sys
import time

BOUND = 20  # seconds, for each command


def commands(readme):
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    block = re.search(r"<!-- readme-commands[^>]*-->\s*```sh\n(.*?)```", text, re.S)
    if not block:
        sys.exit("README: no readme-commands block")
    return [line for line in block.group(1).splitlines() if line.strip()]


def in_own_network_namespace(argv):
    """Re-run this script in a new network namespace with loopback up."""
    if os.environ.get("CONDUIT_README_NETNS") == "1":
        return None
    unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    script = "ip link set lo up && exec " + " ".join(shlex.quote(a) for a in [sys.executable] + argv)
    return subprocess.run(unshare + ["sh", "-c", script], env=dict(os.environ, CONDUIT_README_NETNS="1")).returncode


def main():
    conduit, readme = os.path.abspath(sys.argv[1]), sys.argv[2]
    code = in_own_network_namespace([os.path.abspath(__file__), conduit, readme])
    if code is not None:
        return code
    bin_dir = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"conduit-readme-{os.getpid()}")
    os.makedirs(bin_dir, exist_ok=True)
    link = os.path.join(bin_dir, "conduit")
    if not os.path.exists(link):
        os.symlink(conduit, link)
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ["PATH"])
    servers, failures = [], []
    lines = commands(readme)
    if len(lines) != 5:
        failures.append(f"the block has {len(lines)} commands, not five")
    try:
        for line in lines:
            command, _, comment = line.partition("#")
            command = command.strip()
            background = command.endswith("&")
            argv = shlex.split(command.rstrip("&"))
            if argv[0] != "conduit":
                failures.append(f"{line!r}: not a conduit command")
                continue
            if background:
                process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                servers.append(process)
                deadline = time.monotonic() + BOUND
                ready = False
                while time.monotonic() < deadline:
                    out = process.stdout.readline()
                    if not out:
                        break
                    if out.startswith("listening"):
                        ready = True
                        break
                if not ready:
                    failures.append(f"{command!r} did not print 'listening': {process.stderr.read() if process.poll() is not None else ''}")
                continue
            run = subprocess.run(argv, capture_output=True, text=True, timeout=BOUND, env=env)
            print(f"$ {command}\n{run.stdout}{run.stderr}", end="")
            if run.returncode != 0:
                failures.append(f"{command!r} exited {run.returncode}: {run.stderr}")
            expected = re.match(r"\s*prints (\S+)", comment)
            if expected and expected.group(1) not in run.stdout:
                failures.append(f"{command!r} printed {run.stdout!r}, not {expected.group(1)!r}")
            over = re.match(r".*rtt_ms over (\d+)", comment)
            if over:
                rtt = json.loads(run.stdout.strip().splitlines()[-1])["rtt_ms"]["min"]
                if rtt < float(over.group(1)):
                    failures.append(f"{command!r}: a round trip of {rtt} ms, not over {over.group(1)}")
    finally:
        for process in servers:
            process.terminate()
        for process in servers:
            try:
                process.wait(BOUND)
            except subprocess.TimeoutExpired:
                process.kill()
    for failure in failures:
        print("FAILED:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
