"""Seeds from the repository's own files: the profiles, hub configs, the standard's HJ 212
example packets and the strings the tests feed the decoders (telemetry JSON, RFC 3339
timestamps, GB/T 28181 ids, topics). Run from the repository root:

    python3 fuzz/seeds-tools/static_seeds.py SEEDS_DIR [EXTRA_FILE...]

EXTRA_FILE: more files to take from (e.g. the shared CONTRACT.md, a hub.toml written by
`sim demo`). Files are named by the SHA-1 of their bytes, so repeats collapse.
"""

import glob
import hashlib
import json
import os
import re
import sys
import tomllib

RAW = re.compile(r'r(#*)"(.*?)"\1', re.S)
PLAIN = re.compile(r'(?<![r#\w])"((?:[^"\\\n]|\\.|\\\n)*)"')
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")
GB_ID = re.compile(r'"(\d{20})"')
TOPIC = re.compile(r'"((?:v1|spBv1\.0|\$SYS)/[^"\s{}]*)"')
HJ212 = re.compile(r"##\d{4}[^\"]*?&&[0-9A-Fa-f]{4}(?:\\r\\n)?")


def unescape(s):
    s = re.sub(r"\\\n\s*", "", s)
    try:
        return s.encode("latin-1", "backslashreplace").decode("unicode_escape").encode("latin-1").decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return s


def literals(text):
    for m in RAW.finditer(text):
        yield m.group(2)
    for m in PLAIN.finditer(text):
        yield unescape(m.group(1))


def md_blocks(text, lang):
    return re.findall(r"```" + lang + r"\n(.*?)```", text, re.S)


def is_toml(s):
    try:
        tomllib.loads(s)
        return True
    except tomllib.TOMLDecodeError:
        return False


def is_json(s):
    try:
        json.loads(s)
        return True
    except ValueError:
        return False


def write(out, target, blobs):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    n = 0
    for b in blobs:
        b = b.encode() if isinstance(b, str) else b
        if not b:
            continue
        with open(os.path.join(d, hashlib.sha1(b).hexdigest()), "wb") as f:
            f.write(b)
        n += 1
    return n


def read(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def main():
    out = sys.argv[1]
    extra = sys.argv[2:]
    rs = [p for p in glob.glob("**/*.rs", recursive=True) if "target" not in p.split(os.sep)]
    seeds = {k: set() for k in ("hub", "profile", "hj212", "telemetry", "timestamp", "gb", "topic")}

    for p in sorted(glob.glob("profiles/*.toml")):
        seeds["profile"].add(read(p))
    for p in ("protocols/src/profile.rs",):
        for s in literals(read(p)):
            if "[[points]]" in s or "[device]" in s or ("name" in s and "\n" in s and is_toml(s)):
                seeds["profile"].add(s)

    for p in sorted(glob.glob("hub/src/config/*.rs")) + sorted(glob.glob("hub/tests/*support*/*.rs")):
        for s in literals(read(p)):
            if "\n" in s and "[" in s and "=" in s:
                seeds["hub"].add(s)

    hj = []
    for p in ["protocols/tests/hj212.rs", "hub/tests/hj212_station.rs"] + sorted(glob.glob("protocols/src/hj212/*.rs")):
        for m in HJ212.finditer(read(p)):
            pkt = m.group(0).replace("\\r\\n", "\r\n")
            if not pkt.endswith("\r\n"):
                pkt += "\r\n"
            hj.append(pkt)
    seeds["hj212"].update(hj)
    # The same packets back to back on one connection, as a logger resending its memory does.
    seeds["hj212"].add("".join(dict.fromkeys(hj)))

    for p in ["protocols/src/telemetry.rs", "hub/src/pipeline/decode/tests.rs", "hub/tests/hub_e2e.rs"]:
        if os.path.exists(p):
            for s in literals(read(p)):
                if '"values"' in s and is_json(s):
                    seeds["telemetry"].add(s)

    texts = [read(p) for p in rs]
    for t in texts:
        seeds["timestamp"].update(RFC3339.findall(t))
        seeds["gb"].update(GB_ID.findall(t))
        seeds["topic"].update(TOPIC.findall(t))

    for p in extra:
        if not os.path.exists(p):
            continue
        t = read(p)
        if p.endswith(".md"):
            for block in md_blocks(t, "json"):
                if '"values"' in block:
                    seeds["telemetry"].add(block.strip())
            for block in md_blocks(t, "toml"):
                seeds["hub"].add(block)
            seeds["topic"].update(re.findall(r"`((?:v1|spBv1\.0)/[^`]*)`", t))
        elif p.endswith(".toml"):
            seeds["hub"].add(t)
        seeds["timestamp"].update(RFC3339.findall(t))
        seeds["gb"].update(GB_ID.findall(t))

    counts = {
        "hub_config_parse": write(out, "hub_config_parse", seeds["hub"]),
        "profile_parse": write(out, "profile_parse", seeds["profile"]),
        "hj212_parse": write(out, "hj212_parse", seeds["hj212"]),
        "telemetry_parse": write(out, "telemetry_parse", seeds["telemetry"]),
        "timestamp_parse": write(out, "timestamp_parse", seeds["timestamp"]),
        "gb_id_parse": write(out, "gb_id_parse", seeds["gb"]),
        "topic_parse": write(out, "topic_parse", seeds["topic"]),
    }
    print("static_seeds: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
