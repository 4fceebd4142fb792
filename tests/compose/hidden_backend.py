#!/usr/bin/python3
"""An unmodified asyncio program (aiohttp's client) fetching URL, run with
`python3 -m conduit_client --via SERVICE` in the compose file's tests
container: the URL's host is on a network only the service is on, so its
name resolves and its connection is made there, through the remote loop.

usage: python3 -m conduit_client --via SERVICE hidden_backend.py URL
"""
import asyncio
import socket
import sys
import urllib.parse

import aiohttp


async def main(url):
    host = urllib.parse.urlsplit(url).hostname
    try:
        socket.gethostbyname(host)
        sys.exit(f"{host} resolves from this container: the test proves nothing")
    except OSError:
        pass  # as it must: only the service's network has it
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=20)) as response:
            body = await response.text()
    if response.status != 200 or "conduit-backend-marker" not in body:
        sys.exit(f"GET {url}: {response.status} {body[:200]!r}")
    print(f"GET {url} through the remote loop ({type(loop).__name__}): {response.status}, {body.strip()}")


asyncio.run(main(sys.argv[1]))
