"""Python's side of bench/subprocess/run.sh, on asyncio or uvloop.
usage: spawn_asyncio.py asyncio|uvloop spawn N | pipe BYTES"""
import asyncio
import sys
import time


class Counter(asyncio.SubprocessProtocol):
    def __init__(self, done):
        self.bytes, self.done = 0, done

    def pipe_data_received(self, fd, data):
        self.bytes += len(data)

    def connection_lost(self, exc):
        self.done.set_result(None)


async def run_one(loop, *argv):
    done = loop.create_future()
    transport, protocol = await loop.subprocess_exec(lambda: Counter(done), *argv)
    await done
    transport.close()
    return protocol


async def main(mode, n):
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    if mode == "spawn":
        for _ in range(n):
            await run_one(loop, "/bin/true")
        print(round(n / (time.monotonic() - start)))
    else:
        protocol = await run_one(loop, "head", "-c", str(n), "/dev/zero")
        assert protocol.bytes == n, protocol.bytes
        print(round(n / (time.monotonic() - start) / (1 << 20)))


if __name__ == "__main__":
    if sys.argv[1] == "uvloop":
        import uvloop
        uvloop.install()
    asyncio.run(main(sys.argv[2], int(sys.argv[3])))
