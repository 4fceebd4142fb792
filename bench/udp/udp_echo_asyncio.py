"""Python UDP echo server for bench/udp/run.sh: asyncio or uvloop.
usage: udp_echo_asyncio.py asyncio|uvloop   (prints "listening PORT")"""
import asyncio
import sys


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


async def main():
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    print("listening", transport.get_extra_info("sockname")[1], flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    if sys.argv[1] == "uvloop":
        import uvloop
        uvloop.install()
    asyncio.run(main())
