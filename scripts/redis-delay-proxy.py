#!/usr/bin/env python3
"""A TCP proxy in front of Redis for scripts/soak.sh: forwards
LISTEN_PORT -> 127.0.0.1:TARGET_PORT, and while the file FLAG exists holds
every chunk for the milliseconds written in it before forwarding (both
ways). This delays one node's traffic to Redis without root (no tc/netem).

    redis-delay-proxy.py LISTEN_PORT TARGET_PORT FLAG
"""
import asyncio
import os
import sys

listen_port, target_port, flag = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]


def delay_s():
    try:
        with open(flag) as f:
            return int(f.read().strip() or "0") / 1000
    except (OSError, ValueError):
        return 0


async def pipe(reader, writer):
    """Forwards each chunk the delay after it arrived, in order: a link with
    latency, not a queue that serves one chunk per delay (two writes sent
    back to back arrive together, as over a real network)."""
    loop = asyncio.get_running_loop()
    chunks = asyncio.Queue()

    async def forward():
        try:
            while True:
                due, data = await chunks.get()
                if data is None:
                    break
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    sender = asyncio.ensure_future(forward())
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            chunks.put_nowait((loop.time() + delay_s(), data))
    except (ConnectionError, OSError):
        pass
    finally:
        chunks.put_nowait((0, None))
        await sender


async def handle(client_reader, client_writer):
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(main())
