"""A permessage-deflate client (Python `websockets`) for URL in argv[1].

Checks that permessage-deflate was negotiated and that compressible and
random messages, text and binary, echo intact. Exits non-zero otherwise.
"""

import asyncio
import os
import sys

from websockets.asyncio.client import connect


async def main(url):
    async with connect(url, max_size=None) as ws:
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        assert "permessage-deflate" in extensions, f"not negotiated: {extensions!r}"
        assert [type(e).__name__ for e in ws.protocol.extensions] == ["PerMessageDeflate"]
        messages = [
            "a" * 100_000,
            "hello " * 10_000,
            b"\x00" * 1_000_000,
            os.urandom(300_000),
            "short",
            "",
        ]
        for message in messages:
            await ws.send(message)
            echoed = await asyncio.wait_for(ws.recv(), 10)
            assert echoed == message, f"message of {len(message)} differs"
        print(f"ok {extensions}", flush=True)


asyncio.run(main(sys.argv[1]))
