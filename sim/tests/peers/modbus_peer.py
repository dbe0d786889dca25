#!/usr/bin/env python3
"""A Modbus client nobody on this project wrote (pymodbus), driven by a device profile.

Reads every point of a profile and decodes it with the profile's own types, word orders,
scale and offset (the decoding here is independent of the Rust code), writes points, and
checks exception responses. Prints one JSON object on stdout; exits non-zero on any failure.

  modbus_peer.py (--tcp HOST:PORT | --serial PATH) --unit N --profile FILE ACTION...
  ACTION: read | write QUANTITY VALUE | expect-exception FUNCTION ADDRESS COUNT CODE
          | wait-for QUANTITY MIN MAX | garbage | broadcast-write QUANTITY VALUE
"""
import argparse
import json
import os
import struct
import sys
import time
import tomllib

from pymodbus.client import ModbusSerialClient, ModbusTcpClient

WIDTH = {"bool": 1, "u16": 1, "i16": 1, "u32": 2, "i32": 2, "f32": 2, "u64": 4, "i64": 4, "f64": 4}
FORMAT = {"u16": ">H", "i16": ">h", "u32": ">I", "i32": ">i", "f32": ">f", "u64": ">Q", "i64": ">q", "f64": ">d"}
# (reverse word order, swap bytes within words) for each order name.
SWAPS = {"abcd": (False, False), "cdab": (True, False), "badc": (False, True), "dcba": (True, True)}


def words_to_bytes(words, order):
    rev, swap = SWAPS[order]
    ws = list(reversed(words)) if rev else list(words)
    out = b""
    for w in ws:
        b = struct.pack(">H", w)
        out += b[::-1] if swap else b
    return out


def bytes_to_words(data, order):
    rev, swap = SWAPS[order]
    ws = []
    for i in range(0, len(data), 2):
        b = data[i:i + 2]
        ws.append(struct.unpack(">H", b[::-1] if swap else b)[0])
    return list(reversed(ws)) if rev else ws


def decode(point, regs):
    ty = point["type"]
    if ty == "bool":
        raw = 1.0 if regs[0] else 0.0
    else:
        raw = struct.unpack(FORMAT[ty], words_to_bytes(regs, point.get("word_order", "abcd")))[0]
    return raw * point.get("scale", 1.0) + point.get("offset", 0.0)


def encode(point, value):
    ty = point["type"]
    raw = (value - point.get("offset", 0.0)) / point.get("scale", 1.0)
    if ty not in ("f32", "f64"):
        raw = int(round(raw))
    return bytes_to_words(struct.pack(FORMAT[ty], raw), point.get("word_order", "abcd"))


class Peer:
    def __init__(self, args):
        with open(args.profile, "rb") as f:
            self.profile = tomllib.load(f)
        self.unit = args.unit
        if args.tcp:
            host, port = args.tcp.rsplit(":", 1)
            self.client = ModbusTcpClient(host, port=int(port), timeout=2, retries=1)
        else:
            self.client = ModbusSerialClient(args.serial, baudrate=19200, timeout=2, retries=1)
        if not self.client.connect():
            sys.exit(f"cannot connect to {args.tcp or args.serial}")
        self.log = {}

    def point(self, quantity):
        for p in self.profile["points"]:
            if p["quantity"] == quantity:
                return p
        sys.exit(f"profile has no {quantity}")

    def read_point(self, p):
        width = WIDTH[p["type"]]
        c, u = self.client, self.unit
        table, addr = p["table"], p["address"]
        if table == "coil":
            rr = c.read_coils(addr, count=1, device_id=u)
        elif table == "discrete":
            rr = c.read_discrete_inputs(addr, count=1, device_id=u)
        elif table == "holding":
            rr = c.read_holding_registers(addr, count=width, device_id=u)
        else:
            rr = c.read_input_registers(addr, count=width, device_id=u)
        if rr.isError():
            sys.exit(f"reading {p['quantity']}: {rr}")
        regs = [int(b) for b in rr.bits[:1]] if table in ("coil", "discrete") else rr.registers
        return decode(p, regs), regs

    def read(self):
        values = {}
        for p in self.profile["points"]:
            values[p["quantity"]] = self.read_point(p)[0]
        self.log.setdefault("reads", []).append(values)
        return values

    def write(self, quantity, value):
        p = self.point(quantity)
        if p["table"] == "coil":
            rr = self.client.write_coil(p["address"], bool(value), device_id=self.unit)
        else:
            rr = self.client.write_registers(p["address"], encode(p, value), device_id=self.unit)
        if rr.isError():
            sys.exit(f"writing {quantity}={value}: {rr}")
        back = self.read_point(p)[0]
        self.log.setdefault("writes", []).append({"quantity": quantity, "value": value, "read_back": back})
        if abs(back - value) > 1e-9:
            sys.exit(f"{quantity}: wrote {value}, read back {back}")

    def broadcast_write(self, quantity, value):
        # Unit 0: every device carries the write out, none answers.
        p = self.point(quantity)
        self.client.write_registers(p["address"], encode(p, value), device_id=0, no_response_expected=True)
        time.sleep(0.1)
        back = self.read_point(p)[0]
        self.log.setdefault("broadcasts", []).append({"quantity": quantity, "value": value, "read_back": back})
        if abs(back - value) > 1e-9:
            sys.exit(f"broadcast {quantity}={value}: read back {back}")

    def expect_exception(self, function, address, count, code):
        c, u = self.client, self.unit
        calls = {
            1: lambda: c.read_coils(address, count=count, device_id=u),
            2: lambda: c.read_discrete_inputs(address, count=count, device_id=u),
            3: lambda: c.read_holding_registers(address, count=count, device_id=u),
            4: lambda: c.read_input_registers(address, count=count, device_id=u),
            5: lambda: c.write_coil(address, True, device_id=u),
            6: lambda: c.write_register(address, count, device_id=u),
            16: lambda: c.write_registers(address, [count], device_id=u),
        }
        rr = calls[function]()
        got = getattr(rr, "exception_code", None)
        if not rr.isError() or got != code:
            sys.exit(f"function {function} at {address}: expected exception {code}, got {rr}")
        self.log.setdefault("exceptions", []).append({"function": function, "address": address, "code": got})

    def wait_for(self, quantity, lo, hi, timeout=10.0):
        p = self.point(quantity)
        deadline = time.monotonic() + timeout
        while True:
            v = self.read_point(p)[0]
            if lo <= v <= hi:
                self.log.setdefault("waited", []).append({"quantity": quantity, "value": v})
                return
            if time.monotonic() > deadline:
                sys.exit(f"{quantity} stayed at {v}, outside {lo}..{hi}")
            time.sleep(0.2)

    def garbage(self):
        # Bytes that are no frame at all, straight onto the line; the device must shrug.
        sock = getattr(self.client, "socket", None)
        data = os.urandom(64)
        if hasattr(sock, "send"):
            sock.send(data)
        else:
            sock.write(data)
        time.sleep(0.05)
        self.log["garbage"] = len(data)


def main():
    ap = argparse.ArgumentParser()
    target = ap.add_mutually_exclusive_group(required=True)
    target.add_argument("--tcp")
    target.add_argument("--serial")
    ap.add_argument("--unit", type=int, default=1)
    ap.add_argument("--profile", required=True)
    ap.add_argument("actions", nargs="+")
    args = ap.parse_args()
    peer = Peer(args)
    a = args.actions
    i = 0
    while i < len(a):
        op = a[i]
        if op == "read":
            peer.read()
            i += 1
        elif op == "write":
            peer.write(a[i + 1], float(a[i + 2]))
            i += 3
        elif op == "broadcast-write":
            peer.broadcast_write(a[i + 1], float(a[i + 2]))
            i += 3
        elif op == "expect-exception":
            peer.expect_exception(*(int(x) for x in a[i + 1:i + 5]))
            i += 5
        elif op == "wait-for":
            peer.wait_for(a[i + 1], float(a[i + 2]), float(a[i + 3]))
            i += 4
        elif op == "garbage":
            peer.garbage()
            i += 1
        else:
            sys.exit(f"unknown action {op}")
    peer.client.close()
    print(json.dumps(peer.log))


if __name__ == "__main__":
    main()
