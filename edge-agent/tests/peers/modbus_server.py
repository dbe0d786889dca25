#!/usr/bin/env python3
"""A Modbus peer for the edge-agent tests, built on pymodbus (TCP or RTU over a serial line).

It reads the device profiles itself (tomllib) and encodes the engineering values it is given
with its own implementation of every register type and word order (struct + word/byte swaps),
so the agent's decoding is checked against an independent encoder, not against itself.

  modbus_server.py --spec spec.json (--tcp PORT | --serial /dev/pts/N [--baud 9600])

spec.json: {"devices": [{"unit": 1, "profile": "profiles/x.toml", "values": {"quantity": eng}}]}

stdout, one line each, flushed:
  REQ unit=U fc=F addr=A count=C         every request received
  WRITE unit=U fc=F addr=A values=v1,v2  every write received
"""
import argparse
import asyncio
import json
import logging
import struct
import sys
import tomllib

from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

PACK = {
    "u16": (">H", 1), "i16": (">h", 1), "bool": (">H", 1),
    "u32": (">I", 2), "i32": (">i", 2), "f32": (">f", 2),
    "u64": (">Q", 4), "i64": (">q", 4), "f64": (">d", 4),
}


def encode(dtype, order, raw):
    fmt, n = PACK[dtype]
    if dtype not in ("f32", "f64"):
        raw = int(round(raw))
    b = struct.pack(fmt, raw)  # bytes a b c d ... most significant first
    words = [b[i:i + 2] for i in range(0, 2 * n, 2)]
    if order in ("cdab", "dcba"):
        words = words[::-1]
    if order in ("badc", "dcba"):
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


def build_device(profile_path, values):
    with open(profile_path, "rb") as f:
        profile = tomllib.load(f)
    tables = {"coil": {}, "discrete": {}, "input": {}, "holding": {}}
    for p in profile["points"]:
        table, addr, dtype = p["table"], p["address"], p["type"]
        eng = values.get(p["quantity"], 0)
        if table in ("coil", "discrete"):
            tables[table][addr] = bool(eng)
            continue
        raw = (float(eng) - p.get("offset", 0.0)) / p.get("scale", 1.0)
        for i, w in enumerate(encode(dtype, p.get("word_order", "abcd"), raw)):
            tables[table][addr + i] = w

    def block(cells, zero):
        # Sequential from address 0 up to the highest point; pymodbus blocks start at 1 for
        # protocol address 0. Addresses beyond answer with an exception.
        if not cells:
            return ModbusSequentialDataBlock(1, [zero])
        top = max(cells)
        return ModbusSequentialDataBlock(1, [cells.get(a, zero) for a in range(top + 1)])

    return ModbusDeviceContext(
        co=block(tables["coil"], False),
        di=block(tables["discrete"], False),
        ir=block(tables["input"], 0),
        hr=block(tables["holding"], 0),
    )


def trace(sending, pdu):
    if not sending:
        unit = getattr(pdu, "dev_id", 0)
        fc = getattr(pdu, "function_code", 0)
        addr = getattr(pdu, "address", 0)
        if fc in (5, 6, 15, 16):
            vals = getattr(pdu, "registers", None) or getattr(pdu, "bits", None) or []
            vals = [int(v) for v in vals]
            print(f"WRITE unit={unit} fc={fc} addr={addr} values={','.join(map(str, vals))}", flush=True)
        print(f"REQ unit={unit} fc={fc} addr={addr} count={getattr(pdu, 'count', 0)}", flush=True)
    return pdu


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", required=True)
    ap.add_argument("--tcp", type=int)
    ap.add_argument("--serial")
    ap.add_argument("--baud", type=int, default=9600)
    args = ap.parse_args()
    with open(args.spec) as f:
        spec = json.load(f)
    devices = {d["unit"]: build_device(d["profile"], d.get("values", {})) for d in spec["devices"]}
    context = ModbusServerContext(devices=devices, single=False)
    if args.tcp is not None:
        server = ModbusTcpServer(context, address=("127.0.0.1", args.tcp), trace_pdu=trace)
    else:
        server = ModbusSerialServer(context, port=args.serial, baudrate=args.baud, trace_pdu=trace)
    print("STARTING", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    logging.basicConfig(level=logging.CRITICAL)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
