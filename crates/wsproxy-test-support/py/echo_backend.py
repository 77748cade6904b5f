"""A plain echo backend (Python `websockets`) for tests that kill it.

Prints `listening on PORT` once bound to 127.0.0.1:0, then echoes every
message until its standard input closes or it is killed.
"""

import asyncio
import sys

from websockets.asyncio.server import serve


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def main():
    # Room for many connections arriving at once.
    async with serve(echo, "127.0.0.1", 0, backlog=1024) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"listening on {port}", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)


asyncio.run(main())
