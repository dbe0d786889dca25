#!/usr/bin/env bash
# (Re)generates the fuzz seed corpora, fuzz/seeds/<target>/, from real traffic and real files:
#   - MQTT: mosquitto_pub/mosquitto_sub (3.1.1 and 5: QoS 0/1/2, retained, wills, user
#     properties, topic aliases) and pysparkplug's edge node against the project's broker
#     (mqtt-broker's mqtt_interop_broker example, which lets every client in), and `sim fleet`'s
#     agents against a real `hub` (batches in, acks and feeds out), every connection recorded
#     byte for byte by a proxy (fuzz/seeds-tools/record_proxy.py);
#   - HJ 212: `sim hj212-station`'s TCP stream to a recording platform that acknowledges
#     (fuzz/seeds-tools/hj212_platform.py), once dropped mid-stream so the station resends;
#   - Sparkplug B: payloads encoded by pysparkplug (fuzz/seeds-tools/sparkplug_seeds.py);
#   - the repository's files: profiles/*.toml, the hub.toml `sim demo` and `sim fleet` write,
#     the configs, HJ 212 packets, telemetry, timestamps, GB/T 28181 ids and topics of the
#     tests (fuzz/seeds-tools/static_seeds.py), and ../shared/CONTRACT.md when present.
# Every process it starts listens on a free loopback port and is stopped by its PID.
#   scripts/fuzz-seeds.sh            # builds sim, hub and the broker example (release) first
#   SKIP_BUILD=1 scripts/fuzz-seeds.sh
# Needs mosquitto-clients and pysparkplug (scripts/setup-peers.sh). Binaries come from
# ${CARGO_TARGET_DIR:-target}/release.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TOOLS=$ROOT/fuzz/seeds-tools
SEEDS=$ROOT/fuzz/seeds
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
NICE=(nice -n "${NICE_LEVEL:-19}")

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  "${NICE[@]}" cargo build --release -p sim --bin sim -p hub --bin hub \
    -p mqtt-broker --example mqtt_interop_broker
fi
for b in "$BIN/sim" "$BIN/hub" "$BIN/examples/mqtt_interop_broker"; do
  [ -x "$b" ] || { echo "fuzz-seeds: $b is missing (build it, or unset SKIP_BUILD)" >&2; exit 1; }
done
command -v mosquitto_pub >/dev/null || { echo "fuzz-seeds: mosquitto_pub missing (scripts/setup-peers.sh)" >&2; exit 1; }
python3 -c 'import pysparkplug' || { echo "fuzz-seeds: pysparkplug missing (scripts/setup-peers.sh)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/fuzz-seeds.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  [ "${KEEP_WORK:-0}" = 1 ] && echo "fuzz-seeds: captures kept in $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { # PORT: until something accepts on it (10 s at most)
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "fuzz-seeds: nothing listens on $1" >&2; return 1
}
wait_file() { for _ in $(seq 300); do [ -s "$1" ] && return 0; sleep 0.1; done; echo "fuzz-seeds: no $1" >&2; return 1; }
proxy() { # UPSTREAM_PORT CAPTURE_DIR: starts a recording proxy, sets PP to its port
  local pf=$WORK/proxy-$1.port
  "${NICE[@]}" python3 "$TOOLS/record_proxy.py" --upstream "127.0.0.1:$1" --out "$2" --port-file "$pf" &
  PIDS+=($!)
  wait_file "$pf"
  PP=$(cat "$pf")
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# The rain gauge of sim/src/district/direct.rs: serde_json's json! (keys sorted), epoch ms.
gauge_json() { # SEQ RAIN TEMP RH
  printf '{"seq":%s,"ts":%s,"values":{"air_temperature":%s,"rainfall":{"unit":"mm","value":%s},"relative_humidity":%s}}' \
    "$1" "$(date +%s%3N)" "$3" "$2" "$4"
}

echo "fuzz-seeds: 1/4 mosquitto and pysparkplug clients -> mqtt_interop_broker"
CAP1=$WORK/cap-clients
BP=$(free_port)
RUST_LOG=error "${NICE[@]}" "$BIN/examples/mqtt_interop_broker" "127.0.0.1:$BP" &
BROKER=$!; PIDS+=($BROKER)
wait_port "$BP"
proxy "$BP" "$CAP1"
H=(-h 127.0.0.1 -p "$PP")
mosquitto_sub "${H[@]}" -V mqttv311 -i seed-sub-311 -q 2 -t 'v1/#' -t 'spBv1.0/#' -W 12 >/dev/null 2>&1 &
PIDS+=($!)
mosquitto_sub "${H[@]}" -V mqttv5 -i seed-sub-5 -q 1 -t 'v1/devices/+/telemetry' -t 'v1/status/#' \
  -D connect session-expiry-interval 60 -D subscribe subscription-identifier 7 \
  -D subscribe user-property app district -W 12 >/dev/null 2>&1 &
PIDS+=($!)
sleep 0.5
T=v1/devices/RG-0001/telemetry
mosquitto_pub "${H[@]}" -V mqttv311 -i RG-0001 -u RG-0001 -P rg-secret-1 -q 0 -t $T -m "$(gauge_json 1 0.2 18.4 63.0)"
mosquitto_pub "${H[@]}" -V mqttv311 -i RG-0001 -u RG-0001 -P rg-secret-1 -q 1 -t $T -m "$(gauge_json 2 0.4 18.5 64.0)" \
  --will-topic v1/status/RG-0001 --will-payload offline --will-retain --will-qos 1
mosquitto_pub "${H[@]}" -V mqttv311 -i RG-0001 -u RG-0001 -P rg-secret-1 -q 2 -r -t v1/status/RG-0001 -m online
mosquitto_pub "${H[@]}" -V mqttv311 -i WL-0001 -u WL-0001 -P wl-secret-1 -q 1 -t v1/devices/WL-0001/telemetry \
  -m '[{"ts":"2026-11-22T08:00:00.000Z","seq":41,"values":{"water_level":2.29}},{"ts":"2026-11-22T08:00:10+08:00","seq":42,"values":{"water_level":{"value":2310,"unit":"mm"},"turbidity":{"value":12.5,"unit":"NTU"}}}]'
mosquitto_pub "${H[@]}" -V mqttv5 -i RG-0002 -u RG-0002 -P rg-secret-2 -q 1 -t v1/devices/RG-0002/telemetry \
  -m "$(gauge_json 7 12.3 21.0 88.0)" -D connect session-expiry-interval 30 -D connect receive-maximum 10 \
  -D publish user-property site district -D publish content-type application/json \
  -D publish payload-format-indicator 1 -D publish message-expiry-interval 3600 \
  --will-topic v1/status/RG-0002 --will-payload offline --will-qos 1 --will-retain \
  -D will will-delay-interval 5 -D will user-property reason lost
mosquitto_pub "${H[@]}" -V mqttv5 -i RG-0003 -u RG-0003 -P rg-secret-3 -q 2 -t v1/devices/RG-0003/telemetry \
  -m "$(gauge_json 1 0.0 -3.5 97.0)" -D publish topic-alias 1 --repeat 3 -D publish response-topic v1/devices/RG-0003/cmd \
  -D publish correlation-data c0ffee || true
mosquitto_pub "${H[@]}" -V mqttv5 -i app-twin -q 1 -t v1/twin/SL-0001/desired -m '{"dimming_level": 40, "version": 16}' \
  -D publish user-property by operator -D publish user-property by second
mosquitto_pub "${H[@]}" -V mqttv5 -i RG-0001 -q 0 -r -n -t v1/status/RG-0001
mosquitto_pub "${H[@]}" -V mqttv31 -i old-client -q 1 -t v1/devices/OLD-1/telemetry -m '{"values":{"water_level":1.0}}' \
  2>/dev/null || true # the broker refuses 3.1: its CONNECT is still a seed
# pysparkplug's edge node (its Client is paho-mqtt): births, data by alias and by name, a seq
# gap, NDEATH on a graceful quit.
{ sleep 2; echo "data PS-P01 41.5 370"; sleep 0.3; echo "named PS-P02 38"; sleep 0.3; echo gap
  sleep 0.2; echo "data PS-P01 40 360"; sleep 0.3; echo quit; } |
  timeout 20 "${NICE[@]}" python3 hub/tests/peers/sparkplug_edge_node.py --port "$PP" --node PS-EN01 \
    --password s3cret-s3cret --group District >/dev/null 2>&1 || true
sleep 0.5
stop "$BROKER"

echo "fuzz-seeds: 2/4 sim fleet (agents) -> hub, with a feeds subscriber"
CAP2=$WORK/cap-hub
mkdir -p "$WORK/fleet"
"$BIN/sim" fleet --config-only --write-config "$WORK/fleet/hub.toml" --devices 20 --devices-per-agent 10 >/dev/null 2>&1
HP=$(free_port); HHP=$(free_port)
RUST_LOG=warn "${NICE[@]}" "$BIN/hub" --config "$WORK/fleet/hub.toml" --mqtt-listen "127.0.0.1:$HP" \
  --http-listen "127.0.0.1:$HHP" --data-dir "$WORK/fleet/data" >/dev/null &
HUB=$!; PIDS+=($HUB)
wait_port "$HP"
proxy "$HP" "$CAP2"
feeds_secret=$(python3 -c 'import sys,tomllib; c=tomllib.load(open(sys.argv[1],"rb")); print(next(a["secret"] for a in c["apps"] if a["id"]=="bench-feeds"))' "$WORK/fleet/hub.toml")
mosquitto_sub -h 127.0.0.1 -p "$PP" -V mqttv5 -i bench-feeds -u bench-feeds -P "$feeds_secret" -q 1 \
  -t 'v1/feeds/#' -C 20 -W 8 >/dev/null 2>&1 &
FEEDS=$!; PIDS+=($FEEDS)
sleep 0.3
RUST_LOG=warn timeout 40 "${NICE[@]}" "$BIN/sim" fleet --hub "127.0.0.1:$PP" --hub-config "$WORK/fleet/hub.toml" \
  --rate 2 --duration 3s --report-every 10s >/dev/null 2>&1 || true
wait "$FEEDS" 2>/dev/null || true
stop "$HUB"

echo "fuzz-seeds: 3/4 sim hj212-station -> recording platform"
CAP3=$WORK/cap-hj212
"${NICE[@]}" python3 "$TOOLS/hj212_platform.py" --out "$CAP3" --port-file "$WORK/hj.port" --drop-after 2 &
PIDS+=($!)
wait_file "$WORK/hj.port"
RUST_LOG=warn timeout 30 "${NICE[@]}" "$BIN/sim" hj212-station --platform "127.0.0.1:$(cat "$WORK/hj.port")" \
  --mn 33011000000001 --pw 123456 --interval 300ms --count 5 >/dev/null || true

echo "fuzz-seeds: 4/4 the hub.toml that sim demo writes"
DP=$(free_port); DH=$(free_port); DJ=$(free_port)
RUST_LOG=error "${NICE[@]}" "$BIN/sim" demo --no-tls --data-dir "$WORK/demo" --mqtt-listen "127.0.0.1:$DP" \
  --http-listen "127.0.0.1:$DH" --hj212-listen "127.0.0.1:$DJ" >/dev/null 2>&1 &
DEMO=$!; PIDS+=($DEMO)
wait_file "$WORK/demo/hub.toml" || true
sleep 0.5
stop "$DEMO"

rm -rf "$SEEDS"
mkdir -p "$SEEDS"
extras=("$WORK/fleet/hub.toml")
[ -s "$WORK/demo/hub.toml" ] && extras+=("$WORK/demo/hub.toml")
[ -f "$ROOT/../shared/CONTRACT.md" ] && extras+=("$ROOT/../shared/CONTRACT.md")
python3 "$TOOLS/static_seeds.py" "$SEEDS" "${extras[@]}"
python3 "$TOOLS/extract_mqtt.py" "$SEEDS" "$CAP1" "$CAP2"
python3 "$TOOLS/sparkplug_seeds.py" "$SEEDS/sparkplug_decode"
python3 "$TOOLS/hj212_seeds.py" "$SEEDS/hj212_parse" "$CAP3"/station-*.bin

echo "fuzz-seeds: per target (files, bytes)"
for d in "$SEEDS"/*/; do
  printf '  %-18s %4d %8d\n' "$(basename "$d")" "$(find "$d" -type f | wc -l)" "$(cat "$d"/* | wc -c)"
done
printf '  %-18s %4d %8d\n' total "$(find "$SEEDS" -type f | wc -l)" "$(find "$SEEDS" -type f -exec cat {} + | wc -c)"
