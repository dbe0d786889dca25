"""A Sparkplug B edge node from an independent implementation (`pysparkplug`, PyPI), driven
by hub/tests/sparkplug_edge_node.rs against the whole hub.

    python3 sparkplug_edge_node.py --port P --node PS-EN01 --password S --group District

Two pump devices, PS-P01 and PS-P02, with `Pump/Speed` (Float, alias 10/20), `Pump/Flow`
(Float, m3/h, alias 11/21) and `Pump/Running` (Boolean, alias 12/22). Commands come on stdin,
one per line; what the node sees and does is printed on stdout, one event per line:

    data DEVICE SPEED FLOW   DDATA by alias only (no names)
    named DEVICE SPEED       DDATA by name, with the datatype (how pysparkplug updates)
    gap                      skip one seq number (the next message is out of sequence)
    quit                     graceful disconnect (NDEATH, then DISCONNECT)

    ready                    connected; NBIRTH and DBIRTHs published
    rebirth                  an NCMD `Node Control/Rebirth` arrived; births published again
    dcmd DEVICE NAME VALUE   a DCMD write arrived (and was applied and reported by DDATA)
"""

import argparse
import itertools
import sys
import threading

from pysparkplug import (
    Client,
    DataType,
    DBirth,
    DData,
    Device,
    EdgeNode,
    Message,
    Metric,
    MessageType,
    NBirth,
    QoS,
    Topic,
)
from pysparkplug._time import get_current_timestamp

PUMPS = {"PS-P01": 10, "PS-P02": 20}
FIELDS = [
    ("Pump/Speed", DataType.FLOAT, 0),
    ("Pump/Flow", DataType.FLOAT, 1),
    ("Pump/Running", DataType.BOOLEAN, 2),
]
out_lock = threading.Lock()


def say(line):
    with out_lock:
        print(line, flush=True)


def metric(name, datatype, value, alias=None, named=True):
    return Metric(
        timestamp=get_current_timestamp(),
        name=name if named else None,
        datatype=datatype,
        value=value,
        alias=alias,
    )


def pump_metrics(base, speed=40.0, flow=360.0, running=True):
    values = {"Pump/Speed": speed, "Pump/Flow": flow, "Pump/Running": running}
    return [metric(n, t, values[n], alias=base + off) for n, t, off in FIELDS]


class Station:
    def __init__(self, args):
        self.args = args
        self.connected = threading.Event()
        client = Client(
            client_id=args.node, username=args.node, password=args.password
        )
        self.node = EdgeNode(
            group_id=args.group,
            edge_node_id=args.node,
            metrics=[metric("Node Control/Rebirth", DataType.BOOLEAN, False)],
            client=client,
            cmd_callback=self.on_ncmd,
        )
        # pysparkplug prepares the next connection's bdSeq right after the NBIRTH; the
        # session's own (the one its will carries) is the one set before connecting.
        self.bd_metrics = []
        setup_will = self.node._setup_will

        def recording_setup_will():
            setup_will()
            self.bd_metrics.append(self.node._bd_seq_metric)
            if len(self.bd_metrics) == 2:
                # The second call ends the connect callback, after the births.
                self.connected.set()

        self.node._setup_will = recording_setup_will
        for device_id, base in PUMPS.items():
            self.node.register(
                Device(device_id, pump_metrics(base), cmd_callback=self.on_dcmd)
            )

    def births(self):
        """NBIRTH (seq 0, the session's bdSeq) and every DBIRTH, as on a rebirth request."""
        n = self.node
        n._EdgeNode__seq_cycler = itertools.cycle(range(256))
        bd = self.bd_metrics[0]
        nbirth = NBirth(
            timestamp=get_current_timestamp(),
            seq=n._seq,
            metrics=(*n.metrics.values(), bd),
        )
        self.publish(Topic(message_type=MessageType.NBIRTH, group_id=n.group_id,
                           edge_node_id=n.edge_node_id), nbirth)
        for device in n.devices.values():
            dbirth = DBirth(
                timestamp=get_current_timestamp(),
                seq=n._seq,
                metrics=tuple(device.metrics.values()),
            )
            self.publish(Topic(message_type=MessageType.DBIRTH, group_id=n.group_id,
                               edge_node_id=n.edge_node_id, device_id=device.device_id),
                         dbirth)

    def publish(self, topic, payload):
        self.node._client.publish(
            Message(topic=topic, payload=payload, qos=QoS.AT_MOST_ONCE, retain=False),
            include_dtypes=True,
        )

    def ddata(self, device_id, metrics):
        n = self.node
        payload = DData(get_current_timestamp(), seq=n._seq, metrics=tuple(metrics))
        self.publish(Topic(message_type=MessageType.DDATA, group_id=n.group_id,
                           edge_node_id=n.edge_node_id, device_id=device_id), payload)

    def on_ncmd(self, node, message):
        for m in message.payload.metrics:
            if m.name == "Node Control/Rebirth" and m.value:
                self.births()
                say("rebirth")

    def on_dcmd(self, node, message):
        device_id = message.topic.device_id
        for m in message.payload.metrics:
            say(f"dcmd {device_id} {m.name} {m.value}")
            if m.name == "Pump/Speed":
                self.node.update_device(
                    device_id,
                    [metric("Pump/Speed", DataType.FLOAT, float(m.value),
                            alias=PUMPS[device_id])],
                )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--group", default="District")
    args = p.parse_args()
    s = Station(args)
    s.node.connect("127.0.0.1", port=args.port, blocking=False)
    if not s.connected.wait(30):
        say("not connected")
        sys.exit(1)
    say("ready")
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "data":
            device_id, speed, flow = cmd[1], float(cmd[2]), float(cmd[3])
            base = PUMPS[device_id]
            s.ddata(device_id, [
                metric(None, DataType.FLOAT, speed, alias=base, named=False),
                metric(None, DataType.FLOAT, flow, alias=base + 1, named=False),
            ])
            say("sent")
        elif cmd[0] == "named":
            s.node.update_device(cmd[1], [metric("Pump/Speed", DataType.FLOAT, float(cmd[2]))])
            say("sent")
        elif cmd[0] == "gap":
            s.node._seq
            say("skipped")
        elif cmd[0] == "quit":
            s.node.disconnect()
            say("bye")
            return


if __name__ == "__main__":
    main()
