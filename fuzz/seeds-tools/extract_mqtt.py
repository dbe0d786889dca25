"""Seeds from recorded MQTT streams (record_proxy.py's conn-NNN.c2s / conn-NNN.s2c files).

    python3 extract_mqtt.py SEEDS_DIR CAPTURE_DIR...

Writes, under SEEDS_DIR (files named by the SHA-1 of their bytes, so repeats collapse):
  mqtt_codec/       each client's whole byte stream (CONNECT first), cut at a packet boundary
                    at 32 KiB: the target decodes packet after packet from its input
  topic_parse/      every topic name of a PUBLISH and every filter of a SUBSCRIBE, both ways
  batch_decode/     payloads published on v1/agents/+/batch
  ack_parse/        payloads published on v1/agents/+/ack
  telemetry_parse/  payloads published on v1/devices/+/telemetry
  sparkplug_decode/ payloads published on spBv1.0/..., behind the target's mode byte
  timestamp_parse/  RFC 3339 timestamps found in any JSON payload
At most --max of each per target (taken evenly over what was seen, sizes sorted, so small and
large ones are both kept).
"""

import argparse
import glob
import hashlib
import os
import re
from collections import defaultdict

STREAM_CAP = 32 * 1024
SPB_MODE = {"NBIRTH": 0, "NDEATH": 1, "NDATA": 2, "NCMD": 3, "DBIRTH": 4, "DDEATH": 5, "DDATA": 6, "DCMD": 7}
RFC3339 = re.compile(rb'"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2}))"')


def varint(buf, i):
    mult, value = 1, 0
    for _ in range(4):
        if i >= len(buf):
            return None, i
        b = buf[i]
        i += 1
        value += (b & 0x7F) * mult
        if not b & 0x80:
            return value, i
        mult *= 128
    return None, i


def packets(buf):
    """(type, flags, body, start, end) for every whole packet of a stream."""
    i = 0
    while i + 2 <= len(buf):
        first = buf[i]
        length, j = varint(buf, i + 1)
        if length is None or j + length > len(buf):
            return
        yield first >> 4, first & 0x0F, buf[j : j + length], i, j + length
        i = j + length


def string(body, i):
    n = int.from_bytes(body[i : i + 2], "big")
    return body[i + 2 : i + 2 + n], i + 2 + n


def properties(body, i):
    n, j = varint(body, i)
    return body[j : j + (n or 0)], j + (n or 0)


def topic_alias(props):
    """The Topic Alias (0x23) of a PUBLISH's properties, if any."""
    i = 0
    sizes = {0x01: 1, 0x02: 4, 0x23: 2, 0x0B: "v", 0x03: "s", 0x08: "s", 0x09: "s", 0x26: "ss"}
    while i < len(props):
        pid = props[i]
        i += 1
        kind = sizes.get(pid)
        if pid == 0x23:
            return int.from_bytes(props[i : i + 2], "big")
        if isinstance(kind, int):
            i += kind
        elif kind == "v":
            _, i = varint(props, i)
        elif kind == "s":
            _, i = string(props, i)
        elif kind == "ss":
            _, i = string(props, i)
            _, i = string(props, i)
        else:
            return None
    return None


def parse_stream(buf, v5, seen):
    aliases = {}
    for ptype, flags, body, _, _ in packets(buf):
        try:
            if ptype == 3:
                topic, i = string(body, 0)
                if (flags >> 1) & 3:
                    i += 2
                alias = None
                if v5:
                    props, i = properties(body, i)
                    alias = topic_alias(props)
                if alias is not None:
                    if topic:
                        aliases[alias] = topic
                    else:
                        topic = aliases.get(alias, b"")
                payload = body[i:]
                if topic:
                    seen["topic"].add(topic)
                seen["publish"].append((topic, payload))
            elif ptype == 8:
                i = 2
                if v5:
                    _, i = properties(body, i)
                while i < len(body):
                    f, i = string(body, i)
                    i += 1
                    seen["topic"].add(f)
        except (IndexError, ValueError, TypeError):
            continue


def protocol_v5(c2s):
    for ptype, _, body, _, _ in packets(c2s):
        if ptype == 1:
            _, i = string(body, 0)
            return i < len(body) and body[i] == 5
        return False
    return False


def spread(items, n):
    items = sorted(set(items), key=lambda b: (len(b), b))
    if len(items) <= n:
        return items
    return [items[round(k * (len(items) - 1) / (n - 1))] for k in range(n)]


def write(out, target, blobs):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    for b in blobs:
        with open(os.path.join(d, hashlib.sha1(b).hexdigest()), "wb") as f:
            f.write(b)
    return len(blobs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("seeds")
    ap.add_argument("captures", nargs="+")
    ap.add_argument("--max", type=int, default=40)
    args = ap.parse_args()
    seen = {"topic": set(), "publish": []}
    streams = []
    for cap in args.captures:
        for c2s_path in sorted(glob.glob(os.path.join(cap, "conn-*.c2s"))):
            c2s = open(c2s_path, "rb").read()
            s2c_path = c2s_path[:-4] + ".s2c"
            s2c = open(s2c_path, "rb").read() if os.path.exists(s2c_path) else b""
            v5 = protocol_v5(c2s)
            cut = 0
            for _, _, _, _, end in packets(c2s):
                if end > STREAM_CAP:
                    break
                cut = end
            if cut:
                streams.append(c2s[:cut])
            parse_stream(c2s, v5, seen)
            parse_stream(s2c, v5, seen)

    by = defaultdict(list)
    for topic, payload in seen["publish"]:
        levels = topic.split(b"/")
        if len(levels) == 4 and levels[:2] == [b"v1", b"agents"] and levels[3] in (b"batch", b"ack"):
            by[levels[3].decode()].append(payload)
        elif len(levels) == 4 and levels[:2] == [b"v1", b"devices"] and levels[3] == b"telemetry":
            by["telemetry"].append(payload)
        elif levels[0] == b"spBv1.0" and len(levels) >= 4 and levels[2].decode(errors="replace") in SPB_MODE:
            mode = SPB_MODE[levels[2].decode()]
            # Data after a birth (bit 7) gets past the alias and seq checks.
            by["sparkplug"].append(bytes([mode | (0x80 if mode in (2, 3, 6, 7) else 0)]) + payload)
        for m in RFC3339.finditer(payload):
            by["timestamp"].append(m.group(1))

    n = args.max
    counts = {
        "mqtt_codec": write(args.seeds, "mqtt_codec", spread(streams, n)),
        "topic_parse": write(args.seeds, "topic_parse", spread(seen["topic"], 4 * n)),
        "batch_decode": write(args.seeds, "batch_decode", spread(by["batch"], n)),
        "ack_parse": write(args.seeds, "ack_parse", spread(by["ack"], n)),
        "telemetry_parse": write(args.seeds, "telemetry_parse", spread(by["telemetry"], n)),
        "sparkplug_decode": write(args.seeds, "sparkplug_decode", spread(by["sparkplug"], n)),
        "timestamp_parse": write(args.seeds, "timestamp_parse", spread(by["timestamp"], n)),
    }
    print("extract_mqtt: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
