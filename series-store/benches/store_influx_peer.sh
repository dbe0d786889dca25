#!/usr/bin/env bash
# Peer measurement for the store bench: InfluxDB 1.6 (Debian package `influxdb`) bytes/point on
# exactly the series `cargo bench -p series-store --bench store` measures.
#
#   STORE_BENCH_CHUNKS=1000 STORE_BENCH_LINE_PROTOCOL=/tmp/sb/data cargo bench -p series-store --bench store -- --test
#   bash series-store/benches/store_influx_peer.sh /tmp/sb/data
#
# Runs its own influxd on free loopback ports in a temp dir, writes each file into its own
# database, waits for the TSM engine to snapshot and fully compact, prints on-disk bytes/point
# (data + WAL, allocated blocks), and stops influxd.
set -euo pipefail
prefix=${1:?usage: store_influx_peer.sh LINE_PROTOCOL_PREFIX}
command -v influxd >/dev/null || { echo "influxd missing: apt-get install influxdb" >&2; exit 1; }
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http=$(free_port)
rpc=$(free_port)
cat >"$work/influxdb.conf" <<EOF
reporting-disabled = true
bind-address = "127.0.0.1:$rpc"
[meta]
  dir = "$work/meta"
[data]
  dir = "$work/data"
  wal-dir = "$work/wal"
  index-version = "inmem"
  cache-snapshot-write-cold-duration = "2s"
  compact-full-write-cold-duration = "2s"
[http]
  bind-address = "127.0.0.1:$http"
  log-enabled = false
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
EOF
influxd -config "$work/influxdb.conf" >"$work/influxd.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$http/ping" && break; sleep 0.1; done
for f in "$prefix".j*.lp; do
  db=bench_$(basename "$f" .lp | tr -c 'a-z0-9\n' '_')
  curl -sf -XPOST "http://127.0.0.1:$http/query" --data-urlencode "q=CREATE DATABASE $db" >/dev/null
  python3 - "$f" "$http" "$db" <<'EOF'
import sys, urllib.request
path, port, db = sys.argv[1], sys.argv[2], sys.argv[3]
url = f"http://127.0.0.1:{port}/write?db={db}&precision=ms"
with open(path, 'rb') as f:
    batch = []
    for line in f:
        batch.append(line)
        if len(batch) == 5000:
            urllib.request.urlopen(urllib.request.Request(url, data=b''.join(batch), method='POST')).read()
            batch = []
    if batch:
        urllib.request.urlopen(urllib.request.Request(url, data=b''.join(batch), method='POST')).read()
EOF
  points=$(wc -l <"$f")
  # Wait until the WAL is flushed and the TSM files stop changing (full compaction done).
  prev=""; stable=0
  for _ in $(seq 300); do
    now=$(find "$work/data/$db" "$work/wal/$db" -type f -printf '%p %s\n' 2>/dev/null | sort | md5sum)
    wal=$(find "$work/wal/$db" -name '*.wal' -size +0 2>/dev/null | wc -l)
    if [ "$now" = "$prev" ] && [ "$wal" -eq 0 ]; then stable=$((stable+1)); else stable=0; fi
    [ $stable -ge 10 ] && break
    prev=$now; sleep 1
  done
  bytes=$(du -s --block-size=1 "$work/data/$db" "$work/wal/$db" | awk '{s+=$1} END {print s}')
  tsm=$(find "$work/data/$db" -name '*.tsm' | wc -l)
  python3 -c "print(f'$db: {$bytes} bytes on disk for {$points} points = {$bytes/$points:.3f} bytes/point ({$tsm} TSM files)')"
done
