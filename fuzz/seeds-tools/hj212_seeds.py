"""HJ 212 seeds from recorded station streams (hj212_platform.py's station-NNN.bin).

    python3 hj212_seeds.py OUT_DIR STREAM...

Writes each whole stream (the target reads a stream; its first byte also picks the read size
of its second pass) and each packet of it on its own, named by the SHA-1 of the bytes.
"""

import hashlib
import os
import sys


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    blobs = set()
    for path in sys.argv[2:]:
        data = open(path, "rb").read()
        if not data:
            continue
        blobs.add(data)
        blobs.update(p + b"\r\n" for p in data.split(b"\r\n") if p)
    for b in blobs:
        with open(os.path.join(out, hashlib.sha1(b).hexdigest()), "wb") as f:
            f.write(b)
    print(f"hj212_seeds: {len(blobs)} from {len(sys.argv) - 2} streams")


if __name__ == "__main__":
    main()
