"""Sparkplug B payloads from an independent implementation, for protocols/tests/sparkplug.rs.

The peer is `pysparkplug` (PyPI), whose payload classes serialize through protobuf classes
generated from sparkplug_b.proto. Two directions:

    python3 sparkplug_peer.py          # print the peer's encodings as hex, one `NAME hex` a line
    python3 sparkplug_peer.py --check  # decode this crate's encodings (OURS below) with the peer

The printed hex is pasted into protocols/tests/sparkplug.rs (the `PEER_*` constants), which
decodes it; OURS holds the bytes the Rust encoder produces (the Rust test asserts the same hex),
so `--check` shows that the peer reads what the hub will send. The Rust test
`the_peer_still_agrees` runs both; scripts/setup-peers.sh installs pysparkplug.
"""

import datetime
import sys

from pysparkplug import (
    DataType,
    DBirth,
    DCmd,
    DData,
    DDeath,
    Metric,
    NBirth,
    NCmd,
    NData,
    NDeath,
)

T0 = 1_700_000_000_000  # payload timestamps are fixed so the bytes are reproducible


def m(name, datatype, value, alias=None, ts=T0, historical=False):
    return Metric(
        timestamp=ts,
        name=name,
        datatype=datatype,
        value=value,
        alias=alias,
        is_historical=historical,
    )


def peer_payloads():
    nbirth = NBirth(
        timestamp=T0,
        seq=0,
        metrics=(
            m("bdSeq", DataType.INT64, 3),
            m("Node Control/Rebirth", DataType.BOOLEAN, False),
            m("level", DataType.DOUBLE, 2.75, alias=1),
            m("temp", DataType.FLOAT, 18.5, alias=2),
            m("i8", DataType.INT8, -5, alias=3),
            m("i16", DataType.INT16, -300, alias=4),
            m("i32", DataType.INT32, -70000, alias=5),
            m("i64", DataType.INT64, -(2**40), alias=6),
            m("u8", DataType.UINT8, 200, alias=7),
            m("u16", DataType.UINT16, 60000, alias=8),
            m("u32", DataType.UINT32, 4_000_000_000, alias=9),
            m("u64", DataType.UINT64, 2**63 + 5, alias=10),
            m("pump_on", DataType.BOOLEAN, True, alias=11),
            m("status", DataType.STRING, "ok", alias=12),
            m(
                "since",
                DataType.DATETIME,
                datetime.datetime.fromtimestamp((T0 - 60_000) / 1000, datetime.timezone.utc),
                alias=13,
            ),
            m("blob", DataType.BYTES, b"\x01\x02\x03", alias=14),
        ),
    )
    # Data by alias only (no name, no datatype): the birth gives both.
    ndata = NData(
        timestamp=T0 + 1000,
        seq=1,
        metrics=(
            Metric(timestamp=T0 + 900, name=None, datatype=DataType.DOUBLE, value=3.25, alias=1),
            Metric(timestamp=T0 + 900, name=None, datatype=DataType.INT8, value=-128, alias=3),
            Metric(timestamp=T0 + 900, name=None, datatype=DataType.BOOLEAN, value=False, alias=11),
        ),
    )
    ndata_historical = NData(
        timestamp=T0 + 2000,
        seq=2,
        metrics=(
            Metric(
                timestamp=T0 - 3_600_000,
                name=None,
                datatype=DataType.DOUBLE,
                value=1.5,
                alias=1,
                is_historical=True,
            ),
        ),
    )
    dbirth = DBirth(
        timestamp=T0 + 3000,
        seq=3,
        metrics=(m("flow", DataType.FLOAT, 0.5, alias=100, ts=T0 + 3000),),
    )
    ddata = DData(
        timestamp=T0 + 4000,
        seq=4,
        metrics=(
            Metric(timestamp=T0 + 4000, name=None, datatype=DataType.FLOAT, value=0.75, alias=100),
        ),
    )
    ddeath = DDeath(timestamp=T0 + 5000, seq=5)
    ndeath = NDeath(timestamp=T0 + 6000, bd_seq_metric=m("bdSeq", DataType.INT64, 3))
    ncmd_rebirth = NCmd(
        timestamp=T0,
        metrics=(m("Node Control/Rebirth", DataType.BOOLEAN, True),),
    )
    return [
        ("NBIRTH", nbirth.encode()),
        ("NDATA", ndata.encode(include_dtypes=False)),
        ("NDATA_HISTORICAL", ndata_historical.encode(include_dtypes=False)),
        ("DBIRTH", dbirth.encode()),
        ("DDATA", ddata.encode(include_dtypes=False)),
        ("DDEATH", ddeath.encode()),
        ("NDEATH", ndeath.encode()),
        ("NCMD_REBIRTH", ncmd_rebirth.encode(include_dtypes=True)),
    ]


# What protocols::sparkplug encodes (asserted byte for byte in protocols/tests/sparkplug.rs):
# rebirth_request(T0) and write_metric("dimming_level", Float, 40.0, T0),
# write_metric("setpoint", Int16, -87, T0), write_metric("mode", String, "eco", T0).
OURS = {
    "rebirth_request": "0880d095ffbc3112210a144e6f646520436f6e74726f6c2f526562697274681880d095ffbc31200b7001",
    "write_float": "0880d095ffbc31121d0a0d64696d6d696e675f6c6576656c1880d095ffbc3120096500002042",
    "write_int16": "0880d095ffbc3112170a08736574706f696e741880d095ffbc31200250a9ff03",
    "write_string": "0880d095ffbc3112140a046d6f64651880d095ffbc31200c7a0365636f",
}


def check():
    rebirth = NCmd.decode(bytes.fromhex(OURS["rebirth_request"]))
    assert rebirth.timestamp == T0, rebirth
    (metric,) = rebirth.metrics
    assert metric.name == "Node Control/Rebirth", metric
    assert metric.datatype == DataType.BOOLEAN and metric.value is True, metric

    for key, name, datatype, value in [
        ("write_float", "dimming_level", DataType.FLOAT, 40.0),
        ("write_int16", "setpoint", DataType.INT16, -87),
        ("write_string", "mode", DataType.STRING, "eco"),
    ]:
        cmd = DCmd.decode(bytes.fromhex(OURS[key]))
        assert cmd.timestamp == T0, cmd
        (metric,) = cmd.metrics
        assert (metric.name, metric.datatype, metric.value) == (name, datatype, value), metric
        assert metric.timestamp == T0, metric
    # The peer's own rebirth request is the same bytes as ours.
    peer = dict(peer_payloads())
    assert peer["NCMD_REBIRTH"].hex() == OURS["rebirth_request"], peer["NCMD_REBIRTH"].hex()
    print("peer decodes every encoding of ours")


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        check()
    else:
        for name, raw in peer_payloads():
            print(name, raw.hex())
