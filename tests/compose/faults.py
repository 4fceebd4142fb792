"""The compose topology's fault steps, shared by both runners (the netns
one, run_topology.py, and Docker's, compose-test.sh): two hosts cut off
mid-transfer, one by its link going down (nothing more arrives from it, not
even a RST), one by its process being killed. Each session through the
service must report connection_lost with an error within a bound, and the
service must keep serving others.

A killed process closes its sockets as it dies (a FIN, or a RST if it had
unread data). What answers the service's next segments differs: in a
network namespace that outlives the process, its kernel resets the
connection at once; `docker kill` takes the container's network with it, so
nothing answers and --dead-peer-timeout (TCP_USER_TIMEOUT) ends the session,
about 10 s later (measured here: 10.3-10.5 s). Both are within the bound.

The runner gives how to cut each host off; this module says what must
happen. Usable as a program for runners in other languages:

    faults.py ADDRESS TOKEN_FILE LINK_DOWN_COMMAND KILL_COMMAND

(each command a shell line, run when that host is to be cut off).
"""
import asyncio
import os
import subprocess
import sys
import time

# What each step expects, and within how long (the compose file's
# --dead-peer-timeout is 10 s; a reset is immediate).
STEPS = (
    # what, host, port, TLS, bound in seconds
    ("link down", "echo-tls", 7443, {"ssl": True, "insecure": True}, 45),
    ("process killed", "echo-tcp", 7007, {}, 30),
)


def _client_class(repo_root):
    try:
        from conduit_client import Client
    except ImportError:
        sys.path.insert(0, os.path.join(repo_root, "clients", "python"))
        from conduit_client import Client  # noqa: E402
    return Client


async def _cut_off_session(client, host, port, cut, **tls):
    async with client.raw.create_connection(host, port, **tls) as s:
        chunk = b"x" * 65536
        for _ in range(16):
            await s.write(chunk)
        cut()
        started = time.monotonic()

        # The client keeps writing while the service lets it (it says
        # pause_writing once the transport's buffer is full): data the peer
        # never acknowledges is what TCP_USER_TIMEOUT (--dead-peer-timeout)
        # bounds.
        paused = asyncio.Event()

        async def keep_writing():
            while True:
                if not paused.is_set():
                    await s.write(chunk)
                await asyncio.sleep(0.05)

        writer = asyncio.ensure_future(keep_writing())
        try:
            async for event in s.events():
                kind = event.WhichOneof("kind")
                if kind == "pause_writing":
                    paused.set()
                elif kind == "resume_writing":
                    paused.clear()
                elif kind == "connection_lost":
                    return event.connection_lost, time.monotonic() - started
        finally:
            writer.cancel()
    return None, None


def run(address, token, cuts, repo_root):
    """cuts: {"link down": fn, "process killed": fn}. Raises on a failure."""
    Client = _client_class(repo_root)

    async def healthy_session(client):
        async with client.raw.subprocess_exec("/bin/date") as s:
            return (await s.communicate())[2]

    async def scenarios():  # one event loop: grpc.aio does not like a second one
        async with Client(address, token=token) as client:
            for what, host, port, tls, bound in STEPS:
                lost, seconds = await asyncio.wait_for(_cut_off_session(client, host, port, cuts[what], **tls), bound)
                if lost is None or not lost.HasField("error"):
                    raise RuntimeError(f"{what}: expected connection_lost with an error, got {lost}")
                print(f"fault ({what}): connection_lost after {seconds:.2f} s: {lost.error.message}", flush=True)
            return await asyncio.wait_for(healthy_session(client), 30)

    returncode = asyncio.run(scenarios())
    if returncode != 0:
        raise RuntimeError(f"the service stopped serving other sessions (date exited {returncode})")
    print("fault: the service still serves", flush=True)


def main():
    address, token_file, link_down, kill = sys.argv[1:5]
    with open(token_file) as f:
        token = f.read().strip()
    cuts = {"link down": lambda: subprocess.run(link_down, shell=True, check=True),
            "process killed": lambda: subprocess.run(kill, shell=True, check=True)}
    try:
        run(address, token, cuts, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    except Exception as error:  # noqa: BLE001
        print(f"faults: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
