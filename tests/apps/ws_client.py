"""A WebSocket client for the tests (the `websockets` library): echoes text, binary and a
1 MiB random message through URL, prints the server's pid and "open", waits for a line on
stdin, echoes once more, closes with the close handshake and prints "closed CODE"."""
import asyncio
import os
import sys

import websockets


async def main(url):
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        await ws.send('hello')
        assert await ws.recv() == 'hello'
        await ws.send(b'\x00\x01\xffbinary')
        assert await ws.recv() == b'\x00\x01\xffbinary'
        big = os.urandom(1 << 20)
        await ws.send(big)
        assert await ws.recv() == big
        await ws.send('pid')
        print('pid', await ws.recv(), flush=True)
        print('open', flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await ws.send('still here')
        assert await ws.recv() == 'still here'
        await ws.send('pid')
        print('pid', await ws.recv(), flush=True)
    print('closed', ws.close_code, flush=True)


asyncio.run(main(sys.argv[1]))
