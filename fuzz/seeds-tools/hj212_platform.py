"""A recording HJ 212 platform: accepts station connections on a loopback port, writes each
station's byte stream to OUT/station-NNN.bin and answers every packet that asks for one
(Flag bit 0) with the data acknowledgement (CN 9014) that the station waits for.

    python3 hj212_platform.py --out DIR --port-file FILE [--drop-after N]

With --drop-after N the first connection is closed without an answer after its N-th packet, so
the station reconnects and sends again what was not acknowledged (a resend, as loggers do).
"""

import argparse
import asyncio
import itertools
import os
import re
import signal

counter = itertools.count(1)


def crc16(data: bytes) -> int:
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def frame(segment: str) -> bytes:
    body = segment.encode()
    return b"##%04d%s%04X\r\n" % (len(body), body, crc16(body))


def field(seg: str, key: str):
    m = re.search(r"(?:^|;)" + key + r"=([^;]*)", seg)
    return m.group(1) if m else None


async def handle(args, reader, writer):
    n = next(counter)
    path = os.path.join(args.out, f"station-{n:03d}.bin")
    packets = 0
    with open(path, "ab") as f:
        while True:
            try:
                line = await reader.readuntil(b"\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                break
            f.write(line)
            f.flush()
            packets += 1
            if args.drop_after and n == 1 and packets >= args.drop_after:
                break
            text = line.decode("ascii", "replace")
            if not text.startswith("##") or len(text) < 12:
                continue
            seg = text[6:-6]
            flag = field(seg, "Flag")
            qn = field(seg, "QN")
            if qn is None or flag is None or not (int(flag) & 1):
                continue
            ack = f"QN={qn};ST=91;CN=9014;PW={field(seg, 'PW')};MN={field(seg, 'MN')};Flag=4;CP=&&&&"
            writer.write(frame(ack))
            await writer.drain()
    writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--drop-after", type=int, default=0)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    assert frame("QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&").endswith(b"1C80\r\n")
    server = await asyncio.start_server(lambda r, w: handle(args, r, w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with open(args.port_file + ".tmp", "w") as f:
        f.write(f"{port}\n")
    os.replace(args.port_file + ".tmp", args.port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
