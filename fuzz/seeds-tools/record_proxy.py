"""A recording TCP proxy: listens on a loopback port, forwards every connection to UPSTREAM and
writes what each side sent, byte for byte, to OUT/conn-NNN.c2s (client to server) and
OUT/conn-NNN.s2c (server to client).

    python3 record_proxy.py --upstream 127.0.0.1:1883 --out DIR --port-file FILE

Listens on a free port (or --listen PORT) and writes the port to --port-file once listening.
Runs until SIGTERM/SIGINT.
"""

import argparse
import asyncio
import itertools
import os
import signal

counter = itertools.count(1)


async def pump(reader, writer, path):
    with open(path, "ab") as f:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                f.write(data)
                f.flush()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass


async def handle(args, c_reader, c_writer):
    n = next(counter)
    base = os.path.join(args.out, f"conn-{n:03d}")
    try:
        host, port = args.upstream.rsplit(":", 1)
        s_reader, s_writer = await asyncio.open_connection(host, int(port))
    except OSError:
        c_writer.close()
        return
    await asyncio.gather(
        pump(c_reader, s_writer, base + ".c2s"),
        pump(s_reader, c_writer, base + ".s2c"),
    )


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--listen", type=int, default=0)
    ap.add_argument("--port-file", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    server = await asyncio.start_server(
        lambda r, w: handle(args, r, w), "127.0.0.1", args.listen
    )
    port = server.sockets[0].getsockname()[1]
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, args.port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
