"""Sparkplug B payloads encoded by pysparkplug (PyPI), an implementation nobody here wrote, as
seeds for the `sparkplug_decode` fuzz target, whose first input byte picks the message type
(`MessageType::ALL[b % 8]`: NBIRTH NDEATH NDATA NCMD DBIRTH DDEATH DDATA DCMD) and, with bit 7
set, has the node born first (aliases 0..4 for the node, 100..104 for the device `dev`).

    python3 sparkplug_seeds.py OUT_DIR

Writes `<MSG>-[born-]<name>.bin` (the mode byte, then the payload), each payload with and
without the birth first. The payloads are the fixtures of protocols/tests/peers/sparkplug_peer.py
plus messages here that use every scalar datatype pysparkplug supports and the target birth's
aliases. (What pysparkplug's edge node, hub/tests/peers/sparkplug_edge_node.py, puts on the wire
comes from a recorded MQTT stream through extract_mqtt.py.)
"""

import datetime
import os
import sys
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "protocols", "tests", "peers"))

from pysparkplug import DataType, DBirth, DCmd, DData, DDeath, Metric, NBirth, NData, NDeath  # noqa: E402
from sparkplug_peer import T0, peer_payloads  # noqa: E402

MODE = {"NBIRTH": 0, "NDEATH": 1, "NDATA": 2, "NCMD": 3, "DBIRTH": 4, "DDEATH": 5, "DDATA": 6, "DCMD": 7}

SCALARS = [
    (DataType.INT8, -128),
    (DataType.INT16, 32767),
    (DataType.INT32, -2_000_000_000),
    (DataType.INT64, -(2**63)),
    (DataType.UINT8, 255),
    (DataType.UINT16, 65535),
    (DataType.UINT32, 2**32 - 1),
    (DataType.UINT64, 2**64 - 1),
    (DataType.FLOAT, -0.0),
    (DataType.DOUBLE, 1e308),
    (DataType.BOOLEAN, True),
    (DataType.STRING, "泵站 ok"),
    (DataType.TEXT, "line1\nline2"),
    (DataType.UUID, str(uuid.UUID(int=0x1234))),
    (DataType.BYTES, bytes(range(16))),
    (
        DataType.DATETIME,
        datetime.datetime.fromtimestamp(T0 / 1000, datetime.timezone.utc),
    ),
]


def metric(name, datatype, value, alias=None, ts=T0):
    return Metric(timestamp=ts, name=name, datatype=datatype, value=value, alias=alias)


def ours():
    out = []
    # The target's birth gives aliases 0..4 (Int8, UInt32, Double, Boolean, String) and, for
    # device `dev`, 100..104: data by alias then reaches the datatype checks.
    by_alias = [
        Metric(timestamp=T0, name=None, datatype=DataType.INT8, value=-7, alias=0),
        Metric(timestamp=T0, name=None, datatype=DataType.UINT32, value=7, alias=1),
        Metric(timestamp=T0, name=None, datatype=DataType.DOUBLE, value=2.5, alias=2),
        Metric(timestamp=T0, name=None, datatype=DataType.BOOLEAN, value=False, alias=3),
        Metric(timestamp=T0, name=None, datatype=DataType.STRING, value="y", alias=4),
    ]
    out.append(("NDATA", "by-alias", NData(T0, 1, tuple(by_alias)).encode(include_dtypes=False)))
    dev = [
        Metric(timestamp=T0, name=None, datatype=m.datatype, value=m.value, alias=m.alias + 100)
        for m in by_alias
    ]
    out.append(("DDATA", "by-alias", DData(T0, 2, tuple(dev)).encode(include_dtypes=False)))
    every = tuple(
        metric(f"s/{t.name.lower()}", t, v, alias=200 + i) for i, (t, v) in enumerate(SCALARS)
    )
    out.append(("NBIRTH", "every-scalar", NBirth(T0, 0, (metric("bdSeq", DataType.INT64, 0),) + every).encode()))
    out.append(("DBIRTH", "every-scalar", DBirth(T0, 1, every).encode()))
    out.append(("DDATA", "every-scalar-named", DData(T0, 2, every).encode(include_dtypes=True)))
    out.append(("NDATA", "every-scalar-named", NData(T0, 1, every).encode(include_dtypes=True)))
    out.append(("DDEATH", "dev", DDeath(T0, 3).encode()))
    out.append(("NDEATH", "bdseq0", NDeath(T0, metric("bdSeq", DataType.INT64, 0)).encode()))
    out.append(
        ("DCMD", "write", DCmd(T0, (metric("Pump/Speed", DataType.FLOAT, 42.0),)).encode(include_dtypes=True))
    )
    return out


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    seeds = []
    for name, raw in peer_payloads():
        kind = name.split("_")[0]
        seeds.append((kind, "peer-" + name.lower(), raw))
    seeds += ours()
    for kind, name, raw in seeds:
        for born in (0, 0x80):
            mode = bytes([MODE[kind] | born])
            tag = "born-" if born else ""
            with open(os.path.join(out_dir, f"{kind}-{tag}{name}.bin"), "wb") as f:
                f.write(mode + raw)
    print(f"sparkplug_seeds: {2 * len(seeds)} seeds")


if __name__ == "__main__":
    main()
